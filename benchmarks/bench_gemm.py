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

import sys

from common import run_script


def main(argv: list[str] | None = None) -> int:
    # NumPy's native kernel by default (pyconv bench's --native-blas);
    # --keep-blas-env keeps the OpenBLAS overrides as set.
    argv = list(sys.argv[1:] if argv is None else argv)
    keep = "--keep-blas-env" in argv
    return run_script("gemm", [a for a in argv if a != "--keep-blas-env"], native_blas=not keep)


if __name__ == "__main__":
    sys.exit(main())
