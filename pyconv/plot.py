"""Figures for a trained network: training curves, first-layer filters and
feature maps, written as PNG files.

matplotlib is an optional extra (``pip install pyconv[plot]``). Only its
object-oriented API is used (``Figure`` + the Agg canvas), never pyplot, so
these functions work headless and leave the caller's matplotlib state alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["plot_feature_maps", "plot_filters", "plot_training_curves"]

_HINT = "plotting needs matplotlib: pip install pyconv[plot]  (or: pip install matplotlib)"


def _new_figure(figsize):
    """A pyplot-free Figure attached to an Agg canvas."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(_HINT) from e
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(os.fspath(path))
    fig.savefig(path, format="png", dpi=100)
    return path


def _get(source, name: str) -> list:
    if isinstance(source, dict):
        return list(source.get(name, []))
    return list(getattr(source, name, []) or [])


def plot_training_curves(source, path) -> Path:
    """Accuracy per epoch (train and test) and loss per step, side by side.

    Parameters
    ----------
    source : a :class:`pyconv.Trainer` after ``train()``, or a dict with
        ``train_acc_list``, ``test_acc_list`` (per epoch) and ``train_loss_list``
        (per step)
    path : output PNG file

    Returns
    -------
    pathlib.Path of the written PNG.
    """
    train_acc = _get(source, "train_acc_list")
    test_acc = _get(source, "test_acc_list")
    losses = np.asarray(_get(source, "train_loss_list"), dtype=np.float64)
    if not (train_acc or test_acc or losses.size):
        raise ValueError("plot_training_curves: nothing to plot (no accuracies or losses)")
    fig = _new_figure((11, 4.2))
    ax_acc, ax_loss = fig.subplots(1, 2)

    epochs = np.arange(1, max(len(train_acc), len(test_acc)) + 1)
    if train_acc:
        ax_acc.plot(epochs[:len(train_acc)], train_acc, marker="o", label="train")
    if test_acc:
        ax_acc.plot(epochs[:len(test_acc)], test_acc, marker="s", label="test")
    accs = np.asarray(train_acc + test_acc, dtype=np.float64)
    if accs.size:
        low = float(accs.min())
        ax_acc.set_ylim(max(0.0, low - 0.05 * max(1.0 - low, 0.02) - 0.01), 1.0)
    from matplotlib.ticker import MaxNLocator

    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title("accuracy")
    ax_acc.grid(True, alpha=0.3)
    ax_acc.legend(loc="lower right")

    if losses.size:
        steps = np.arange(1, losses.size + 1)
        ax_loss.plot(steps, losses, lw=0.6, alpha=0.5, label="per step")
        n_epochs = len(train_acc) or len(test_acc)
        if n_epochs and losses.size >= n_epochs and losses.size % n_epochs == 0:
            per = losses.size // n_epochs
            means = losses.reshape(n_epochs, per).mean(axis=1)
            ax_loss.plot(per * np.arange(1, n_epochs + 1), means, marker="o",
                         label="epoch mean")
        if np.all(losses > 0) and losses.max() > 20 * losses.min():
            ax_loss.set_yscale("log")
        ax_loss.legend(loc="upper right")
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("loss")
    ax_loss.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _filter_grid(fig_or_sub, filters: np.ndarray, nx: int, title: str | None) -> None:
    fn = filters.shape[0]
    ny = -(-fn // nx)
    axes = np.atleast_1d(fig_or_sub.subplots(ny, nx)).reshape(-1)
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i < fn:
            ax.imshow(filters[i, 0], cmap="gray_r", interpolation="nearest")
        else:
            ax.set_axis_off()
    if title:
        fig_or_sub.suptitle(title)


def plot_filters(filters, path, after=None, nx=8) -> Path:
    """First-layer filters as gray images in a grid (the book's ``filter_show``).

    Parameters
    ----------
    filters : (FN, C, FH, FW) weights (e.g. ``network.params['W1']``); channel 0
        of each filter is shown, each scaled to its own range
    path : output PNG file
    after : optional (FN, C, FH, FW) weights after training; then the two grids
        are drawn side by side, "before" on the left
    nx : filters per row

    Returns
    -------
    pathlib.Path of the written PNG.
    """
    before = np.asarray(filters, dtype=np.float64)
    if before.ndim != 4 or before.shape[0] == 0:
        raise ValueError(f"plot_filters: expected filters (FN, C, FH, FW), but got {before.shape}")
    nx = max(1, min(int(nx), before.shape[0]))
    ny = -(-before.shape[0] // nx)
    cell = 0.75
    if after is None:
        fig = _new_figure((nx * cell, ny * cell + 0.4))
        _filter_grid(fig, before, nx, None)
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.98, hspace=0.08,
                            wspace=0.08)
        return _save(fig, path)
    after = np.asarray(after, dtype=np.float64)
    if after.shape != before.shape:
        raise ValueError(
            f"plot_filters: expected after of shape {before.shape}, but got {after.shape}"
        )
    fig = _new_figure((2 * nx * cell + 0.6, ny * cell + 0.6))
    left, right = fig.subfigures(1, 2, wspace=0.04)
    for sub, w, title in ((left, before, "before training"), (right, after, "after training")):
        _filter_grid(sub, w, nx, title)
        sub.subplots_adjust(left=0.03, right=0.97, bottom=0.02, top=0.86, hspace=0.08,
                            wspace=0.08)
    return _save(fig, path)


def plot_feature_maps(network, x, path, nx=8) -> Path:
    """One input image and its feature maps after the first convolution.

    Parameters
    ----------
    network : a :class:`pyconv.SimpleConvNet` (uses ``params['W1']``, ``params['b1']``
        and its ``conv_param``)
    x : one image, (C, H, W) or flat (C*H*W,), or a batch whose first image is used
    path : output PNG file
    nx : maps per row

    Returns
    -------
    pathlib.Path of the written PNG.
    """
    from .layers import Convolution

    c, h, w = network.input_dim
    img = np.asarray(x)
    if img.ndim in (2, 4) and img.shape[0] >= 1 and img[0].size == c * h * w:
        img = img[0]
    if img.size != c * h * w:
        raise ValueError(
            f"plot_feature_maps: expected one image of {c * h * w} values ({c}, {h}, {w}), "
            f"but got shape {np.shape(x)}"
        )
    img = img.reshape(1, c, h, w)
    cp = network.conv_param
    conv = Convolution(network.params["W1"], network.params["b1"], cp["stride"], cp["pad"])
    maps = np.asarray(conv.forward(img)[0], dtype=np.float64)  # (FN, OH, OW)
    fn = maps.shape[0]
    nx = max(1, min(int(nx), fn))
    ny = -(-fn // nx)
    cell = 0.9
    fig = _new_figure((nx * cell + 2.2, ny * cell + 0.5))
    left, right = fig.subfigures(1, 2, width_ratios=[2.2, nx * cell], wspace=0.02)
    ax = left.subplots()
    ax.imshow(img[0, 0] if c != 3 else np.clip(img[0].transpose(1, 2, 0), 0, 1),
              cmap="gray_r", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("input")
    axes = np.atleast_1d(right.subplots(ny, nx)).reshape(-1)
    for i, a in enumerate(axes):
        a.set_xticks([])
        a.set_yticks([])
        if i < fn:
            a.imshow(maps[i], cmap="gray", interpolation="nearest")
        else:
            a.set_axis_off()
    right.suptitle("after the first convolution")
    right.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.88, hspace=0.08, wspace=0.08)
    return _save(fig, path)
