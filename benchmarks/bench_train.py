"""SimpleConvNet training step (batch 100, gradient + Adam) in images/s.

pyconv.SimpleConvNet vs the book-style NumPy network vs an equivalent torch network
(conv 30x5x5 - relu - pool 2x2 - affine 100 - relu - affine 10 - softmax), all started
from the same weights; first-step gradients are cross-checked in the same run.

    python benchmarks/bench_train.py [--quick] [--threads 1,2] [--dtype float32]
        [--native-blas] [--contend] [--out train.csv]
"""

from __future__ import annotations

import sys

from common import run_script


def main(argv: list[str] | None = None) -> int:
    return run_script("train", argv)


if __name__ == "__main__":
    sys.exit(main())
