"""Gradient-descent optimizers with the book's update rules (``common/optimizer.py``).

``update(params, grads)`` changes every array of ``params`` in place (the
network's layers hold the same arrays) and never rebinds a key. Per-parameter
state (the book's ``v``, ``h``, ``m`` dicts) is keyed by parameter name, created
on the first update in the parameter's dtype, and updated in place too.
"""

from __future__ import annotations

import math

import numpy as np

from . import _core

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

__all__ = [
    "SGD",
    "AdaGrad",
    "Adam",
    "Momentum",
    "Nesterov",
    "Optimizer",
    "RMSprop",
    "get_optimizer",
]


def _check_rate(cls: str, name: str, value, *, upper_open: float | None = None) -> float:
    """``value`` as a float > 0 (and < ``upper_open`` if given), else ValueError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{cls}: expected {name} to be a number, but got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{cls}: expected {name} > 0, but got {value!r}")
    if upper_open is not None and v >= upper_open:
        raise ValueError(f"{cls}: expected {name} < {upper_open}, but got {value!r}")
    return v


def _check_fraction(cls: str, name: str, value) -> float:
    """``value`` as a float in [0, 1), else ValueError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{cls}: expected {name} to be a number, but got {value!r}") from None
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{cls}: expected 0 <= {name} < 1, but got {value!r}")
    return v


def _fused(param: np.ndarray, grad: np.ndarray) -> bool:
    """Whether the compiled in-place kernels can update ``param`` (and its
    state arrays, made like it): C-contiguous, aligned and writeable float32 or
    float64, with a gradient of the same dtype."""
    f = param.flags
    return (param.dtype in _FLOATS and grad.dtype == param.dtype and f.c_contiguous
            and f.aligned and f.writeable)


class Optimizer:
    """Base class: validates ``params``/``grads`` and calls ``_step`` per parameter.

    Subclasses implement ``_step(key, param, grad)``, updating ``param`` in place.
    """

    def __init__(self, lr: float):
        self.lr = _check_rate(type(self).__name__, "lr", lr)

    def _begin(self) -> None:
        """Hook run once per :meth:`update`, before the parameters (e.g. Adam's step count)."""

    def update(self, params: dict, grads: dict) -> None:
        """One step: update every ``params[key]`` in place from ``grads[key]``.

        Parameters
        ----------
        params : dict of float ndarrays (updated in place)
        grads : dict with (at least) the same keys and matching shapes
        """
        name = type(self).__name__
        for key, param in params.items():
            if key not in grads:
                raise ValueError(f"{name}.update: no gradient for parameter {key!r}")
            if not isinstance(param, np.ndarray) or param.dtype.kind != "f":
                raise TypeError(f"{name}.update: parameter {key!r} must be a float numpy array")
            if np.shape(grads[key]) != param.shape:
                raise ValueError(
                    f"{name}.update: expected grads[{key!r}] of shape {param.shape}, "
                    f"but got {np.shape(grads[key])}"
                )
        self._begin()
        for key, param in params.items():
            grad = np.asarray(grads[key])
            if grad.dtype != param.dtype:
                grad = grad.astype(param.dtype)
            self._step(key, param, grad)

    @staticmethod
    def _buffer(table: dict, key: str, param: np.ndarray) -> np.ndarray:
        """``table[key]``: a zero-initialized state array like ``param``, made on first use."""
        buf = table.get(key)
        if buf is None or buf.shape != param.shape or buf.dtype != param.dtype:
            buf = table[key] = np.zeros_like(param)
        return buf

    def _step(self, key: str, param: np.ndarray, grad: np.ndarray) -> None:
        raise NotImplementedError

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in self._hyper().items())
        return f"{type(self).__name__}({fields})"

    def _hyper(self) -> dict:
        return {"lr": self.lr}


class SGD(Optimizer):
    """Stochastic gradient descent: ``W -= lr * dW``."""

    def __init__(self, lr: float = 0.01):
        super().__init__(lr)

    def _step(self, key, param, grad):
        param -= param.dtype.type(self.lr) * grad


class Momentum(Optimizer):
    """Momentum SGD: ``v = momentum * v - lr * dW``; ``W += v``."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.9):
        super().__init__(lr)
        self.momentum = _check_fraction("Momentum", "momentum", momentum)
        self.v: dict = {}

    def _step(self, key, param, grad):
        v = self._buffer(self.v, key, param)
        t = param.dtype.type
        v *= t(self.momentum)
        v -= t(self.lr) * grad
        param += v

    def _hyper(self):
        return {"lr": self.lr, "momentum": self.momentum}


class Nesterov(Optimizer):
    """Nesterov's accelerated gradient in the book's form:
    ``v = momentum * v - lr * dW``;
    ``W += momentum**2 * v - (1 + momentum) * lr * dW``.
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.9):
        super().__init__(lr)
        self.momentum = _check_fraction("Nesterov", "momentum", momentum)
        self.v: dict = {}

    def _step(self, key, param, grad):
        v = self._buffer(self.v, key, param)
        t = param.dtype.type
        m = self.momentum
        v *= t(m)
        v -= t(self.lr) * grad
        param += t(m * m) * v
        param -= t((1 + m) * self.lr) * grad

    def _hyper(self):
        return {"lr": self.lr, "momentum": self.momentum}


class AdaGrad(Optimizer):
    """AdaGrad: ``h += dW**2``; ``W -= lr * dW / (sqrt(h) + eps)`` (eps = 1e-7)."""

    def __init__(self, lr: float = 0.01, eps: float = 1e-7):
        super().__init__(lr)
        self.eps = _check_rate("AdaGrad", "eps", eps)
        self.h: dict = {}

    def _step(self, key, param, grad):
        h = self._buffer(self.h, key, param)
        t = param.dtype.type
        h += grad * grad
        denom = np.sqrt(h)
        denom += t(self.eps)
        np.divide(grad, denom, out=denom)
        denom *= t(self.lr)
        param -= denom

    def _hyper(self):
        return {"lr": self.lr, "eps": self.eps}


class RMSprop(Optimizer):
    """RMSprop: ``h = decay_rate * h + (1 - decay_rate) * dW**2``;
    ``W -= lr * dW / (sqrt(h) + eps)`` (eps = 1e-7)."""

    def __init__(self, lr: float = 0.01, decay_rate: float = 0.99, eps: float = 1e-7):
        super().__init__(lr)
        self.decay_rate = _check_fraction("RMSprop", "decay_rate", decay_rate)
        self.eps = _check_rate("RMSprop", "eps", eps)
        self.h: dict = {}

    def _step(self, key, param, grad):
        h = self._buffer(self.h, key, param)
        t = param.dtype.type
        h *= t(self.decay_rate)
        h += t(1 - self.decay_rate) * grad * grad
        denom = np.sqrt(h)
        denom += t(self.eps)
        np.divide(grad, denom, out=denom)
        denom *= t(self.lr)
        param -= denom

    def _hyper(self):
        return {"lr": self.lr, "decay_rate": self.decay_rate, "eps": self.eps}


class Adam(Optimizer):
    """Adam with the book's bias correction folded into the step size:

    ``iter += 1``; ``lr_t = lr * sqrt(1 - beta2**iter) / (1 - beta1**iter)``;
    ``m += (1 - beta1) * (dW - m)``; ``v += (1 - beta2) * (dW**2 - v)``;
    ``W -= lr_t * m / (sqrt(v) + eps)`` (eps = 1e-7).

    Contiguous float32/float64 parameters are updated by one compiled pass
    with NumPy's roundings, except that subnormal values (below ~1.2e-38 in
    float32) count as zero: the moments of weights whose gradient stays 0
    decay into that range, where arithmetic is ~30x slower.
    """

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-7):
        super().__init__(lr)
        self.beta1 = _check_fraction("Adam", "beta1", beta1)
        self.beta2 = _check_fraction("Adam", "beta2", beta2)
        self.eps = _check_rate("Adam", "eps", eps)
        self.iter = 0
        self.m: dict = {}
        self.v: dict = {}
        self._scratch: dict = {}
        self._lr_t = None

    def _begin(self):
        self.iter += 1
        self._lr_t = (self.lr * math.sqrt(1.0 - self.beta2 ** self.iter)
                      / (1.0 - self.beta1 ** self.iter))

    def _step(self, key, param, grad):
        m = self._buffer(self.m, key, param)
        v = self._buffer(self.v, key, param)
        if _fused(param, grad):  # the same operations in one pass (and in parallel)
            g = np.ascontiguousarray(grad)
            if any(np.may_share_memory(g, a) for a in (param, m, v)):
                g = g.copy()  # the gradient as it was before the step
            _core.adam_update(param, g, m, v, self._lr_t, 1 - self.beta1, 1 - self.beta2,
                              self.eps)
            return
        scratch = self._buffer(self._scratch, key, param)
        t = param.dtype.type
        np.subtract(grad, m, out=scratch)       # dW - m
        scratch *= t(1 - self.beta1)
        m += scratch
        np.multiply(grad, grad, out=scratch)    # dW**2 - v
        scratch -= v
        scratch *= t(1 - self.beta2)
        v += scratch
        np.sqrt(v, out=scratch)                 # lr_t * m / (sqrt(v) + eps)
        scratch += t(self.eps)
        np.divide(m, scratch, out=scratch)
        scratch *= t(self._lr_t)
        param -= scratch

    def _hyper(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


_OPTIMIZERS = {
    cls.__name__.lower(): cls for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam)
}


def get_optimizer(name: str, **kwargs) -> Optimizer:
    """An optimizer by (case-insensitive) name: sgd, momentum, nesterov, adagrad,
    rmsprop or adam; ``kwargs`` go to its constructor (e.g. ``lr=0.001``)."""
    if not isinstance(name, str):
        raise TypeError(f"get_optimizer: expected a name (str), but got {type(name).__name__}")
    cls = _OPTIMIZERS.get(name.lower())
    if cls is None:
        raise ValueError(
            f"get_optimizer: unknown optimizer {name!r}; expected one of "
            f"{', '.join(c.__name__ for c in _OPTIMIZERS.values())}"
        )
    return cls(**kwargs)
