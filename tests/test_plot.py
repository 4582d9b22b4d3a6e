"""Plots: PNGs written headless without pyplot, input validation, and the
install hint when matplotlib is missing."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pyconv import plot
from pyconv.network import SimpleConvNet

PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def test_training_curves_from_a_dict_and_a_trainer_like_object(mpl, tmp_path):
    history = {"train_acc_list": [0.8, 0.9, 0.95], "test_acc_list": [0.79, 0.88, 0.93],
               "train_loss_list": list(np.linspace(2.3, 0.1, 30))}
    path = plot.plot_training_curves(history, tmp_path / "curves.png")
    assert path == tmp_path / "curves.png"
    w, h = _png_size(path)
    assert w > h > 100

    class T:
        train_acc_list = [0.5]
        test_acc_list = [0.4]
        train_loss_list = [1.0, 0.5]

    assert _png_size(plot.plot_training_curves(T(), str(tmp_path / "t.png")))[0] > 100
    with pytest.raises(ValueError, match="nothing to plot"):
        plot.plot_training_curves({}, tmp_path / "empty.png")


def test_filters_single_and_before_after(mpl, tmp_path):
    net = SimpleConvNet(seed=0)
    before = net.params["W1"].copy()
    single = plot.plot_filters(before, tmp_path / "single.png")
    after = before + np.random.default_rng(0).standard_normal(before.shape).astype(np.float32)
    both = plot.plot_filters(before, tmp_path / "both.png", after=after)
    w1, _ = _png_size(single)
    w2, _ = _png_size(both)
    assert w2 > 1.8 * w1  # two grids side by side
    with pytest.raises(ValueError, match="after"):
        plot.plot_filters(before, tmp_path / "x.png", after=after[:3])
    with pytest.raises(ValueError, match="FN, C, FH, FW"):
        plot.plot_filters(before[0], tmp_path / "x.png")


def test_feature_maps(mpl, tmp_path):
    net = SimpleConvNet(conv_param={"filter_num": 6}, seed=0)
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    for name, image in (("flat", x[0]), ("batch", x), ("chw", x[0].reshape(1, 28, 28))):
        assert _png_size(plot.plot_feature_maps(net, image, tmp_path / f"{name}.png"))[0] > 100
    with pytest.raises(ValueError, match="one image"):
        plot.plot_feature_maps(net, np.zeros(10), tmp_path / "bad.png")


def test_missing_matplotlib_gives_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"pip install pyconv\[plot\]"):
        plot.plot_filters(np.zeros((2, 1, 3, 3)), tmp_path / "f.png")


def test_plots_do_not_touch_pyplot(mpl, tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from pyconv import plot\n"
        f"plot.plot_filters(np.ones((4, 1, 3, 3)), {str(tmp_path / 'f.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
