"""Max pooling forward and forward+backward: pyconv vs book-style NumPy vs torch.

Shapes (N, C, H, W) pool/stride: (100,30,24,24) 2x2/2 and (32,64,56,56) 3x3/2.

    python benchmarks/bench_pool.py [--quick] [--threads 1,2] [--dtype float32]
        [--native-blas] [--contend] [--out pool.csv]
"""

from __future__ import annotations

import sys

from common import run_script


def main(argv: list[str] | None = None) -> int:
    return run_script("pool", argv)


if __name__ == "__main__":
    sys.exit(main())
