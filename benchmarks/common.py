"""Shared helpers for the scripts in ``benchmarks/``.

Timing, thread limits and output live in :mod:`pyconv.bench` (shipped in the
wheel, used by ``pyconv bench``); this module adds what only a source checkout
can do: run without the OpenBLAS overrides and measure the FMA peak with a
small C probe compiled on the spot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pyconv import bench

HERE = Path(__file__).resolve().parent
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

__all__ = ["BLAS_ENV", "bench", "measure_fma_peak", "reexec_without_blas_env", "run_script"]


def reexec_without_blas_env(argv: list[str]) -> None:
    """Replace this process by the same script with the OpenBLAS overrides unset.

    ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` force NumPy's OpenBLAS onto a
    given kernel (e.g. Haswell/AVX2 on an AVX-512 CPU); unsetting them lets it
    pick its own. Does nothing if neither is set.
    """
    if not any(k in os.environ for k in BLAS_ENV):
        return
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
    print(
        f"{Path(sys.argv[0]).name}: re-running with {', '.join(BLAS_ENV)} unset "
        "(--keep-blas-env to keep them)",
        flush=True,
    )
    os.execve(sys.executable, [sys.executable, sys.argv[0], *argv], env)


def measure_fma_peak(threads: list[int], seconds: float = 0.4) -> dict[str, float]:
    """FMA peak in GFLOP/s keyed ``"float32/1"``, from ``fma_peak.c``.

    Compiled with ``cc -O2 -march=native -fopenmp`` into a temporary directory;
    returns ``{}`` (with a message) when no C compiler is available.
    """
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        print("fma peak: no C compiler found; reporting the reference peak only")
        return {}
    peaks: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        exe = str(Path(tmp) / "fma_peak")
        build = subprocess.run(
            [cc, "-O2", "-march=native", "-fopenmp", str(HERE / "fma_peak.c"), "-o", exe],
            capture_output=True,
            text=True,
            check=False,
        )
        if build.returncode != 0:
            print(f"fma peak: compiling fma_peak.c failed:\n{build.stderr}")
            return {}
        for dtype, arg in (("float32", "f32"), ("float64", "f64")):
            for nt in threads:
                out = subprocess.run(
                    [exe, arg, str(nt), str(seconds)], capture_output=True, text=True, check=True
                ).stdout.split()
                peaks[f"{dtype}/{nt}"] = float(out[0])
                print(
                    f"fma peak: {dtype} {nt} thread(s): {float(out[0]):.1f} GFLOP/s "
                    f"({out[1]}-bit vectors)",
                    flush=True,
                )
    return peaks


def run_script(only: str, argv: list[str] | None, **kwargs) -> int:
    """``pyconv bench --full --only <only>`` with the script's argv on top."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return bench.main(argv, defaults={"only": only, "full": True}, **kwargs)
