"""SimpleConvNet: backprop against central differences (float64), shapes and
hyper-parameter validation, shared parameter arrays, accuracy, and the .npz
save/load round trip including the rejection of pickles."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest

from pyconv.layers import Affine, Convolution, Pooling, Relu
from pyconv.network import SimpleConvNet
from pyconv.optimizers import SGD

SMALL = {"input_dim": (1, 10, 10), "conv_param": {"filter_num": 3, "filter_size": 3},
         "hidden_size": 6, "output_size": 4, "dtype": np.float64}


def _small(**kw):
    args = {**SMALL, "seed": 0, **kw}
    return SimpleConvNet(**args)


def _batch(net, n=5, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *net.input_dim))
    t = rng.integers(0, net.output_size, n)
    return x, t


# ---- gradients ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"weight_init_std": "he"},
        {"weight_init_std": 0.3, "conv_param": {"filter_num": 2, "filter_size": 3, "pad": 1,
                                                 "stride": 2}},
        {"weight_init_std": "xavier", "input_dim": (2, 9, 8)},
    ],
    ids=["he", "pad1-stride2", "2ch-nonsquare"],
)
@pytest.mark.parametrize("one_hot", [False, True])
def test_gradient_matches_numerical_gradient(kw, one_hot):
    net = _small(**kw)
    x, t = _batch(net)
    labels = np.eye(net.output_size)[t] if one_hot else t
    grads = net.gradient(x, labels)
    numeric = net.numerical_gradient(x, labels)
    assert set(grads) == set(numeric) == {"W1", "b1", "W2", "b2", "W3", "b3"}
    for key in grads:
        assert grads[key].shape == net.params[key].shape, key
        np.testing.assert_allclose(grads[key], numeric[key], atol=1e-5, rtol=1e-3,
                                   err_msg=f"{key} {kw} one_hot={one_hot}")


def test_gradient_stores_the_loss_of_its_forward_pass():
    net = _small()
    x, t = _batch(net)
    assert net.last_loss is None
    net.gradient(x, t)
    assert net.last_loss == pytest.approx(net.loss(x, t), rel=1e-12)


def test_float32_network_computes_in_float32():
    net = SimpleConvNet(**{**SMALL, "dtype": np.float32}, seed=0)
    x, t = _batch(net)
    assert net.predict(x).dtype == np.float32
    grads = net.gradient(x, t)
    assert all(g.dtype == np.float32 for g in grads.values())
    ref = _small()
    np.testing.assert_allclose(net.predict(x), ref.predict(x), rtol=1e-4, atol=1e-5)


# ---- structure and parameters ---------------------------------------------------------


def test_default_architecture_matches_the_book():
    net = SimpleConvNet(seed=0)
    shapes = {k: v.shape for k, v in net.params.items()}
    assert shapes == {"W1": (30, 1, 5, 5), "b1": (30,), "W2": (30 * 12 * 12, 100), "b2": (100,),
                      "W3": (100, 10), "b3": (10,)}
    assert all(v.dtype == np.float32 for v in net.params.values())
    assert list(net.layers) == ["Conv1", "Relu1", "Pool1", "Affine1", "Relu2", "Affine2"]
    kinds = [Convolution, Relu, Pooling, Affine, Relu, Affine]
    assert all(isinstance(layer, k) for layer, k in zip(net.layers.values(), kinds))
    assert net.layers["Pool1"].pool_h == 2 and net.layers["Pool1"].stride == 2
    assert abs(float(net.params["W1"].std()) - 0.01) < 0.003
    assert not net.params["b1"].any()
    assert "SimpleConvNet" in repr(net) and "filter_num=30" in repr(net)


def test_params_are_shared_with_the_layers():
    net = _small()
    conv, a1, a2 = net.layers["Conv1"], net.layers["Affine1"], net.layers["Affine2"]
    assert conv.W is net.params["W1"] and conv.b is net.params["b1"]
    assert a1.W is net.params["W2"] and a1.b is net.params["b2"]
    assert a2.W is net.params["W3"] and a2.b is net.params["b3"]
    x, t = _batch(net)
    before = net.loss(x, t)
    SGD(lr=0.5).update(net.params, net.gradient(x, t))
    assert conv.W is net.params["W1"]
    assert net.loss(x, t) < before


def test_conv_param_defaults_merge_and_unknown_keys():
    net = SimpleConvNet(conv_param={"filter_num": 4}, seed=0)
    assert net.conv_param == {"filter_num": 4, "filter_size": 5, "pad": 0, "stride": 1}
    assert net.params["W1"].shape == (4, 1, 5, 5)
    with pytest.raises(ValueError, match="unknown conv_param"):
        SimpleConvNet(conv_param={"filter_nums": 4})
    # the defaults are not shared mutable state
    SimpleConvNet(conv_param={"filter_num": 2}, seed=0)
    assert SimpleConvNet(seed=0).conv_param["filter_num"] == 30


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"input_dim": (1, 4, 4), "conv_param": {"filter_size": 5}}, "larger than"),
        ({"input_dim": (1, 5, 5), "conv_param": {"filter_size": 5}}, "pooling"),
        ({"input_dim": (0, 28, 28)}, "input_dim"),
        ({"input_dim": (1, 28)}, "input_dim"),
        ({"conv_param": {"filter_num": 0}}, "filter_num"),
        ({"conv_param": {"stride": 0}}, "stride"),
        ({"conv_param": {"pad": -1}}, "pad"),
        ({"conv_param": {"filter_size": 2.5}}, "filter_size"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"output_size": -3}, "output_size"),
        ({"weight_init_std": -0.1}, "weight_init_std"),
        ({"weight_init_std": "lecun"}, "weight_init_std"),
        ({"dtype": np.float16}, "dtype"),
    ],
)
def test_invalid_hyper_parameters_raise_at_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        SimpleConvNet(**kw)


@pytest.mark.parametrize("init, expected", [("he", lambda f: np.sqrt(2 / f)),
                                            ("xavier", lambda f: np.sqrt(1 / f))])
def test_he_and_xavier_use_each_layers_fan_in(init, expected):
    net = SimpleConvNet(weight_init_std=init, seed=0)
    fan_in = {"W1": 25, "W2": 30 * 12 * 12, "W3": 100}
    for key, f in fan_in.items():
        assert float(net.params[key].std()) == pytest.approx(expected(f), rel=0.15), key


def test_seed_reproducible_and_same_across_dtypes():
    a = SimpleConvNet(seed=3)
    b = SimpleConvNet(seed=3)
    c = SimpleConvNet(seed=3, dtype=np.float64)
    d = SimpleConvNet(seed=4)
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key])
        np.testing.assert_array_equal(a.params[key], c.params[key].astype(np.float32))
    assert not np.array_equal(a.params["W1"], d.params["W1"])


def test_predict_accepts_flat_and_image_inputs():
    net = SimpleConvNet(seed=0)
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    np.testing.assert_array_equal(net.predict(x), net.predict(x.reshape(3, 1, 28, 28)))
    assert net.predict(x).shape == (3, 10)
    with pytest.raises(ValueError, match="expected x of shape"):
        net.predict(x.reshape(3, 28, 28))


def test_accuracy_counts_every_sample_including_the_last_partial_batch():
    net = _small()
    x, t = _batch(net, n=23, seed=2)
    pred = np.argmax(net.predict(x), axis=1)
    t[:10] = pred[:10]  # make the answer depend on every sample
    t[10:] = (pred[10:] + 1) % net.output_size
    t[-1] = pred[-1]  # a correct sample in the last partial batch
    expected = 11 / 23
    for bs in (1, 5, 10, 23, 100):
        assert net.accuracy(x, t, batch_size=bs) == pytest.approx(expected)
    assert net.accuracy(x, np.eye(net.output_size)[t], batch_size=10) == pytest.approx(expected)


# ---- save / load ------------------------------------------------------------------------


def test_save_load_round_trip_keeps_sharing(tmp_path):
    net = _small()
    x, t = _batch(net)
    path = net.save_params(tmp_path / "params.npz")
    assert path == tmp_path / "params.npz" and path.is_file()
    other = _small(seed=99)
    arrays = {k: v for k, v in other.params.items()}
    other.load_params(path)
    for key, value in other.params.items():
        assert value is arrays[key]  # copied into the existing arrays
        np.testing.assert_array_equal(value, net.params[key])
    assert other.layers["Conv1"].W is other.params["W1"]
    np.testing.assert_array_equal(other.predict(x), net.predict(x))
    # a float32 network loads float64 parameters (cast), the layers keep sharing
    f32 = SimpleConvNet(**{**SMALL, "dtype": np.float32}, seed=5)
    f32.load_params(path)
    assert f32.params["W2"].dtype == np.float32
    np.testing.assert_allclose(f32.params["W2"], net.params["W2"], rtol=1e-6)


def test_save_writes_exactly_the_given_path(tmp_path):
    path = _small().save_params(tmp_path / "weights.bin")
    assert path.name == "weights.bin" and path.is_file()
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob("*.tmp"))
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == sorted(f"{k}.npy" for k in SMALL_KEYS)


SMALL_KEYS = ("W1", "b1", "W2", "b2", "W3", "b3")


class _Evil:
    """Unpickling this creates the marker file (it calls ``open(marker, 'w')``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _assert_rejected(net, path, marker=None, match=None):
    before = {k: v.copy() for k, v in net.params.items()}
    with pytest.raises(ValueError, match=match):
        net.load_params(path)
    if marker is not None:
        assert not marker.exists(), "loading executed code from the file"
    for key, value in net.params.items():
        np.testing.assert_array_equal(value, before[key])


def test_load_rejects_a_pickle_without_executing_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "params.npz"
    path.write_bytes(pickle.dumps({"W1": _Evil(marker)}))
    _assert_rejected(_small(), path, marker)


def test_load_rejects_an_npz_with_an_object_array(tmp_path):
    marker = tmp_path / "pwned"
    net = _small()
    arrays = {k: v for k, v in net.params.items()}
    arrays["W1"] = np.array([_Evil(marker)], dtype=object)
    path = tmp_path / "evil.npz"
    np.savez(path, **arrays)  # np.save pickles object arrays
    assert not marker.exists()
    _assert_rejected(net, path, marker, match="pickle")


def test_load_rejects_wrong_keys_shapes_dtypes_and_corrupt_files(tmp_path):
    net = _small()
    good = {k: v.copy() for k, v in net.params.items()}

    def write(name, **arrays):
        p = tmp_path / name
        with open(p, "wb") as f:
            np.savez(f, **arrays)
        return p

    _assert_rejected(net, write("missing.npz", **{k: v for k, v in good.items() if k != "b3"}),
                     match="keys")
    _assert_rejected(net, write("extra.npz", **good, extra=np.zeros(1)), match="keys")
    # W3 is checked after W1/W2 would be valid: nothing must be copied
    bad_shape = {**good, "W1": good["W1"] + 1, "W3": np.zeros((2, 2))}
    _assert_rejected(net, write("shape.npz", **bad_shape), match="W3")
    _assert_rejected(net, write("int.npz", **{**good, "b1": np.zeros(3, dtype=np.int64)}),
                     match="float")
    ok = write("ok.npz", **good)
    blob = ok.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(blob[: len(blob) // 2])
    _assert_rejected(net, truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a numpy file at all")
    _assert_rejected(net, garbage)
    npy = tmp_path / "single.npy"
    np.save(npy, good["W1"])
    _assert_rejected(net, npy, match="npz")
    _assert_rejected(net, tmp_path, match="directory")
    with pytest.raises(FileNotFoundError):
        net.load_params(tmp_path / "nope.npz")


def test_first_layer_input_gradient_is_skipped(monkeypatch):
    import pyconv.network as network_module

    flags = []

    class ConvWithFlag(Convolution):
        def backward(self, dout, need_dx=True):
            flags.append(need_dx)
            dx = super().backward(dout)
            return dx if need_dx else None

    monkeypatch.setattr(network_module, "Convolution", ConvWithFlag)
    net = _small()
    x, t = _batch(net)
    grads = net.gradient(x, t)
    assert flags == [False]
    numeric = net.numerical_gradient(x, t)
    for key in grads:
        np.testing.assert_allclose(grads[key], numeric[key], atol=1e-5, rtol=1e-3)
