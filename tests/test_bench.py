"""pyconv.bench's bookkeeping (not its timings): the FMA peak it measures, the
best-square summary against that peak, and the plan lines it prints."""

from __future__ import annotations

import math

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
