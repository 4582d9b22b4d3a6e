"""pyconv.bench's bookkeeping (not its timings): the FMA peak it measures, the
best-square summary against that peak, and the plan lines it prints."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest

from pyconv import bench


def test_measure_fma_peak_keys_and_values():
    peak = bench.measure_fma_peak(["float32", "float64"], [1, 2], seconds=0.03)
    assert sorted(peak) == ["float32/1", "float32/2", "float64/1", "float64/2"]
    assert all(math.isfinite(v) and v > 0 for v in peak.values()), peak


def _row(impl, case, gflops, threads=1, load="quiet"):
    return {"bench": "gemm", "case": case, "impl": impl, "dtype": "float32",
            "threads": threads, "gflops": gflops, "load": load}


def test_gemm_peak_summary_takes_the_best_quiet_square():
    results = [
        _row("pyconv", "square 256", 150.0),
        _row("pyconv", "square 1024", 180.0),
        _row("pyconv", "square 2048", 900.0, load="busy"),  # contention rows never count
        _row("pyconv", "conv c fwd", 999.0),  # nor non-square cases
        _row("numpy", "square 256", 160.0),
    ]
    rows = bench.gemm_peak_summary(results, {"float32/1": 200.0})
    by_impl = {r["impl"]: r for r in rows}
    assert by_impl["pyconv"]["best_square_gflops"] == 180.0
    assert by_impl["pyconv"]["fraction_of_measured"] == 0.9
    assert by_impl["numpy"]["fraction_of_measured"] == 0.8
    ref = bench.REFERENCE_PEAK_GFLOPS["float32"] / 2
    assert by_impl["pyconv"]["fraction_of_reference"] == 180.0 / ref
    # Without a measured peak the rows carry the reference only.
    assert "fraction_of_measured" not in bench.gemm_peak_summary(results)[0]


def test_format_plans_names_each_direct_path():
    plan = {"team": 2, "gemm_threads": 1, "fwd_direct": False, "dx_direct": True,
            "dw_direct": True, "workspace_bytes": 3 * 2**20}
    results = [{"impl": "pyconv", "case": "c", "pass": "fwd+bwd", "dtype": "float32",
                "threads": 2, "plan": plan}]
    line = bench.format_plans(results)
    assert "direct fwd/dx/dw=n/y/y" in line and "workspace=3.00 MiB" in line, line
    # The weight gradient as dot products (AVX-512) shows as "dot".
    results[0]["plan"] = {**plan, "dw_direct": False, "dw_dot": True}
    assert "direct fwd/dx/dw=n/y/dot" in bench.format_plans(results)


class _FakeLoad:
    """Stands in for a BusyLoop: records what time_interleaved asks of it."""

    def __init__(self):
        self.spinning = False
        self.calls = []

    def pause(self):
        self.spinning = False
        self.calls.append("pause")

    def resume(self):
        self.spinning = True
        self.calls.append("resume")


def test_time_interleaved_alternates_quiet_and_busy_samples():
    load = _FakeLoad()
    seen = {"f": [], "g": []}
    fns = {name: (lambda name=name: seen[name].append(load.spinning)) for name in seen}
    samples = bench.time_interleaved(fns, reps=4, min_time=0.0, load=load)
    assert sorted(samples, key=str) == sorted(["f", "g", ("f", "busy"), ("g", "busy")], key=str)
    assert all(len(v) == 4 for v in samples.values())
    for name, states in seen.items():
        # warm-up and calibration quiet, then one quiet and one busy call per
        # repetition (min_time 0: one call per sample), in alternating order
        assert states[:2] == [False, False], name
        timed = states[2:]
        assert timed.count(True) == 4 and timed.count(False) == 4, (name, timed)
        assert timed[0::2] == [True, False, True, False], (name, timed)
    assert load.spinning is False  # left paused for untimed work


def test_records_label_busy_samples():
    samples = {"pyconv": [1.0, 3.0, 2.0], ("pyconv", "busy"): [4.0, 4.0, 5.0]}
    recs = bench._records("gemm", "sq", "1x1x1", "float32", 2, samples, work=2.0)
    by_load = {r.get("load", "quiet"): r for r in recs}
    assert by_load["quiet"]["median_s"] == 2.0 and "load" not in by_load["quiet"]
    assert by_load["busy"]["median_s"] == 4.0 and by_load["busy"]["impl"] == "pyconv"


def test_contention_summary_pairs_busy_two_threads_with_quiet_one_thread():
    def rec(threads, load, median):
        r = {"bench": "conv", "case": "a", "pass": "fwd", "dtype": "float32",
             "impl": "pyconv", "threads": threads, "median_s": median}
        if load == "busy":
            r["load"] = "busy"
        return r

    results = [rec(1, "quiet", 2.0), rec(1, "busy", 2.2), rec(2, "quiet", 1.1),
               rec(2, "busy", 2.6)]
    (row,) = bench.contention_summary(results)
    assert row["quiet_1t_s"] == 2.0 and row["busy_2t_s"] == 2.6
    assert math.isclose(row["ratio"], 1.3) and row["target_met"]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat") or not hasattr(signal, "SIGSTOP"),
                    reason="needs POSIX signals and /proc")
def test_busy_loop_pauses_and_resumes():
    with bench.BusyLoop() as busy:
        busy.pause()
        assert busy.state() in ("T", "t")
        busy.resume()
        deadline = time.monotonic() + 5
        while busy.state() in ("T", "t") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert busy.state() == "R"
        busy.pause()
        proc = busy.proc
    assert proc.poll() is not None  # killed on exit, even while stopped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_busy_loop_dies_with_its_parent():
    # A parent that starts a BusyLoop and is then killed outright (no __exit__).
    code = ("import sys, time; from pyconv import bench; b = bench.BusyLoop().__enter__(); "
            "print(b.proc.pid, flush=True); time.sleep(60)")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          text=True) as parent:
        try:
            pid = int(parent.stdout.readline())
        finally:
            parent.kill()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break  # dead, waiting for a reaper
        time.sleep(0.01)
    alive = os.path.exists(f"/proc/{pid}")
    if alive:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            alive = f.read().rsplit(")", 1)[1].split()[0] != "Z"
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the busy loop outlived the process that started it"
