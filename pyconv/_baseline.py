"""Pure-NumPy reference layers in the style of *Deep Learning from Scratch*.

The benchmark baseline for ``pyconv bench`` and ``benchmarks/``: convolution
and pooling through a NumPy ``im2col`` (one strided slice per kernel offset,
then one large matmul), plus the few layers SimpleConvNet needs. All arrays
are NCHW; every layer keeps the dtype of its parameters (float32 or float64).
Nothing here imports the compiled core.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "Adam",
    "Affine",
    "Convolution",
    "NumpySimpleConvNet",
    "Pooling",
    "Relu",
    "SoftmaxWithLoss",
    "col2im",
    "im2col",
]


def _out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def im2col(x: np.ndarray, kh: int, kw: int, stride: int = 1, pad: int = 0) -> np.ndarray:
    """Unfold patches of ``x`` (N, C, H, W) into rows (N*OH*OW, C*KH*KW).

    For each kernel offset (i, j) one strided slice of the padded input fills
    ``patches[:, :, i, j]``; a final transpose puts the channel/kernel axes last.
    """
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kh, stride, pad), _out_size(w, kw, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    patches = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        i_end = i + stride * oh
        for j in range(kw):
            j_end = j + stride * ow
            patches[:, :, i, j] = xp[:, :, i:i_end:stride, j:j_end:stride]
    return patches.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, c * kh * kw)


def col2im(col: np.ndarray, x_shape, kh: int, kw: int, stride: int = 1, pad: int = 0) -> np.ndarray:
    """Adjoint of :func:`im2col`: fold (N*OH*OW, C*KH*KW) rows back into
    (N, C, H, W), summing where windows overlap."""
    n, c, h, w = x_shape
    oh, ow = _out_size(h, kh, stride, pad), _out_size(w, kw, stride, pad)
    patches = col.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    # Extra stride-1 rows/cols so every slice end below stays in bounds.
    xp = np.zeros((n, c, h + 2 * pad + stride - 1, w + 2 * pad + stride - 1), dtype=col.dtype)
    for i in range(kh):
        i_end = i + stride * oh
        for j in range(kw):
            j_end = j + stride * ow
            xp[:, :, i:i_end:stride, j:j_end:stride] += patches[:, :, i, j]
    return xp[:, :, pad : pad + h, pad : pad + w]


class Convolution:
    """im2col convolution. W : (FN, C, FH, FW), b : (FN,), both held by reference.

    ``forward(x)`` : (N, C, H, W) -> (N, FN, OH, OW); ``backward(dout)`` -> dx and
    sets ``dW`` (FN, C, FH, FW), ``db`` (FN,).
    """

    def __init__(self, W: np.ndarray, b: np.ndarray, stride: int = 1, pad: int = 0):
        self.W, self.b, self.stride, self.pad = W, b, stride, pad
        self.x_shape = None
        self.col = None
        self.col_W = None
        self.dW = None
        self.db = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        fn, _, fh, fw = self.W.shape
        n, _, h, w = x.shape
        oh, ow = _out_size(h, fh, self.stride, self.pad), _out_size(w, fw, self.stride, self.pad)
        self.x_shape = x.shape
        self.col = im2col(x, fh, fw, self.stride, self.pad)
        self.col_W = self.W.reshape(fn, -1).T
        out = self.col @ self.col_W + self.b
        return out.reshape(n, oh, ow, fn).transpose(0, 3, 1, 2)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        fn, c, fh, fw = self.W.shape
        d2 = dout.transpose(0, 2, 3, 1).reshape(-1, fn)
        self.db = d2.sum(axis=0)
        self.dW = (self.col.T @ d2).T.reshape(fn, c, fh, fw)
        dcol = d2 @ self.col_W.T
        return col2im(dcol, self.x_shape, fh, fw, self.stride, self.pad)


class Pooling:
    """Max pooling via im2col; gradients go to the first maximum of each window."""

    def __init__(self, pool_h: int, pool_w: int, stride: int = 1, pad: int = 0):
        self.pool_h, self.pool_w, self.stride, self.pad = pool_h, pool_w, stride, pad
        self.x_shape = None
        self.argmax = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        n, c, h, w = x.shape
        oh = _out_size(h, self.pool_h, self.stride, self.pad)
        ow = _out_size(w, self.pool_w, self.stride, self.pad)
        if self.pad:  # padding must never win the max
            x = np.pad(
                x, ((0, 0), (0, 0), (self.pad,) * 2, (self.pad,) * 2), constant_values=-np.inf
            )
        col = im2col(x, self.pool_h, self.pool_w, self.stride, 0)
        col = col.reshape(-1, self.pool_h * self.pool_w)
        self.argmax = col.argmax(axis=1)
        self.x_shape = (n, c, h, w)
        out = col[np.arange(col.shape[0]), self.argmax]
        return out.reshape(n, oh, ow, c).transpose(0, 3, 1, 2)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        n, c, h, w = self.x_shape
        size = self.pool_h * self.pool_w
        d = dout.transpose(0, 2, 3, 1).ravel()
        dmax = np.zeros((d.size, size), dtype=dout.dtype)
        dmax[np.arange(d.size), self.argmax] = d
        dcol = dmax.reshape(-1, c * size)
        shape = (n, c, h + 2 * self.pad, w + 2 * self.pad)
        dx = col2im(dcol, shape, self.pool_h, self.pool_w, self.stride, 0)
        p = self.pad
        return dx[:, :, p : p + h, p : p + w] if p else dx


class Relu:
    def __init__(self):
        self.mask = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.mask = x <= 0
        return np.where(self.mask, 0, x).astype(x.dtype, copy=False)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return np.where(self.mask, 0, dout).astype(dout.dtype, copy=False)


class Affine:
    """out = x.reshape(N, -1) @ W + b; W : (D, M), b : (M,)."""

    def __init__(self, W: np.ndarray, b: np.ndarray):
        self.W, self.b = W, b
        self.x = None
        self.x_shape = None
        self.dW = None
        self.db = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        return self.x @ self.W + self.b

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return (dout @ self.W.T).reshape(self.x_shape)


class SoftmaxWithLoss:
    """Softmax + mean cross-entropy over integer labels t : (N,)."""

    def __init__(self):
        self.y = None
        self.t = None

    def forward(self, x: np.ndarray, t: np.ndarray) -> float:
        z = x - x.max(axis=1, keepdims=True)
        e = np.exp(z)
        self.y = e / e.sum(axis=1, keepdims=True)
        self.t = t
        n = x.shape[0]
        return float(-np.log(self.y[np.arange(n), t] + 1e-7).mean())

    def backward(self) -> np.ndarray:
        n = self.y.shape[0]
        dx = self.y.copy()
        dx[np.arange(n), self.t] -= 1
        return dx / n


class NumpySimpleConvNet:
    """conv - relu - pool - affine - relu - affine - softmax, all NumPy.

    Parameters
    ----------
    input_dim : (C, H, W)
    filter_num, filter_size, pad, stride : the convolution (pool is 2x2 stride 2)
    hidden_size, output_size : affine sizes
    weight_init_std : std of the normal initial weights (biases start at 0)
    rng : numpy.random.Generator
    dtype : float32 or float64
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        filter_num=30,
        filter_size=5,
        pad=0,
        stride=1,
        hidden_size=100,
        output_size=10,
        weight_init_std=0.01,
        *,
        rng=None,
        dtype=np.float64,
    ):
        rng = np.random.default_rng() if rng is None else rng
        c, h, w = input_dim
        oh = _out_size(h, filter_size, stride, pad)
        ow = _out_size(w, filter_size, stride, pad)
        pool_out = filter_num * (oh // 2) * (ow // 2)

        def normal(*shape):
            return (weight_init_std * rng.standard_normal(shape)).astype(dtype)

        self.params = {
            "W1": normal(filter_num, c, filter_size, filter_size),
            "b1": np.zeros(filter_num, dtype=dtype),
            "W2": normal(pool_out, hidden_size),
            "b2": np.zeros(hidden_size, dtype=dtype),
            "W3": normal(hidden_size, output_size),
            "b3": np.zeros(output_size, dtype=dtype),
        }
        p = self.params
        self.conv = Convolution(p["W1"], p["b1"], stride, pad)
        self.affine1 = Affine(p["W2"], p["b2"])
        self.affine2 = Affine(p["W3"], p["b3"])
        self.layers = [
            self.conv,
            Relu(),
            Pooling(2, 2, stride=2),
            self.affine1,
            Relu(),
            self.affine2,
        ]
        self.last_layer = SoftmaxWithLoss()

    def predict(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def gradient(self, x: np.ndarray, t: np.ndarray):
        """Returns (loss, grads) with grads keyed like ``params``."""
        loss = self.last_layer.forward(self.predict(x), t)
        dout = self.last_layer.backward()
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        grads = {
            "W1": self.conv.dW,
            "b1": self.conv.db,
            "W2": self.affine1.dW,
            "b2": self.affine1.db,
            "W3": self.affine2.dW,
            "b3": self.affine2.db,
        }
        return loss, grads


class Adam:
    """Adam (Kingma & Ba) updating ``params`` in place."""

    def __init__(
        self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = None
        self.v = None
        self.iter = 0

    def update(self, params: dict, grads: dict) -> None:
        if self.m is None:
            self.m = {k: np.zeros_like(v) for k, v in params.items()}
            self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.iter += 1
        lr_t = self.lr * np.sqrt(1.0 - self.beta2**self.iter) / (1.0 - self.beta1**self.iter)
        for k in params:
            g = grads[k]
            self.m[k] += (1 - self.beta1) * (g - self.m[k])
            self.v[k] += (1 - self.beta2) * (g * g - self.v[k])
            params[k] -= (lr_t * self.m[k] / (np.sqrt(self.v[k]) + self.eps)).astype(
                params[k].dtype, copy=False
            )
