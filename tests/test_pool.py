"""Max pooling (layer and functional): known answers with ties, NaN and
padding; the oracle; gradient checks; the layer contract."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from helpers import (
    DTYPES,
    EDGE_POOL_CASES,
    PoolCase,
    assert_close,
    assert_gradient,
    distinct_array,
    pool_cases,
)
from hypothesis import given
from hypothesis import strategies as st

import pyconv.functional as F
from pyconv.layers import Pooling

# ---- known answers ------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_known_answer_with_ties(dtype):
    # x (4, 4), pool 2x2, stride 2; flat plane index h*4 + w in brackets.
    #
    #    1  3 |  2  2        window max   first max (row-major)   argmax
    #    3  0 |  1  2          3            (0,1) not (1,0)          1
    #   ------+------          2            (0,2) of three 2s        2
    #    5  5 |  0 -1          5            (2,0) of three 5s        8
    #    4  5 | -1 -2          0            (2,2)                   10
    #
    #   out = [[3, 2],      argmax = [[1,  2],
    #          [5, 0]]                [8, 10]]
    x = np.array([[1, 3, 2, 2], [3, 0, 1, 2], [5, 5, 0, -1], [4, 5, -1, -2]], dtype=dtype)
    x = x.reshape(1, 1, 4, 4)
    pool = Pooling(2, 2, stride=2)
    out = pool.forward(x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out[0, 0], [[3, 2], [5, 0]])
    np.testing.assert_array_equal(pool.argmax[0, 0], [[1, 2], [8, 10]])
    # Backward routes dout [[1, 2], [3, 4]] to the argmax positions only:
    #   0 1 2 0
    #   0 0 0 0
    #   3 0 4 0
    #   0 0 0 0
    dx = pool.backward(np.array([[[[1, 2], [3, 4]]]], dtype=dtype))
    expected = np.zeros((4, 4))
    expected[0, 1], expected[0, 2], expected[2, 0], expected[2, 2] = 1, 2, 3, 4
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx[0, 0], expected)
    ref_out, ref_arg = ref.max_pool2d_forward(x, 2, 2, 2, 0)
    np.testing.assert_array_equal(ref_out[0, 0], [[3, 2], [5, 0]])
    np.testing.assert_array_equal(ref_arg[0, 0], [[1, 2], [8, 10]])


def test_overlapping_windows_accumulate():
    # 3x3 input with its maximum in the centre; 2x2 windows, stride 1: all
    # four windows pick the centre (index 4), so dx there is the sum of dout.
    #   0 1 0        out = 9 9     argmax = 4 4
    #   2 9 3              9 9              4 4
    #   0 4 0
    x = np.array([[0, 1, 0], [2, 9, 3], [0, 4, 0]], dtype=np.float64).reshape(1, 1, 3, 3)
    out, argmax = F.max_pool2d(x, 2, 2, stride=1)
    np.testing.assert_array_equal(out[0, 0], [[9, 9], [9, 9]])
    np.testing.assert_array_equal(argmax[0, 0], [[4, 4], [4, 4]])
    dx = F.max_pool2d_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), argmax, x.shape)
    expected = np.zeros((3, 3))
    expected[1, 1] = 10.0
    np.testing.assert_array_equal(dx[0, 0], expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_padding_is_never_selected(dtype):
    # A (2, 2) plane of -5 (and of -inf) with a 3x3 window, pad 1: padding is
    # -inf, the real elements win; ties go to the first one, index 0.
    for value in (-5.0, -np.inf):
        x = np.full((1, 1, 2, 2), value, dtype=dtype)
        out, argmax = F.max_pool2d(x, 3, 3, stride=1, pad=1)
        assert out.shape == (1, 1, 2, 2)
        np.testing.assert_array_equal(out, x)
        np.testing.assert_array_equal(argmax, np.zeros((1, 1, 2, 2), dtype=np.int64))
    # With stride 2 the second window starts at column 1: [-1..1] x [1..3]
    #   -9 -8 -7          windows (rows/cols -1..1, stride 2 -> starts -1, 1)
    #   -6 -5 -4          out = [[-5, -4],   argmax = [[4, 5],
    #   -3 -2 -1                 [-2, -1]]             [7, 8]]
    x = -np.arange(9, 0, -1, dtype=dtype).reshape(1, 1, 3, 3)
    out, argmax = F.max_pool2d(x, 3, 3, stride=2, pad=1)
    np.testing.assert_array_equal(out[0, 0], [[-5, -4], [-2, -1]])
    np.testing.assert_array_equal(argmax[0, 0], [[4, 5], [7, 8]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates(dtype):
    #   1   NaN | 7  8       out = [NaN, NaN]   argmax = [1, 6]
    #   NaN 2   | NaN 9      (first NaN of each window in row-major order)
    nan = np.nan
    x = np.array([[1, nan, 7, 8], [nan, 2, nan, 9]], dtype=dtype).reshape(1, 1, 2, 4)
    out, argmax = F.max_pool2d(x, 2, 2, stride=2)
    assert np.isnan(out).all()
    np.testing.assert_array_equal(argmax[0, 0], [[1, 6]])
    # inf beats everything but NaN
    y = np.array([[1, np.inf], [-np.inf, 2]], dtype=dtype).reshape(1, 1, 2, 2)
    out, argmax = F.max_pool2d(y, 2, 2, stride=2)
    assert out[0, 0, 0, 0] == np.inf and argmax[0, 0, 0, 0] == 1


# ---- against the oracle ----------------------------------------------------------


def _pool_input(rng, shape, dtype, special: bool):
    """Small integers (many ties), optionally sprinkled with NaN and +-inf."""
    x = rng.integers(-3, 4, size=shape).astype(dtype)
    if special and x.size:
        for value in (np.nan, np.inf, -np.inf):
            mask = rng.random(shape) < 0.05
            x[mask] = value
    return x


def _check_pool(case: PoolCase, dtype, seed: int, *, special: bool, layer: bool) -> None:
    rng = np.random.default_rng(seed)
    x = _pool_input(rng, case.x_shape, dtype, special)
    if layer:
        pool = Pooling(case.ph, case.pw, stride=case.stride, pad=case.pad)
        out = pool.forward(x)
        argmax = pool.argmax
    else:
        out, argmax = F.max_pool2d(x, case.ph, case.pw, stride=case.stride, pad=case.pad)
    out_ref, arg_ref = ref.max_pool2d_forward(x, case.ph, case.pw, case.stride, case.pad)
    name = f"{case} {np.dtype(dtype).name}"
    assert out.shape == out_ref.shape, f"out shape {name}"
    assert out.dtype == dtype, f"out dtype {name}"
    assert argmax.dtype == np.int64 and argmax.shape == out.shape, f"argmax {name}"
    # Pooling selects: values and indices are exact.
    np.testing.assert_array_equal(out, out_ref.astype(dtype), err_msg=f"out {name}")
    np.testing.assert_array_equal(argmax, arg_ref, err_msg=f"argmax {name}")

    dout = rng.standard_normal(out.shape).astype(dtype)
    dout_copy = dout.copy()
    if layer:
        dx = pool.backward(dout)
    else:
        dx = F.max_pool2d_backward(dout, argmax, x.shape)
    dx_ref = ref.max_pool2d_backward(dout, arg_ref, x.shape)
    dx_mag = ref.max_pool2d_backward(np.abs(dout), arg_ref, x.shape)
    assert_close(dx, dx_ref, dtype=dtype, name=f"dx {name}", scale=dx_mag)
    np.testing.assert_array_equal(dout, dout_copy, err_msg="backward mutated dout")


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=pool_cases(), seed=st.integers(0, 2**32 - 1), special=st.booleans())
def test_layer_matches_oracle(dtype, case, seed, special):
    _check_pool(case, dtype, seed, special=special, layer=True)


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=pool_cases(max_n=4, max_hw=12, max_k=5), seed=st.integers(0, 2**32 - 1),
       special=st.booleans())
def test_functional_matches_oracle(dtype, case, seed, special):
    _check_pool(case, dtype, seed, special=special, layer=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", EDGE_POOL_CASES, ids=str)
def test_edge_cases(case, dtype):
    _check_pool(case, dtype, seed=99, special=False, layer=True)
    _check_pool(case, dtype, seed=98, special=True, layer=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_simpleconvnet_shape(dtype):
    # The book's network pools (N, 30, 24, 24) with 2x2, stride 2.
    case = PoolCase(8, 30, 24, 24, 2, 2, 2, 0)
    _check_pool(case, dtype, seed=5, special=False, layer=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype):
    pool = Pooling(2, 2, stride=2)
    out = pool.forward(np.zeros((0, 3, 4, 4), dtype=dtype))
    assert out.shape == (0, 3, 2, 2) and out.dtype == dtype
    assert pool.argmax.shape == (0, 3, 2, 2)
    dx = pool.backward(np.zeros((0, 3, 2, 2), dtype=dtype))
    assert dx.shape == (0, 3, 4, 4) and dx.dtype == dtype


# ---- gradient check (distinct values away from ties) ----------------------------


@pytest.mark.parametrize(
    "case",
    [PoolCase(2, 2, 4, 4, 2, 2, 2, 0), PoolCase(1, 2, 5, 5, 3, 3, 1, 1),
     PoolCase(2, 1, 5, 6, 2, 3, 2, 1), PoolCase(1, 1, 7, 7, 2, 2, 3, 0)],
    ids=str,
)
def test_gradcheck(case):
    rng = np.random.default_rng(11)
    x = distinct_array(rng, case.x_shape)
    pool = Pooling(case.ph, case.pw, stride=case.stride, pad=case.pad)
    out = pool.forward(x)
    proj = rng.standard_normal(out.shape)
    dx = pool.backward(proj)

    def loss() -> float:
        return float(np.sum(pool.forward(x) * proj))

    assert_gradient(dx, loss, x, name=f"pool dx {case}")


# ---- layer contract ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_dtype", "out_dtype"),
    [(np.uint8, np.float32), (np.int16, np.float32), (np.float16, np.float32),
     (np.bool_, np.float32), (np.int32, np.float64), (np.int64, np.float64),
     (np.float32, np.float32), (np.float64, np.float64)],
)
def test_input_dtypes(in_dtype, out_dtype):
    rng = np.random.default_rng(12)
    x = rng.integers(0, 2 if in_dtype is np.bool_ else 50, size=(2, 3, 6, 6)).astype(in_dtype)
    pool = Pooling(2, 2, stride=2)
    out = pool.forward(x)
    out_ref, arg_ref = ref.max_pool2d_forward(x.astype(np.float64), 2, 2, 2, 0)
    assert out.dtype == out_dtype
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(pool.argmax, arg_ref)
    dx = pool.backward(np.ones(out.shape, dtype=np.float64))
    assert dx.dtype == out_dtype and dx.shape == x.shape


def test_input_views_and_layouts():
    rng = np.random.default_rng(13)
    base = distinct_array(rng, (3, 4, 9, 10))
    views = {
        "strided": base[:, ::2, 1:, ::2],
        "fortran": np.asfortranarray(base),
        "transposed": base.transpose(0, 1, 3, 2),
        "negative-stride": base[::-1, :, ::-1],
    }
    for label, x in views.items():
        assert not x.flags.c_contiguous
        pool = Pooling(3, 2, stride=2, pad=1)
        out = pool.forward(x)
        out_ref, arg_ref = ref.max_pool2d_forward(x, 3, 2, 2, 1)
        np.testing.assert_array_equal(out, out_ref, err_msg=label)
        np.testing.assert_array_equal(pool.argmax, arg_ref, err_msg=label)
        dout = rng.standard_normal(out.shape[:3] + (2 * out.shape[3],))[..., ::2]
        dx = pool.backward(dout)
        assert_close(dx, ref.max_pool2d_backward(dout, arg_ref, x.shape), dtype=np.float64,
                     name=f"dx {label}")


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=pool_cases(max_hw=20), seed=st.integers(0, 2**32 - 1))
def test_layer_backward_bits_match_functional(dtype, case, seed):
    # The layer's backward (one-byte window offsets: a gather for disjoint
    # windows, a scatter for overlapping ones) and the functional one (int64
    # indices, always a scatter) give the same bits: a -0 gradient lands as
    # +0 (0 + dout) and NaN stays NaN.
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=case.x_shape).astype(dtype)
    pool = Pooling(case.ph, case.pw, stride=case.stride, pad=case.pad)
    out = pool.forward(x)
    dout = rng.standard_normal(out.shape).astype(dtype)
    if dout.size:
        dout.reshape(-1)[rng.random(dout.size) < 0.2] = -0.0
        dout.reshape(-1)[rng.random(dout.size) < 0.05] = np.nan
    dx = pool.backward(dout)
    dx_f = F.max_pool2d_backward(dout, pool.argmax, x.shape)
    bits = np.uint32 if np.dtype(dtype) == np.float32 else np.uint64
    np.testing.assert_array_equal(dx.view(bits), dx_f.view(bits), err_msg=str(case))


def test_backward_does_not_mutate_dout():
    rng = np.random.default_rng(14)
    pool = Pooling(2, 2, stride=1)
    out = pool.forward(rng.standard_normal((2, 2, 5, 5)))
    dout = rng.standard_normal(out.shape)
    before = dout.copy()
    pool.backward(dout)
    np.testing.assert_array_equal(dout, before)
    dout.setflags(write=False)
    pool.backward(dout)


@pytest.mark.parametrize(
    "bad, pos",
    [(16, 5), (-1, 0), (2**63 - 1, 7), (-(2**63), 3), (2**62, 6), (-(2**62), 2)],
)
def test_backward_argmax_range_check(bad, pos):
    # Every index in [0, H*W) passes (0 and H*W - 1 included); one bad index
    # among them is reported at its position, whatever its magnitude.
    dout = np.ones((1, 1, 2, 4), np.float32)
    good = np.array([0, 15, 1, 14, 2, 13, 3, 12], np.int64).reshape(1, 1, 2, 4)
    dx = F.max_pool2d_backward(dout, good, (1, 1, 4, 4))
    assert dx.sum() == 8 and dx.reshape(-1)[[0, 15]].tolist() == [1, 1]
    argmax = good.copy()
    argmax.reshape(-1)[pos] = bad
    with pytest.raises(ValueError, match=rf"argmax\[{pos}\] = {bad} is outside \[0, H\*W\)"):
        F.max_pool2d_backward(dout, argmax, (1, 1, 4, 4))
