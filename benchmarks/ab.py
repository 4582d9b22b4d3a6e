"""Compare two builds of pyconv: alternating processes, anchors in each.

    python benchmarks/ab.py DIR_A DIR_B [--rounds 4] -- <pyconv bench options>

Each DIR holds an importable ``pyconv`` package with its compiled ``_core``
(``pip install --no-deps --target DIR .``; remove DIR first, pip does not
replace it). Every round runs ``python -m pyconv bench <options> --json ...``
once per build with ``PYTHONPATH=DIR``, A then B in odd rounds and B then A
in even ones, so a drift of the machine's speed weighs on both alike.

Why not both builds in one process: Python keeps the first ``_core`` it
loads, so the second build would silently run the first one's code. And
single timings on a shared VM move by 10-20% from minute to minute: besides
the times, the report gives each build's ratio to NumPy and torch measured in
the same process (``np/pc``, ``torch/pc``), which that drift cancels out of.

For each case (benchmark, case, pass, dtype, threads): pyconv's median time
per round for A and B, the median over rounds of B/A, and the median
anchor ratios per build. Use a small selection: ``--only conv --shapes d
--dtype float32 --threads 1 --no-numpy``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pyconv import bench  # its report grouping; the builds compared run in subprocesses


def check_build(path: Path) -> None:
    """Fail unless ``import pyconv`` with PYTHONPATH=path loads path's copy
    (an editable install or a broken package dir would load another)."""
    out = subprocess.run(
        [sys.executable, "-c", "import pyconv, pyconv._core; print(pyconv.__file__)"],
        env={**os.environ, "PYTHONPATH": str(path)},
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"ab: cannot import pyconv from {path}:\n{out.stderr.strip()}")
    loaded = Path(os.path.abspath(out.stdout.strip()))  # symlinked files are fine
    if Path(os.path.abspath(path)) not in loaded.parents:
        raise SystemExit(f"ab: PYTHONPATH={path} imports pyconv from {loaded} instead")


def run_once(path: Path, bench_args: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pyconv", "bench", *bench_args, "--json", str(report)]
        proc = subprocess.run(
            cmd, env={**os.environ, "PYTHONPATH": str(path)}, capture_output=True, text=True
        )
        if proc.returncode != 0 or not report.exists():
            raise SystemExit(f"ab: {' '.join(cmd)} failed in {path}:\n{proc.stderr.strip()}")
        return json.loads(report.read_text())["results"]


def by_case(results: list[dict]) -> dict[tuple, dict[str, float]]:
    """{(bench, case, pass, dtype, threads): {impl: median seconds}}, quiet rows only."""
    return {
        key[:5]: {impl: r["median_s"] for impl, r in impls.items()}
        for key, impls in bench.group_by_case(results).items()
        if key[5] == "quiet"
    }


def summarize(rounds: list[tuple[dict, dict]]) -> list[str]:
    """Lines of the report from [(table A, table B)] per round."""
    lines = [
        f"{'case':<40} {'A ms per round':<30} {'B ms per round':<30} {'B/A':>5}  anchors/pc A -> B"
    ]
    for key in rounds[0][0]:
        a_ms, b_ms, anchors = [], [], {}
        for ta, tb in rounds:
            if key not in ta or key not in tb or "pyconv" not in ta[key] or "pyconv" not in tb[key]:
                continue
            a_ms.append(ta[key]["pyconv"] * 1e3)
            b_ms.append(tb[key]["pyconv"] * 1e3)
            for impl in ta[key]:
                if impl != "pyconv" and impl in tb[key]:
                    anchors.setdefault(impl, ([], []))
                    anchors[impl][0].append(ta[key][impl] / ta[key]["pyconv"])
                    anchors[impl][1].append(tb[key][impl] / tb[key]["pyconv"])
        if not a_ms:
            continue
        ratio = statistics.median(b / a for a, b in zip(a_ms, b_ms))
        name = " ".join(str(k) for k in key[:3]) + f" {key[3]} {key[4]}t"
        anchor_text = "  ".join(
            f"{impl} {statistics.median(ra):.3f} -> {statistics.median(rb):.3f}"
            for impl, (ra, rb) in anchors.items()
        )
        lines.append(
            f"{name:<40} {' '.join(f'{t:.3f}' for t in a_ms):<30} "
            f"{' '.join(f'{t:.3f}' for t in b_ms):<30} {ratio:>5.3f}  {anchor_text}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, bench_args = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build_a", type=Path, help="directory holding build A's pyconv")
    parser.add_argument("build_b", type=Path, help="directory holding build B's pyconv")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (default 4)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if "--json" in bench_args or "--out" in bench_args:
        parser.error("ab.py writes the reports itself: drop --json/--out")
    for path in (args.build_a, args.build_b):
        check_build(path)
    rounds = []
    for r in range(args.rounds):
        order = ("A", "B") if r % 2 == 0 else ("B", "A")
        tables = {}
        for which in order:
            path = args.build_a if which == "A" else args.build_b
            tables[which] = by_case(run_once(path, bench_args))
            print(f"round {r + 1}/{args.rounds}: {which} done", file=sys.stderr, flush=True)
        rounds.append((tables["A"], tables["B"]))
    print(f"A = {args.build_a}\nB = {args.build_b}\nbench options: {' '.join(bench_args)}")
    print("\n".join(summarize(rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
