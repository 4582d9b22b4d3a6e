"""Shared test helpers: the one comparison helper, gradient checks and
hypothesis strategies for small convolution / pooling shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Relative tolerances, scaled by the magnitude of the terms that were summed.
TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
DTYPES = (np.float32, np.float64)


def assert_close(actual, expected, *, dtype, name: str, scale=None, tol=None) -> None:
    """Check shape, then dtype, then values, and name the failing case.

    Parameters
    ----------
    actual : array from pyconv
    expected : float64 oracle array
    dtype : the dtype ``actual`` must have
    name : description of the case (op, shapes, hyper-parameters)
    scale : optional array or float; absolute tolerance is ``tol * max|scale|``
        (default: ``max(1, max|expected|)``). Pass the oracle of the absolute
        values (e.g. conv of ``|x|`` with ``|W|``) when the result sums terms
        that may cancel.
    tol : relative tolerance; defaults to 1e-4 (float32) / 1e-10 (float64)
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (
        f"{name}: shape {actual.shape} != expected {expected.shape}"
    )
    assert actual.dtype == np.dtype(dtype), f"{name}: dtype {actual.dtype} != expected {dtype}"
    if tol is None:
        tol = TOL[np.dtype(dtype)]
    if scale is None:
        scale = expected
    finite = np.abs(np.asarray(scale, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    mag = max(1.0, float(finite.max())) if finite.size else 1.0
    np.testing.assert_allclose(
        actual.astype(np.float64), expected, rtol=tol, atol=tol * mag, err_msg=name
    )


def random_array(rng: np.random.Generator, shape, dtype=np.float64) -> np.ndarray:
    """Standard-normal values of ``dtype`` (C-contiguous)."""
    return rng.standard_normal(shape).astype(dtype)


def distinct_array(rng: np.random.Generator, shape, gap: float = 0.05) -> np.ndarray:
    """float64 values that are pairwise at least ``gap`` apart, none near 0.

    For gradient checks of max pooling: with ``eps << gap`` a perturbation
    never changes which element of a window is the maximum.
    """
    size = int(np.prod(shape))
    values = (np.arange(size) - size / 2 + 0.5) * gap
    return rng.permutation(values).reshape(shape)


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` w.r.t. every element of ``x``.

    ``x`` is perturbed in place (and restored), so ``f`` must read it by
    reference.
    """
    grad = np.zeros_like(x, dtype=np.float64)
    flat = x.reshape(-1)  # a view: x is C-contiguous
    assert np.shares_memory(flat, x)
    g = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return grad


def assert_gradient(analytic, f: Callable[[], float], x: np.ndarray, *, name: str) -> None:
    """Full central-difference check (torch gradcheck defaults).

    eps 1e-6, atol 1e-5, rtol 1e-3, in float64.
    """
    assert x.dtype == np.float64
    numeric = numerical_gradient(f, x, eps=1e-6)
    np.testing.assert_allclose(analytic, numeric, atol=1e-5, rtol=1e-3, err_msg=name)


def assert_directional(analytic, f: Callable[[], float], x: np.ndarray, rng, *, name: str):
    """Cheap check along one random direction v: ``<g, v>`` vs
    ``(f(x + eps v) - f(x - eps v)) / 2 eps`` (JAX ``check_grads`` style)."""
    eps = 1e-6
    v = rng.standard_normal(x.shape)
    old = x.copy()
    x += eps * v
    fp = f()
    x[...] = old - eps * v
    fm = f()
    x[...] = old
    numeric = (fp - fm) / (2 * eps)
    np.testing.assert_allclose(
        float(np.sum(analytic * v)), numeric, atol=1e-5, rtol=1e-3, err_msg=name
    )


# ---- hypothesis strategies --------------------------------------------------


@dataclass(frozen=True)
class ConvCase:
    """Shapes and hyper-parameters of one convolution (out_h, out_w >= 1)."""

    n: int
    c: int
    h: int
    w: int
    fn: int
    fh: int
    fw: int
    stride: int
    pad: int

    @property
    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def w_shape(self):
        return (self.fn, self.c, self.fh, self.fw)

    @property
    def out_hw(self):
        return (
            (self.h + 2 * self.pad - self.fh) // self.stride + 1,
            (self.w + 2 * self.pad - self.fw) // self.stride + 1,
        )

    def __str__(self):
        return (
            f"x{self.x_shape} W{self.w_shape} stride={self.stride} pad={self.pad}"
        )


@st.composite
def conv_cases(draw, max_n: int = 4, max_c: int = 3, max_hw: int = 8, max_k: int = 4,
               max_fn: int = 4, min_n: int = 0):
    """Small convolutions, biased towards the edge cases: kernel == padded
    input, stride > kernel, pad >= kernel - 1, 1x1 images, rectangular kernels,
    odd and empty batches."""
    n = draw(st.integers(min_n, max_n))
    c = draw(st.integers(1, max_c))
    fn = draw(st.integers(1, max_fn))
    fh = draw(st.integers(1, max_k))
    fw = draw(st.integers(1, max_k))
    # up to kernel + 1: some windows then lie wholly in the padding
    pad = draw(st.integers(0, max(fh, fw) + 1))
    stride = draw(st.integers(1, max(fh, fw) + 2))
    # Input at least as large as the kernel once padded.
    h = draw(st.integers(max(1, fh - 2 * pad), max(max_hw, fh)))
    w = draw(st.integers(max(1, fw - 2 * pad), max(max_hw, fw)))
    return ConvCase(n, c, h, w, fn, fh, fw, stride, pad)


@dataclass(frozen=True)
class PoolCase:
    """Shapes and hyper-parameters of one max pooling (out_h, out_w >= 1)."""

    n: int
    c: int
    h: int
    w: int
    ph: int
    pw: int
    stride: int
    pad: int

    @property
    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    def __str__(self):
        return f"x{self.x_shape} pool=({self.ph}, {self.pw}) stride={self.stride} pad={self.pad}"


@st.composite
def pool_cases(draw, max_n: int = 3, max_c: int = 3, max_hw: int = 9, max_k: int = 4,
               min_n: int = 0):
    """Small poolings; ``pad <= min(pool_h, pool_w) // 2``."""
    n = draw(st.integers(min_n, max_n))
    c = draw(st.integers(1, max_c))
    ph = draw(st.integers(1, max_k))
    pw = draw(st.integers(1, max_k))
    pad = draw(st.integers(0, min(ph, pw) // 2))
    stride = draw(st.integers(1, max(ph, pw) + 2))
    h = draw(st.integers(max(1, ph - 2 * pad), max(max_hw, ph)))
    w = draw(st.integers(max(1, pw - 2 * pad), max(max_hw, pw)))
    return PoolCase(n, c, h, w, ph, pw, stride, pad)


# Explicit edge cases, run in addition to the hypothesis draws.
EDGE_CONV_CASES = [
    ConvCase(2, 3, 5, 5, 4, 5, 5, 1, 0),  # kernel == input -> 1x1 output
    ConvCase(3, 2, 4, 6, 2, 6, 8, 1, 1),  # kernel == padded input
    ConvCase(2, 2, 9, 9, 3, 2, 2, 3, 0),  # stride > kernel (skips pixels)
    ConvCase(1, 1, 7, 7, 1, 1, 1, 4, 0),  # 1x1 kernel, stride 4
    ConvCase(3, 2, 5, 4, 2, 3, 3, 1, 2),  # pad == kernel - 1 (full conv)
    ConvCase(2, 1, 4, 4, 2, 4, 2, 2, 3),  # pad == kernel - 1, rectangular
    ConvCase(5, 3, 1, 1, 2, 1, 1, 1, 0),  # 1x1 images, direct path
    ConvCase(3, 2, 1, 1, 3, 3, 3, 1, 1),  # 1x1 images, padded 3x3 kernel
    ConvCase(3, 2, 6, 7, 3, 1, 3, 1, 0),  # rectangular kernel (1, 3)
    ConvCase(5, 2, 7, 5, 3, 4, 2, 2, 1),  # rectangular kernel, odd batch
    ConvCase(7, 4, 6, 6, 5, 1, 1, 1, 0),  # 1x1 stride 1 pad 0 (direct GEMM path)
    ConvCase(1, 3, 12, 12, 4, 3, 3, 1, 1),  # single image: threads share the GEMM
    ConvCase(0, 3, 5, 5, 2, 3, 3, 1, 1),  # empty batch
    ConvCase(0, 2, 4, 4, 3, 1, 1, 1, 0),  # empty batch, direct path
]

EDGE_POOL_CASES = [
    PoolCase(2, 3, 4, 4, 2, 2, 2, 0),  # the book's 2x2 stride 2
    PoolCase(1, 2, 5, 5, 5, 5, 1, 0),  # window == input
    PoolCase(3, 1, 7, 7, 2, 2, 3, 0),  # stride > window
    PoolCase(2, 2, 5, 6, 3, 3, 1, 1),  # padded 3x3, stride 1
    PoolCase(1, 1, 1, 1, 1, 1, 1, 0),  # 1x1 image
    PoolCase(3, 2, 1, 1, 3, 3, 1, 1),  # 1x1 image, padded window
    PoolCase(5, 1, 6, 5, 2, 3, 2, 1),  # rectangular window, odd batch
    PoolCase(0, 3, 4, 4, 2, 2, 2, 0),  # empty batch
    PoolCase(2, 3, 23, 31, 3, 3, 2, 1),  # 3x3 stride 2 (vector rows, each row's tail)
    PoolCase(2, 2, 30, 34, 3, 3, 2, 0),  # 3x3 stride 2, the last vector at the row's end
    PoolCase(1, 2, 9, 40, 2, 2, 2, 0),  # 2x2 stride 2, long rows
    PoolCase(1, 2, 9, 41, 2, 2, 2, 0),  # 2x2 stride 2, odd width: a column in no window
    PoolCase(2, 2, 11, 21, 2, 2, 2, 1),  # 2x2 stride 2 padded: windows over both row ends
    PoolCase(1, 2, 10, 20, 2, 2, 2, 1),  # padded, even width: the last window over the end
    PoolCase(1, 2, 13, 29, 2, 3, 4, 1),  # stride > window, padded: gaps between windows
    PoolCase(2, 1, 17, 18, 16, 16, 1, 8),  # 256-element windows: the largest one-byte offsets
    PoolCase(1, 2, 18, 18, 17, 16, 1, 0),  # 272 elements: the layer keeps int64 indices
]

# For @given tests that take the per-ISA fixture: it is set once per test, not
# per example, which is what we want.
isa_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
