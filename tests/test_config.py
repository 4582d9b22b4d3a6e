"""show_config / config: version, compiler, OpenMP, threads and SIMD path; the
alignment of the arrays the core allocates."""

from __future__ import annotations

import re

import numpy as np

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


def test_config_reports_the_gemm_thread_thresholds():
    # The quiet threshold comes from a measured region cost and FMA rate; the
    # contended one is fixed (PYCONV_PARALLEL_FLOPS, when set, is both).
    cfg = pyconv.config()
    for dt in ("float32", "float64"):
        quiet = cfg[f"gemm_parallel_flops_{dt}"]
        busy = cfg[f"gemm_contended_parallel_flops_{dt}"]
        assert 0 <= quiet <= busy, (dt, quiet, busy)
    assert isinstance(cfg["contended_holds"], int) and cfg["contended_holds"] >= 0
    assert isinstance(cfg["contended"], bool)
    if cfg["openmp"].startswith("yes"):
        assert 0 < cfg["parallel_region_us"] < 1e6
    else:
        assert cfg["parallel_region_us"] == 0


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


def test_core_outputs_are_cache_line_aligned_and_owned():
    # Every array the core allocates starts on a 64-byte boundary (NumPy's own
    # allocator only promises 16), is writeable, and keeps its memory alive
    # after the producing call and every other reference are gone.
    import gc

    import pyconv.functional as F

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    y = F.conv2d(x, w, np.zeros(4, np.float32), stride=1, pad=1)
    dx, dw, db = F.conv2d_backward(y, x, w, stride=1, pad=1)
    p, argmax = F.max_pool2d(x, 2, 2, stride=2)
    outs = [y, dx, dw, db, p, argmax, F.gemm(w.reshape(4, -1), w.reshape(4, -1).T),
            F.im2col(x, 3, 3), F.max_pool2d_backward(p, argmax, x.shape)]
    for i, a in enumerate(outs):
        assert a.ctypes.data % 64 == 0, f"output {i} at {a.ctypes.data:#x}"
        assert a.flags.writeable and a.flags.c_contiguous, f"output {i}"
    expected = y.copy()
    del outs, dx, dw, db
    gc.collect()
    junk = [np.full(y.shape, 7.0, np.float32) for _ in range(8)]  # reuse freed memory
    np.testing.assert_array_equal(y, expected)
    del junk


def test_output_cache_reuses_released_blocks_only():
    import pyconv.functional as F

    pyconv.empty_cache()
    assert pyconv.config()["output_cache_bytes"] == 0
    rng = np.random.default_rng(4)
    a = rng.standard_normal((300, 400)).astype(np.float32)
    b = rng.standard_normal((400, 500)).astype(np.float32)  # 300 x 500 float32: 600 KB out
    expected = a.astype(np.float64) @ b
    c1 = F.gemm(a, b)
    c2 = F.gemm(a, b)  # c1 is alive: a different block
    assert c1.ctypes.data != c2.ctypes.data
    addr = c1.ctypes.data
    snapshot = c1.copy()
    del c1
    assert pyconv.config()["output_cache_bytes"] >= 600_000
    c3 = F.gemm(a, b)  # the released block comes back, fully rewritten
    assert c3.ctypes.data == addr
    assert pyconv.config()["output_cache_bytes"] == 0
    for c in (c2, c3):
        np.testing.assert_allclose(c, expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(c3, snapshot)
    # A smaller request does not take a block more than 1/8 too large.
    del c3
    small = F.gemm(a[:100], b)
    assert small.ctypes.data != addr
    pyconv.empty_cache()
    assert pyconv.config()["output_cache_bytes"] == 0


def test_output_cache_is_bounded():
    import pyconv.functional as F

    pyconv.empty_cache()
    limit = pyconv.config()["output_cache_limit_bytes"]
    a = np.ones((1, 1), np.float32)
    # Outputs of distinct sizes, 14-18 MB each and 350 MB in all, released at
    # once: the cache keeps the newest within the limit and frees the rest.
    outs = [F.gemm(np.ones((3500 + 50 * i, 1), np.float32), np.ones((1, 1000), np.float32))
            for i in range(22)]
    del outs, a
    assert 0 < pyconv.config()["output_cache_bytes"] <= limit
    pyconv.empty_cache()
    assert pyconv.config()["output_cache_bytes"] == 0


def test_empty_outputs_allocate_nothing():
    # A zero batch with huge spatial output sizes: the overflow rule skips
    # zero dimensions, but the array itself holds nothing and must not ask
    # the allocator for 4 * 262145**2 bytes.
    import pyconv.functional as F

    x = np.zeros((0, 1, 1, 1), np.float32)
    y = F.conv2d(x, np.ones((1, 1, 1, 1), np.float32), np.zeros(1, np.float32), stride=1,
                 pad=131072)
    assert y.shape == (0, 1, 262145, 262145) and y.size == 0
