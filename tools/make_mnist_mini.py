"""Build pyconv/data/mnist_mini.npz, the stratified MNIST subset shipped in the package.

From the four canonical IDX files (verified against their sha256), take for each class
the 1000 training and 200 test images whose key sha256(f"{TAG}:{seed}:{split}:{index}")
is smallest; keep them in their original order. The choice depends only on the seed
and the data (no NumPy RNG stream, so it is the same on every NumPy version), and the
archive has fixed timestamps, so re-running the script reproduces the arrays exactly
(and the file byte for byte with the same zlib).

Usage: python tools/make_mnist_mini.py [--source DIR] [--out FILE] [--seed N] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from pyconv.datasets import _FILES, _load_split

TAG = "pyconv-mnist-mini"
SEED = 0
PER_CLASS = {"train": 1000, "test": 200}
REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "mnist"
DEFAULT_OUT = REPO / "pyconv" / "data" / "mnist_mini.npz"


def select(labels: np.ndarray, split: str, per_class: int, seed: int) -> np.ndarray:
    """Indices (ascending, int32) of ``per_class`` examples of each class 0..9."""
    chosen = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"{split}: class {c} has only {len(idx)} examples")
        keys = [hashlib.sha256(f"{TAG}:{seed}:{split}:{i}".encode()).digest() for i in idx]
        order = sorted(range(len(idx)), key=keys.__getitem__)
        chosen.append(idx[order[:per_class]])
    return np.sort(np.concatenate(chosen)).astype(np.int32)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps (reproducible bytes)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def build(source: Path, seed: int) -> dict[str, np.ndarray]:
    arrays = {}
    for split in ("train", "test"):
        x, t = _load_split(source, split, require_hash=True)
        idx = select(t, split, PER_CLASS[split], seed)
        arrays[f"x_{split}"] = x[idx]
        arrays[f"t_{split}"] = t[idx]
        arrays[f"{split}_indices"] = idx
    return arrays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--check", action="store_true", help="rebuild in memory and compare with --out"
    )
    args = parser.parse_args(argv)

    arrays = build(args.source, args.seed)
    if args.check:
        with np.load(args.out, allow_pickle=False) as z:
            same = set(z.files) == set(arrays) and all(
                z[k].dtype == v.dtype and np.array_equal(z[k], v) for k, v in arrays.items()
            )
        tmp = io.BytesIO()
        write_npz(tmp, arrays)  # type: ignore[arg-type]  (ZipFile accepts a file object)
        same_bytes = args.out.read_bytes() == tmp.getvalue()
        print(
            f"{args.out}: arrays {'identical' if same else 'DIFFER'}; "
            f"bytes {'identical' if same_bytes else 'differ (zlib version?)'}"
        )
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_npz(args.out, arrays)
    blob = args.out.read_bytes()
    print(f"wrote {args.out}: {len(blob)} bytes, sha256 {hashlib.sha256(blob).hexdigest()}")
    for split in ("train", "test"):
        print(
            f"  {split}: {len(arrays['t_' + split])} images, per class",
            np.bincount(arrays["t_" + split], minlength=10).tolist(),
        )
    print("  sources:", ", ".join(f"{f.name} {f.sha256}" for f in _FILES.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
