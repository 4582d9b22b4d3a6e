"""Layers with the book's contract: ``forward(x)`` caches what ``backward(dout)``
needs; ``backward`` returns dx and sets parameter gradients (``dW``, ``db``).

Convolution and Pooling run on the compiled core (see ``pyconv.functional``);
all image arrays are NCHW.
"""

from __future__ import annotations

import numpy as np

from . import functional as F
from .functions import _float_array, _softmax_cross_entropy, check_labels, sigmoid

__all__ = ["Affine", "Convolution", "Dropout", "Pooling", "Relu", "Sigmoid", "SoftmaxWithLoss"]


_INT64_MAX = 2**63 - 1


def _check_hyper(name: str, value, minimum: int) -> int:
    v = F._int_arg(value, name)
    if not minimum <= v <= _INT64_MAX:
        raise ValueError(
            f"{name}: expected an integer >= {minimum} (and <= 2**63 - 1), but got {v}"
        )
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
                    f"Convolution: expected {name} to be a numpy.ndarray, "
                    f"but got {type(arr).__name__}"
                )
            if arr.dtype not in (np.float32, np.float64):
                raise TypeError(
                    f"Convolution: expected {name} of dtype float32 or float64, but got {arr.dtype}"
                )
        if W.ndim != 4:
            raise ValueError(
                f"Convolution: expected W to be 4-D (FN, C, FH, FW), but got shape {W.shape}"
            )
        if b.dtype != W.dtype:
            raise TypeError(
                f"Convolution: expected b of dtype {W.dtype} (W's dtype), but got {b.dtype}"
            )
        if b.shape != (W.shape[0],):
            raise ValueError(
                f"Convolution: expected b of shape ({W.shape[0]},) to match W.shape[0] "
                f"(W.shape {W.shape}), but got {b.shape}"
            )
        if min(W.shape) < 1:
            raise ValueError(
                f"Convolution: expected every dimension of W to be >= 1, but got {W.shape}"
            )
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
        W = np.require(self.W, requirements=["C", "A"])  # the same array unless it must copy
        b = np.require(self.b, requirements=["C", "A"])
        out = F._core.conv2d_forward(x, W, b, self.stride, self.pad)
        self.x = x
        self._out_shape = out.shape
        return out

    def backward(self, dout, need_dx=True):
        """dout : (N, FN, OH, OW) -> dx (N, C, H, W); sets dW and db.

        ``need_dx=False`` skips the input gradient (a network's first layer
        never needs it) and returns None.
        """
        if self.x is None:
            raise ValueError("Convolution.backward: called before forward")
        _check_dout("Convolution", dout, self._out_shape)
        dout = F.as_compute_array(dout, self.W.dtype, "dout")
        W = np.require(self.W, requirements=["C", "A"])  # the same array unless it must copy
        dx, self.dW, self.db = F._core.conv2d_backward(
            self.x, W, dout, self.stride, self.pad, bool(need_dx)
        )
        return dx

    def __repr__(self):
        fn, c, fh, fw = self.W.shape
        return (
            f"Convolution({c}->{fn}, kernel=({fh}, {fw}), stride={self.stride}, "
            f"pad={self.pad}, dtype={self.W.dtype})"
        )


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

    ``argmax`` (after a forward): int64 (N, C, OH, OW), the flat index
    ``h * W + w`` of each window's maximum in its input plane. The layer keeps
    it as one byte per window (the offset inside the window, for windows of at
    most 256 elements) and computes this array only when it is read.
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
        self._argmax = None  # int64 plane indices, or uint8 window offsets
        self._dtype = None

    @property
    def _windowed(self) -> bool:
        return self.pool_h * self.pool_w <= F._core.MAX_WINDOW_ARGMAX

    @property
    def argmax(self):
        a = self._argmax
        if a is None or a.dtype == np.int64:
            return a
        # offset k -> row oh*stride - pad + k // pool_w, column ow*stride - pad + k % pool_w
        _, _, h, w = self.x_shape
        oh, ow = a.shape[2], a.shape[3]
        k = a.astype(np.int64)
        rows = (np.arange(oh) * self.stride - self.pad)[:, None] + k // self.pool_w
        cols = (np.arange(ow) * self.stride - self.pad)[None, :] + k % self.pool_w
        return rows * w + cols

    def forward(self, x):
        """x : (N, C, H, W) -> (N, C, OH, OW)."""
        xa = np.asarray(x)
        dtype = F.compute_dtype(xa.dtype, "x")
        fwd = F._core.max_pool2d_forward_window if self._windowed else F._core.max_pool2d_forward
        out, self._argmax = fwd(
            F.as_compute_array(xa, dtype, "x"), self.pool_h, self.pool_w, self.stride, self.pad
        )
        self.x_shape = xa.shape
        self._dtype = dtype
        return out

    def backward(self, dout):
        """dout : (N, C, OH, OW) -> dx (N, C, H, W)."""
        if self._argmax is None:
            raise ValueError("Pooling.backward: called before forward")
        _check_dout("Pooling", dout, self._argmax.shape)
        dout = F.as_compute_array(dout, self._dtype, "dout")
        h, w = self.x_shape[2], self.x_shape[3]
        if self._argmax.dtype == np.uint8:
            return F._core.max_pool2d_backward_window(
                dout, self._argmax, h, w, self.pool_h, self.pool_w, self.stride, self.pad
            )
        return F._core.max_pool2d_backward(dout, self._argmax, h, w)

    def __repr__(self):
        return f"Pooling(pool=({self.pool_h}, {self.pool_w}), stride={self.stride}, pad={self.pad})"


def _check_param(layer: str, name: str, arr) -> None:
    if not isinstance(arr, np.ndarray):
        raise TypeError(
            f"{layer}: expected {name} to be a numpy.ndarray, but got {type(arr).__name__}"
        )
    if arr.dtype not in (np.float32, np.float64):
        raise TypeError(
            f"{layer}: expected {name} of dtype float32 or float64, but got {arr.dtype}"
        )


class Affine:
    """Fully connected layer ``out = x @ W + b`` (GEMMs on the compiled core).

    Parameters
    ----------
    W : (D, M) float32 or float64, held by reference
    b : (M,) same dtype as W, held by reference

    ``forward(x)`` : x (N, D) or (N, d1, d2, ...) with ``d1*d2*... == D`` (e.g. the
    (N, C, H, W) output of a pooling layer, flattened per sample) -> (N, M) in W's dtype.
    ``backward(dout)`` : dout (N, M) -> dx in the shape of the forward input;
    sets ``dW`` (D, M) and ``db`` (M,).
    """

    def __init__(self, W, b):
        _check_param("Affine", "W", W)
        _check_param("Affine", "b", b)
        if W.ndim != 2:
            raise ValueError(f"Affine: expected W to be 2-D (D, M), but got shape {W.shape}")
        if b.dtype != W.dtype:
            raise TypeError(f"Affine: expected b of dtype {W.dtype} (W's dtype), but got {b.dtype}")
        if b.shape != (W.shape[1],):
            raise ValueError(
                f"Affine: expected b of shape ({W.shape[1]},) to match W.shape[1] "
                f"(W.shape {W.shape}), but got {b.shape}"
            )
        self.W = W
        self.b = b
        self.x = None
        self.original_x_shape = None
        self.dW = None
        self.db = None

    def forward(self, x):
        """x : (N, D) or (N, ...) flattening to D -> (N, M) in W's dtype."""
        xa = np.asarray(x)
        if xa.ndim < 1:
            raise ValueError("Affine.forward: expected x of shape (N, ...), but got a scalar")
        d = self.W.shape[0]
        n = xa.shape[0]
        if xa.ndim < 2 or int(np.prod(xa.shape[1:])) != d:
            raise ValueError(
                f"Affine.forward: expected x of shape (N, {d}) or (N, ...) with {d} values "
                f"per sample (W.shape {self.W.shape}), but got {xa.shape}"
            )
        x2 = F.as_compute_array(xa.reshape(n, d), self.W.dtype, "x")
        out = F.gemm(x2, self.W)
        out += self.b
        self.original_x_shape = xa.shape
        self.x = x2
        return out

    def backward(self, dout):
        """dout : (N, M) -> dx (shape of the forward input); sets dW and db."""
        if self.x is None:
            raise ValueError("Affine.backward: called before forward")
        _check_dout("Affine", dout, (self.x.shape[0], self.W.shape[1]))
        dout = F.as_compute_array(dout, self.W.dtype, "dout")
        self.dW = F.gemm(self.x, dout, trans_a=True)
        self.db = dout.sum(axis=0)
        dx = F.gemm(dout, self.W, trans_b=True)
        return dx.reshape(self.original_x_shape)

    def __repr__(self):
        d, m = self.W.shape
        return f"Affine({d}->{m}, dtype={self.W.dtype})"


class Relu:
    """``max(x, 0)`` elementwise; the gradient is passed where ``x > 0``.

    ``forward(x)`` : any shape -> same shape (float32/float64 kept, other real
    types promote as in :func:`pyconv.functional.compute_dtype`).
    ``backward(dout)`` -> dx, same shape (a new array; ``dout`` is not modified).
    """

    def __init__(self):
        self.mask = None

    def forward(self, x):
        xa = np.asarray(x)
        dtype = F.compute_dtype(xa.dtype, "x")
        # One pass in the core: output and mask together (NumPy needs two).
        out, self.mask = F._core.relu_forward(F.as_compute_array(xa, dtype, "x"))
        return out

    def backward(self, dout):
        if self.mask is None:
            raise ValueError("Relu.backward: called before forward")
        _check_dout("Relu", dout, self.mask.shape)
        da = np.asarray(dout)
        dtype = F.compute_dtype(da.dtype, "dout")
        return F._core.relu_backward(F.as_compute_array(da, dtype, "dout"), self.mask)

    def __repr__(self):
        return "Relu()"


class Sigmoid:
    """Logistic sigmoid ``1 / (1 + exp(-x))`` elementwise.

    ``forward(x)`` : any shape -> same shape, float; ``backward(dout)`` ->
    ``dout * y * (1 - y)`` (a new array).
    """

    def __init__(self):
        self.out = None

    def forward(self, x):
        self.out = sigmoid(x)
        return self.out

    def backward(self, dout):
        if self.out is None:
            raise ValueError("Sigmoid.backward: called before forward")
        _check_dout("Sigmoid", dout, self.out.shape)
        return np.asarray(dout, dtype=self.out.dtype) * (1 - self.out) * self.out

    def __repr__(self):
        return "Sigmoid()"


class SoftmaxWithLoss:
    """Softmax followed by the mean cross-entropy loss (the network's last layer).

    ``forward(x, t)`` : scores x (N, K), labels t as class indices (N,) in
    ``[0, K)`` or one-hot rows (N, K) -> loss (float). Out-of-range or
    ill-shaped labels raise ``ValueError``. The softmax probabilities are kept
    in ``y`` (N, K), in x's float dtype.
    ``backward(dout=1)`` -> dx (N, K) ``= dout * (y - t) / N``.
    """

    def __init__(self):
        self.loss = None
        self.y = None
        self.t = None
        self._index_labels = True

    def forward(self, x, t):
        x = _float_array(x, "x")
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(
                f"SoftmaxWithLoss.forward: expected scores of shape (N, K) with N >= 1, "
                f"but got {x.shape}"
            )
        labels, is_index = check_labels(t, *x.shape)
        loss, y = _softmax_cross_entropy(x, labels, is_index)
        self.t, self._index_labels = labels, is_index
        self.y = y
        self.loss = loss
        return loss

    def backward(self, dout=1):
        if self.y is None:
            raise ValueError("SoftmaxWithLoss.backward: called before forward")
        n = self.y.shape[0]
        dx = self.y.copy()
        if self._index_labels:
            dx[np.arange(n), self.t] -= 1
        else:
            dx -= self.t
        dx *= np.asarray(dout, dtype=dx.dtype) / dx.dtype.type(n)
        return dx

    def __repr__(self):
        return "SoftmaxWithLoss()"


class Dropout:
    """Dropout as in the book (not inverted): each unit is kept with probability
    ``1 - dropout_ratio`` during training; at test time outputs are scaled by
    ``1 - dropout_ratio`` instead.

    Parameters
    ----------
    dropout_ratio : float in [0, 1)
    rng : numpy.random.Generator, optional (``np.random.default_rng()`` if None)

    ``forward(x, train_flg=True)`` : any shape -> same shape, float.
    ``backward(dout)`` -> dx, same shape (the last forward's mask or scale).
    """

    def __init__(self, dropout_ratio=0.5, rng=None):
        ratio = float(dropout_ratio)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"Dropout: expected 0 <= dropout_ratio < 1, but got {dropout_ratio!r}")
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(
                "Dropout: expected rng to be a numpy.random.Generator, but got "
                f"{type(rng).__name__}"
            )
        self.dropout_ratio = ratio
        self.rng = np.random.default_rng() if rng is None else rng
        self.mask = None
        self._scale = None
        self._shape = None

    def forward(self, x, train_flg=True):
        xa = np.asarray(x)
        dtype = F.compute_dtype(xa.dtype, "x")
        xa = xa.astype(dtype, copy=False)
        self._shape = xa.shape
        if train_flg:
            self.mask = self.rng.random(xa.shape, dtype=np.float32) >= self.dropout_ratio
            self._scale = None
            return np.multiply(xa, self.mask, dtype=dtype)
        self.mask = None
        self._scale = dtype.type(1.0 - self.dropout_ratio)
        return xa * self._scale

    def backward(self, dout):
        if self._shape is None:
            raise ValueError("Dropout.backward: called before forward")
        _check_dout("Dropout", dout, self._shape)
        dout = np.asarray(dout)
        dtype = F.compute_dtype(dout.dtype, "dout")
        if self.mask is not None:
            return np.multiply(dout, self.mask, dtype=dtype)
        return np.multiply(dout, self._scale, dtype=dtype)

    def __repr__(self):
        return f"Dropout(dropout_ratio={self.dropout_ratio})"
