"""Pure-NumPy activation and loss functions (the book's ``common/functions.py``).

Rows are samples: scores ``x`` are (N, K); labels are class indices (N,) or
one-hot / probability rows (N, K). Everything is computed in the scores' float
dtype (float32 stays float32).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "check_labels",
    "cross_entropy_error",
    "log_softmax",
    "sigmoid",
    "softmax",
    "softmax_cross_entropy",
]


def _float_array(x, name: str) -> np.ndarray:
    """``x`` as a float32/float64 array (other real types promote to float64)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a real-valued array, but got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    return arr


def sigmoid(x) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-x))``, elementwise, without overflow warnings.

    x : any shape, real -> same shape, float (float32 kept).
    """
    x = _float_array(x, "x")
    # exp(-|x|) never overflows; the two branches are the same function.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def log_softmax(x) -> np.ndarray:
    """Row-wise ``log(softmax(x))``, stable for large scores.

    x : (N, K) or (K,) -> same shape and float dtype.
    """
    x = _float_array(x, "x")
    shifted = x - x.max(axis=-1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


def softmax(x) -> np.ndarray:
    """Row-wise softmax (max subtracted first, so large scores do not overflow).

    x : (N, K) or (K,) -> same shape and float dtype; each row sums to 1.
    """
    x = _float_array(x, "x")
    y = x - x.max(axis=-1, keepdims=True)
    np.exp(y, out=y)
    y /= y.sum(axis=-1, keepdims=True)
    return y


def check_labels(t, n: int, k: int) -> tuple[np.ndarray, bool]:
    """Validate labels for ``n`` samples of ``k`` classes.

    Parameters
    ----------
    t : (n,) integer class indices in ``[0, k)``, or (n, k) one-hot /
        probability rows (any real dtype)
    n, k : expected number of samples and classes

    Returns
    -------
    (labels, is_index) : int64 (n,) indices and True, or the (n, k) array and False.

    Raises
    ------
    ValueError
        Wrong shape, non-integral index labels, or an index outside ``[0, k)``.
    """
    t = np.asarray(t)
    if t.dtype.kind not in "biuf":
        raise TypeError(f"labels: expected a real-valued array, but got dtype {t.dtype}")
    if t.ndim == 1:
        if t.shape[0] != n:
            raise ValueError(f"labels: expected {n} class indices, but got shape {t.shape}")
        if t.dtype.kind == "b":
            raise ValueError("labels: expected integer class indices, but got a bool array")
        if t.dtype.kind == "f":
            if not np.all(np.isfinite(t)) or np.any(t != np.round(t)):
                raise ValueError("labels: expected integral class indices, but got non-integers")
        if n and (t.min() < 0 or t.max() >= k):
            raise ValueError(
                f"labels: expected class indices in [0, {k}), but got values in "
                f"[{t.min()}, {t.max()}]"
            )
        return t.astype(np.int64, copy=False), True
    if t.shape == (n, k):
        return t, False
    raise ValueError(
        f"labels: expected class indices of shape ({n},) or one-hot rows of shape ({n}, {k}), "
        f"but got {t.shape}"
    )


def softmax_cross_entropy(x, t) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``softmax(x)`` against ``t``, and the probabilities.

    Computed through ``log_softmax`` (no ``log(0)``, no epsilon), so the loss is
    exact for confident predictions and its gradient is ``(softmax(x) - t) / N``.

    Parameters
    ----------
    x : (N, K) scores
    t : (N,) class indices or (N, K) one-hot rows

    Returns
    -------
    loss : float
    y : (N, K) softmax probabilities in x's dtype
    """
    x = _float_array(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x: expected scores of shape (N, K), but got {x.shape}")
    n, k = x.shape
    if n == 0:
        raise ValueError("x: expected at least one sample, but got N=0")
    labels, is_index = check_labels(t, n, k)
    return _softmax_cross_entropy(x, labels, is_index)


def _softmax_cross_entropy(x: np.ndarray, labels: np.ndarray, is_index: bool):
    """:func:`softmax_cross_entropy` on validated float scores and labels."""
    n = x.shape[0]
    logp = log_softmax(x)
    if is_index:
        loss = -float(logp[np.arange(n), labels].sum(dtype=np.float64)) / n
    else:
        loss = -float(np.sum(labels * logp, dtype=np.float64)) / n
    return loss, np.exp(logp)


def cross_entropy_error(y, t) -> float:
    """The book's cross-entropy of probabilities ``y`` against ``t`` (mean over rows).

    y : (N, K) or (K,) probabilities; t : class indices (N,) / scalar or one-hot
    rows of y's shape. Adds 1e-7 inside the log as the book does.
    """
    y = _float_array(y, "y")
    t = np.asarray(t)
    if y.ndim == 1:
        y = y.reshape(1, -1)
        t = t.reshape(1, -1) if t.ndim == 1 and t.size == y.shape[1] else t.reshape(1)
    n, k = y.shape
    labels, is_index = check_labels(t, n, k)
    if is_index:
        return -float(np.sum(np.log(y[np.arange(n), labels] + 1e-7))) / n
    return -float(np.sum(labels * np.log(y + 1e-7))) / n
