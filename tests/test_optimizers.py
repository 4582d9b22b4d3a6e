"""Optimizers: two steps against values worked out by hand from the book's
formulas, in-place updates, per-name state, validation and get_optimizer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pyconv.optimizers import (
    SGD,
    AdaGrad,
    Adam,
    Momentum,
    Nesterov,
    RMSprop,
    get_optimizer,
)

G1 = 0.5  # gradient at step 1
G2 = -0.25  # gradient at step 2
P0 = 1.0


def _two_steps(opt, dtype=np.float64):
    params = {"W": np.array([P0], dtype=dtype)}
    arr = params["W"]
    opt.update(params, {"W": np.array([G1], dtype=dtype)})
    p1 = float(params["W"][0])
    opt.update(params, {"W": np.array([G2], dtype=dtype)})
    assert params["W"] is arr  # updated in place, key never rebound
    return p1, float(params["W"][0])


def test_sgd():
    # p1 = 1 - 0.1 * 0.5 = 0.95; p2 = 0.95 + 0.1 * 0.25 = 0.975
    assert _two_steps(SGD(lr=0.1)) == pytest.approx((0.95, 0.975), abs=1e-15)


def test_momentum():
    # v1 = -0.1*0.5 = -0.05, p1 = 0.95
    # v2 = 0.9*(-0.05) + 0.1*0.25 = -0.02, p2 = 0.93
    assert _two_steps(Momentum(lr=0.1, momentum=0.9)) == pytest.approx((0.95, 0.93), abs=1e-15)


def test_nesterov_book_form():
    # v1 = -0.05; p1 = 1 + 0.81*(-0.05) - 1.9*0.1*0.5 = 1 - 0.0405 - 0.095 = 0.8645
    # v2 = 0.9*(-0.05) + 0.025 = -0.02
    # p2 = 0.8645 + 0.81*(-0.02) + 1.9*0.1*0.25 = 0.8645 - 0.0162 + 0.0475 = 0.8958
    assert _two_steps(Nesterov(lr=0.1, momentum=0.9)) == pytest.approx((0.8645, 0.8958),
                                                                       abs=1e-14)


def test_adagrad():
    # h1 = 0.25, p1 = 1 - 0.1*0.5/(0.5 + 1e-7)
    # h2 = 0.3125, p2 = p1 + 0.1*0.25/(sqrt(0.3125) + 1e-7)
    p1 = 1 - 0.1 * 0.5 / (0.5 + 1e-7)
    p2 = p1 + 0.1 * 0.25 / (math.sqrt(0.3125) + 1e-7)
    assert _two_steps(AdaGrad(lr=0.1)) == pytest.approx((p1, p2), abs=1e-14)


def test_rmsprop():
    # h1 = 0.01*0.25 = 0.0025, p1 = 1 - 0.1*0.5/(0.05 + 1e-7)
    # h2 = 0.99*0.0025 + 0.01*0.0625 = 0.0031, p2 = p1 + 0.1*0.25/(sqrt(0.0031) + 1e-7)
    p1 = 1 - 0.1 * 0.5 / (0.05 + 1e-7)
    p2 = p1 + 0.1 * 0.25 / (math.sqrt(0.0031) + 1e-7)
    assert _two_steps(RMSprop(lr=0.1, decay_rate=0.99)) == pytest.approx((p1, p2), abs=1e-12)


def test_adam_book_bias_corrected_lr():
    # step 1: lr_t = 0.01*sqrt(1-0.999)/(1-0.9); m = 0.05; v = 0.00025
    lr_t1 = 0.01 * math.sqrt(1 - 0.999) / (1 - 0.9)
    p1 = 1 - lr_t1 * 0.05 / (math.sqrt(0.00025) + 1e-7)
    # step 2: m = 0.05 + 0.1*(-0.25 - 0.05) = 0.02; v = 0.00025 + 0.001*(0.0625 - 0.00025)
    lr_t2 = 0.01 * math.sqrt(1 - 0.999**2) / (1 - 0.9**2)
    v2 = 0.00025 + 0.001 * (0.0625 - 0.00025)
    p2 = p1 - lr_t2 * 0.02 / (math.sqrt(v2) + 1e-7)
    opt = Adam(lr=0.01)
    assert _two_steps(opt) == pytest.approx((p1, p2), abs=1e-14)
    assert opt.iter == 2
    assert opt.m["W"][0] == pytest.approx(0.02) and opt.v["W"][0] == pytest.approx(v2)


def test_first_adam_step_is_about_lr_in_size():
    # bias correction: the first step moves every parameter by ~lr regardless of |g|
    params = {"a": np.array([0.0, 0.0]), "b": np.array([0.0])}
    Adam(lr=0.001).update(params, {"a": np.array([0.1, -50.0]), "b": np.array([7.0])})
    np.testing.assert_allclose(np.abs(params["a"]), 0.001, rtol=1e-3)
    np.testing.assert_allclose(params["b"], -0.001, rtol=1e-3)


@pytest.mark.parametrize("cls", [SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam])
def test_float32_stays_float32_and_state_is_keyed_by_name(cls):
    opt = cls()
    params = {"W1": np.ones((2, 3), dtype=np.float32), "b1": np.zeros(3, dtype=np.float32)}
    ids = {k: id(v) for k, v in params.items()}
    grads = {"W1": np.full((2, 3), 0.5), "b1": np.full(3, -0.5, dtype=np.float32)}
    g_copy = {k: v.copy() for k, v in grads.items()}
    for _ in range(3):
        opt.update(params, grads)
    assert {k: id(v) for k, v in params.items()} == ids
    assert all(v.dtype == np.float32 for v in params.values())
    assert np.all(params["W1"] < 1) and np.all(params["b1"] > 0)
    for k in grads:
        np.testing.assert_array_equal(grads[k], g_copy[k])  # gradients untouched
    for slot in ("v", "h", "m"):
        table = getattr(opt, slot, None)
        if table is not None:
            assert set(table) == {"W1", "b1"}
            assert table["W1"].dtype == np.float32


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: SGD(lr=0), "lr"),
        (lambda: SGD(lr=-1), "lr"),
        (lambda: SGD(lr=float("nan")), "lr"),
        (lambda: SGD(lr="fast"), "lr"),
        (lambda: Momentum(momentum=1.0), "momentum"),
        (lambda: Nesterov(momentum=-0.1), "momentum"),
        (lambda: RMSprop(decay_rate=1.0), "decay_rate"),
        (lambda: Adam(beta1=1.0), "beta1"),
        (lambda: Adam(beta2=-0.5), "beta2"),
        (lambda: AdaGrad(eps=0), "eps"),
    ],
)
def test_hyper_parameters_are_validated(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_update_validates_grads():
    params = {"W": np.zeros(3)}
    with pytest.raises(ValueError, match="no gradient"):
        SGD().update(params, {})
    with pytest.raises(ValueError, match="shape"):
        SGD().update(params, {"W": np.zeros(4)})
    np.testing.assert_array_equal(params["W"], 0)


def test_get_optimizer():
    assert isinstance(get_optimizer("adam"), Adam)
    assert isinstance(get_optimizer("SGD"), SGD)
    assert isinstance(get_optimizer("RmsProp", lr=0.1), RMSprop)
    assert get_optimizer("Momentum", lr=0.05, momentum=0.5).momentum == 0.5
    assert get_optimizer("adagrad").lr == 0.01 and get_optimizer("nesterov").lr == 0.01
    assert get_optimizer("ADAM").lr == 0.001
    with pytest.raises(ValueError, match="unknown optimizer"):
        get_optimizer("lbfgs")
    with pytest.raises(TypeError):
        get_optimizer(Adam)
    assert repr(Adam()) == "Adam(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-07)"


# ---- Adam's compiled one-pass step (contiguous float32/float64 parameters) -----


def _adam_oracle(p, grads, lr, b1, b2, eps):
    """Adam's book formulas, step by step, in float64."""
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for it, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        lr_t = lr * math.sqrt(1 - b2**it) / (1 - b1**it)
        m += (1 - b1) * (g - m)
        v += (1 - b2) * (g * g - v)
        p -= lr_t * m / (np.sqrt(v) + eps)
    return p


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [7, 70_001])  # below and above the 2-thread threshold
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_compiled_step_equals_numpy_path_and_oracle(restore_threads, dtype, n, threads):
    import pyconv

    pyconv.set_num_threads(threads)
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(n).astype(dtype)
    grads = [(rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)).astype(dtype)
             for _ in range(4)]
    # The same values in a contiguous array (the compiled kernel) and in a
    # strided view (the NumPy path, which keeps the book's twelve operations).
    fast = {"W": p0.copy()}
    wide = np.zeros((n, 2), dtype)
    wide[:, 0] = p0
    slow = {"W": wide[:, 0]}
    assert fast["W"].flags.c_contiguous and not slow["W"].flags.c_contiguous
    opt_fast, opt_slow = Adam(lr=0.01), Adam(lr=0.01)
    for g in grads:
        opt_fast.update(fast, {"W": g})
        opt_slow.update(slow, {"W": g})
    # Same operations, same roundings: equal bit for bit, state included.
    np.testing.assert_array_equal(fast["W"], slow["W"])
    np.testing.assert_array_equal(opt_fast.m["W"], opt_slow.m["W"])
    np.testing.assert_array_equal(opt_fast.v["W"], opt_slow.v["W"])
    want = _adam_oracle(p0, grads, 0.01, 0.9, 0.999, 1e-7)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(fast["W"], want, rtol=tol, atol=tol)


def test_adam_gradient_that_is_the_parameter_itself():
    # An aliased gradient is read as it was before the step (as the NumPy path does).
    p = np.array([1.0, -2.0, 3.0])
    q = np.zeros((3, 2))
    q[:, 0] = p
    a, b = Adam(lr=0.1), Adam(lr=0.1)
    a.update({"W": p}, {"W": p})
    b.update({"W": q[:, 0]}, {"W": q[:, 0]})
    np.testing.assert_array_equal(p, q[:, 0])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda w, g, m, v: (w, g[:3], m, v), "expected g of 4 elements"),
        (lambda w, g, m, v: (w, g, m, v[:2]), "expected v of 4 elements"),
        (lambda w, g, m, v: (w, g, w, v), "w and m must not overlap"),
        (lambda w, g, m, v: (w, m, m, v), "g and m must not overlap"),
    ],
)
def test_adam_kernel_rejects_bad_arguments(call, match):
    from pyconv import _core

    w, g, m, v = (np.zeros(4) for _ in range(4))
    with pytest.raises(ValueError, match=match):
        _core.adam_update(*call(w, g, m, v), 0.1, 0.1, 0.001, 1e-7)
    w.flags.writeable = False
    with pytest.raises(ValueError, match="w is read-only"):
        _core.adam_update(w, g, m, v, 0.1, 0.1, 0.001, 1e-7)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [5, 70_001])
def test_adam_kernel_flushes_subnormals_and_restores_the_mode(restore_threads, n, threads):
    # Moments that decayed below the smallest normal float count as zero (an
    # Adam step on subnormals ran 30x slower); the caller's floating-point
    # mode is restored afterwards.
    import pyconv
    from pyconv import _core

    pyconv.set_num_threads(threads)
    tiny = np.float32(1e-39)  # subnormal
    w = np.ones(n, np.float32)
    g = np.zeros(n, np.float32)
    g[0] = tiny
    m = np.full(n, tiny, np.float32)
    v = np.full(n, 1e-12, np.float32)
    _core.adam_update(w, g, m, v, 1e-3, 0.1, 0.001, 1e-7)
    assert not m.any()  # m + (0 - m) * 0.1 with m read as zero
    np.testing.assert_array_equal(v, np.float32(1e-12) + (0 - np.float32(1e-12)) *
                                  np.float32(0.001))
    np.testing.assert_array_equal(w, 1.0)
    assert tiny * np.float32(0.5) != 0  # this thread computes subnormals again
