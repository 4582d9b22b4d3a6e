"""Convolution forward and forward+backward: pyconv vs book-style NumPy vs torch.

Shapes (N, C, H, W, F, K, stride, pad): a (100,1,28,28,30,5,1,0), b (64,3,32,32,64,3,1,1),
c (32,64,56,56,64,3,1,1), d (16,96,27,27,256,5,1,2), e (32,128,28,28,128,3,2,1); float32
and float64, 1 and 2 threads, interleaved repetitions, medians, GFLOP/s (forward
2*N*F*OH*OW*C*K*K, forward+backward 3x) and ratios, outputs cross-checked in the same run.

    python benchmarks/bench_conv.py [--quick] [--shapes a,c] [--threads 1,2]
        [--dtype float32] [--no-numpy] [--native-blas] [--contend] [--out conv.csv]
"""

from __future__ import annotations

import sys

from common import run_script


def main(argv: list[str] | None = None) -> int:
    return run_script("conv", argv)


if __name__ == "__main__":
    sys.exit(main())
