"""Trainer: mini-batch training of a network with per-epoch shuffling, evaluation
and a per-epoch history (the book's ``common/trainer.py``, without its sampling
with replacement, string-only optimizers and unconditional prints).

The network needs ``gradient(x, t) -> grads`` (leaving the loss in
``last_loss``), ``accuracy(x, t, batch_size)`` and a ``params`` dict.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from .optimizers import Optimizer, get_optimizer

__all__ = ["EpochStats", "Trainer"]


@dataclass
class EpochStats:
    """What one epoch did.

    epoch : 1-based epoch number
    loss : mean training loss over the epoch's steps
    train_acc, test_acc : accuracy on the evaluation samples after the epoch
    seconds : wall-clock time of the epoch's training steps (evaluation excluded)
    images_per_s : training images per second over those steps
    eval_seconds : wall-clock time of the evaluation after the epoch
    """

    epoch: int
    loss: float
    train_acc: float
    test_acc: float
    seconds: float
    images_per_s: float
    eval_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _positive(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"Trainer: expected {name} to be an integer, but got {value!r}")
    if value < 1:
        raise ValueError(f"Trainer: expected {name} >= 1, but got {value}")
    return int(value)


class Trainer:
    """Train ``network`` for ``epochs`` shuffled passes over the training set.

    Parameters
    ----------
    network : e.g. :class:`pyconv.SimpleConvNet`
    x_train, t_train : (N, ...) inputs and (N,) / (N, K) labels
    x_test, t_test : held-out inputs and labels
    epochs : int >= 1
    mini_batch_size : int >= 1; the last, partial batch of an epoch is used too
    optimizer : name ('SGD', 'Momentum', 'Nesterov', 'AdaGrad', 'RMSprop', 'Adam';
        any case) or an optimizer instance (then ``optimizer_param`` must be None)
    optimizer_param : dict of constructor arguments, e.g. ``{'lr': 0.001}``
    evaluate_sample_num_per_epoch : int, optional
        Evaluate train/test accuracy after each epoch on the first this many
        samples of each set (all of them if None).
    verbose : print one line per epoch and the final accuracy, and show a
        progress bar (only when stderr is a terminal)
    seed : int, numpy.random.Generator or None; drives the shuffling (and the
        augmentation). The same seed, initial network and thread count give the
        same result.
    augment_shift : int >= 0, default 0 (off, as in the book)
        Translate each training image by a random offset in
        ``[-augment_shift, augment_shift]`` pixels along each axis (zero fill)
        every time it is drawn. Image inputs: (N, C, H, W), or flat rows that
        ``network.input_dim`` reshapes.

    Attributes
    ----------
    train_loss_list : loss of every step
    train_acc_list, test_acc_list : accuracies after every epoch
    history : list of :class:`EpochStats`
    final_test_acc : accuracy on the full test set after training (None before)
    """

    def __init__(self, network, x_train, t_train, x_test, t_test, epochs=20,
                 mini_batch_size=100, optimizer="SGD", optimizer_param=None,
                 evaluate_sample_num_per_epoch=None, verbose=True, seed=None, augment_shift=0):
        self.network = network
        self.x_train, self.t_train = np.asarray(x_train), np.asarray(t_train)
        self.x_test, self.t_test = np.asarray(x_test), np.asarray(t_test)
        for split, x, t in (("train", self.x_train, self.t_train),
                            ("test", self.x_test, self.t_test)):
            if x.ndim < 1 or t.ndim < 1 or len(x) != len(t):
                raise ValueError(
                    f"Trainer: x_{split} and t_{split} must hold the same number of samples, "
                    f"but got shapes {x.shape} and {t.shape}"
                )
            if len(x) == 0:
                raise ValueError(f"Trainer: x_{split} is empty")
        self.epochs = _positive("epochs", epochs)
        self.batch_size = _positive("mini_batch_size", mini_batch_size)
        if evaluate_sample_num_per_epoch is not None:
            evaluate_sample_num_per_epoch = _positive(
                "evaluate_sample_num_per_epoch", evaluate_sample_num_per_epoch
            )
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch
        if isinstance(optimizer, Optimizer) or hasattr(optimizer, "update"):
            if optimizer_param:
                raise ValueError(
                    "Trainer: optimizer_param is only used with an optimizer name, "
                    "not with an optimizer instance"
                )
            self.optimizer = optimizer
        else:
            self.optimizer = get_optimizer(optimizer, **dict(optimizer_param or {}))
        self.verbose = bool(verbose)
        self.rng = np.random.default_rng(seed)
        if isinstance(augment_shift, (bool, np.bool_)) or not isinstance(
                augment_shift, (int, np.integer)) or augment_shift < 0:
            raise ValueError(
                f"Trainer: expected augment_shift to be an integer >= 0, but got {augment_shift!r}"
            )
        self.augment_shift = int(augment_shift)
        self._image_shape = None
        if self.augment_shift:
            self._image_shape = self._find_image_shape()

        self.train_size = len(self.x_train)
        self.iter_per_epoch = -(-self.train_size // self.batch_size)
        self.max_iter = self.epochs * self.iter_per_epoch
        self.current_epoch = 0
        self.current_iter = 0
        self.train_loss_list: list[float] = []
        self.train_acc_list: list[float] = []
        self.test_acc_list: list[float] = []
        self.history: list[EpochStats] = []
        self.final_test_acc: float | None = None

    # ------------------------------------------------------------------ helpers

    def _print(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)

    def _progress_bar(self, epoch: int):
        """A tqdm bar for one epoch, or None (not verbose / stderr not a terminal)."""
        if not self.verbose or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.train_size, desc=f"epoch {epoch}/{self.epochs}", unit=" img",
                    unit_scale=True, leave=False, file=sys.stderr, dynamic_ncols=True)

    def _find_image_shape(self) -> tuple[int, int, int]:
        x = self.x_train
        if x.ndim == 4:
            return tuple(x.shape[1:])
        dims = getattr(self.network, "input_dim", None)
        if x.ndim == 2 and dims is not None and len(dims) == 3 and int(np.prod(dims)) == x.shape[1]:
            return tuple(dims)
        raise ValueError(
            f"Trainer: augment_shift needs images (N, C, H, W) or flat rows matching "
            f"network.input_dim, but got x_train of shape {x.shape}"
        )

    def _shift(self, x: np.ndarray) -> np.ndarray:
        """Each image of the batch translated by its own random offset (zero fill)."""
        s = self.augment_shift
        shape = x.shape
        n = shape[0]
        c, h, w = self._image_shape
        padded = np.zeros((n, c, h + 2 * s, w + 2 * s), dtype=x.dtype)
        padded[:, :, s:s + h, s:s + w] = x.reshape(n, c, h, w)
        # windows[i, :, dy, dx] is image i shifted by (s - dy, s - dx)
        windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))
        dy, dx = self.rng.integers(0, 2 * s + 1, size=(2, n))
        return windows[np.arange(n), :, dy, dx].reshape(shape)

    def _evaluate(self) -> tuple[float, float]:
        n = self.evaluate_sample_num_per_epoch
        xtr, ttr, xte, tte = self.x_train, self.t_train, self.x_test, self.t_test
        if n is not None:
            xtr, ttr, xte, tte = xtr[:n], ttr[:n], xte[:n], tte[:n]
        bs = max(self.batch_size, 100)
        return (self.network.accuracy(xtr, ttr, batch_size=bs),
                self.network.accuracy(xte, tte, batch_size=bs))

    # ------------------------------------------------------------------ training

    def train_step(self, x_batch, t_batch) -> float:
        """One optimizer step on a mini-batch; returns (and records) its loss."""
        grads = self.network.gradient(x_batch, t_batch)
        self.optimizer.update(self.network.params, grads)
        loss = float(self.network.last_loss)
        self.train_loss_list.append(loss)
        self.current_iter += 1
        return loss

    def train_epoch(self) -> EpochStats:
        """One shuffled pass without replacement over the training set, then evaluation."""
        epoch = self.current_epoch + 1
        bar = self._progress_bar(epoch)
        perm = self.rng.permutation(self.train_size)
        losses = []
        start = time.perf_counter()
        try:
            for i in range(0, self.train_size, self.batch_size):
                idx = perm[i:i + self.batch_size]
                x_batch = self.x_train[idx]
                if self.augment_shift:
                    x_batch = self._shift(x_batch)
                loss = self.train_step(x_batch, self.t_train[idx])
                losses.append(loss)
                if bar is not None:
                    bar.update(len(idx))
                    if len(losses) % 10 == 1:  # tqdm itself shows images/s
                        bar.set_postfix_str(f"loss={loss:.4f}", refresh=False)
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
        t0 = time.perf_counter()
        train_acc, test_acc = self._evaluate()
        eval_seconds = time.perf_counter() - t0
        stats = EpochStats(epoch=epoch, loss=float(np.mean(losses)), train_acc=train_acc,
                           test_acc=test_acc, seconds=seconds,
                           images_per_s=self.train_size / max(seconds, 1e-12),
                           eval_seconds=eval_seconds)
        self.current_epoch = epoch
        self.train_acc_list.append(train_acc)
        self.test_acc_list.append(test_acc)
        self.history.append(stats)
        n_eval = self.evaluate_sample_num_per_epoch
        what = "" if n_eval is None or n_eval >= len(self.x_test) else f" (first {n_eval})"
        self._print(
            f"epoch {epoch}/{self.epochs}: loss {stats.loss:.4f}, train acc {train_acc:.4f}, "
            f"test acc{what} {test_acc:.4f}, {seconds:.2f} s, {stats.images_per_s:,.0f} img/s"
        )
        return stats

    def train(self) -> float:
        """Run the remaining epochs, then measure the accuracy on the full test set.

        Returns
        -------
        final_test_acc : float (also stored in ``final_test_acc``)
        """
        while self.current_epoch < self.epochs:
            self.train_epoch()
        self.final_test_acc = self.network.accuracy(
            self.x_test, self.t_test, batch_size=max(self.batch_size, 100)
        )
        self._print(f"final test acc: {self.final_test_acc:.4f} ({len(self.x_test)} test images)")
        return self.final_test_acc
