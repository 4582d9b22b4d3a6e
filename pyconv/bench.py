"""Benchmarks behind ``pyconv bench``: GEMM, convolution, pooling, training.

pyconv is timed against the book-style NumPy layers (``pyconv._baseline``),
``numpy.matmul`` and, when importable, PyTorch on the CPU, at the same thread
count. Implementations alternate inside every repetition; the median of the
repetitions is reported and results are cross-checked in the same run. Output:
a table on stdout, optionally CSV/JSON (``--out``/``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import inspect
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from . import _baseline as base
from . import _core

__all__ = [
    "BusyLoop",
    "CONV_SHAPES",
    "POOL_SHAPES",
    "REFERENCE_PEAK_GFLOPS",
    "bench_conv",
    "bench_gemm",
    "bench_pool",
    "bench_train",
    "main",
    "system_info",
    "time_interleaved",
]

#: Convolution shapes: name -> (N, C, H, W, F, K, stride, pad).
CONV_SHAPES = {
    "a": (100, 1, 28, 28, 30, 5, 1, 0),  # SimpleConvNet on MNIST
    "b": (64, 3, 32, 32, 64, 3, 1, 1),  # CIFAR-style first layer
    "c": (32, 64, 56, 56, 64, 3, 1, 1),  # ResNet stage 1
    "d": (16, 96, 27, 27, 256, 5, 1, 2),  # AlexNet conv2
    "e": (32, 128, 28, 28, 128, 3, 2, 1),  # strided 3x3
}
#: Pooling shapes: name -> (N, C, H, W, K, stride).
POOL_SHAPES = {
    "p1": (100, 30, 24, 24, 2, 2),  # SimpleConvNet
    "p2": (32, 64, 56, 56, 3, 2),  # ResNet stem
}
#: FMA peak on 2 cores that the issue quotes for its development machine,
#: reported beside the peak measured in the same run (measure_fma_peak).
REFERENCE_PEAK_GFLOPS = {"float32": 448.0, "float64": 221.0}
#: Largest max|a - b| / max|b| accepted when implementations are compared.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}

_BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_BLAS_TIMEOUT = "OPENBLAS_THREAD_TIMEOUT"

# ---------------------------------------------------------------------------
# environment


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _import_threadpoolctl():
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


def _cpu_info() -> dict:
    info: dict = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and "model" not in info:
                    info["model"] = value.strip()
                elif key == "flags" and "flags" not in info:
                    info["flags"] = value.split()
    except OSError:
        info["model"] = platform.processor() or platform.machine()
    if shutil.which("lscpu"):
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        wanted = (
            "Model name",
            "CPU(s)",
            "Thread(s) per core",
            "L1d cache",
            "L2 cache",
            "L3 cache",
            "CPU max MHz",
            "Hypervisor vendor",
        )
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in wanted:
                info.setdefault("lscpu", {})[key.strip()] = value.strip()
    if "flags" in info:
        simd = ("avx512f", "avx512bw", "avx512vl", "avx2", "fma", "avx", "sse4_2", "neon", "asimd")
        info["simd_flags"] = [f for f in simd if f in info["flags"]]
    return info


def blas_info() -> list:
    """NumPy's BLAS as threadpoolctl sees it (``architecture`` = kernel in use)."""
    tpc = _import_threadpoolctl()
    if tpc is None:
        return []
    keep = ("internal_api", "version", "architecture", "threading_layer", "num_threads")
    rows = []
    for d in tpc.threadpool_info():
        if d.get("user_api") == "blas":
            row = {k: d.get(k) for k in keep}
            row["library"] = os.path.basename(d.get("filepath", ""))
            rows.append(row)
    return rows


def page_fault_us(megabytes: int = 16) -> float:
    """Microseconds per first touch of a fresh 4 KiB page (anonymous mmap).

    Kernels that return new arrays pay this per call on large outputs; it is
    high on some VMs and explains time that no kernel change can remove.
    """
    import mmap

    size = megabytes << 20
    best = math.inf
    for _ in range(3):
        m = mmap.mmap(-1, size)
        a = np.frombuffer(m, np.uint8)
        t0 = time.perf_counter()
        a[::4096] = 1
        best = min(best, time.perf_counter() - t0)
        del a
        m.close()
    return 1e6 * best / (size // 4096)


def system_info(torch=None) -> dict:
    """CPU, library versions, BLAS kernel, pyconv build and relevant env vars."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_info(),
        "numpy": np.__version__,
        "numpy_blas": blas_info(),
        "pyconv": dict(_core.config()),
        "page_fault_us": page_fault_us(),
        "env": {
            k: os.environ.get(k)
            for k in (
                *_BLAS_ENV,
                "OMP_NUM_THREADS",
                "OMP_WAIT_POLICY",
                "OMP_PROC_BIND",
                "MKL_NUM_THREADS",
            )
        },
    }
    if hasattr(os, "sched_getaffinity"):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    info["torch"] = getattr(torch, "__version__", None)
    if torch is not None:
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
    return info


@contextlib.contextmanager
def thread_limit(n: int, torch=None):
    """Run pyconv, NumPy's BLAS and torch with ``n`` threads inside the block."""
    old_pc = _core.get_num_threads()
    old_torch = torch.get_num_threads() if torch is not None else None
    _core.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    tpc = _import_threadpoolctl()
    limits = tpc.threadpool_limits(limits=n, user_api="blas") if tpc else contextlib.nullcontext()
    try:
        with limits:
            yield
    finally:
        _core.set_num_threads(old_pc)
        if torch is not None:
            torch.set_num_threads(old_torch)


def warm_numpy_blas(nthreads: int) -> None:
    """One NumPy matmul per dtype on ``nthreads`` threads, before any timing.

    NumPy's OpenBLAS (0.3.31, Haswell kernel, Zen 1 VM) ran float32 products on
    one thread 2-4x slower until the process had made one multi-threaded BLAS
    call: 256^3 took 3.3 ms before, 0.92 ms after (cpu/wall 1.0 both times, the
    same sgemm_kernel_HASWELL), 128^3 to 320^3 likewise; float64 was not
    affected. Without this the first 1-thread NumPy figures of a run were that
    slow path, and pyconv's ratios against them too high.
    """
    with thread_limit(max(1, nthreads)):
        for dtype in (np.float32, np.float64):
            a = np.ones((512, 512), dtype=dtype)
            for _ in range(2):
                a @ a


# The busy loop dies with the process that started it (Linux: prctl
# PR_SET_PDEATHSIG = 1, SIGKILL), so that a benchmark killed outright does not
# leave a core spinning for whatever runs next.
_BUSY_CODE = """
import sys
if sys.platform.startswith("linux"):
    import ctypes, os, signal
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() == 1:
        sys.exit()
while True:
    pass
"""


class BusyLoop:
    """Context manager: a separate Python process spinning on one CPU.

    Pinned to the last CPU this process may use, so a 2-thread run has to
    share that core. ``pause()`` stops it (SIGSTOP) and ``resume()`` lets it
    spin again (SIGCONT), so quiet and busy samples can alternate within
    seconds: a whole quiet suite followed by a whole busy one put minutes
    between the two, and on a host whose speed drifts (a 2-vCPU VM ran the
    same single-threaded 11 us GEMM at 0.011 and 0.020 ms minutes apart)
    their ratio measured the drift. The process is killed (by its own handle)
    on exit, and dies with this process if it is killed. POSIX only.
    """

    def __init__(self, cpu: int | None = None):
        if not hasattr(signal, "SIGSTOP"):
            raise ValueError("--contend needs POSIX signals (SIGSTOP/SIGCONT)")
        self.cpu = cpu
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _BUSY_CODE], stdin=subprocess.DEVNULL)
        if hasattr(os, "sched_setaffinity"):
            cpu = self.cpu if self.cpu is not None else max(os.sched_getaffinity(0))
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, {cpu})
                self.cpu = cpu
        time.sleep(0.3)  # let it start spinning
        return self

    def state(self) -> str | None:
        """The process's scheduler state letter from /proc (R running, T
        stopped, ...), or None where /proc is absent."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return None

    def pause(self) -> None:
        """Stop the loop; returns once the kernel reports it stopped (<= 0.1 s)."""
        self.proc.send_signal(signal.SIGSTOP)
        deadline = time.perf_counter() + 0.1
        while self.state() not in ("T", "t", None) and time.perf_counter() < deadline:
            time.sleep(1e-4)

    def resume(self) -> None:
        """Let the loop spin again (it is runnable at once)."""
        self.proc.send_signal(signal.SIGCONT)

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGCONT)  # a stopped process still dies of SIGKILL
        self.proc.kill()
        self.proc.wait()
        return False


# ---------------------------------------------------------------------------
# timing


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    reps: int = 5,
    min_time: float = 0.02,
    load: BusyLoop | None = None,
) -> dict:
    """Seconds per call of each function, ``reps`` samples each.

    Each function is warmed up, then calibrated to ``inner`` calls per sample
    so a sample lasts about ``min_time``; within every repetition each
    function takes one sample, starting from a rotating position.

    With a ``load`` (a paused BusyLoop), each function takes two samples per
    repetition, one with the loop stopped (key ``name``) and one with it
    spinning (key ``(name, "busy")``), in alternating order; the loop is
    left paused. Warm-up and calibration run quiet.
    """
    inner = {}
    for name, fn in fns.items():
        fn()  # warm-up: first-touch pages, thread pools, caches
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        inner[name] = max(1, min(10_000, int(min_time / max(dt, 1e-7))))
    names = list(fns)
    samples: dict = {name: [] for name in names}
    if load is not None:
        samples.update({(name, "busy"): [] for name in names})
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, n = fns[name], inner[name]
            states = ("quiet",) if load is None else ("quiet", "busy")[:: 1 if r % 2 else -1]
            for state in states:
                if load is not None:
                    load.pause() if state == "quiet" else load.resume()
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                dt = (time.perf_counter() - t0) / n
                samples[name if state == "quiet" else (name, "busy")].append(dt)
            if load is not None:
                load.pause()
    return samples


def rel_err(a, b) -> float:
    """max|a - b| / max|b| (0 when both are all zero)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a - b))) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def _records(
    bench: str,
    case: str,
    mode: str,
    dtype: str,
    threads: int,
    samples: dict,
    extra: dict | None = None,
    work: float | None = None,
    unit: str = "gflops",
    errors: dict | None = None,
    **fields,
) -> list[dict]:
    out = []
    for key, ts in samples.items():
        impl, load = key if isinstance(key, tuple) else (key, None)  # see time_interleaved
        med = statistics.median(ts)
        rec = {
            "bench": bench,
            "case": case,
            "pass": mode,
            "dtype": dtype,
            "threads": threads,
            "impl": impl,
            "median_s": med,
            "min_s": min(ts),
            "reps": len(ts),
            **fields,
        }
        if load is not None:
            rec["load"] = load
        if work is not None:
            rec[unit] = work / med / (1e9 if unit == "gflops" else 1.0)
        if errors and impl in errors:
            rec["max_rel_err_vs_pyconv"] = errors[impl]
        if extra and impl in extra:
            rec.update(extra[impl])
        out.append(rec)
    return out


# ---------------------------------------------------------------------------
# GEMM


def gemm_cases(dtype: str, full: bool) -> list[tuple[str, int, int, int, bool, bool]]:
    """(label, m, n, k, trans_a, trans_b) for the sweep and the conv/affine shapes."""
    squares = [64, 128, 256, 512, 768, 1024, 1536, 2048] if full else [64, 256, 512, 1024]
    cases = [(f"square {s}", s, s, s, False, False) for s in squares]
    blk = dict(_core.config()).get(f"gemm_blocking_{dtype}")
    if blk:
        mr, nr, kc, mc = blk["mr"], blk["nr"], blk["kc"], blk["mc"]
        cases += [
            ("edge MR NR KC", mr, nr, kc, False, False),
            ("edge +1", 8 * mr + 1, 4 * nr + 1, kc + 1, False, False),
            ("edge -1", 8 * mr - 1, 4 * nr - 1, kc - 1, False, False),
            ("edge MC+1 2KC+1", mc + 1, 512, 2 * kc + 1, False, False),
        ]
    else:  # no blocking reported: odd sizes that straddle any power-of-two block
        cases += [
            ("odd 17x33x65", 17, 33, 65, False, False),
            ("odd 127x129x255", 127, 129, 255, False, False),
        ]
    for name in ("a", "b", "c", "d", "e") if full else ("a", "b", "e"):
        n_, c, h, w, f, k, s, p = CONV_SHAPES[name]
        ohw = ((h + 2 * p - k) // s + 1) * ((w + 2 * p - k) // s + 1)
        ckk = c * k * k
        cases += [
            (f"conv {name} fwd", f, ohw, ckk, False, False),  # W @ col
            (f"conv {name} bwd-w", f, ckk, ohw, False, True),  # dY @ col^T
            (f"conv {name} bwd-x", ckk, ohw, f, True, False),  # W^T @ dY
        ]
    cases += [
        ("conv a book-batch", 100 * 24 * 24, 30, 25, False, False),  # col @ W^T, whole batch
        ("affine1 fwd", 100, 100, 4320, False, False),
        ("affine1 dW", 4320, 100, 100, True, False),
        ("affine1 dx", 100, 4320, 100, False, True),
        ("affine2 fwd", 100, 10, 100, False, False),
    ]
    return cases


def bench_gemm(
    dtypes: Sequence[str],
    threads: Sequence[int],
    full: bool,
    reps: int,
    min_time: float,
    rng: np.random.Generator,
    torch=None,
    load: BusyLoop | None = None,
) -> list[dict]:
    """pyconv ``_core.gemm`` vs ``numpy.matmul`` (same transposes, same threads).

    ``load``: also time every case with that BusyLoop spinning (time_interleaved).
    """
    results = []
    for dtype in dtypes:
        dt = np.dtype(dtype)
        for label, m, n, k, ta, tb in gemm_cases(dtype, full):
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
            a_op = a.T if ta else a
            b_op = b.T if tb else b
            c_pc = np.empty((m, n), dt)
            c_np = np.empty((m, n), dt)
            fns = {
                "pyconv": lambda a=a, b=b, ta=ta, tb=tb, c=c_pc: _core.gemm(
                    a, b, ta, tb, 1.0, 0.0, c
                ),
                "numpy": lambda a=a_op, b=b_op, c=c_np: np.matmul(a, b, out=c),
            }
            for nt in threads:
                with thread_limit(nt, torch):
                    samples = time_interleaved(fns, reps, min_time, load)
                err = rel_err(c_np, c_pc)
                results += _records(
                    "gemm",
                    label,
                    f"{m}x{n}x{k}" + "".join(t for t, on in (("/tA", ta), ("/tB", tb)) if on),
                    dtype,
                    nt,
                    samples,
                    work=2.0 * m * n * k,
                    errors={"numpy": err},
                    ok=err <= TOLERANCE[dtype],
                )
    return results


def measure_fma_peak(dtypes: Sequence[str], threads: Sequence[int], seconds: float = 0.3):
    """FMA peak of pyconv's selected code path, ``{"float32/2": GFLOP/s, ...}``.

    Independent vector multiply-add chains (``_core.fma_peak``), the ceiling
    the GEMM's rates are a fraction of; the best of three short runs, since a
    probe is only ever slowed (by another process or a clock step), never
    sped up.
    """
    return {
        f"{d}/{nt}": max(_core.fma_peak(d, nt, seconds / 3) for _ in range(3))
        for d in dtypes
        for nt in threads
    }


def gemm_peak_summary(results: list[dict], measured_peak: dict | None = None) -> list[dict]:
    """Best GFLOP/s per (impl, dtype, threads) over the square sweep.

    ``measured_peak`` maps ``"float32/2"`` (dtype/threads) to a measured FMA
    peak in GFLOP/s; the issue's reference peak is reported as well.
    """
    best: dict = {}
    for r in results:
        if r["bench"] == "gemm" and r["case"].startswith("square") and r.get("load") != "busy":
            key = (r["impl"], r["dtype"], r["threads"])
            best[key] = max(best.get(key, 0.0), r["gflops"])
    rows = []
    for (impl, dtype, nt), gf in sorted(best.items()):
        ref = REFERENCE_PEAK_GFLOPS[dtype] * nt / 2
        row = {
            "impl": impl,
            "dtype": dtype,
            "threads": nt,
            "best_square_gflops": gf,
            "reference_peak_gflops": ref,
            "fraction_of_reference": gf / ref,
        }
        peak = (measured_peak or {}).get(f"{dtype}/{nt}")
        if peak:
            row["measured_peak_gflops"] = peak
            row["fraction_of_measured"] = gf / peak
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# convolution and pooling


def _layer_fns(layer, x, dy) -> tuple[Callable, Callable]:
    """(forward, forward+backward) closures over a layer with the book's API."""

    def fwd():
        return layer.forward(x)

    def fwd_bwd():
        layer.forward(x)
        return layer.backward(dy)

    return fwd, fwd_bwd


def _conv_flops(shape) -> float:
    n, c, h, w, f, k, s, p = shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return 2.0 * n * f * oh * ow * c * k * k


def bench_conv(
    shapes: Sequence[str],
    dtypes: Sequence[str],
    threads: Sequence[int],
    reps: int,
    min_time: float,
    rng: np.random.Generator,
    torch=None,
    with_numpy: bool = True,
    load: BusyLoop | None = None,
) -> list[dict]:
    """Forward and forward+backward: pyconv layer vs book NumPy vs torch."""
    from .layers import Convolution

    results = []
    for name in shapes:
        shape = CONV_SHAPES[name]
        n, c, h, w, f, k, s, p = shape
        for dtype in dtypes:
            dt = np.dtype(dtype)
            x = rng.standard_normal((n, c, h, w)).astype(dt)
            W = (rng.standard_normal((f, c, k, k)) / math.sqrt(c * k * k)).astype(dt)
            b = rng.standard_normal(f).astype(dt)
            pc = Convolution(W, b, s, p)
            y = pc.forward(x)
            dy = rng.standard_normal(y.shape).astype(dt)
            impls: dict[str, tuple] = {"pyconv": _layer_fns(pc, x, dy)}
            if with_numpy:
                npl = base.Convolution(W, b, s, p)
                impls["numpy"] = _layer_fns(npl, x, dy)
            if torch is not None:
                impls["torch"] = _torch_conv(torch, x, W, b, dy, s, p)
            # correctness, once, outside the timed region
            ref_y = pc.forward(x)
            ref_dx = pc.backward(dy)
            ref = (ref_y, ref_dx, pc.dW, pc.db)
            errors = {}
            for impl in impls:
                if impl == "numpy":
                    outs = (npl.forward(x), npl.backward(dy), npl.dW, npl.db)
                elif impl == "torch":
                    outs = impls["torch"][2]()
                else:
                    continue
                errors[impl] = max(rel_err(o, r) for o, r in zip(outs, ref))
            ok = all(e <= TOLERANCE[dtype] for e in errors.values())
            for mode, idx, mult in (("fwd", 0, 1.0), ("fwd+bwd", 1, 3.0)):
                fns = {impl: fs[idx] for impl, fs in impls.items()}
                for nt in threads:
                    extra = {"pyconv": {"plan": _conv_plan(dtype, shape, mode != "fwd", nt)}}
                    with thread_limit(nt, torch):
                        samples = time_interleaved(fns, reps, min_time, load)
                    results += _records(
                        "conv",
                        name,
                        mode,
                        dtype,
                        nt,
                        samples,
                        extra=extra,
                        work=mult * _conv_flops(shape),
                        errors=errors,
                        ok=ok,
                        shape=list(shape),
                    )
    return results


def _conv_plan(dtype: str, shape, backward: bool, nt: int):
    if not hasattr(_core, "conv2d_plan"):
        return None
    n, c, h, w, f, k, s, p = shape
    return dict(_core.conv2d_plan(dtype, n, c, h, w, f, k, k, s, p, backward, nt))


def _torch_conv(torch, x, W, b, dy, stride, pad):
    tF = torch.nn.functional
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(W.copy()).requires_grad_(True)
    tb = torch.from_numpy(b.copy()).requires_grad_(True)
    tdy = torch.from_numpy(dy)

    def fwd():
        with torch.no_grad():
            return tF.conv2d(tx, tw, tb, stride=stride, padding=pad)

    def fwd_bwd():
        tx.grad = tw.grad = tb.grad = None
        tF.conv2d(tx, tw, tb, stride=stride, padding=pad).backward(tdy)

    def outputs():
        y = fwd().numpy()
        fwd_bwd()
        return y, tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()

    return fwd, fwd_bwd, outputs


def bench_pool(
    shapes: Sequence[str],
    dtypes: Sequence[str],
    threads: Sequence[int],
    reps: int,
    min_time: float,
    rng: np.random.Generator,
    torch=None,
    with_numpy: bool = True,
    load: BusyLoop | None = None,
) -> list[dict]:
    """Max pooling forward and forward+backward (no padding)."""
    from .layers import Pooling

    results = []
    for name in shapes:
        n, c, h, w, k, s = POOL_SHAPES[name]
        for dtype in dtypes:
            dt = np.dtype(dtype)
            x = rng.standard_normal((n, c, h, w)).astype(dt)
            pc = Pooling(k, k, s, 0)
            y = pc.forward(x)
            dy = rng.standard_normal(y.shape).astype(dt)
            impls = {"pyconv": _layer_fns(pc, x, dy)}
            if with_numpy:
                npl = base.Pooling(k, k, s, 0)
                impls["numpy"] = _layer_fns(npl, x, dy)
            if torch is not None:
                impls["torch"] = _torch_pool(torch, x, dy, k, s)
            ref = (pc.forward(x), pc.backward(dy))
            errors = {}
            if with_numpy:
                errors["numpy"] = max(
                    rel_err(o, r) for o, r in zip((npl.forward(x), npl.backward(dy)), ref)
                )
            if torch is not None:
                errors["torch"] = max(rel_err(o, r) for o, r in zip(impls["torch"][2](), ref))
            ok = all(e <= TOLERANCE[dtype] for e in errors.values())
            for mode, idx in (("fwd", 0), ("fwd+bwd", 1)):
                fns = {impl: fs[idx] for impl, fs in impls.items()}
                for nt in threads:
                    with thread_limit(nt, torch):
                        samples = time_interleaved(fns, reps, min_time, load)
                    results += _records(
                        "pool",
                        name,
                        mode,
                        dtype,
                        nt,
                        samples,
                        errors=errors,
                        ok=ok,
                        shape=[n, c, h, w, k, s],
                    )
    return results


def _torch_pool(torch, x, dy, k, s):
    tF = torch.nn.functional
    tx = torch.from_numpy(x).requires_grad_(True)
    tdy = torch.from_numpy(dy)

    def fwd():
        with torch.no_grad():
            return tF.max_pool2d(tx, k, s)

    def fwd_bwd():
        tx.grad = None
        tF.max_pool2d(tx, k, s).backward(tdy)

    def outputs():
        y = fwd().numpy()
        fwd_bwd()
        return y, tx.grad.numpy()

    return fwd, fwd_bwd, outputs


# ---------------------------------------------------------------------------
# training step


def _pyconv_net(dtype, rng):
    """(pyconv.SimpleConvNet, Adam, optimizer origin), or None without the network.

    Uses ``pyconv.optimizers.Adam`` when it exists, else the baseline's Adam
    (same update rule), so the step is timed either way.
    """
    try:
        from .network import SimpleConvNet
    except ImportError:
        return None
    try:
        from .optimizers import Adam

        origin = "pyconv.optimizers.Adam"
    except ImportError:
        Adam = base.Adam
        origin = "pyconv._baseline.Adam"
    kwargs = {
        "input_dim": (1, 28, 28),
        "conv_param": {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1},
        "hidden_size": 100,
        "output_size": 10,
        "weight_init_std": 0.01,
        "rng": rng,
        "seed": rng,
        "dtype": np.dtype(dtype),
    }
    params = inspect.signature(SimpleConvNet).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return SimpleConvNet(**kwargs), Adam(lr=0.001), origin


def _split_gradient(out):
    """``gradient()`` may return grads, (loss, grads) or (grads, loss)."""
    if isinstance(out, dict):
        return None, out
    first, second = out
    return (first, second) if isinstance(second, dict) else (second, first)


def _train_step(net, opt, x, t) -> Callable:
    def step():
        opt.update(net.params, _split_gradient(net.gradient(x, t))[1])

    return step


def _torch_train(torch, params: dict, x, t):
    tF = torch.nn.functional
    P = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(list(P.values()), lr=0.001)
    tx = torch.from_numpy(x)
    tt = torch.from_numpy(t.astype(np.int64))

    def loss_fn():
        h = tF.max_pool2d(tF.relu(tF.conv2d(tx, P["W1"], P["b1"])), 2, 2)
        h = tF.relu(h.reshape(h.shape[0], -1) @ P["W2"] + P["b2"])
        return tF.cross_entropy(h @ P["W3"] + P["b3"], tt)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()

    def first_gradient():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return float(loss.detach()), {k: v.grad.numpy().copy() for k, v in P.items()}

    return step, first_gradient


def bench_train(
    dtypes: Sequence[str],
    threads: Sequence[int],
    reps: int,
    min_time: float,
    rng: np.random.Generator,
    torch=None,
    batch: int = 100,
    with_numpy: bool = True,
    load: BusyLoop | None = None,
) -> list[dict]:
    """One SimpleConvNet step (gradient + Adam) on a synthetic MNIST-sized batch."""
    results = []
    for dtype in dtypes:
        dt = np.dtype(dtype)
        x = rng.random((batch, 1, 28, 28)).astype(dt)
        t = rng.integers(0, 10, batch)
        ref = base.NumpySimpleConvNet(rng=rng, dtype=dt)
        init = {k: v.copy() for k, v in ref.params.items()}
        ref_loss, ref_grads = ref.gradient(x, t)
        impls: dict[str, Callable] = {}
        errors: dict[str, float] = {}
        notes: dict[str, dict] = {}
        got = _pyconv_net(dtype, rng)
        if got is not None:
            net, opt, origin = got
            same = all(k in net.params and net.params[k].shape == v.shape for k, v in init.items())
            notes["pyconv"] = {"optimizer": origin}
            if same:
                for k, v in init.items():
                    net.params[k][...] = v
                loss, grads = _split_gradient(net.gradient(x, t))
                loss = getattr(net, "last_loss", None) if loss is None else loss
                errors["pyconv"] = max(rel_err(grads[k], ref_grads[k]) for k in init)
                if loss is not None:
                    notes["pyconv"]["first_loss"] = float(loss)

            impls["pyconv"] = _train_step(net, opt, x, t)
        if with_numpy:
            npnet = base.NumpySimpleConvNet(rng=rng, dtype=dt)
            for k, v in init.items():
                npnet.params[k][...] = v
            npopt = base.Adam(lr=0.001)

            impls["numpy"] = _train_step(npnet, npopt, x, t)
            notes["numpy"] = {"first_loss": ref_loss}
        if torch is not None:
            step, first = _torch_train(torch, init, x, t)
            loss, grads = first()
            errors["torch"] = max(rel_err(grads[k], ref_grads[k]) for k in init)
            notes["torch"] = {"first_loss": loss}
            impls["torch"] = step
        if not impls:
            continue
        # grads compared with the NumPy network's, not pyconv's (the network may
        # be missing); the loss adds 1e-7 inside the log, so loss is not compared.
        ok = all(e <= 10 * TOLERANCE[dtype] for e in errors.values())
        for nt in threads:
            with thread_limit(nt, torch):
                samples = time_interleaved(impls, reps, min_time, load)
            recs = _records(
                "train",
                "SimpleConvNet",
                f"step b={batch}",
                dtype,
                nt,
                samples,
                extra=notes,
                work=float(batch),
                unit="images_per_s",
                ok=ok,
            )
            for r in recs:
                if r["impl"] in errors:
                    r["max_rel_err_vs_numpy"] = errors[r["impl"]]
            results += recs
    return results


# ---------------------------------------------------------------------------
# self-test of the baseline


def self_test(torch=None, rng: np.random.Generator | None = None) -> list[str]:
    """Check the NumPy baseline (and pyconv) against torch on small odd shapes.

    float64, forward and all gradients, with padding and strides; pooling with
    padding. Without torch, pyconv is the reference. Returns failure messages.
    """
    from .layers import Convolution, Pooling

    rng = np.random.default_rng(0) if rng is None else rng
    failures = []

    def check(label, got, want, tol=1e-10):
        for i, (g, w) in enumerate(zip(got, want)):
            err = rel_err(g, w)
            if not err <= tol:
                failures.append(f"{label}: output {i} differs (max rel err {err:.3g})")

    conv_cases = [
        (2, 3, 7, 8, 4, 3, 1, 1),
        (2, 3, 9, 9, 5, 3, 2, 1),
        (1, 2, 6, 6, 3, 5, 1, 2),
        (2, 2, 5, 7, 2, 2, 2, 0),
        (1, 1, 4, 4, 1, 4, 3, 1),
    ]
    for n, c, h, w, f, k, st, pd in conv_cases:
        x = rng.standard_normal((n, c, h, w))
        W = rng.standard_normal((f, c, k, k))
        b = rng.standard_normal(f)
        npl = base.Convolution(W, b, st, pd)
        y = npl.forward(x)
        dy = rng.standard_normal(y.shape)
        got = (y, npl.backward(dy), npl.dW, npl.db)
        pc = Convolution(W, b, st, pd)
        ref = (pc.forward(x), pc.backward(dy), pc.dW, pc.db)
        label = f"conv {(n, c, h, w, f, k, st, pd)}"
        check(f"{label} numpy vs pyconv", got, ref)
        if torch is not None:
            tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, W, b))
            ty = torch.nn.functional.conv2d(tx, tw, tb, stride=st, padding=pd)
            ty.backward(torch.from_numpy(dy))
            want = (ty.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy())
            check(f"{label} numpy vs torch", got, want)
    for n, c, h, w, k, st, pd in [
        (2, 3, 8, 8, 2, 2, 0),
        (2, 2, 9, 9, 3, 2, 1),
        (1, 2, 7, 6, 3, 1, 1),
    ]:
        x = rng.standard_normal((n, c, h, w))
        npl = base.Pooling(k, k, st, pd)
        y = npl.forward(x)
        dy = rng.standard_normal(y.shape)
        got = (y, npl.backward(dy))
        pc = Pooling(k, k, st, pd)
        label = f"pool {(n, c, h, w, k, st, pd)}"
        check(f"{label} numpy vs pyconv", got, (pc.forward(x), pc.backward(dy)))
        if torch is not None:
            tx = torch.from_numpy(x.copy()).requires_grad_(True)
            ty = torch.nn.functional.max_pool2d(tx, k, st, pd)
            ty.backward(torch.from_numpy(dy))
            check(f"{label} numpy vs torch", got, (ty.detach().numpy(), tx.grad.numpy()))
    # im2col/col2im adjoint: <im2col(x), y> == <x, col2im(y)>
    x = rng.standard_normal((2, 3, 9, 8))
    col = base.im2col(x, 3, 2, 2, 1)
    z = rng.standard_normal(col.shape)
    lhs, rhs = float(np.sum(col * z)), float(np.sum(x * base.col2im(z, x.shape, 3, 2, 2, 1)))
    if abs(lhs - rhs) > 1e-10 * max(1.0, abs(lhs)):
        failures.append(f"col2im is not the adjoint of im2col: {lhs} vs {rhs}")
    # the whole NumPy network against torch autograd
    if torch is not None:
        net = base.NumpySimpleConvNet(weight_init_std=0.1, rng=rng)
        xb, t = rng.random((4, 1, 28, 28)), rng.integers(0, 10, 4)
        _, grads = net.gradient(xb, t)
        _, tgrads = _torch_train(torch, net.params, xb, t)[1]()
        check(
            "NumpySimpleConvNet grads vs torch",
            [grads[k] for k in grads],
            [tgrads[k] for k in grads],
            tol=1e-6,
        )
    return failures


# ---------------------------------------------------------------------------
# reporting


def group_by_case(results: list[dict]) -> dict:
    """{(bench, case, pass, dtype, threads, load): {impl: record}} of a report's
    results (load is "quiet" where the record has none)."""
    rows: dict = {}
    for r in results:
        key = (r["bench"], r["case"], r["pass"], r["dtype"], r["threads"], r.get("load", "quiet"))
        rows.setdefault(key, {})[r["impl"]] = r
    return rows


def format_table(results: list[dict]) -> str:
    """One line per case: times per implementation and pyconv's speed-ups."""
    head = (
        f"{'bench':<5} {'case':<18} {'pass':<16} {'dtype':<7} {'thr':>3} {'load':<5} "
        f"{'pyconv ms':>10} {'rate':>10} {'numpy ms':>10} {'torch ms':>10} "
        f"{'np/pc':>6} {'torch/pc':>8} {'check':>5}"
    )
    lines = [head, "-" * len(head)]
    for (bench, case, mode, dtype, nt, load), impls in group_by_case(results).items():
        pc, npy, th = impls.get("pyconv"), impls.get("numpy"), impls.get("torch")

        def ms(r):
            return f"{1e3 * r['median_s']:10.3f}" if r else f"{'-':>10}"

        def ratio(r, width, pc=pc):
            return f"{r['median_s'] / pc['median_s']:{width}.2f}" if r and pc else f"{'-':>{width}}"

        if pc and "gflops" in pc:
            rate = f"{pc['gflops']:7.1f} GF"
        elif pc and "images_per_s" in pc:
            rate = f"{pc['images_per_s']:6.0f} i/s"
        else:
            rate = f"{'-':>10}"
        ok = all(r.get("ok", True) for r in impls.values())
        lines.append(
            f"{bench:<5} {case[:18]:<18} {mode[:16]:<16} {dtype:<7} {nt:>3} {load:<5} "
            f"{ms(pc)} {rate:>10} {ms(npy)} {ms(th)} {ratio(npy, 6)} {ratio(th, 8)} "
            f"{'ok' if ok else 'FAIL':>5}"
        )
    return "\n".join(lines)


def contention_summary(results: list[dict]) -> list[dict]:
    """t(2 threads, one core busy) / t(1 thread, quiet) per case and impl.

    From one run's records (``load`` "busy" or absent for quiet), whose quiet
    and busy samples alternated (time_interleaved with a load).
    """
    q1 = {
        (r["bench"], r["case"], r["pass"], r["dtype"], r["impl"]): r
        for r in results
        if r["threads"] == 1 and r.get("load", "quiet") == "quiet"
    }
    rows = []
    for r in results:
        if r["threads"] != 2 or r.get("load") != "busy":
            continue
        key = (r["bench"], r["case"], r["pass"], r["dtype"], r["impl"])
        if key in q1:
            ratio = r["median_s"] / q1[key]["median_s"]
            rows.append(
                {
                    "bench": key[0],
                    "case": key[1],
                    "pass": key[2],
                    "dtype": key[3],
                    "impl": key[4],
                    "quiet_1t_s": q1[key]["median_s"],
                    "busy_2t_s": r["median_s"],
                    "ratio": ratio,
                    "target_met": ratio <= 1.3,
                }
            )
    return rows


def _yn(flag) -> str:
    return "-" if flag is None else "y" if flag else "n"


def format_plans(results: list[dict]) -> str:
    """pyconv's conv plan per case: thread team, GEMM threads, scratch bytes."""
    lines = []
    for r in results:
        plan = r.get("plan")
        if r["impl"] != "pyconv" or not plan or r.get("load") == "busy":
            continue
        lines.append(
            f"  conv {r['case']} {r['pass']:<8} {r['dtype']:<8} {r['threads']}t: "
            f"team={plan.get('team')} gemm_threads={plan.get('gemm_threads')} "
            f"direct fwd/dx/dw={_yn(plan.get('fwd_direct'))}/{_yn(plan.get('dx_direct'))}/"
            f"{'dot' if plan.get('dw_dot') else _yn(plan.get('dw_direct'))} "
            f"workspace={plan.get('workspace_bytes', 0) / 2**20:.2f} MiB"
        )
    return "\n".join(lines)


def format_contention(rows: list[dict]) -> str:
    head = (
        f"{'bench':<5} {'case':<18} {'pass':<16} {'dtype':<7} {'impl':<7} "
        f"{'1t quiet ms':>11} {'2t busy ms':>11} {'ratio':>6}  target<=1.3"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['bench']:<5} {r['case'][:18]:<18} {r['pass'][:16]:<16} "
            f"{r['dtype']:<7} {r['impl']:<7} {1e3 * r['quiet_1t_s']:11.3f} "
            f"{1e3 * r['busy_2t_s']:11.3f} {r['ratio']:6.2f}  "
            f"{'met' if r['target_met'] else 'MISSED'}"
        )
    return "\n".join(lines)


def format_system(info: dict) -> str:
    cpu = info["cpu"]
    blas = (
        ", ".join(
            f"{b['internal_api']} {b['version']} ({b['architecture']})" for b in info["numpy_blas"]
        )
        or "unknown (threadpoolctl missing)"
    )
    pcfg = info["pyconv"]
    lines = [
        f"date      : {info['date']}",
        f"cpu       : {cpu.get('model')} x{info.get('usable_cpus', info['cpu_count'])}, "
        f"simd flags: {' '.join(cpu.get('simd_flags', []))}",
        f"pyconv    : {pcfg.get('version')} simd={pcfg.get('simd')} {pcfg.get('compiler')}, "
        f"openmp {pcfg.get('openmp')}, GEMMs on threads from "
        f"{pcfg.get('gemm_parallel_flops_float32', float('nan')):.2g} / "
        f"{pcfg.get('gemm_parallel_flops_float64', float('nan')):.2g} flops (float32 / float64; "
        f"{pcfg.get('gemm_contended_parallel_flops_float32', float('nan')):.2g} / "
        f"{pcfg.get('gemm_contended_parallel_flops_float64', float('nan')):.2g} while contended), "
        f"empty 2-thread region {pcfg.get('parallel_region_us', float('nan')):.1f} us",
        f"numpy     : {info['numpy']} BLAS {blas}",
        f"torch     : {info['torch'] or 'not installed'}",
        f"memory    : {info['page_fault_us']:.2f} us per fresh 4 KiB page "
        f"({4.096 / info['page_fault_us']:.1f} GB/s first touch)",
        "env       : " + " ".join(f"{k}={v}" for k, v in info["env"].items() if v is not None),
    ]
    return "\n".join(lines)


_CSV_FIELDS = (
    "bench",
    "case",
    "pass",
    "dtype",
    "threads",
    "load",
    "impl",
    "median_s",
    "min_s",
    "reps",
    "gflops",
    "images_per_s",
    "max_rel_err_vs_pyconv",
    "max_rel_err_vs_numpy",
    "ok",
)


def write_output(path: str, report: dict) -> None:
    """``.csv``: one row per measurement; anything else: the whole report as JSON."""
    if path.endswith(".csv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for r in report["results"]:
                writer.writerow({"load": "quiet", **r})
    else:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, default=str)
            f.write("\n")


# ---------------------------------------------------------------------------
# command line


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyconv bench",
        description="Time pyconv against the book-style NumPy layers, numpy.matmul and "
        "PyTorch (if installed), at equal thread counts.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        dest="full",
        action="store_false",
        help="few shapes, float32, 5 repetitions (default)",
    )
    size.add_argument(
        "--full",
        dest="full",
        action="store_true",
        help="all shapes, float32 and float64, 11 repetitions",
    )
    p.set_defaults(full=False)
    p.add_argument(
        "--only",
        default="gemm,conv,pool,train",
        help="comma list of gemm,conv,pool,train (default: all)",
    )
    p.add_argument(
        "--threads",
        default=None,
        help="comma list of thread counts (default: 1,2 capped at the CPU count)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        help="float32, float64 or both comma-separated (default: quick float32)",
    )
    p.add_argument(
        "--shapes",
        default=None,
        help=f"conv shapes among {','.join(CONV_SHAPES)} (default: quick a,b,e; full all)",
    )
    p.add_argument("--reps", type=int, default=None, help="repetitions per case")
    p.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="seconds per timed sample (calls are repeated to reach it)",
    )
    p.add_argument(
        "--contend",
        action="store_true",
        help="also time every case with a busy-loop process pinned to one core (stopped "
        "and resumed so that quiet and busy samples alternate) and report "
        "t(2 threads, busy) / t(1 thread, quiet); target <= 1.3",
    )
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument(
        "--no-numpy",
        action="store_true",
        help="skip the book-style NumPy layers (slow on large shapes)",
    )
    p.add_argument(
        "--native-blas",
        action="store_true",
        help=f"re-run with {' and '.join(_BLAS_ENV)} unset, so NumPy's OpenBLAS "
        "picks its own kernel for this CPU",
    )
    p.add_argument(
        "--self-test",
        action="store_true",
        help="only check the NumPy baseline against torch/pyconv on small shapes",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the input generator")
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--out", metavar="PATH", help="write results: .csv rows, else JSON")
    p.add_argument("--quiet", action="store_true", help="do not print the table")
    return p


def _rerun_without_blas_env(argv: list[str], defaults: dict | None, native_blas: bool) -> int:
    env = dict(os.environ)
    if native_blas:
        env = {k: v for k, v in env.items() if k not in _BLAS_ENV}
        print(f"pyconv bench: re-running with {', '.join(_BLAS_ENV)} unset", flush=True)
    # OpenBLAS's idle workers busy-wait about 2**28 cycles (~0.1 s) after every
    # call; interleaved with pyconv and torch on a 2-core machine they take the
    # second core from whoever runs next (measured: pyconv's 2-thread conv ran
    # at its 1-thread speed). 2**4 cycles makes them sleep, as pyconv's and
    # torch's OpenMP threads do under OMP_WAIT_POLICY=passive.
    env.setdefault(_BLAS_TIMEOUT, "4")
    print(f"pyconv bench: {_BLAS_TIMEOUT}={env[_BLAS_TIMEOUT]}", flush=True)
    code = (
        "import json, sys; from pyconv.bench import main; "
        f"sys.exit(main(sys.argv[1:], defaults=json.loads({json.dumps(defaults)!r})))"
    )
    return subprocess.run([sys.executable, "-c", code, *argv], env=env, check=False).returncode


def run(args: argparse.Namespace) -> dict:
    """Run the selected benchmarks; returns the report dict."""
    only = _csv_list(args.only)
    unknown = set(only) - {"gemm", "conv", "pool", "train"}
    if unknown:
        raise ValueError(f"--only: unknown benchmark(s) {sorted(unknown)}")
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = (
        [int(t) for t in _csv_list(args.threads)]
        if args.threads
        else sorted({1, min(2, ncpu or 1)})
    )
    if any(t < 1 for t in threads):
        raise ValueError(f"--threads: expected counts >= 1, but got {threads}")
    dtypes = (
        _csv_list(args.dtype)
        if args.dtype
        else (["float32", "float64"] if args.full else ["float32"])
    )
    for d in dtypes:
        if d not in TOLERANCE:
            raise ValueError(f"--dtype: expected float32 or float64, but got {d!r}")
    shapes = (
        _csv_list(args.shapes)
        if args.shapes
        else (list(CONV_SHAPES) if args.full else ["a", "b", "e"])
    )
    for s in shapes:
        if s not in CONV_SHAPES:
            raise ValueError(f"--shapes: expected names among {list(CONV_SHAPES)}, got {s!r}")
    reps = args.reps or (11 if args.full else 5)
    min_time = args.min_time if args.min_time is not None else (0.05 if args.full else 0.02)
    torch = None if args.no_torch else _import_torch()
    info = system_info(torch)
    if not args.quiet:
        print(format_system(info), flush=True)
        if any(os.environ.get(k) for k in _BLAS_ENV):
            print(
                f"note: {' / '.join(_BLAS_ENV)} are set; NumPy's OpenBLAS may run a slower "
                "kernel than this CPU supports (see --native-blas)",
                flush=True,
            )
    with_numpy = not args.no_numpy

    def suite(rng, load=None):
        res = []
        if "gemm" in only:
            res += bench_gemm(dtypes, threads, args.full, reps, min_time, rng, torch, load)
        if "conv" in only:
            res += bench_conv(
                shapes, dtypes, threads, reps, min_time, rng, torch, with_numpy, load
            )
        if "pool" in only:
            res += bench_pool(
                list(POOL_SHAPES), dtypes, threads, reps, min_time, rng, torch, with_numpy, load
            )
        if "train" in only:
            res += bench_train(
                dtypes, threads, reps, min_time, rng, torch, with_numpy=with_numpy, load=load
            )
        return res

    warm_numpy_blas(max(ncpu or 1, *threads))  # before every NumPy anchor: matmul, book layers
    measured_peak = measure_fma_peak(dtypes, threads) if "gemm" in only else {}
    busy = None
    if args.contend:
        # Quiet and busy samples of each case alternate in every repetition
        # (time_interleaved); the loop is stopped whenever it is not timed.
        with BusyLoop() as busy:
            busy.pause()
            results = suite(np.random.default_rng(args.seed), busy)
    else:
        results = suite(np.random.default_rng(args.seed))
    report = {
        "system": info,
        "settings": {
            "only": only,
            "threads": threads,
            "dtypes": dtypes,
            "conv_shapes": shapes,
            "reps": reps,
            "min_time": min_time,
            "full": args.full,
        },
        "results": results,
        "gemm_peak": gemm_peak_summary(results, measured_peak),
    }
    if measured_peak:
        info["measured_peak_gflops"] = measured_peak
    if busy is not None:
        report["contention"] = {
            "busy_cpu": busy.cpu,
            "interleaved": True,
            "rows": contention_summary(results),
        }
    return report


def main(
    argv: Sequence[str] | None = None,
    *,
    defaults: dict | None = None,
) -> int:
    """Entry point of ``pyconv bench``; returns the process exit code.

    ``defaults`` overrides option defaults (the scripts in ``benchmarks/`` use
    it, e.g. ``{"only": "gemm", "full": True}``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if defaults:
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    native = args.native_blas and any(k in os.environ for k in _BLAS_ENV)
    if native or _BLAS_TIMEOUT not in os.environ:
        return _rerun_without_blas_env(argv, defaults, native)
    if args.self_test:
        torch = None if args.no_torch else _import_torch()
        failures = self_test(torch, np.random.default_rng(args.seed))
        for msg in failures:
            print(f"FAIL {msg}")
        ref = "torch and pyconv" if torch is not None else "pyconv only (no torch)"
        print(f"self-test against {ref}: {'FAILED' if failures else 'ok'}")
        return 1 if failures else 0
    try:
        report = run(args)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.quiet:
        print()
        print(format_table(report["results"]))
        if report["gemm_peak"]:
            print(
                "\nGEMM best square GFLOP/s vs FMA peak (measured here by _core.fma_peak; "
                "reference: the issue's 2-core figure, scaled by threads):"
            )
            for r in report["gemm_peak"]:
                line = (
                    f"  {r['impl']:<7} {r['dtype']:<8} {r['threads']}t "
                    f"{r['best_square_gflops']:7.1f} GFLOP/s = "
                    f"{100 * r['fraction_of_reference']:5.1f}% of reference "
                    f"{r['reference_peak_gflops']:.0f}"
                )
                if "measured_peak_gflops" in r:
                    line += (
                        f", {100 * r['fraction_of_measured']:5.1f}% of measured "
                        f"{r['measured_peak_gflops']:.0f}"
                    )
                print(line)
        plans = format_plans(report["results"])
        if plans:
            print("\npyconv conv plans (_core.conv2d_plan):")
            print(plans)
        if "contention" in report:
            print(
                f"\nContention (busy loop pinned to CPU {report['contention']['busy_cpu']}; "
                "quiet and busy samples alternate in every repetition):"
            )
            print(format_contention(report["contention"]["rows"]))
    for path in (args.json, args.out):
        if path:
            write_output(path, report)
    failed = [r for r in report["results"] if not r.get("ok", True)]
    if failed:
        print(
            f"pyconv bench: {len(failed)} result(s) disagree between implementations",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
