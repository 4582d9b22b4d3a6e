"""Affine, Relu, Sigmoid, SoftmaxWithLoss and Dropout: known answers, float64
gradient checks, dtype handling and the "backward never mutates dout" contract;
plus the pure-NumPy functions in pyconv.functions."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradient

from pyconv.functions import (
    cross_entropy_error,
    log_softmax,
    sigmoid,
    softmax,
    softmax_cross_entropy,
)
from pyconv.layers import Affine, Dropout, Relu, Sigmoid, SoftmaxWithLoss


def _rng(seed=0):
    return np.random.default_rng(seed)


def _projected_loss(layer, x, r):
    """Scalar ``sum(layer.forward(x) * r)``: its gradient w.r.t. x is ``backward(r)``."""
    return lambda: float(np.sum(layer.forward(x) * r))


# ---- functions -----------------------------------------------------------------


def test_softmax_rows_sum_to_one_and_are_stable():
    x = np.array([[1000.0, 1000.0, 0.0], [-5.0, 0.0, 5.0]], dtype=np.float32)
    y = softmax(x)
    assert y.dtype == np.float32
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(y[0], [0.5, 0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(np.exp(log_softmax(x)), y, rtol=1e-5, atol=1e-7)


def test_softmax_cross_entropy_known_answer():
    # uniform scores over 4 classes: loss = log 4 for any label
    loss, y = softmax_cross_entropy(np.zeros((3, 4)), np.array([0, 3, 1]))
    assert loss == pytest.approx(np.log(4.0))
    np.testing.assert_allclose(y, 0.25)
    # a confident, correct prediction has a tiny (not epsilon-clipped) loss
    loss, _ = softmax_cross_entropy(np.array([[50.0, 0.0]]), np.array([0]))
    assert 0 <= loss < 1e-20


def test_cross_entropy_error_matches_the_book():
    y = np.array([0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0])
    t = np.zeros(10)
    t[2] = 1
    # the book's example: 0.510825457099338
    assert cross_entropy_error(y, t) == pytest.approx(0.510825457099338, rel=1e-6)
    assert cross_entropy_error(y, 2) == pytest.approx(0.510825457099338, rel=1e-6)


def test_sigmoid_no_overflow():
    x = np.array([-1000.0, 0.0, 1000.0])
    np.testing.assert_allclose(sigmoid(x), [0.0, 0.5, 1.0])


# ---- Affine -----------------------------------------------------------------------


def test_affine_forward_matches_numpy():
    rng = _rng()
    W = rng.standard_normal((12, 5))
    b = rng.standard_normal(5)
    x = rng.standard_normal((3, 12))
    np.testing.assert_allclose(Affine(W, b).forward(x), x @ W + b, rtol=1e-12)


def test_affine_flattens_4d_input_and_restores_shape():
    rng = _rng(1)
    W = rng.standard_normal((2 * 3 * 2, 4))
    b = rng.standard_normal(4)
    x = rng.standard_normal((5, 2, 3, 2))
    layer = Affine(W, b)
    out = layer.forward(x)
    np.testing.assert_allclose(out, x.reshape(5, -1) @ W + b, rtol=1e-12)
    dx = layer.backward(np.ones_like(out))
    assert dx.shape == x.shape


@pytest.mark.parametrize("shape", [(4, 6), (3, 2, 2, 3)])
def test_affine_gradients(shape):
    rng = _rng(2)
    d = int(np.prod(shape[1:]))
    W = rng.standard_normal((d, 3))
    b = rng.standard_normal(3)
    x = rng.standard_normal(shape)
    r = rng.standard_normal((shape[0], 3))
    layer = Affine(W, b)
    layer.forward(x)
    dx = layer.backward(r)
    f = _projected_loss(layer, x, r)
    assert_gradient(dx, f, x, name=f"Affine dx {shape}")
    assert_gradient(layer.dW.copy(), f, W, name="Affine dW")
    assert_gradient(layer.db.copy(), f, b, name="Affine db")


def test_affine_computes_in_parameter_dtype():
    W = np.ones((4, 2), dtype=np.float32)
    b = np.zeros(2, dtype=np.float32)
    layer = Affine(W, b)
    out = layer.forward(np.ones((3, 4), dtype=np.float64))
    assert out.dtype == np.float32
    dx = layer.backward(np.ones((3, 2), dtype=np.float64))
    assert dx.dtype == np.float32 and layer.dW.dtype == np.float32 and layer.db.dtype == np.float32


def test_affine_holds_parameters_by_reference():
    W = np.zeros((2, 2))
    b = np.zeros(2)
    layer = Affine(W, b)
    W += np.eye(2)
    np.testing.assert_allclose(layer.forward(np.array([[1.0, 2.0]])), [[1.0, 2.0]])


@pytest.mark.parametrize(
    "W, b, err",
    [
        (np.zeros((2, 3)), np.zeros(2), ValueError),
        (np.zeros(3), np.zeros(3), ValueError),
        (np.zeros((2, 3), dtype=np.int64), np.zeros(3, dtype=np.int64), TypeError),
        (np.zeros((2, 3)), np.zeros(3, dtype=np.float32), TypeError),
        ([[0.0]], np.zeros(1), TypeError),
    ],
)
def test_affine_rejects_bad_parameters(W, b, err):
    with pytest.raises(err):
        Affine(W, b)


def test_affine_rejects_wrong_input_and_dout_shapes():
    layer = Affine(np.zeros((6, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="Affine.forward"):
        layer.forward(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="before forward"):
        layer.backward(np.zeros((3, 2)))
    layer.forward(np.zeros((3, 6)))
    with pytest.raises(ValueError, match="Affine.backward"):
        layer.backward(np.zeros((3, 3)))


# ---- Relu / Sigmoid ------------------------------------------------------------------


def test_relu_known_answer():
    layer = Relu()
    x = np.array([[-1.0, 0.0, 2.0], [3.0, -0.5, 0.25]])
    np.testing.assert_array_equal(layer.forward(x), [[0, 0, 2], [3, 0, 0.25]])
    # gradient passes only where x > 0 (0 at x == 0, as the book's mask x <= 0)
    np.testing.assert_array_equal(layer.backward(np.full((2, 3), 7.0)), [[0, 0, 7], [7, 0, 7]])


def test_relu_and_sigmoid_gradients():
    rng = _rng(3)
    # Relu: values away from the kink at 0
    x = rng.uniform(0.1, 1.0, (3, 4)) * rng.choice([-1.0, 1.0], (3, 4))
    r = rng.standard_normal((3, 4))
    for layer in (Relu(), Sigmoid()):
        layer.forward(x)
        dx = layer.backward(r)
        assert_gradient(dx, _projected_loss(layer, x, r), x, name=repr(layer))


def test_relu_keeps_float32_and_does_not_mutate_input():
    x = np.array([-1.0, 2.0], dtype=np.float32)
    x0 = x.copy()
    out = Relu().forward(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(x, x0)


# ---- SoftmaxWithLoss -------------------------------------------------------------------


@pytest.mark.parametrize("one_hot", [False, True])
def test_softmax_with_loss_gradient(one_hot):
    rng = _rng(4)
    x = rng.standard_normal((5, 4))
    t = rng.integers(0, 4, 5)
    labels = np.eye(4)[t] if one_hot else t
    layer = SoftmaxWithLoss()
    layer.forward(x, labels)
    dx = layer.backward()
    assert_gradient(dx, lambda: layer.forward(x, labels), x, name=f"SoftmaxWithLoss {one_hot=}")
    # both label forms give the same loss and gradient
    other = SoftmaxWithLoss()
    loss2 = other.forward(x, t if one_hot else np.eye(4)[t])
    assert loss2 == pytest.approx(layer.forward(x, labels), rel=1e-12)
    np.testing.assert_allclose(other.backward(), layer.backward(), rtol=1e-12)


def test_softmax_with_loss_backward_scales_by_dout():
    layer = SoftmaxWithLoss()
    layer.forward(np.zeros((2, 2)), np.array([0, 1]))
    # y = 0.5 everywhere; (y - t) / N = +-0.25; times dout = 2
    np.testing.assert_allclose(layer.backward(2.0), [[-0.5, 0.5], [0.5, -0.5]])


def test_softmax_with_loss_float32():
    layer = SoftmaxWithLoss()
    loss = layer.forward(np.zeros((2, 3), dtype=np.float32), [0, 1])
    assert isinstance(loss, float)
    assert layer.y.dtype == np.float32 and layer.backward().dtype == np.float32


@pytest.mark.parametrize(
    "t",
    [
        np.array([0, 3]),  # 3 is out of range for K = 3
        np.array([-1, 0]),
        np.array([0.5, 1.0]),  # not integral
        np.array([True, False]),
        np.array([0, 1, 2]),  # wrong N
        np.zeros((2, 4)),  # wrong one-hot width
    ],
)
def test_softmax_with_loss_rejects_bad_labels(t):
    with pytest.raises(ValueError, match="labels"):
        SoftmaxWithLoss().forward(np.zeros((2, 3)), t)


# ---- Dropout -----------------------------------------------------------------------------


def test_dropout_train_and_test_modes():
    x = np.ones((200, 50), dtype=np.float32)
    layer = Dropout(0.3, rng=np.random.default_rng(0))
    out = layer.forward(x, train_flg=True)
    assert out.dtype == np.float32
    kept = out != 0
    assert 0.65 < kept.mean() < 0.75  # keep probability 0.7
    np.testing.assert_array_equal(layer.backward(np.full_like(x, 2.0)), 2.0 * kept)
    out_test = layer.forward(x, train_flg=False)
    np.testing.assert_allclose(out_test, 0.7)
    np.testing.assert_allclose(layer.backward(np.ones_like(x)), 0.7)


def test_dropout_is_reproducible_with_a_seeded_generator():
    x = np.ones((10, 10))
    a = Dropout(0.5, rng=np.random.default_rng(7)).forward(x)
    b = Dropout(0.5, rng=np.random.default_rng(7)).forward(x)
    np.testing.assert_array_equal(a, b)
    assert Dropout().rng is not None  # default_rng() when rng is None


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_dropout_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match="dropout_ratio"):
        Dropout(ratio)


def test_dropout_rejects_legacy_random_state():
    with pytest.raises(TypeError, match="Generator"):
        Dropout(0.5, rng=np.random.RandomState(0))


# ---- contract shared by all layers ----------------------------------------------------------


def _layers_and_inputs():
    rng = _rng(5)
    x = rng.standard_normal((4, 6)) + 0.1
    return [
        (Affine(rng.standard_normal((6, 3)), np.zeros(3)), x),
        (Relu(), x),
        (Sigmoid(), x),
        (Dropout(0.5, rng=np.random.default_rng(0)), x),
    ]


@pytest.mark.parametrize("index", range(4))
def test_backward_never_mutates_dout(index):
    layer, x = _layers_and_inputs()[index]
    out = layer.forward(x)
    dout = np.random.default_rng(1).standard_normal(out.shape)
    dout.flags.writeable = False  # any in-place write would raise
    layer.backward(dout)
    smx = SoftmaxWithLoss()
    smx.forward(x, np.zeros(4, dtype=np.int64))
    y0 = smx.y.copy()
    smx.backward(1)
    smx.backward(1)
    np.testing.assert_array_equal(smx.y, y0)  # cached probabilities untouched


def test_reprs_are_short():
    for layer in (Affine(np.zeros((3, 2)), np.zeros(2)), Relu(), Sigmoid(), SoftmaxWithLoss(),
                  Dropout(0.25)):
        text = repr(layer)
        assert type(layer).__name__ in text and len(text) < 80
    assert "3->2" in repr(Affine(np.zeros((3, 2)), np.zeros(2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_core_kernel_special_values_and_threads(dtype):
    # Large enough for the threaded path of the core kernel; NaN propagates
    # forward (as np.maximum), and backward zeroes masked entries exactly
    # (an inf in dout must not become NaN).
    import pyconv

    rng = np.random.default_rng(3)
    x = rng.standard_normal(200_003).astype(dtype)
    x[:4] = [np.nan, -np.inf, np.inf, -0.0]
    dout = rng.standard_normal(x.shape).astype(dtype)
    dout[4:8] = [np.inf, -np.inf, np.nan, 1.0]
    x[4:8] = [-1.0, -2.0, -3.0, 0.0]
    results = []
    for threads in (1, 2):
        old = pyconv.get_num_threads()
        pyconv.set_num_threads(threads)
        try:
            layer = Relu()
            y = layer.forward(x)
            dx = layer.backward(dout)
        finally:
            pyconv.set_num_threads(old)
        results.append((y, dx))
    y, dx = results[0]
    assert np.isnan(y[0]) and y[1] == 0 and y[2] == np.inf
    np.testing.assert_array_equal(y[4:], np.where(x[4:] > 0, x[4:], 0))
    np.testing.assert_array_equal(dx, np.where(x > 0, dout, 0))
    assert dx.dtype == dtype and y.dtype == dtype
    for y2, dx2 in results[1:]:
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_array_equal(dx2, dx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_core_backward_reads_any_nonzero_mask_byte_as_set(dtype):
    # A NumPy bool array made from raw bytes may hold bytes other than 0 and
    # 1; the core reads the mask as bytes, so every nonzero one passes dout
    # through unchanged (bit for bit: -0.0 and NaN too), and zero gives +0.0.
    from pyconv import _core

    rng = np.random.default_rng(4)
    raw = rng.integers(0, 256, 100_003).astype(np.uint8)
    raw[:4] = [0, 1, 2, 255]
    mask = raw.view(np.bool_)
    dout = rng.standard_normal(raw.shape).astype(dtype)
    dout[1:3] = [-0.0, np.nan]
    dx = _core.relu_backward(dout, mask)
    keep = raw != 0
    np.testing.assert_array_equal(dx.view(np.uint8),
                                  np.where(keep, dout, 0).astype(dtype).view(np.uint8))
    assert np.signbit(dx[1]) and np.isnan(dx[2]) and dx[0] == 0 and not np.signbit(dx[0])
