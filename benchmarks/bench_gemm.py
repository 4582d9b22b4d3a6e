"""GEMM GFLOP/s: pyconv vs numpy.matmul at equal thread counts, vs FMA peak.

Sweeps squares 64..2048, sizes straddling the MR/NR/KC blocking reported by
``pyconv._core.config()``, and the GEMM shapes convolution and SimpleConvNet
really produce (per-image conv forward / backward-weight / backward-input,
affine layers), and the FMA peak of pyconv's code path (``_core.fma_peak``).
By default it re-runs itself with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
unset, so NumPy uses its native kernel for this CPU; the kernel that ran is
recorded (threadpoolctl 'architecture').

    python benchmarks/bench_gemm.py [--quick] [--threads 1,2] [--dtype float32]
        [--keep-blas-env] [--contend] [--out gemm.csv] [--json gemm.json]
"""

from __future__ import annotations

import argparse
import sys

from common import reexec_without_blas_env, run_script


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(
        "--keep-blas-env",
        action="store_true",
        help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE as set",
    )
    own, rest = pre.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        pre.print_help()
        return run_script("gemm", rest)
    if not own.keep_blas_env:
        reexec_without_blas_env(argv)
    return run_script("gemm", rest)


if __name__ == "__main__":
    sys.exit(main())
