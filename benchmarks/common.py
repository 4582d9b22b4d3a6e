"""Shared helpers for the scripts in ``benchmarks/``.

Timing, thread limits and output live in :mod:`pyconv.bench` (shipped in the
wheel, used by ``pyconv bench``); this module adds what only a script
can do: re-execute itself without the OpenBLAS overrides.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyconv import bench

HERE = Path(__file__).resolve().parent
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

__all__ = ["BLAS_ENV", "bench", "reexec_without_blas_env", "run_script"]


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


def run_script(only: str, argv: list[str] | None, **kwargs) -> int:
    """``pyconv bench --full --only <only>`` with the script's argv on top."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return bench.main(argv, defaults={"only": only, "full": True}, **kwargs)
