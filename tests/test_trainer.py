"""Trainer: epochs are shuffled passes without replacement (partial last batch
included), history and lists, evaluation sizes, determinism, augmentation, and
a short real training run whose loss must fall."""

from __future__ import annotations

import numpy as np
import pytest

from pyconv.network import SimpleConvNet
from pyconv.optimizers import SGD, Adam
from pyconv.trainer import EpochStats, Trainer


class RecordingNet:
    """A stand-in network: labels are sample ids, so the batches can be inspected."""

    input_dim = (1, 4, 4)

    def __init__(self):
        self.params = {"w": np.zeros(2)}
        self.batches = []
        self.inputs = []
        self.eval_sizes = []
        self.last_loss = None

    def gradient(self, x, t):
        self.batches.append(np.asarray(t).copy())
        self.inputs.append(np.asarray(x).copy())
        self.last_loss = 1.0 / len(self.batches)
        return {"w": np.ones(2)}

    def accuracy(self, x, t, batch_size=100):
        self.eval_sizes.append(len(x))
        return 0.5


def _ids(n):
    x = np.arange(n * 16, dtype=np.float32).reshape(n, 1, 4, 4)
    return x, np.arange(n)


def test_each_epoch_is_a_permutation_with_a_partial_last_batch():
    net = RecordingNet()
    x, t = _ids(23)
    tr = Trainer(net, x, t, x[:5], t[:5], epochs=3, mini_batch_size=10, optimizer="sgd",
                 verbose=False, seed=0)
    acc = tr.train()
    assert acc == tr.final_test_acc == 0.5
    sizes = [len(b) for b in net.batches]
    assert sizes == [10, 10, 3] * 3
    epochs = [np.concatenate(net.batches[i:i + 3]) for i in (0, 3, 6)]
    for seen in epochs:
        np.testing.assert_array_equal(np.sort(seen), np.arange(23))
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    assert len(tr.train_loss_list) == 9
    assert len(tr.train_acc_list) == len(tr.test_acc_list) == len(tr.history) == 3
    # the optimizer really ran: SGD lr 0.01, gradient 1, 9 steps
    np.testing.assert_allclose(net.params["w"], -0.09)


def test_history_records():
    net = RecordingNet()
    x, t = _ids(20)
    tr = Trainer(net, x, t, x, t, epochs=2, mini_batch_size=10, verbose=False, seed=0)
    tr.train()
    h = tr.history[1]
    assert isinstance(h, EpochStats) and h.epoch == 2
    assert h.loss == pytest.approx(np.mean(tr.train_loss_list[2:]))
    assert h.seconds > 0 and h.images_per_s > 0 and h.eval_seconds >= 0
    assert set(h.to_dict()) == {"epoch", "loss", "train_acc", "test_acc", "seconds",
                                "images_per_s", "eval_seconds"}


def test_evaluation_uses_the_first_samples_then_the_full_test_set():
    net = RecordingNet()
    x, t = _ids(30)
    tr = Trainer(net, x, t, x[:25], t[:25], epochs=2, mini_batch_size=8,
                 evaluate_sample_num_per_epoch=7, verbose=False, seed=0)
    tr.train()
    assert net.eval_sizes == [7, 7, 7, 7, 25]  # (train, test) per epoch, then final


def test_same_seed_same_batches_different_seed_different():
    runs = []
    for seed in (5, 5, 6):
        net = RecordingNet()
        x, t = _ids(17)
        Trainer(net, x, t, x, t, epochs=2, mini_batch_size=4, verbose=False, seed=seed).train()
        runs.append(np.concatenate(net.batches))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_optimizer_name_param_or_instance():
    net = RecordingNet()
    x, t = _ids(4)
    tr = Trainer(net, x, t, x, t, optimizer="ADAM", optimizer_param={"lr": 0.01}, verbose=False)
    assert isinstance(tr.optimizer, Adam) and tr.optimizer.lr == 0.01
    opt = SGD(lr=0.5)
    assert Trainer(net, x, t, x, t, optimizer=opt, verbose=False).optimizer is opt
    with pytest.raises(ValueError, match="optimizer_param"):
        Trainer(net, x, t, x, t, optimizer=opt, optimizer_param={"lr": 1.0})
    with pytest.raises(ValueError, match="unknown optimizer"):
        Trainer(net, x, t, x, t, optimizer="newton")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"mini_batch_size": 0}, "mini_batch_size"),
        ({"evaluate_sample_num_per_epoch": 0}, "evaluate_sample_num_per_epoch"),
        ({"augment_shift": -1}, "augment_shift"),
        ({"t_train": np.arange(3)}, "same number"),
        ({"x_test": np.zeros((0, 1, 4, 4)), "t_test": np.zeros(0)}, "empty"),
    ],
)
def test_invalid_arguments(kw, match):
    x, t = _ids(4)
    args = {"x_train": x, "t_train": t, "x_test": x, "t_test": t, **kw}
    with pytest.raises(ValueError, match=match):
        Trainer(RecordingNet(), **args)


def test_verbose_prints_epochs_quiet_prints_nothing(capsys):
    x, t = _ids(6)
    Trainer(RecordingNet(), x, t, x, t, epochs=2, verbose=False).train()
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    Trainer(RecordingNet(), x, t, x, t, epochs=2, verbose=True).train()
    out = capsys.readouterr()
    assert "epoch 1/2" in out.out and "epoch 2/2" in out.out and "final test acc" in out.out
    assert "img/s" in out.out
    assert out.err == ""  # no progress bar: stderr is not a terminal here


def test_augment_shift_translates_each_image():
    net = RecordingNet()
    x = np.zeros((8, 1, 4, 4), dtype=np.float32)
    x[:, 0, 1:3, 1:3] = 1.0  # a 2x2 square in the middle: any shift <= 1 keeps it whole
    t = np.arange(8)
    Trainer(net, x, t, x, t, epochs=3, mini_batch_size=8, verbose=False, seed=0,
            augment_shift=1).train()
    shifted = np.concatenate(net.inputs)
    assert shifted.shape == (24, 1, 4, 4) and shifted.dtype == np.float32
    np.testing.assert_array_equal(shifted.sum(axis=(1, 2, 3)), 4.0)  # content kept
    assert len({tuple(np.argwhere(img[0])[0]) for img in shifted}) > 1  # offsets vary
    np.testing.assert_array_equal(x[:, 0, 1:3, 1:3], 1.0)  # training data untouched
    # flat rows are reshaped with network.input_dim and handed back flat
    net2 = RecordingNet()
    Trainer(net2, x.reshape(8, 16), t, x.reshape(8, 16), t, epochs=1, mini_batch_size=8,
            verbose=False, seed=0, augment_shift=1).train()
    assert net2.inputs[0].shape == (8, 16)


def _mini_or_synthetic(n_train, n_test):
    """A slice of the embedded MNIST subset, or a synthetic stand-in if absent."""
    try:
        from pyconv.datasets import load_mnist

        (x, t), (xt, tt) = load_mnist(flatten=False, subset="mini")
        return x[:n_train], t[:n_train], xt[:n_test], tt[:n_test]
    except (ImportError, FileNotFoundError):
        rng = np.random.default_rng(0)
        t = rng.integers(0, 10, n_train + n_test)
        x = rng.random((n_train + n_test, 1, 28, 28), dtype=np.float32) * 0.1
        for i, label in enumerate(t):  # one bright band per class
            x[i, 0, 2 * label + 4:2 * label + 7, 4:24] += 1.0
        return x[:n_train], t[:n_train], x[n_train:], t[n_train:]


def test_short_training_run_reduces_the_loss():
    x, t, xt, tt = _mini_or_synthetic(600, 200)
    net = SimpleConvNet(conv_param={"filter_num": 8}, hidden_size=32, weight_init_std="he",
                        seed=0)
    tr = Trainer(net, x, t, xt, tt, epochs=2, mini_batch_size=50, optimizer="adam",
                 verbose=False, seed=0)
    acc = tr.train()
    losses = tr.train_loss_list
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4])
    assert tr.history[1].loss < tr.history[0].loss
    assert acc > 0.6


def test_training_is_deterministic_for_a_seed():
    x, t, xt, tt = _mini_or_synthetic(200, 50)
    results = []
    for _ in range(2):
        net = SimpleConvNet(conv_param={"filter_num": 4}, hidden_size=16, seed=1)
        tr = Trainer(net, x, t, xt, tt, epochs=1, mini_batch_size=32, optimizer="adam",
                     verbose=False, seed=2, augment_shift=1)
        tr.train()
        results.append((tr.train_loss_list, {k: v.copy() for k, v in net.params.items()}))
    assert results[0][0] == results[1][0]
    for key in results[0][1]:
        np.testing.assert_array_equal(results[0][1][key], results[1][1][key])
