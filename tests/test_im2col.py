"""im2col / col2im: the book's layout, known shapes, and the adjoint property."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from helpers import DTYPES, EDGE_CONV_CASES, assert_close, conv_cases
from hypothesis import given
from hypothesis import strategies as st

import pyconv
from pyconv import _core


def test_book_shapes():
    # The chapter's examples: 5x5 filters over 7x7 images, stride 1, pad 0.
    rng = np.random.default_rng(0)
    x1 = rng.random((1, 3, 7, 7))
    col1 = pyconv.im2col(x1, 5, 5, stride=1, pad=0)
    assert col1.shape == (9, 75)
    x2 = rng.random((10, 3, 7, 7))
    col2 = pyconv.im2col(x2, 5, 5, stride=1, pad=0)
    assert col2.shape == (90, 75)
    np.testing.assert_array_equal(col2, ref.im2col(x2, 5, 5, 1, 0))


def test_small_known_layout():
    # x (1, 1, 3, 3) = [[0 1 2]       2x2 windows, stride 1, pad 0:
    #                   [3 4 5]  ->   row (oh, ow) = window flattened (kh, kw)
    #                   [6 7 8]]
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    expected = np.array([[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]], dtype=np.float64)
    np.testing.assert_array_equal(pyconv.im2col(x, 2, 2), expected)
    # With pad 1 and stride 2, the windows start at (-1, -1), (-1, 1), (1, -1), (1, 1):
    #   [0 0 0 0]  [0 0 1 2]  [0 3 0 6]  [4 5 7 8]
    expected_pad = np.array(
        [[0, 0, 0, 0], [0, 0, 1, 2], [0, 3, 0, 6], [4, 5, 7, 8]], dtype=np.float64
    )
    np.testing.assert_array_equal(pyconv.im2col(x, 2, 2, stride=2, pad=1), expected_pad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", EDGE_CONV_CASES, ids=str)
def test_im2col_edge_cases(case, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(case.x_shape).astype(dtype)
    col = pyconv.im2col(x, case.fh, case.fw, case.stride, case.pad)
    expected = ref.im2col(x, case.fh, case.fw, case.stride, case.pad)
    assert col.dtype == dtype
    assert col.shape == expected.shape
    np.testing.assert_array_equal(col, expected, err_msg=f"im2col {case}")


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=conv_cases(max_n=3), seed=st.integers(0, 2**32 - 1))
def test_im2col_matches_definition(dtype, case, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape).astype(dtype)
    col = pyconv.im2col(x, case.fh, case.fw, case.stride, case.pad)
    expected = ref.im2col(x, case.fh, case.fw, case.stride, case.pad)
    # A pure copy: exact, and in the input's dtype.
    assert col.dtype == dtype, f"im2col {case}"
    assert col.shape == expected.shape, f"im2col {case}"
    np.testing.assert_array_equal(col, expected, err_msg=f"im2col {case}")


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=conv_cases(max_n=3), seed=st.integers(0, 2**32 - 1))
def test_col2im_matches_definition(dtype, case, seed):
    rng = np.random.default_rng(seed)
    oh, ow = case.out_hw
    col = rng.standard_normal((case.n * oh * ow, case.c * case.fh * case.fw)).astype(dtype)
    x = pyconv.col2im(col, case.x_shape, case.fh, case.fw, case.stride, case.pad)
    expected = ref.col2im(col, case.x_shape, case.fh, case.fw, case.stride, case.pad)
    scale = ref.col2im(np.abs(col), case.x_shape, case.fh, case.fw, case.stride, case.pad)
    assert_close(x, expected, dtype=dtype, name=f"col2im {case}", scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=conv_cases(max_n=3), seed=st.integers(0, 2**32 - 1))
def test_col2im_is_adjoint_of_im2col(dtype, case, seed):
    # <im2col(x), y> == <x, col2im(y)> for every x, y.
    rng = np.random.default_rng(seed)
    oh, ow = case.out_hw
    x = rng.standard_normal(case.x_shape).astype(dtype)
    y = rng.standard_normal((case.n * oh * ow, case.c * case.fh * case.fw)).astype(dtype)
    cx = pyconv.im2col(x, case.fh, case.fw, case.stride, case.pad)
    ty = pyconv.col2im(y, case.x_shape, case.fh, case.fw, case.stride, case.pad)
    lhs = np.sum(cx.astype(np.float64) * y)
    rhs = np.sum(x.astype(np.float64) * ty)
    # Both sides sum the same products; the scale bounds the rounding.
    scale = np.sum(np.abs(cx.astype(np.float64) * y))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert abs(lhs - rhs) <= tol * max(scale, 1.0), f"adjoint {case}: {lhs} != {rhs}"


def test_empty_batch_shapes():
    x = np.zeros((0, 3, 5, 5))
    col = pyconv.im2col(x, 3, 3, 1, 1)
    assert col.shape == (0, 27) and col.dtype == np.float64
    back = pyconv.col2im(col, (0, 3, 5, 5), 3, 3, 1, 1)
    assert back.shape == (0, 3, 5, 5) and back.dtype == np.float64


@pytest.mark.parametrize(
    ("in_dtype", "out_dtype"),
    [(np.uint8, np.float32), (np.int16, np.float32), (np.float16, np.float32),
     (np.int64, np.float64), (np.bool_, np.float32), (np.float32, np.float32)],
)
def test_im2col_promotes_real_inputs(in_dtype, out_dtype):
    x = (np.arange(2 * 2 * 4 * 4) % 7).astype(in_dtype).reshape(2, 2, 4, 4)
    col = pyconv.im2col(x, 2, 3, stride=1, pad=1)
    assert col.dtype == out_dtype
    np.testing.assert_array_equal(col, ref.im2col(x.astype(np.float64), 2, 3, 1, 1))


def test_im2col_accepts_views():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((3, 4, 9, 10))
    for x in (base[:, ::2, 1:, ::2], np.asfortranarray(base), base.transpose(0, 1, 3, 2)):
        np.testing.assert_array_equal(pyconv.im2col(x, 3, 2, 2, 1), ref.im2col(x, 3, 2, 2, 1))


def test_core_im2col_rejects_non_contiguous():
    # The core never copies or casts: a strided view is a TypeError there.
    x = np.zeros((2, 2, 6, 6))[:, :, ::2]
    with pytest.raises(TypeError):
        _core.im2col(x, 2, 2, 1, 0)
    with pytest.raises(TypeError):
        _core.im2col(np.zeros((1, 1, 3, 3), dtype=np.int64), 2, 2, 1, 0)
