"""Independent float64 oracle for convolution and max pooling.

Everything here follows the definitions with direct loops over kernel offsets
or output positions (vectorised over the other axes with NumPy); nothing uses
im2col or shares code with ``pyconv``. All arrays are NCHW; results are float64.

Definitions (``OH = (H + 2*pad - KH) // stride + 1``, likewise ``OW``)::

    y[n, f, oh, ow] = b[f] + sum_{c, i, j} W[f, c, i, j] * xp[n, c, oh*s + i, ow*s + j]

where ``xp`` is ``x`` zero-padded by ``pad`` on each side. Max pooling uses
``-inf`` padding that is never selected; its argmax is the first maximum of a
window in row-major order (the first NaN if the window holds one), stored as
the flat index ``h*W + w`` into the unpadded input plane.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "im2col",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "out_size",
]


def out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length along one axis: ``(size + 2*pad - kernel) // stride + 1``."""
    return (size + 2 * pad - kernel) // stride + 1


def _window(xp: np.ndarray, i: int, j: int, oh: int, ow: int, stride: int) -> np.ndarray:
    """``xp[:, :, i + stride*a, j + stride*b]`` for a < oh, b < ow: (N, C, oh, ow)."""
    return xp[:, :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride]


def conv2d_forward(x, W, b, stride: int = 1, pad: int = 0) -> np.ndarray:
    """Cross-correlation by the definition.

    Parameters
    ----------
    x : (N, C, H, W)
    W : (FN, C, FH, FW)
    b : (FN,)

    Returns
    -------
    y : (N, FN, OH, OW) float64
    """
    x = np.asarray(x, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n, _, h, w = x.shape
    fn, _, fh, fw = W.shape
    oh, ow = out_size(h, fh, stride, pad), out_size(w, fw, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    y = np.zeros((n, fn, oh, ow))
    for i in range(fh):
        for j in range(fw):
            y += np.einsum("nchw,fc->nfhw", _window(xp, i, j, oh, ow, stride), W[:, :, i, j])
    y += b[None, :, None, None]
    return y


def conv2d_backward(dout, x, W, stride: int = 1, pad: int = 0):
    """Gradients of :func:`conv2d_forward` by the definition.

    Parameters
    ----------
    dout : (N, FN, OH, OW)
    x : (N, C, H, W)
    W : (FN, C, FH, FW)

    Returns
    -------
    dx : (N, C, H, W), dW : (FN, C, FH, FW), db : (FN,), all float64
    """
    dout = np.asarray(dout, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    n, c, h, w = x.shape
    fn, _, fh, fw = W.shape
    oh, ow = dout.shape[2], dout.shape[3]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp = np.zeros_like(xp)
    dW = np.zeros(W.shape)
    for i in range(fh):
        for j in range(fw):
            dW[:, :, i, j] = np.einsum("nfhw,nchw->fc", dout, _window(xp, i, j, oh, ow, stride))
            _window(dxp, i, j, oh, ow, stride)[...] += np.einsum(
                "nfhw,fc->nchw", dout, W[:, :, i, j]
            )
    db = dout.sum(axis=(0, 2, 3))
    dx = dxp[:, :, pad : pad + h, pad : pad + w].copy()
    return dx, dW, db


def max_pool2d_forward(x, pool_h: int, pool_w: int, stride: int = 1, pad: int = 0):
    """Max pooling by the definition, with its argmax.

    Parameters
    ----------
    x : (N, C, H, W)

    Returns
    -------
    out : (N, C, OH, OW) float64
    argmax : (N, C, OH, OW) int64, flat index ``h*W + w`` into the input plane
    """
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    oh, ow = out_size(h, pool_h, stride, pad), out_size(w, pool_w, stride, pad)
    out = np.empty((n, c, oh, ow))
    argmax = np.empty((n, c, oh, ow), dtype=np.int64)
    for a in range(oh):
        for bb in range(ow):
            h0, w0 = a * stride - pad, bb * stride - pad
            # The window clipped to the real input: padding is never selected,
            # and row-major order within the clipped window is the same as
            # within the full one.
            hs, he = max(h0, 0), min(h0 + pool_h, h)
            ws, we = max(w0, 0), min(w0 + pool_w, w)
            cols = we - ws
            if he <= hs or cols <= 0:  # cannot happen with pad <= pool // 2
                raise AssertionError("window without input elements")
            win = x[:, :, hs:he, ws:we].reshape(n, c, (he - hs) * cols)
            isnan = np.isnan(win)
            has_nan = isnan.any(axis=2)
            first_nan = np.argmax(isnan, axis=2)
            # argmax of -inf-filled NaNs = first maximum among the non-NaN values
            clean = np.where(isnan, -np.inf, win)
            first_max = np.argmax(clean, axis=2)
            k = np.where(has_nan, first_nan, first_max)
            val = np.take_along_axis(win, k[:, :, None], axis=2)[:, :, 0]
            out[:, :, a, bb] = val
            argmax[:, :, a, bb] = (hs + k // cols) * w + (ws + k % cols)
    return out, argmax


def max_pool2d_backward(dout, argmax, x_shape) -> np.ndarray:
    """Scatter-add each ``dout`` element to its window's argmax.

    Parameters
    ----------
    dout, argmax : (N, C, OH, OW)
    x_shape : (N, C, H, W)

    Returns
    -------
    dx : (N, C, H, W) float64
    """
    dout = np.asarray(dout, dtype=np.float64)
    n, c, h, w = x_shape
    dx = np.zeros((n, c, h * w))
    for i in range(n):
        for ch in range(c):
            np.add.at(dx[i, ch], np.asarray(argmax)[i, ch].ravel(), dout[i, ch].ravel())
    return dx.reshape(n, c, h, w)


def im2col(x, kernel_h: int, kernel_w: int, stride: int = 1, pad: int = 0) -> np.ndarray:
    """The book's im2col layout by its definition (element by element).

    ``col[(n*OH + oh)*OW + ow, (c*KH + i)*KW + j] = xp[n, c, oh*stride + i, ow*stride + j]``

    Returns
    -------
    col : (N*OH*OW, C*KH*KW) in x's dtype
    """
    x = np.asarray(x)
    n, c, h, w = x.shape
    oh, ow = out_size(h, kernel_h, stride, pad), out_size(w, kernel_w, stride, pad)
    col = np.empty((n * oh * ow, c * kernel_h * kernel_w), dtype=x.dtype)
    for ni in range(n):
        for a in range(oh):
            for bb in range(ow):
                row = (ni * oh + a) * ow + bb
                for ch in range(c):
                    for i in range(kernel_h):
                        for j in range(kernel_w):
                            hh, ww = a * stride + i - pad, bb * stride + j - pad
                            inside = 0 <= hh < h and 0 <= ww < w
                            col[row, (ch * kernel_h + i) * kernel_w + j] = (
                                x[ni, ch, hh, ww] if inside else 0
                            )
    return col


def col2im(col, x_shape, kernel_h: int, kernel_w: int, stride: int = 1, pad: int = 0):
    """Adjoint of :func:`im2col`: every col element is added to its source pixel.

    Returns
    -------
    x : (N, C, H, W) float64
    """
    col = np.asarray(col, dtype=np.float64)
    n, c, h, w = x_shape
    oh, ow = out_size(h, kernel_h, stride, pad), out_size(w, kernel_w, stride, pad)
    x = np.zeros((n, c, h, w))
    for ni in range(n):
        for a in range(oh):
            for bb in range(ow):
                row = (ni * oh + a) * ow + bb
                for ch in range(c):
                    for i in range(kernel_h):
                        for j in range(kernel_w):
                            hh, ww = a * stride + i - pad, bb * stride + j - pad
                            if 0 <= hh < h and 0 <= ww < w:
                                x[ni, ch, hh, ww] += col[row, (ch * kernel_h + i) * kernel_w + j]
    return x
