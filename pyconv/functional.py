"""Low-level functional API over the compiled core.

Every function here takes NumPy arrays, checks dtypes in Python (``TypeError``)
and leaves shape checks to ``pyconv._core`` (``ValueError`` naming the argument
and the shapes). Arrays reach the core C-contiguous in float32 or float64; a
transposed 2-D view is passed to :func:`gemm` as a transpose flag, not copied.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from . import _core

__all__ = [
    "as_compute_array",
    "col2im",
    "compute_dtype",
    "conv2d",
    "conv2d_backward",
    "gemm",
    "im2col",
    "max_pool2d",
    "max_pool2d_backward",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def compute_dtype(dtype, name: str = "x") -> np.dtype:
    """The float type a real array of ``dtype`` is computed in.

    float32 and float64 are kept; other real types promote as NumPy does with
    float32 (bool/uint8/int16/float16 -> float32, int32/int64 -> float64).
    Complex, object, string and other non-numeric types raise ``TypeError``.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise TypeError(
            f"{name}: expected a real-valued (bool, integer or float) array, but got dtype {dtype}"
        )
    if dtype in _FLOATS:
        return dtype
    return np.result_type(dtype, np.float32)


def as_compute_array(a, dtype, name: str) -> np.ndarray:
    """``a`` as a C-contiguous, aligned array of ``dtype`` (no copy when it already is).

    Keeps 0-d arrays 0-d (``np.ascontiguousarray`` would make them 1-d).
    """
    arr = np.asarray(a)
    compute_dtype(arr.dtype, name)  # rejects complex/object/str with a TypeError
    return np.require(arr, dtype=dtype, requirements=["C", "A"])


def _int_arg(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an integer, but got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name}: expected an integer, but got {type(value).__name__} {value!r}"
        ) from None


def im2col(input_data, filter_h, filter_w, stride=1, pad=0) -> np.ndarray:
    """Unfold image patches into rows (the book's layout).

    Parameters
    ----------
    input_data : (N, C, H, W) real array
    filter_h, filter_w, stride, pad : int

    Returns
    -------
    col : (N*OH*OW, C*FH*FW), in the input's compute dtype, where
        ``OH = (H + 2*pad - FH) // stride + 1`` (likewise OW).
    """
    x = np.asarray(input_data)
    x = as_compute_array(x, compute_dtype(x.dtype, "input_data"), "input_data")
    return _core.im2col(
        x,
        _int_arg(filter_h, "filter_h"),
        _int_arg(filter_w, "filter_w"),
        _int_arg(stride, "stride"),
        _int_arg(pad, "pad"),
    )


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0) -> np.ndarray:
    """Adjoint of :func:`im2col`: fold rows back, summing overlapping windows.

    Parameters
    ----------
    col : (N*OH*OW, C*FH*FW) real array
    input_shape : (N, C, H, W)

    Returns
    -------
    x : (N, C, H, W), freshly zeroed then accumulated.
    """
    c = np.asarray(col)
    c = as_compute_array(c, compute_dtype(c.dtype, "col"), "col")
    shape = tuple(input_shape)
    if len(shape) != 4:
        raise ValueError(f"col2im: expected input_shape of length 4 (N, C, H, W), but got {shape}")
    n, ch, h, w = (_int_arg(s, "input_shape") for s in shape)
    return _core.col2im(
        c,
        n,
        ch,
        h,
        w,
        _int_arg(filter_h, "filter_h"),
        _int_arg(filter_w, "filter_w"),
        _int_arg(stride, "stride"),
        _int_arg(pad, "pad"),
    )


def conv2d(x, W, b, stride=1, pad=0) -> np.ndarray:
    """2-D convolution (cross-correlation, as the book and PyTorch define it).

    Parameters
    ----------
    x : (N, C, H, W) real array
    W : (FN, C, FH, FW) float32 or float64; sets the compute dtype
    b : (FN,)

    Returns
    -------
    y : (N, FN, OH, OW) in W's dtype.
    """
    dtype = compute_dtype(np.asarray(W).dtype, "W")
    return _core.conv2d_forward(
        as_compute_array(x, dtype, "x"),
        as_compute_array(W, dtype, "W"),
        as_compute_array(b, dtype, "b"),
        _int_arg(stride, "stride"),
        _int_arg(pad, "pad"),
    )


def conv2d_backward(dout, x, W, stride=1, pad=0, need_dx=True):
    """Gradients of :func:`conv2d`.

    Parameters
    ----------
    dout : (N, FN, OH, OW)
    x : (N, C, H, W) the forward input
    W : (FN, C, FH, FW)

    Returns
    -------
    dx : (N, C, H, W) or None when ``need_dx`` is false
    dW : (FN, C, FH, FW)
    db : (FN,)
    """
    dtype = compute_dtype(np.asarray(W).dtype, "W")
    return _core.conv2d_backward(
        as_compute_array(x, dtype, "x"),
        as_compute_array(W, dtype, "W"),
        as_compute_array(dout, dtype, "dout"),
        _int_arg(stride, "stride"),
        _int_arg(pad, "pad"),
        bool(need_dx),
    )


def max_pool2d(x, pool_h, pool_w, stride=1, pad=0, dtype=None):
    """Max pooling; padding counts as -inf. ``pad <= pool_size // 2``.

    Returns
    -------
    out : (N, C, OH, OW)
    argmax : (N, C, OH, OW) int64, flat index ``h*W + w`` into each input
        plane of the first maximum in row-major window order (the first NaN
        if the window holds one).
    """
    xa = np.asarray(x)
    dtype = compute_dtype(xa.dtype if dtype is None else dtype, "x")
    return _core.max_pool2d_forward(
        as_compute_array(xa, dtype, "x"),
        _int_arg(pool_h, "pool_h"),
        _int_arg(pool_w, "pool_w"),
        _int_arg(stride, "stride"),
        _int_arg(pad, "pad"),
    )


def max_pool2d_backward(dout, argmax, x_shape, dtype=None) -> np.ndarray:
    """Scatter ``dout`` to the argmax of each window.

    Parameters
    ----------
    dout : (N, C, OH, OW)
    argmax : (N, C, OH, OW) int64 from :func:`max_pool2d`
    x_shape : (N, C, H, W) of the forward input

    Returns
    -------
    dx : (N, C, H, W), zero where no window picked the element.
    """
    da = np.asarray(dout)
    dtype = compute_dtype(da.dtype if dtype is None else dtype, "dout")
    am = np.asarray(argmax)
    if am.dtype != np.int64:
        raise TypeError(f"max_pool2d_backward: expected argmax of dtype int64, but got {am.dtype}")
    shape = tuple(x_shape)
    if len(shape) != 4:
        raise ValueError(
            f"max_pool2d_backward: expected x_shape of length 4 (N, C, H, W), but got {shape}"
        )
    n, c, h, w = (_int_arg(s, "x_shape") for s in shape)
    if (n, c) != tuple(da.shape[:2]):
        raise ValueError(
            f"max_pool2d_backward: expected x_shape[:2] == dout.shape[:2], but got x_shape "
            f"{shape} and dout.shape {da.shape}"
        )
    return _core.max_pool2d_backward(
        as_compute_array(da, dtype, "dout"), np.require(am, requirements=["C", "A"]), h, w
    )


def _gemm_operand(a, dtype, name):
    """(C-contiguous array, transposed?) without copying a transposed view."""
    arr = np.asarray(a)
    compute_dtype(arr.dtype, name)
    if arr.ndim != 2:
        raise ValueError(f"gemm: expected {name} to be 2-D, but got shape {arr.shape}")
    if arr.dtype == dtype and arr.flags.aligned:
        if arr.flags.c_contiguous:
            return arr, False
        if arr.flags.f_contiguous:
            return arr.T, True
    return np.require(arr, dtype=dtype, requirements=["C", "A"]), False


def gemm(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None) -> np.ndarray:
    """``out = alpha * op(a) @ op(b) + beta * out`` for 2-D float arrays.

    ``op(x)`` is ``x.T`` when the matching ``trans_*`` flag is set. The compute
    dtype is float64 if either operand is float64, else float32 (other real
    types promote as in :func:`compute_dtype`). With ``beta == 0`` ``out`` is
    only written, never read. ``out`` must be C-contiguous of the compute
    dtype and shape (M, N).
    """
    if type(alpha) is float and type(beta) is float and math.isfinite(alpha + beta):
        # The common call goes straight to the core, which takes C-contiguous
        # aligned float32/float64 operands as they are and checks the rest
        # before it writes anything: 0.5 us a call from Python, where checking
        # the flags here first cost 1.3 (numpy.matmul: 0.55).
        try:
            return _core.gemm(a, b, trans_a, trans_b, alpha, beta, out)
        except (TypeError, ValueError):
            pass  # operands to convert first, or a bad call: the checked path explains
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    dtype = np.result_type(compute_dtype(a_arr.dtype, "a"), compute_dtype(b_arr.dtype, "b"))
    a2, ta = _gemm_operand(a_arr, dtype, "a")
    b2, tb = _gemm_operand(b_arr, dtype, "b")
    ta ^= bool(trans_a)
    tb ^= bool(trans_b)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(
                f"gemm: expected out to be a numpy.ndarray, but got {type(out).__name__}"
            )
        if out.dtype != dtype or not out.flags.c_contiguous:
            raise TypeError(
                f"gemm: expected out to be a C-contiguous {dtype} array, but got "
                f"dtype {out.dtype} (c_contiguous={out.flags.c_contiguous})"
            )
        if not out.flags.writeable:
            raise ValueError("gemm: out is read-only")
    scalars = []
    for name, value in (("alpha", alpha), ("beta", beta)):
        try:
            v = float(value)
        except (TypeError, ValueError, OverflowError):
            raise TypeError(
                f"gemm: expected {name} to be a real number, but got {value!r}"
            ) from None
        if not np.isfinite(v):
            raise ValueError(f"gemm: expected a finite {name}, but got {v}")
        scalars.append(v)
    return _core.gemm(a2, b2, ta, tb, scalars[0], scalars[1], out)
