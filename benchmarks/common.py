"""Shared helper for the scripts in ``benchmarks/``.

Timing, thread limits, the FMA peak, re-running without the OpenBLAS
overrides (``--native-blas``) and output all live in :mod:`pyconv.bench`
(shipped in the wheel, used by ``pyconv bench``); each script is that command
with its own benchmark and the full sweep as defaults.
"""

from __future__ import annotations

import sys

from pyconv import bench

__all__ = ["bench", "run_script"]


def run_script(only: str, argv: list[str] | None, **defaults) -> int:
    """``pyconv bench --full --only <only>`` with the script's argv on top;
    ``defaults`` overrides further option defaults (``native_blas=True``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return bench.main(argv, defaults={"only": only, "full": True, **defaults})
