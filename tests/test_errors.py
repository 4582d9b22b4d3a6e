"""Bad inputs: each raises ValueError or TypeError whose message names the
argument; none crashes the interpreter."""

from __future__ import annotations

import numpy as np
import pytest

import pyconv
import pyconv.functional as F
from pyconv import _core
from pyconv.layers import Convolution, Pooling


def _x(shape=(2, 3, 5, 5), dtype=np.float64):
    return np.zeros(shape, dtype=dtype)


def _conv(fn=4, c=3, k=3, dtype=np.float64, **kw):
    return Convolution(np.zeros((fn, c, k, k), dtype=dtype), np.zeros(fn, dtype=dtype), **kw)


def _conv_forwarded():
    conv = _conv(pad=1)
    conv.forward(_x())
    return conv


def _pool_forwarded():
    pool = Pooling(2, 2, stride=2)
    pool.forward(_x((2, 3, 4, 4)))
    return pool


W = np.zeros((4, 3, 3, 3))
B = np.zeros(4)
HUGE = 2**40

CASES = [
    # ---- wrong ndim ---------------------------------------------------------------
    ("conv x 3-D", lambda: _conv().forward(_x((3, 5, 5))), ValueError, r"expected x to be 4-D"),
    ("conv x 5-D", lambda: F.conv2d(_x((1, 2, 3, 5, 5)), W, B), ValueError,
     r"expected x to be 4-D"),
    ("conv W 3-D", lambda: Convolution(np.zeros((4, 3, 3)), B), ValueError,
     r"expected W to be 4-D"),
    ("functional W 3-D", lambda: F.conv2d(_x(), np.zeros((4, 3, 3)), B), ValueError,
     r"(?i)expected w to be 4-D"),
    ("pool x 3-D", lambda: Pooling(2, 2).forward(_x((3, 4, 4))), ValueError,
     r"expected x to be 4-D"),
    ("im2col 2-D", lambda: pyconv.im2col(np.zeros((5, 5)), 2, 2), ValueError, r"input_data"),
    ("col2im col 3-D", lambda: pyconv.col2im(np.zeros((2, 2, 2)), (1, 1, 3, 3), 2, 2),
     ValueError, r"expected col to be 2-D"),
    ("col2im input_shape length", lambda: pyconv.col2im(np.zeros((4, 4)), (1, 3, 3), 2, 2),
     ValueError, r"input_shape"),
    ("gemm a 1-D", lambda: F.gemm(np.zeros(3), np.zeros((3, 2))), ValueError,
     r"expected a to be 2-D"),
    ("gemm b 3-D", lambda: _core.gemm(np.zeros((2, 3)), np.zeros((3, 2, 1)), False, False,
                                      1.0, 0.0, None), ValueError, r"expected b to be 2-D"),
    ("pool backward dout 3-D", lambda: _core.max_pool2d_backward(
        np.zeros((1, 2, 2)), np.zeros((1, 2, 2), dtype=np.int64), 4, 4),
     ValueError, r"expected dout to be 4-D"),
    # ---- channel / bias / shape mismatch -------------------------------------------
    ("channels x vs W", lambda: _conv(c=2).forward(_x()), ValueError,
     r"x\.shape\[1\] == w\.shape\[1\] \(2"),
    ("functional channels", lambda: F.conv2d(_x((2, 5, 5, 5)), W, B), ValueError,
     r"x\.shape\[1\] == w\.shape\[1\]"),
    ("backward channels", lambda: F.conv2d_backward(np.zeros((2, 4, 3, 3)), _x((2, 2, 5, 5)),
                                                    W), ValueError, r"x\.shape\[1\]"),
    ("bias length layer", lambda: Convolution(W, np.zeros(3)), ValueError,
     r"expected b of shape \(4,\)"),
    ("bias length functional", lambda: F.conv2d(_x(), W, np.zeros(5)), ValueError,
     r"expected b of shape \(4,\)"),
    ("bias 2-D", lambda: F.conv2d(_x(), W, np.zeros((4, 1))), ValueError,
     r"expected b of shape \(4,\)"),
    ("W empty dim", lambda: Convolution(np.zeros((0, 3, 3, 3)), np.zeros(0)), ValueError,
     r"W"),
    ("col2im col shape", lambda: pyconv.col2im(np.zeros((9, 5)), (1, 1, 5, 5), 3, 3),
     ValueError, r"expected col of shape \(9, 9\)"),
    ("gemm k mismatch", lambda: F.gemm(np.zeros((3, 4)), np.zeros((5, 6))), ValueError,
     r"op\(a\)\.shape\[1\] == op\(b\)\.shape\[0\]"),
    ("gemm k mismatch transposed", lambda: F.gemm(np.zeros((3, 4)), np.zeros((4, 6)),
                                                  trans_a=True), ValueError,
     r"op\(a\) of shape \(4, 3\)"),
    ("gemm out shape", lambda: F.gemm(np.zeros((3, 4)), np.zeros((4, 6)), out=np.zeros((3, 5))),
     ValueError, r"expected out of shape \(3, 6\)"),
    ("gemm out dtype", lambda: F.gemm(np.zeros((3, 4)), np.zeros((4, 6)),
                                      out=np.zeros((3, 6), np.float32)), TypeError, r"out"),
    ("gemm out not contiguous", lambda: F.gemm(np.zeros((3, 4)), np.zeros((4, 6)),
                                               out=np.zeros((6, 3)).T), TypeError, r"out"),
    ("gemm out overlaps a", lambda: (lambda a: F.gemm(a[:, :3], np.eye(3), out=a))(
        np.zeros((3, 3))), (ValueError, TypeError), r"out"),
    ("gemm out read-only", lambda: (lambda o: (o.setflags(write=False), F.gemm(
        np.zeros((3, 4)), np.zeros((4, 6)), out=o)))(np.zeros((3, 6))), ValueError,
     r"out is read-only"),
    ("core gemm out overlaps a", lambda: (lambda a: _core.gemm(a, np.eye(3), False, False,
                                                               1.0, 0.0, a))(np.zeros((3, 3))),
     ValueError, r"out must not overlap"),
    ("core gemm out read-only", lambda: _core.gemm(
        np.zeros((2, 2)), np.zeros((2, 2)), False, False, 1.0, 0.0,
        np.broadcast_to(np.zeros(2), (2, 2))), (ValueError, TypeError), r"(?i)out|incompatible"),
    # ---- kernel larger than the (padded) input -------------------------------------
    ("kernel > input", lambda: _conv(k=5).forward(_x((1, 3, 4, 4))), ValueError,
     r"kernel \(5, 5\) is larger than the padded input \(4, 4\)"),
    ("kernel > padded input", lambda: _conv(k=7, pad=1).forward(_x((1, 3, 4, 4))), ValueError,
     r"kernel \(7, 7\) is larger than the padded input \(6, 6\)"),
    ("im2col filter > input", lambda: pyconv.im2col(_x((1, 1, 3, 3)), 4, 2), ValueError,
     r"larger than the padded input"),
    ("pool window > input", lambda: Pooling(3, 3).forward(_x((1, 1, 2, 2))), ValueError,
     r"pool window \(3, 3\) is larger than the padded input"),
    ("zero height", lambda: F.conv2d(_x((1, 3, 0, 5)), W, B), ValueError, r"H >= 1"),
    ("zero width pool", lambda: F.max_pool2d(_x((1, 3, 4, 0)), 2, 2), ValueError, r"W >= 1"),
    # ---- stride / pad / pool size --------------------------------------------------
    ("conv stride 0", lambda: _conv(stride=0), ValueError, r"stride: expected an integer >= 1"),
    ("conv stride -2", lambda: F.conv2d(_x(), W, B, stride=-2), ValueError,
     r"expected stride >= 1"),
    ("conv pad -1", lambda: _conv(pad=-1), ValueError, r"pad: expected an integer >= 0"),
    ("functional pad -1", lambda: F.conv2d(_x(), W, B, pad=-1), ValueError,
     r"expected pad >= 0"),
    ("im2col stride 0", lambda: pyconv.im2col(_x(), 2, 2, stride=0), ValueError,
     r"expected stride >= 1"),
    ("im2col filter 0", lambda: pyconv.im2col(_x(), 0, 2), ValueError, r"filter_h >= 1"),
    ("pool stride 0", lambda: Pooling(2, 2, stride=0), ValueError, r"stride"),
    ("pool pad > size//2", lambda: Pooling(2, 2, pad=2), ValueError,
     r"pad <= min\(pool_h, pool_w\) // 2 \(1\)"),
    ("pool pad > min size//2", lambda: Pooling(4, 2, pad=2), ValueError,
     r"pad <= min\(pool_h, pool_w\) // 2 \(1\)"),
    ("functional pool pad", lambda: F.max_pool2d(_x(), 3, 3, pad=2), ValueError,
     r"pad <= min\(pool_h, pool_w\) // 2"),
    ("pool pad -1", lambda: Pooling(2, 2, pad=-1), ValueError, r"pad"),
    ("pool size 0", lambda: Pooling(0, 2), ValueError, r"pool_h: expected an integer >= 1"),
    ("pool width 0", lambda: Pooling(2, 0), ValueError, r"pool_w: expected an integer >= 1"),
    ("functional pool size 0", lambda: F.max_pool2d(_x(), 2, 0), ValueError, r"pool_w >= 1"),
    ("float stride", lambda: _conv(stride=1.5), TypeError, r"stride"),
    ("bool pad", lambda: Pooling(2, 2, pad=True), TypeError, r"pad"),
    ("string pool size", lambda: F.max_pool2d(_x(), "2", 2), TypeError, r"pool_h"),
    # ---- dtypes --------------------------------------------------------------------
    ("complex x conv", lambda: _conv().forward(_x(dtype=np.complex128)), TypeError,
     r"x: expected a real-valued"),
    ("object x conv", lambda: _conv().forward(_x(dtype=object)), TypeError, r"x: expected a real"),
    ("string x conv", lambda: _conv().forward(np.full((2, 3, 5, 5), "a")), TypeError,
     r"x: expected a real"),
    ("complex W layer", lambda: Convolution(W.astype(np.complex64), B), TypeError,
     r"W of dtype float32 or float64"),
    ("int W layer", lambda: Convolution(W.astype(np.int32), B), TypeError, r"W of dtype"),
    ("b dtype differs", lambda: Convolution(W, B.astype(np.float32)), TypeError,
     r"b of dtype float64"),
    ("W not an array", lambda: Convolution(W.tolist(), B), TypeError, r"W to be a numpy"),
    ("complex W functional", lambda: F.conv2d(_x(), W.astype(np.complex128), B), TypeError,
     r"W: expected a real"),
    ("complex dout", lambda: _conv_forwarded().backward(
        np.zeros((2, 4, 5, 5), dtype=np.complex128)), TypeError, r"dout: expected a real"),
    ("complex x pool", lambda: Pooling(2, 2).forward(_x(dtype=np.complex64)), TypeError,
     r"x: expected a real"),
    ("object x pool", lambda: Pooling(2, 2).forward(_x(dtype=object)), TypeError, r"x"),
    ("string x pool", lambda: F.max_pool2d(np.full((1, 1, 4, 4), "b"), 2, 2), TypeError, r"x"),
    ("string im2col", lambda: pyconv.im2col(np.full((1, 1, 4, 4), "b"), 2, 2), TypeError,
     r"input_data"),
    ("complex col2im", lambda: pyconv.col2im(np.zeros((4, 4), np.complex128), (1, 1, 3, 3), 2, 2),
     TypeError, r"col"),
    ("complex gemm a", lambda: F.gemm(np.zeros((2, 2), np.complex128), np.zeros((2, 2))),
     TypeError, r"a: expected a real"),
    ("object gemm b", lambda: F.gemm(np.zeros((2, 2)), np.zeros((2, 2), dtype=object)),
     TypeError, r"b: expected a real"),
    ("argmax dtype", lambda: F.max_pool2d_backward(np.zeros((1, 1, 2, 2)),
                                                   np.zeros((1, 1, 2, 2), np.int32),
                                                   (1, 1, 4, 4)), TypeError, r"argmax"),
    ("core int input", lambda: _core.conv2d_forward(_x(dtype=np.int64), W, B, 1, 0), TypeError,
     r"incompatible function arguments"),
    ("core mixed dtypes", lambda: _core.conv2d_forward(_x(dtype=np.float32), W, B, 1, 0),
     TypeError, r"incompatible function arguments"),
    ("core non-contiguous", lambda: _core.max_pool2d_forward(_x((1, 1, 8, 8))[..., ::2], 2, 2,
                                                             2, 0), TypeError,
     r"incompatible function arguments"),
    # ---- call order and dout shape -------------------------------------------------
    ("conv backward before forward", lambda: _conv().backward(np.zeros((2, 4, 3, 3))),
     ValueError, r"Convolution\.backward: called before forward"),
    ("pool backward before forward", lambda: Pooling(2, 2).backward(np.zeros((2, 3, 2, 2))),
     ValueError, r"Pooling\.backward: called before forward"),
    ("conv dout shape", lambda: _conv_forwarded().backward(np.zeros((2, 4, 3, 3))), ValueError,
     r"expected dout of shape \(2, 4, 5, 5\).*got \(2, 4, 3, 3\)"),
    ("pool dout shape", lambda: _pool_forwarded().backward(np.zeros((2, 3, 2, 3))), ValueError,
     r"expected dout of shape \(2, 3, 2, 2\)"),
    ("functional dout shape", lambda: F.conv2d_backward(np.zeros((2, 4, 4, 4)), _x(), W),
     ValueError, r"expected dout of shape \(2, 4, 3, 3\)"),
    ("pool argmax shape", lambda: F.max_pool2d_backward(
        np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 3), np.int64), (1, 1, 4, 4)),
     ValueError, r"argmax"),
    ("pool argmax out of range", lambda: F.max_pool2d_backward(
        np.zeros((1, 1, 1, 2)), np.array([[[[0, 16]]]]), (1, 1, 4, 4)),
     ValueError, r"argmax\[1\] = 16 is outside"),
    ("pool argmax negative", lambda: F.max_pool2d_backward(
        np.zeros((1, 1, 1, 1)), np.array([[[[-1]]]]), (1, 1, 4, 4)),
     ValueError, r"argmax\[0\] = -1"),
    ("pool window argmax too large", lambda: _core.max_pool2d_backward_window(
        np.zeros((1, 1, 1, 2)), np.array([[[[3, 4]]]], np.uint8), 2, 4, 2, 2, 2, 0),
     ValueError, r"argmax\[1\] = 4 is outside the window of 4 elements"),
    ("pool window argmax shape", lambda: _core.max_pool2d_backward_window(
        np.zeros((1, 1, 1, 2)), np.zeros((1, 1, 2, 1), np.uint8), 2, 4, 2, 2, 2, 0),
     ValueError, r"expected argmax of the shape of dout"),
    ("pool window dout shape", lambda: _core.max_pool2d_backward_window(
        np.zeros((1, 1, 1, 3)), np.zeros((1, 1, 1, 3), np.uint8), 2, 4, 2, 2, 2, 0),
     ValueError, r"expected dout of shape \(1, 1, 1, 2\)"),
    ("pool window too large for bytes", lambda: _core.max_pool2d_forward_window(
        np.zeros((1, 1, 20, 20)), 17, 16, 1, 0),
     ValueError, r"at most 256 elements"),
    ("pool x_shape length", lambda: F.max_pool2d_backward(
        np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1, 1), np.int64), (4, 4)),
     ValueError, r"x_shape"),
    # ---- int64 overflow (declared sizes; no huge array is ever allocated) ----------
    ("col2im N*C*H*W overflow", lambda: _core.col2im(np.zeros((1, 1)), HUGE, HUGE, 4, 4, 2, 2,
                                                     1, 0), ValueError, r"col2im.*overflows"),
    ("col2im H*W overflow", lambda: _core.col2im(np.zeros((1, 1)), 1, 1, 2**32, 2**32, 1, 1,
                                                 1, 0), ValueError, r"overflows int64"),
    ("im2col 2*pad overflow", lambda: pyconv.im2col(_x((1, 1, 3, 3)), 2, 2, 1, 2**62),
     ValueError, r"pad overflows int64"),
    ("conv H + 2*pad overflow", lambda: F.conv2d(_x(), W, B, pad=2**62 - 1), ValueError,
     r"overflows int64"),
    ("pool backward H*W overflow", lambda: _core.max_pool2d_backward(
        np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1, 1), np.int64), HUGE, HUGE),
     ValueError, r"H \* W overflows int64"),
    ("pad beyond int64", lambda: F.conv2d(_x(), W, B, pad=2**70), TypeError,
     r"incompatible function arguments"),
    ("gemm m*n overflow", lambda: _core.gemm(np.zeros((2**40, 0)), np.zeros((0, 2**40)), False,
                                             False, 1.0, 0.0, None),
     ValueError, r"overflow|too big"),
    # ---- threads -------------------------------------------------------------------
    ("set_num_threads 0", lambda: pyconv.set_num_threads(0), ValueError,
     r"set_num_threads: expected 1 <= n <= 1024, but got 0"),
    ("set_num_threads -3", lambda: pyconv.set_num_threads(-3), ValueError, r"1 <= n <= 1024"),
    ("core set_num_threads 0", lambda: _core.set_num_threads(0), ValueError, r"1 <= n <= 1024"),
    ("set_num_threads huge", lambda: pyconv.set_num_threads(100_000), ValueError,
     r"1 <= n <= 1024, but got 100000"),
    ("core set_num_threads huge", lambda: _core.set_num_threads(2**31 - 1), ValueError,
     r"1 <= n <= 1024"),
    ("set_num_threads float", lambda: pyconv.set_num_threads(2.5), TypeError, r"n"),
    ("set_isa unknown", lambda: _core.set_isa("sse1"), ValueError, r"'sse1' is not available"),
]


@pytest.mark.parametrize(("call", "exc", "match"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input(call, exc, match):
    threads = pyconv.get_num_threads()
    try:
        with pytest.raises(exc, match=match):
            call()
    finally:
        assert pyconv.get_num_threads() == threads


def test_failed_calls_leave_layers_usable():
    conv = _conv(pad=1)
    with pytest.raises(ValueError):
        conv.forward(_x((2, 2, 5, 5)))
    y = conv.forward(_x())
    assert y.shape == (2, 4, 5, 5)
    with pytest.raises(ValueError):
        conv.backward(np.zeros((1, 4, 5, 5)))
    assert conv.backward(np.zeros(y.shape)).shape == (2, 3, 5, 5)
