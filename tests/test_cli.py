"""The ``pyconv`` command: train end to end on a tiny slice (never downloading),
the auto subset's choice and fallback, info, and bench delegation."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

import pyconv
import pyconv.datasets as datasets
from pyconv import cli
from pyconv.network import SimpleConvNet

TINY = ["--limit", "200", "--test-limit", "100", "--epochs", "1", "--batch-size", "50",
        "--eval-samples", "100"]


@pytest.fixture(autouse=True)
def _restore_threads(restore_threads):
    """`pyconv train --threads` sets the count in this process: every test restores it."""


@pytest.fixture
def no_download(monkeypatch):
    """Make any attempt to download fail loudly instead of touching the network."""

    def refuse(url, dest):
        raise OSError(f"test: downloading {url} is not allowed")

    monkeypatch.setattr(datasets, "_fetch", refuse)


def test_train_end_to_end_on_the_embedded_subset(tmp_path, capsys, no_download):
    out_path = tmp_path / "params.npz"
    code = cli.main(["train", "--subset", "mini", *TINY, "--threads", "1", "--seed", "3",
                     "--save", str(out_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "embedded MNIST subset: 200 training / 100 test images" in out
    assert "epoch 1/1" in out and "final test acc" in out and "Adam(lr=0.002" in out
    assert "s per epoch" in out and "images/s" in out
    assert pyconv.get_num_threads() == 1
    net = SimpleConvNet()
    net.load_params(out_path)  # the saved file is a valid parameter archive


def test_quiet_run_still_reports_the_result(capsys, no_download):
    assert cli.main(["train", "--subset", "mini", *TINY, "-q", "--optimizer", "SGD",
                     "--lr", "0.1", "--dtype", "float64", "--weight-init", "he",
                     "--augment-shift", "0"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" not in out
    assert "final test acc" in out and "SGD(lr=0.1)" in out and "float64" in out


def test_auto_falls_back_to_the_embedded_subset(monkeypatch, tmp_path, capsys, no_download):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PYCONV_DATA", raising=False)
    monkeypatch.setattr(datasets, "find_mnist", lambda root=None: None)
    assert cli.main(["train", "--subset", "auto", *TINY, "-q"]) == 0
    captured = capsys.readouterr()
    assert "could not be downloaded" in captured.err and "embedded" in captured.err
    assert "embedded MNIST subset (fallback)" in captured.out


def test_auto_uses_full_mnist_when_found(monkeypatch, tmp_path, capsys):
    rng = np.random.default_rng(0)
    fake = ((rng.random((60, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 60)),
            (rng.random((20, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 20)))
    calls = []

    def fake_load(**kw):
        calls.append(kw)
        return fake

    monkeypatch.setattr(datasets, "find_mnist", lambda root=None: tmp_path)
    monkeypatch.setattr(datasets, "load_mnist", fake_load)
    assert cli.main(["train", *TINY, "-q", "--data-dir", str(tmp_path)]) == 0
    assert calls and calls[0]["download"] is False and calls[0].get("subset") is None
    assert f"full MNIST from {tmp_path}: 60 training / 20 test images" in capsys.readouterr().out


def test_full_subset_without_data_fails_cleanly(monkeypatch, tmp_path, capsys, no_download):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PYCONV_DATA", raising=False)
    assert cli.main(["train", "--subset", "full", "--data-dir", str(tmp_path), *TINY]) == 1
    assert "could not load MNIST" in capsys.readouterr().err


def test_plots_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    paths = {name: tmp_path / f"{name}.png" for name in ("curves", "filters", "maps")}
    assert cli.main(["train", "--subset", "mini", *TINY, "-q", "--plot", str(paths["curves"]),
                     "--filters", str(paths["filters"]),
                     "--feature-maps", str(paths["maps"])]) == 0
    for p in paths.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv",
    [["train", "--epochs", "0"], ["train", "--optimizer", "lbfgs"], ["train", "--lr", "-1"],
     ["train", "--dtype", "float16"], ["train", "--subset", "tiny"],
     ["train", "--weight-init", "lecun"], []],
)
def test_bad_arguments_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


def test_info_prints_the_configuration(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for key in pyconv.config():
        assert key in out


def test_bench_delegates_all_arguments(monkeypatch):
    seen = []
    fake = types.ModuleType("pyconv.bench")
    fake.main = lambda argv: seen.append(list(argv)) or 7
    monkeypatch.setitem(sys.modules, "pyconv.bench", fake)
    monkeypatch.setattr(pyconv, "bench", fake, raising=False)
    assert cli.main(["bench", "--help", "gemm"]) == 7
    assert seen == [["--help", "gemm"]]


def test_bench_missing_module_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyconv.bench", None)  # import fails: module not found
    monkeypatch.delattr(pyconv, "bench", raising=False)
    assert cli.main(["bench"]) == 1
    assert "pyconv.bench is missing" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "pyconv", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert "train" in proc.stdout and "bench" in proc.stdout and "info" in proc.stdout
