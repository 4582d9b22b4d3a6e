"""Layers with the book's contract: ``forward(x)`` caches what ``backward(dout)``
needs; ``backward`` returns dx and sets parameter gradients (``dW``, ``db``).

Convolution and Pooling run on the compiled core (see ``pyconv.functional``);
all image arrays are NCHW.
"""

from __future__ import annotations

import numpy as np

from . import functional as F

__all__ = ["Convolution", "Pooling"]


def _check_hyper(name: str, value, minimum: int) -> int:
    v = F._int_arg(value, name)
    if v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, but got {v}")
    return v


def _check_dout(layer: str, dout, expected_shape) -> None:
    shape = np.shape(dout)
    if tuple(shape) != tuple(expected_shape):
        raise ValueError(
            f"{layer}.backward: expected dout of shape {tuple(expected_shape)} "
            f"(the forward output), but got {tuple(shape)}"
        )


class Convolution:
    """2-D convolution layer.

    Parameters
    ----------
    W : (FN, C, FH, FW) float32 or float64, held by reference (an optimizer
        that updates it in place is seen by the next forward)
    b : (FN,) same dtype as W, held by reference
    stride : int >= 1
    pad : int >= 0 (symmetric zero padding)

    ``forward(x)`` : x (N, C, H, W) any real dtype -> (N, FN, OH, OW) in W's dtype.
    ``backward(dout)`` -> dx (N, C, H, W); sets ``dW`` (FN, C, FH, FW), ``db`` (FN,).
    """

    def __init__(self, W, b, stride=1, pad=0):
        for name, arr in (("W", W), ("b", b)):
            if not isinstance(arr, np.ndarray):
                raise TypeError(
                    f"Convolution: expected {name} to be a numpy.ndarray, but got {type(arr).__name__}"
                )
            if arr.dtype not in (np.float32, np.float64):
                raise TypeError(
                    f"Convolution: expected {name} of dtype float32 or float64, but got {arr.dtype}"
                )
        if W.ndim != 4:
            raise ValueError(f"Convolution: expected W to be 4-D (FN, C, FH, FW), but got shape {W.shape}")
        if b.dtype != W.dtype:
            raise TypeError(f"Convolution: expected b of dtype {W.dtype} (W's dtype), but got {b.dtype}")
        if b.shape != (W.shape[0],):
            raise ValueError(
                f"Convolution: expected b of shape ({W.shape[0]},) to match W.shape[0] "
                f"(W.shape {W.shape}), but got {b.shape}"
            )
        if min(W.shape) < 1:
            raise ValueError(f"Convolution: expected every dimension of W to be >= 1, but got {W.shape}")
        self.W = W
        self.b = b
        self.stride = _check_hyper("stride", stride, 1)
        self.pad = _check_hyper("pad", pad, 0)
        self.x = None
        self.dW = None
        self.db = None
        self._out_shape = None

    def forward(self, x):
        """x : (N, C, H, W) -> (N, FN, OH, OW) in W's dtype."""
        x = F.as_compute_array(x, self.W.dtype, "x")
        W = self.W if self.W.flags.c_contiguous else np.ascontiguousarray(self.W)
        b = self.b if self.b.flags.c_contiguous else np.ascontiguousarray(self.b)
        out = F._core.conv2d_forward(x, W, b, self.stride, self.pad)
        self.x = x
        self._out_shape = out.shape
        return out

    def backward(self, dout):
        """dout : (N, FN, OH, OW) -> dx (N, C, H, W); sets dW and db."""
        if self.x is None:
            raise ValueError("Convolution.backward: called before forward")
        _check_dout("Convolution", dout, self._out_shape)
        dout = F.as_compute_array(dout, self.W.dtype, "dout")
        W = self.W if self.W.flags.c_contiguous else np.ascontiguousarray(self.W)
        dx, self.dW, self.db = F._core.conv2d_backward(self.x, W, dout, self.stride, self.pad, True)
        return dx

    def __repr__(self):
        fn, c, fh, fw = self.W.shape
        return (f"Convolution({c}->{fn}, kernel=({fh}, {fw}), stride={self.stride}, "
                f"pad={self.pad}, dtype={self.W.dtype})")


class Pooling:
    """Max pooling layer.

    Parameters
    ----------
    pool_h, pool_w : int >= 1
    stride : int >= 1 (the book's default is 1; SimpleConvNet uses 2)
    pad : int with ``0 <= pad <= min(pool_h, pool_w) // 2``; padding is -inf

    ``forward(x)`` : x (N, C, H, W) -> (N, C, OH, OW); float32/float64 kept,
    other real types promote as in :func:`pyconv.functional.compute_dtype`.
    ``backward(dout)`` -> dx (N, C, H, W): each gradient goes to its window's
    argmax (first maximum in row-major order; a NaN wins).
    """

    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h = _check_hyper("pool_h", pool_h, 1)
        self.pool_w = _check_hyper("pool_w", pool_w, 1)
        self.stride = _check_hyper("stride", stride, 1)
        self.pad = _check_hyper("pad", pad, 0)
        limit = min(self.pool_h, self.pool_w) // 2
        if self.pad > limit:
            raise ValueError(
                f"Pooling: expected pad <= min(pool_h, pool_w) // 2 ({limit}) for pool "
                f"({self.pool_h}, {self.pool_w}), but got pad={self.pad}"
            )
        self.x_shape = None
        self.argmax = None
        self._dtype = None

    def forward(self, x):
        """x : (N, C, H, W) -> (N, C, OH, OW)."""
        xa = np.asarray(x)
        dtype = F.compute_dtype(xa.dtype, "x")
        out, self.argmax = F._core.max_pool2d_forward(
            F.as_compute_array(xa, dtype, "x"), self.pool_h, self.pool_w, self.stride, self.pad
        )
        self.x_shape = xa.shape
        self._dtype = dtype
        return out

    def backward(self, dout):
        """dout : (N, C, OH, OW) -> dx (N, C, H, W)."""
        if self.argmax is None:
            raise ValueError("Pooling.backward: called before forward")
        _check_dout("Pooling", dout, self.argmax.shape)
        dout = F.as_compute_array(dout, self._dtype, "dout")
        return F._core.max_pool2d_backward(dout, self.argmax, self.x_shape[2], self.x_shape[3])

    def __repr__(self):
        return (f"Pooling(pool=({self.pool_h}, {self.pool_w}), stride={self.stride}, "
                f"pad={self.pad})")
