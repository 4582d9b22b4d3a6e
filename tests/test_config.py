"""show_config / config: version, compiler, OpenMP, threads and SIMD path."""

from __future__ import annotations

import re

import pytest

import pyconv
from pyconv import _core


def test_config_keys():
    cfg = pyconv.config()
    for key in ("version", "compiler", "openmp", "threads", "simd"):
        assert key in cfg, f"config() lacks {key!r}: {sorted(cfg)}"
    assert cfg["version"] == pyconv.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", pyconv.__version__)
    assert cfg["threads"] == pyconv.get_num_threads()
    assert cfg["simd"] in _core.available_isas()


def test_show_config_prints_everything(capsys):
    pyconv.show_config()
    text = capsys.readouterr().out
    cfg = pyconv.config()
    for key in ("version", "compiler", "openmp", "threads", "simd"):
        assert re.search(rf"^\s*{key}\s*:", text, flags=re.M), f"{key} missing in:\n{text}"
    assert pyconv.__version__ in text
    assert str(cfg["compiler"]) in text
    assert str(cfg["simd"]) in text
    assert re.search(rf"^\s*threads\s*:\s*{pyconv.get_num_threads()}\s*$", text, flags=re.M)


@pytest.fixture
def restore_threads():
    n = pyconv.get_num_threads()
    yield n
    pyconv.set_num_threads(n)


def test_show_config_follows_settings(capsys, isa, restore_threads):
    pyconv.set_num_threads(1)
    pyconv.show_config()
    text = capsys.readouterr().out
    assert re.search(r"^\s*threads\s*:\s*1\s*$", text, flags=re.M), text
    assert re.search(rf"^\s*simd\s*:\s*{isa}\s*$", text, flags=re.M), text


def test_available_isas_always_has_a_portable_path():
    isas = _core.available_isas()
    assert len(isas) >= 1
    assert "generic" in isas
    assert len(set(isas)) == len(isas)
