"""Convolution (layer and functional) against the float64 oracle, known
answers from the chapter, gradient checks and the layer contract."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from helpers import (
    DTYPES,
    EDGE_CONV_CASES,
    ConvCase,
    assert_close,
    assert_directional,
    assert_gradient,
    conv_cases,
    isa_settings,
)
from hypothesis import given
from hypothesis import strategies as st

import pyconv
import pyconv.functional as F
from pyconv import _core
from pyconv.layers import Convolution

# ---- known answers ------------------------------------------------------------

# The chapter's example (Fig. 7-3/7-4): input (4, 4), filter (3, 3), stride 1.
BOOK_X = np.array([[1, 2, 3, 0], [0, 1, 2, 3], [3, 0, 1, 2], [2, 3, 0, 1]], dtype=np.float64)
BOOK_W = np.array([[2, 0, 1], [0, 1, 2], [1, 0, 2]], dtype=np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_book_example(dtype):
    #   1 2 3 0                       15 16
    #   0 1 2 3   (*)  2 0 1    ->     6 15      (+ bias 3 ->  18 19
    #   3 0 1 2        0 1 2                                    9 18)
    #   2 3 0 1        1 0 2
    x = BOOK_X.astype(dtype).reshape(1, 1, 4, 4)
    W = BOOK_W.astype(dtype).reshape(1, 1, 3, 3)
    y0 = Convolution(W, np.zeros(1, dtype=dtype)).forward(x)
    assert y0.dtype == dtype
    np.testing.assert_array_equal(y0[0, 0], [[15, 16], [6, 15]])
    y3 = F.conv2d(x, W, np.full(1, 3, dtype=dtype))
    assert y3.shape == (1, 1, 2, 2) and y3.dtype == dtype
    np.testing.assert_array_equal(y3[0, 0], [[18, 19], [9, 18]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_book_padding_example(dtype):
    # Fig. 7-6: the same input zero-padded by 1 keeps its (4, 4) size:
    #    7 12 10  2
    #    4 15 16 10
    #   10  6 15  6
    #    8 10  4  3
    x = BOOK_X.astype(dtype).reshape(1, 1, 4, 4)
    W = BOOK_W.astype(dtype).reshape(1, 1, 3, 3)
    y = Convolution(W, np.zeros(1, dtype=dtype), stride=1, pad=1).forward(x)
    expected = [[7, 12, 10, 2], [4, 15, 16, 10], [10, 6, 15, 6], [8, 10, 4, 3]]
    assert y.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(y[0, 0], expected)
    np.testing.assert_array_equal(ref.conv2d_forward(x, W, np.zeros(1), 1, 1)[0, 0], expected)


def test_book_stride_example():
    # Fig. 7-7: a (7, 7) input with a (3, 3) filter and stride 2 gives (3, 3).
    x = np.arange(49, dtype=np.float64).reshape(1, 1, 7, 7)
    W = np.ones((1, 1, 3, 3))
    y = F.conv2d(x, W, np.zeros(1), stride=2)
    assert y.shape == (1, 1, 3, 3)
    # Each output is the sum of a 3x3 block whose centre is at (2a+1, 2b+1).
    centres = x[0, 0, 1::2, 1::2][:3, :3]
    np.testing.assert_array_equal(y[0, 0], 9 * centres)


# ---- against the oracle ----------------------------------------------------------


def _check_conv(case: ConvCase, dtype, seed: int, *, layer: bool = True) -> None:
    """Forward and backward of one case vs the oracle, with rounding-aware
    tolerances (scale = the same sums over absolute values)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape).astype(dtype)
    W = rng.standard_normal(case.w_shape).astype(dtype)
    b = rng.standard_normal(case.fn).astype(dtype)
    s, p = case.stride, case.pad
    oh, ow = case.out_hw
    dout = rng.standard_normal((case.n, case.fn, oh, ow)).astype(dtype)
    dout_copy = dout.copy()

    if layer:
        conv = Convolution(W, b, stride=s, pad=p)
        y = conv.forward(x)
        dx = conv.backward(dout)
        dW, db = conv.dW, conv.db
    else:
        y = F.conv2d(x, W, b, stride=s, pad=p)
        dx, dW, db = F.conv2d_backward(dout, x, W, stride=s, pad=p)

    y_ref = ref.conv2d_forward(x, W, b, s, p)
    y_mag = ref.conv2d_forward(np.abs(x), np.abs(W), np.abs(b), s, p)
    assert_close(y, y_ref, dtype=dtype, name=f"forward {case} {dtype.__name__}", scale=y_mag)

    dx_ref, dW_ref, db_ref = ref.conv2d_backward(dout, x, W, s, p)
    dx_mag, dW_mag, db_mag = ref.conv2d_backward(np.abs(dout), np.abs(x), np.abs(W), s, p)
    name = f"{case} {dtype.__name__}"
    assert_close(dx, dx_ref, dtype=dtype, name=f"dx {name}", scale=dx_mag)
    assert_close(dW, dW_ref, dtype=dtype, name=f"dW {name}", scale=dW_mag)
    assert_close(db, db_ref, dtype=dtype, name=f"db {name}", scale=db_mag)
    np.testing.assert_array_equal(dout, dout_copy, err_msg="backward mutated dout")


@pytest.mark.parametrize("dtype", DTYPES)
@isa_settings
@given(case=conv_cases(), seed=st.integers(0, 2**32 - 1))
def test_layer_matches_oracle(isa, dtype, case, seed):
    _check_conv(case, dtype, seed, layer=True)


# Rows of several vectors (up to 40 pixels: 3 float32 / 5 float64 vectors), where
# the AVX-512 im2col copies, col2im and micro-kernel edges take their whole-
# vector and masked paths together; conv_cases' default images fit one vector.
@pytest.mark.parametrize("dtype", DTYPES)
@isa_settings
@given(case=conv_cases(max_n=2, max_c=3, max_hw=40, max_k=5, max_fn=5),
       seed=st.integers(0, 2**32 - 1))
def test_wide_rows_match_oracle(isa, dtype, case, seed):
    _check_conv(case, dtype, seed, layer=True)


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=conv_cases(max_n=5, max_c=4, max_hw=10, max_k=5, max_fn=6),
       seed=st.integers(0, 2**32 - 1))
def test_functional_matches_oracle(dtype, case, seed):
    _check_conv(case, dtype, seed, layer=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", EDGE_CONV_CASES, ids=str)
def test_edge_cases(isa, case, dtype):
    _check_conv(case, dtype, seed=12345, layer=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_larger_shapes(isa, dtype):
    # Big enough for several GEMM blocks per image (k = C*FH*FW = 150 > MR/NR,
    # cols = 24*24 = 576), the SimpleConvNet first layer's shape.
    for case in (ConvCase(3, 6, 28, 28, 30, 5, 5, 1, 2), ConvCase(1, 16, 12, 12, 20, 3, 3, 2, 1)):
        _check_conv(case, dtype, seed=7, layer=True)


# ---- the code paths a shape takes (conv2d_plan names them) ---------------------


def _plan(case: ConvCase, dtype, nthreads: int = 1, backward: bool = True) -> dict:
    return _core.conv2d_plan(np.dtype(dtype).name, case.n, case.c, case.h, case.w, case.fn,
                             case.fh, case.fw, case.stride, case.pad, backward, nthreads)


# Stride 1, pad <= K - 1, square kernel, >= 16 channels: dx is computed as the
# convolution of dout with the flipped kernel (no column matrix, no col2im).
DX_CONV_CASES = [
    ConvCase(2, 16, 7, 9, 5, 3, 3, 1, 1),
    ConvCase(3, 17, 6, 5, 4, 3, 3, 1, 0),
    ConvCase(2, 16, 8, 8, 7, 5, 5, 1, 4),  # pad == K - 1
    ConvCase(1, 20, 5, 6, 3, 2, 2, 1, 1),  # even kernel
    ConvCase(4, 24, 4, 4, 70, 3, 3, 1, 2),  # F = 70 > one 64-wide panel of dout's rows
    ConvCase(2, 16, 6, 7, 20, 3, 3, 1, 1),  # F = 20: dW on the narrow float32 kernel
    ConvCase(2, 17, 9, 5, 10, 3, 3, 1, 1),  # F = 10: dW on the narrow float64 kernel
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DX_CONV_CASES, ids=str)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_dx_as_convolution(isa, case, dtype, nthreads, restore_threads):
    plan = _plan(case, dtype, nthreads)
    assert plan["padded"] and plan["dx_conv"], plan
    pyconv.set_num_threads(nthreads)
    _check_conv(case, dtype, seed=11, layer=True)


# The direct kernels on AVX-512 and AVX2 (vectors along filters, inputs
# broadcast from the padded image): the forward of layers with >= 256 taps
# (C*KH*KW), dx_conv's convolution of dout when F*KH*KW >= 256 too (the second
# field), and every padded layer's weight gradient (tiles of 6 taps, 3 on
# AVX2); on AVX2 in float32 only. The cases reach their edges on both ISAs:
# filters past the last whole panel (64 or 32 float32 filters a panel; 1-4
# vectors, partial last vector), tiles of pixels spanning output rows, partial
# last tiles of pixels and of taps, a single output pixel, stride 2, an even
# and a non-square kernel, sums over 512 (AVX2) or 1024 taps or pixels (in
# blocks, the accumulators carried from block to block), more tiles than a
# group of 16 (a partial last group), and N = 1, where 2 threads split one
# image's tiles.
DIRECT_CASES = [
    (ConvCase(2, 2, 40, 30, 5, 3, 3, 1, 1), False),  # 1200 pixels: dW's sum in 2 blocks
    (ConvCase(2, 32, 7, 9, 70, 3, 3, 1, 1), True),  # F = 64 + 6; 63 pixels, 7 a row
    (ConvCase(3, 48, 6, 5, 40, 3, 3, 2, 1), False),  # stride 2; F = 40: 3 vectors
    (ConvCase(1, 120, 5, 5, 33, 3, 3, 1, 1), True),  # 1080 taps: 2 blocks; dx F' = 64 + 56
    (ConvCase(2, 30, 1, 1, 17, 3, 3, 1, 1), False),  # one output pixel
    (ConvCase(1, 64, 4, 4, 130, 3, 3, 1, 2), True),  # F = 2 x 64 + 2; dx: 1170 taps
    (ConvCase(2, 70, 5, 6, 9, 2, 2, 1, 1), False),  # even kernel
    (ConvCase(2, 40, 6, 7, 20, 3, 5, 1, 2), False),  # KH != KW: dx by col2im
    (ConvCase(2, 16, 8, 8, 7, 5, 5, 1, 4), False),  # pad = K - 1: tiles read the border
    # 1080 taps in blocks; 100 pixels: 17 or 34 tiles, groups of 16 and a partial one
    (ConvCase(1, 120, 10, 10, 20, 3, 3, 1, 1), False),
    # The forward's plan (tiles skip the taps on the padding): two border rows
    # and columns a side around a 5 x 7 interior, tiles across classes; dx's
    # plan too (pad 2 again)
    (ConvCase(2, 16, 9, 11, 12, 5, 5, 1, 2), True),
    (ConvCase(2, 32, 9, 8, 10, 3, 3, 2, 1), False),  # stride 2: one border row and column a side
    (ConvCase(1, 16, 3, 2, 7, 5, 5, 1, 2), False),  # no interior row or column
    (ConvCase(1, 16, 6, 6, 5, 5, 5, 1, 3), False),  # pad 3: corner windows of 4 taps
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("case", "dx_direct"), DIRECT_CASES, ids=str)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_direct_convolution(isa, case, dx_direct, dtype, nthreads, restore_threads):
    forward = _plan(case, dtype, nthreads, backward=False)
    backward = _plan(case, dtype, nthreads)
    direct = isa == "avx512" or (isa == "avx2" and np.dtype(dtype) == np.float32)
    assert forward["fwd_direct"] == (direct and case.c * case.fh * case.fw >= 256), forward
    assert backward["dx_direct"] == (direct and dx_direct), backward
    # The weight gradient: the direct tiles, or on AVX-512 the dot products
    # where they apply (test_weight_gradient_as_dot_products), never both.
    assert (backward["dw_direct"] or backward["dw_dot"]) == direct, backward
    assert not (backward["dw_direct"] and backward["dw_dot"]), backward
    pyconv.set_num_threads(nthreads)
    _check_conv(case, dtype, seed=17, layer=True)


# The direct forward's plan skips the taps that fall on the padding (tiles of
# pixels that meet it alike, each running a table of its valid taps in tap
# order), and the direct weight gradient's plan the pixels where its taps fall
# on it (tiles of taps in (kh, kw, c) order, each summing over a table of its
# valid pixels in pixel order). Every output and every dW element is then the
# same chain of FMAs as on the same input padded beforehand (pad 0: no plan,
# every tap and pixel), minus products with zeros, which change no sum: equal
# bit for bit, on every path. dx's plan is checked against the oracle in
# test_direct_convolution.
PLAN_CASES = [
    ConvCase(2, 16, 9, 11, 12, 5, 5, 1, 2),  # two border rows and columns a side
    ConvCase(2, 32, 9, 8, 70, 3, 3, 2, 1),  # stride 2; F = 64 + 6
    ConvCase(1, 16, 3, 2, 7, 5, 5, 1, 2),  # no interior row or column
    ConvCase(1, 120, 10, 10, 20, 3, 3, 1, 1),  # 1080 taps: the sum in blocks
    ConvCase(1, 16, 3, 3, 4, 5, 5, 1, 6),  # pad > K: windows wholly on the padding (bias only)
    ConvCase(2, 4, 70, 70, 8, 3, 3, 2, 1),  # dW's sum over 1225 pixels in blocks
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PLAN_CASES, ids=str)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_padding_skipped_bit_for_bit(isa, case, dtype, nthreads, restore_threads):
    _check_padding_skipped(isa, case, dtype, nthreads)


# The same for drawn shapes: channels around a tile's 6 (3 on AVX2) taps,
# kernels and pads that leave few or no interior rows, strides past the kernel.
@pytest.mark.parametrize("dtype", DTYPES)
@isa_settings
@given(case=conv_cases(min_n=1, max_n=2, max_c=20, max_hw=12, max_k=5, max_fn=70))
def test_padding_skipped_bit_for_bit_drawn(isa, case, dtype, restore_threads):
    _check_padding_skipped(isa, case, dtype, 1, fixed=False)


def _check_padding_skipped(isa, case, dtype, nthreads, fixed=True):
    pyconv.set_num_threads(nthreads)
    rng = np.random.default_rng(29)
    x = rng.standard_normal((case.n, case.c, case.h, case.w)).astype(dtype)
    w = rng.standard_normal((case.fn, case.c, case.fh, case.fw)).astype(dtype)
    b = rng.standard_normal(case.fn).astype(dtype)
    p = case.pad
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    y = F.conv2d(x, w, b, stride=case.stride, pad=p)
    np.testing.assert_array_equal(y, F.conv2d(xp, w, b, stride=case.stride, pad=0))
    # The weight gradient, where both take the same path (the direct tiles
    # unless the dot products apply to one of them).
    prepadded = ConvCase(case.n, case.c, case.h + 2 * p, case.w + 2 * p, case.fn, case.fh,
                         case.fw, case.stride, 0)
    plans = _plan(case, dtype, nthreads), _plan(prepadded, dtype, nthreads)
    if plans[0]["dw_dot"] or plans[1]["dw_dot"]:
        assert case.stride == 1, plans
        return
    if fixed:
        direct = isa == "avx512" or (isa == "avx2" and np.dtype(dtype) == np.float32)
        assert plans[0]["dw_direct"] == plans[1]["dw_direct"] == direct, plans
    elif plans[0]["dw_direct"] != plans[1]["dw_direct"]:
        # A 1x1 kernel at stride 1: the pre-padded layer is a plain GEMM.
        assert (case.fh, case.fw, case.stride) == (1, 1, 1), plans
        return
    dy = rng.standard_normal(y.shape).astype(dtype)
    _, dw, db = F.conv2d_backward(dy, x, w, stride=case.stride, pad=p, need_dx=False)
    _, dw0, db0 = F.conv2d_backward(dy, xp, w, stride=case.stride, pad=0, need_dx=False)
    np.testing.assert_array_equal(dw, dw0)
    np.testing.assert_array_equal(db, db0)


# The weight gradient as dot products over the pixels (AVX-512, stride 1,
# output rows of at least one vector less a lane, where its cost model puts it
# ahead of the direct tiles): vectors of pixels spanning two output rows (a
# masked load from each, merged), rows of exactly L - 1 pixels (a vector from
# a row's last pixel takes all of the next row), rows of whole vectors, a last
# vector with lanes to spare, filters and taps past whole 5 x 5 blocks (equal
# splits: 7 = 4 + 3, 64 = 4 x 4 + 12 x 4...), the sum over the batch added
# image by image, and N = 1 on 2 threads, where the threads split the blocks.
DW_DOT_CASES = [
    ConvCase(3, 1, 28, 28, 30, 5, 5, 1, 0),  # MNIST's first layer: 24-pixel rows
    ConvCase(2, 3, 17, 20, 7, 3, 3, 1, 1),  # 20-pixel rows; 340 pixels: a partial last vector
    ConvCase(1, 2, 9, 17, 6, 3, 3, 1, 0),  # 15-pixel rows: float32's L - 1
    ConvCase(1, 4, 12, 16, 11, 3, 3, 1, 1),  # 16-pixel rows: whole vectors; 36 taps
    ConvCase(1, 3, 10, 34, 64, 3, 3, 1, 1),  # b's filters and taps; 34-pixel rows
    ConvCase(2, 2, 11, 9, 3, 2, 2, 1, 0),  # float64 only (8-pixel rows: L = 8)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DW_DOT_CASES, ids=str)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_weight_gradient_as_dot_products(isa, case, dtype, nthreads, restore_threads):
    plan = _plan(case, dtype, nthreads)
    lanes = 64 // np.dtype(dtype).itemsize
    assert plan["dw_dot"] == (isa == "avx512" and case.out_hw[1] >= lanes - 1), plan
    assert not (plan["dw_dot"] and plan["dw_direct"]), plan
    pyconv.set_num_threads(nthreads)
    _check_conv(case, dtype, seed=19, layer=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_gradient_dot_products_only_where_they_apply(dtype):
    # Stride 2 reads every other pixel of a window (not contiguous), and rows
    # of fewer than L - 1 pixels would put a vector across three rows; a
    # layer with many taps and filters (c's) keeps the direct tiles, which its
    # cost model puts ahead there.
    for case in (ConvCase(2, 3, 20, 40, 8, 3, 3, 2, 1), ConvCase(1, 2, 9, 8, 6, 3, 3, 1, 0),
                 ConvCase(1, 64, 56, 56, 64, 3, 3, 1, 1)):
        assert not _plan(case, dtype)["dw_dot"], case


# Where the convolution of dout does not apply, dx goes through col2im. At
# stride 1 AVX-512's col2im gathers each vector of a dx row from its taps'
# segments (masked loads; an expand-load where a tap's segment starts left of
# the vector): rows of several vectors, partial last vectors, taps reaching
# past either end of a row.
DX_COL2IM_CASES = [
    ConvCase(2, 3, 7, 7, 4, 3, 3, 1, 1),  # C < 16: too few rows for the micro-kernel
    ConvCase(2, 16, 7, 7, 4, 3, 3, 2, 1),  # stride 2
    ConvCase(2, 16, 7, 7, 4, 3, 2, 1, 1),  # KH != KW: the two flipped pads differ
    ConvCase(2, 16, 7, 7, 4, 3, 3, 1, 3),  # pad > K - 1
    ConvCase(2, 1, 28, 28, 6, 5, 5, 1, 0),  # MNIST's first layer: 2 float32 vectors a row
    ConvCase(2, 3, 9, 37, 4, 3, 3, 1, 1),  # 3 vectors, the last partial
    ConvCase(1, 2, 5, 33, 3, 2, 7, 1, 3),  # KW = 7 > pad: the expand-load
    ConvCase(2, 2, 6, 20, 3, 5, 5, 1, 4),  # pad = K - 1
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DX_COL2IM_CASES, ids=str)
def test_dx_by_col2im_where_convolution_does_not_apply(isa, case, dtype):
    plan = _plan(case, dtype)
    assert plan["padded"] and not plan["dx_conv"], plan
    _check_conv(case, dtype, seed=13, layer=True)


@pytest.mark.parametrize("case", [
    ConvCase(1, 1, 2050, 2050, 2, 3, 3, 1, 1),
    ConvCase(1, 1, 2050, 2050, 2, 3, 3, 2, 1),
], ids=str)
def test_large_image_without_padded_copy(case):
    # A padded copy of the image over 16 MiB (2052^2 float32) is not made: the
    # packer then bounds every row segment itself, and dx goes through col2im.
    plan = _plan(case, np.float32)
    assert not plan["padded"] and not plan["dx_conv"], plan
    _check_conv(case, np.float32, seed=5, layer=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_pad_without_padded_copy(isa, dtype):
    # The same fallback on every code path, cheaply: a 2204 x 2205 padded copy
    # (38 MiB) for a 4 x 5 image, read at stride 64 (35 x 35 outputs).
    case = ConvCase(2, 2, 4, 5, 3, 3, 3, 64, 1100)
    plan = _plan(case, dtype)
    assert not plan["padded"] and not plan["dx_conv"], plan
    _check_conv(case, dtype, seed=9, layer=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype):
    W = np.ones((4, 3, 3, 3), dtype=dtype)
    conv = Convolution(W, np.zeros(4, dtype=dtype), pad=1)
    y = conv.forward(np.zeros((0, 3, 5, 5), dtype=dtype))
    assert y.shape == (0, 4, 5, 5) and y.dtype == dtype
    dx = conv.backward(np.zeros((0, 4, 5, 5), dtype=dtype))
    assert dx.shape == (0, 3, 5, 5) and dx.dtype == dtype
    np.testing.assert_array_equal(conv.dW, np.zeros_like(W))
    np.testing.assert_array_equal(conv.db, np.zeros(4))
    assert conv.dW.dtype == dtype and conv.db.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_without_dx(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    W = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    dout = rng.standard_normal((2, 4, 3, 3)).astype(dtype)
    dx, dW, db = F.conv2d_backward(dout, x, W, stride=2, pad=1, need_dx=False)
    assert dx is None
    _, dW_ref, db_ref = ref.conv2d_backward(dout, x, W, 2, 1)
    _, dW_mag, db_mag = ref.conv2d_backward(np.abs(dout), np.abs(x), np.abs(W), 2, 1)
    assert_close(dW, dW_ref, dtype=dtype, name="dW need_dx=False", scale=dW_mag)
    assert_close(db, db_ref, dtype=dtype, name="db need_dx=False", scale=db_mag)


# ---- gradient checks (float64, central differences) ----------------------------

GRAD_CASES = [
    ConvCase(2, 2, 5, 5, 3, 3, 3, 1, 0),
    ConvCase(2, 3, 6, 5, 2, 3, 2, 2, 1),
    ConvCase(3, 1, 4, 4, 2, 2, 2, 1, 1),
    ConvCase(1, 2, 3, 3, 2, 1, 1, 1, 0),
    ConvCase(2, 2, 7, 7, 2, 3, 3, 3, 2),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_gradcheck(case):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(case.x_shape)
    W = rng.standard_normal(case.w_shape)
    b = rng.standard_normal(case.fn)
    conv = Convolution(W, b, stride=case.stride, pad=case.pad)
    oh, ow = case.out_hw
    proj = rng.standard_normal((case.n, case.fn, oh, ow))  # loss = <conv(x), proj>

    def loss() -> float:
        return float(np.sum(conv.forward(x) * proj))

    conv.forward(x)
    dx = conv.backward(proj)
    dW, db = conv.dW.copy(), conv.db.copy()
    # W and b are held by reference, so perturbing them in place is seen.
    assert_gradient(dx, loss, x, name=f"dx {case}")
    assert_gradient(dW, loss, W, name=f"dW {case}")
    assert_gradient(db, loss, b, name=f"db {case}")


@given(case=conv_cases(min_n=1, max_n=3), seed=st.integers(0, 2**32 - 1))
def test_directional_gradient(case, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape)
    W = rng.standard_normal(case.w_shape)
    b = rng.standard_normal(case.fn)
    conv = Convolution(W, b, stride=case.stride, pad=case.pad)
    oh, ow = case.out_hw
    proj = rng.standard_normal((case.n, case.fn, oh, ow))

    def loss() -> float:
        return float(np.sum(conv.forward(x) * proj))

    conv.forward(x)
    dx = conv.backward(proj)
    dW, db = conv.dW.copy(), conv.db.copy()
    assert_directional(dx, loss, x, rng, name=f"dx {case}")
    assert_directional(dW, loss, W, rng, name=f"dW {case}")
    assert_directional(db, loss, b, rng, name=f"db {case}")


# ---- layer contract ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_parameters_held_by_reference(dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 5, 5)).astype(dtype)
    W = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    conv = Convolution(W, b, pad=1)
    assert conv.W is W and conv.b is b
    conv.forward(x)
    W -= 0.5 * W  # an optimizer's in-place update
    b += 1.0
    y = conv.forward(x)
    y_mag = ref.conv2d_forward(np.abs(x), np.abs(W), np.abs(b), 1, 1)
    assert_close(y, ref.conv2d_forward(x, W, b, 1, 1), dtype=dtype, name="after update",
                 scale=y_mag)


def test_non_contiguous_parameters_held_by_reference():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 2, 6, 6))
    W = np.asfortranarray(rng.standard_normal((3, 2, 3, 2)))
    big_b = rng.standard_normal(6)
    b = big_b[::2]  # a strided view
    conv = Convolution(W, b, stride=2)
    conv.forward(x)
    W[0, 0, 0, 0] += 10.0
    big_b[0] += 5.0
    y = conv.forward(x)
    assert_close(y, ref.conv2d_forward(x, W, b, 2, 0), dtype=np.float64, name="F-order W")
    dout = rng.standard_normal(y.shape)
    dx = conv.backward(dout)
    dx_ref, dW_ref, db_ref = ref.conv2d_backward(dout, x, W, 2, 0)
    assert_close(dx, dx_ref, dtype=np.float64, name="dx F-order W")
    assert_close(conv.dW, dW_ref, dtype=np.float64, name="dW F-order W")
    assert_close(conv.db, db_ref, dtype=np.float64, name="db F-order W")


@pytest.mark.parametrize("dtype", DTYPES)
def test_input_views_and_layouts(dtype):
    rng = np.random.default_rng(7)
    W = rng.standard_normal((3, 4, 3, 2)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    base = rng.standard_normal((3, 8, 9, 11)).astype(dtype)
    views = {
        "strided": base[:, ::2, 1:, ::2],
        "fortran": np.asfortranarray(base[:, :4]),
        "transposed": base[:, :4].transpose(0, 1, 3, 2),
        "negative-stride": base[::-1, 4:, ::-1],
    }
    for label, x in views.items():
        assert not x.flags.c_contiguous
        conv = Convolution(W, b, stride=1, pad=1)
        y = conv.forward(x)
        y_mag = ref.conv2d_forward(np.abs(x), np.abs(W), np.abs(b), 1, 1)
        assert_close(y, ref.conv2d_forward(x, W, b, 1, 1), dtype=dtype, name=label, scale=y_mag)
        dout_base = rng.standard_normal(y.shape[:3] + (2 * y.shape[3],)).astype(dtype)
        dout = dout_base[..., ::2]  # a non-contiguous dout
        dx = conv.backward(dout)
        dx_ref, dW_ref, _ = ref.conv2d_backward(dout, x, W, 1, 1)
        dx_mag, dW_mag, _ = ref.conv2d_backward(np.abs(dout), np.abs(x), np.abs(W), 1, 1)
        assert_close(dx, dx_ref, dtype=dtype, name=f"dx {label}", scale=dx_mag)
        assert_close(conv.dW, dW_ref, dtype=dtype, name=f"dW {label}", scale=dW_mag)


@pytest.mark.parametrize("w_dtype", DTYPES)
@pytest.mark.parametrize("x_dtype", [np.uint8, np.int32, np.int64, np.float16, np.bool_,
                                     np.float32, np.float64])
def test_input_dtypes_computed_in_w_dtype(x_dtype, w_dtype):
    rng = np.random.default_rng(8)
    x = rng.integers(0, 4, size=(3, 2, 5, 5)).astype(x_dtype)
    W = rng.standard_normal((2, 2, 3, 3)).astype(w_dtype)
    b = rng.standard_normal(2).astype(w_dtype)
    conv = Convolution(W, b)
    y = conv.forward(x)
    x64 = x.astype(np.float64)
    y_mag = ref.conv2d_forward(np.abs(x64), np.abs(W), np.abs(b))
    assert_close(y, ref.conv2d_forward(x64, W, b), dtype=w_dtype, name=f"x {x_dtype.__name__}",
                 scale=y_mag)
    dout = rng.standard_normal(y.shape).astype(w_dtype)
    dx = conv.backward(dout)
    assert dx.dtype == w_dtype and dx.shape == x.shape
    assert conv.dW.dtype == w_dtype and conv.db.dtype == w_dtype
    # functional API: same rule
    assert F.conv2d(x, W, b).dtype == w_dtype


def test_backward_does_not_mutate_dout():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 2, 5, 5))
    conv = Convolution(rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3), pad=1)
    y = conv.forward(x)
    dout = rng.standard_normal(y.shape)
    before = dout.copy()
    conv.backward(dout)
    conv.backward(dout)
    np.testing.assert_array_equal(dout, before)
    dout.setflags(write=False)  # a read-only dout is fine too
    conv.backward(dout)


def test_backward_twice_gives_same_gradients():
    # dW/db are overwritten, not accumulated, by each backward.
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 2, 6, 6))
    conv = Convolution(rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3))
    y = conv.forward(x)
    dout = rng.standard_normal(y.shape)
    dx1 = conv.backward(dout)
    dW1, db1 = conv.dW.copy(), conv.db.copy()
    dx2 = conv.backward(dout)
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_array_equal(dW1, conv.dW)
    np.testing.assert_array_equal(db1, conv.db)
