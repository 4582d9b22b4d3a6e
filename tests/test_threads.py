"""Thread count control, and results that do not depend on it (beyond
rounding): conv forward/backward, pooling and gemm with 1 and 2 threads."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import reference as ref
from helpers import DTYPES, assert_close

import pyconv
import pyconv.functional as F


def test_set_zero_threads_is_an_error(restore_threads):
    with pytest.raises(ValueError, match=r"set_num_threads: expected 1 <= n <= 1024, but got 0"):
        pyconv.set_num_threads(0)
    assert pyconv.get_num_threads() == restore_threads


def test_round_trip(restore_threads):
    assert restore_threads >= 1
    for n in (1, 2, 3, 1):
        pyconv.set_num_threads(n)
        assert pyconv.get_num_threads() == n
        assert pyconv.config()["threads"] == n


def _with_threads(n, fn):
    pyconv.set_num_threads(n)
    return fn()


# (N, C, H, W, FN, K, stride, pad): one image (threads share each GEMM: by
# columns; by rows, where each thread's rows take their own bias entries; more
# filters than one MC block), a batch (threads take whole images), an odd
# batch and the 1x1 direct path.
THREAD_CASES = [
    (1, 3, 20, 20, 8, 3, 1, 1),
    (1, 8, 6, 6, 40, 3, 1, 1),
    (1, 4, 5, 5, 150, 3, 1, 1),
    (6, 3, 12, 12, 5, 5, 1, 2),
    (5, 4, 9, 9, 6, 3, 2, 0),
    (4, 16, 7, 7, 32, 1, 1, 0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", THREAD_CASES, ids=str)
def test_conv_one_vs_two_threads(restore_threads, case, dtype):
    n, c, h, w, fn, k, s, p = case
    rng = np.random.default_rng(30)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    W = rng.standard_normal((fn, c, k, k)).astype(dtype)
    b = rng.standard_normal(fn).astype(dtype)
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    dout = rng.standard_normal((n, fn, oh, ow)).astype(dtype)

    def run():
        y = F.conv2d(x, W, b, stride=s, pad=p)
        dx, dW, db = F.conv2d_backward(dout, x, W, stride=s, pad=p)
        return y, dx, dW, db

    one = _with_threads(1, run)
    two = _with_threads(2, run)
    again = run()  # same thread count: bitwise identical (fixed reduction order)
    y_mag = ref.conv2d_forward(np.abs(x), np.abs(W), np.abs(b), s, p)
    mags = (y_mag, *ref.conv2d_backward(np.abs(dout), np.abs(x), np.abs(W), s, p))
    for label, r1, r2, r3, mag in zip(("y", "dx", "dW", "db"), one, two, again, mags):
        assert_close(r2, r1.astype(np.float64), dtype=dtype, name=f"{label} 1 vs 2 threads {case}",
                     scale=mag)
        np.testing.assert_array_equal(r2, r3, err_msg=f"{label} not reproducible {case}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_one_vs_two_threads(restore_threads, dtype):
    rng = np.random.default_rng(31)
    x = rng.integers(-5, 5, size=(5, 7, 13, 12)).astype(dtype)

    def run():
        out, argmax = F.max_pool2d(x, 3, 2, stride=2, pad=1)
        dx = F.max_pool2d_backward(np.ones(out.shape, dtype=dtype), argmax, x.shape)
        return out, argmax, dx

    one = _with_threads(1, run)
    two = _with_threads(2, run)
    for r1, r2 in zip(one, two):
        np.testing.assert_array_equal(r1, r2)  # selection and per-plane scatter: exact


@pytest.mark.parametrize("dtype", DTYPES)
# Above pyconv's 2-thread threshold (2.5e7 flops float32, 1.5e7 float64): the
# column split (m < n) with slices in vectors and a partial last panel, the row
# split, and the smaller ones, which stay serial.
@pytest.mark.parametrize(
    ("m", "n", "k"),
    [(300, 200, 150), (5, 700, 40), (700, 5, 300), (128, 196, 1152), (24, 1009, 700),
     (700, 33, 1000), (257, 255, 260)],
)
def test_gemm_one_vs_two_threads(restore_threads, dtype, m, n, k):
    rng = np.random.default_rng(32)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    one = _with_threads(1, lambda: F.gemm(a, b))
    two = _with_threads(2, lambda: F.gemm(a, b))
    scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    assert_close(two, one.astype(np.float64), dtype=dtype, name=f"gemm {m}x{n}x{k}", scale=scale)
    assert_close(two, a.astype(np.float64) @ b, dtype=dtype, name=f"gemm {m}x{n}x{k}",
                 scale=scale)


def test_concurrent_python_threads(restore_threads):
    # The core releases the GIL and owns no static scratch: calls from several
    # Python threads at once give the same results as serial calls.
    pyconv.set_num_threads(2)
    rng = np.random.default_rng(33)
    W = rng.standard_normal((6, 3, 3, 3))
    b = rng.standard_normal(6)
    xs = [rng.standard_normal((3, 3, 10, 10)) for _ in range(8)]

    def work(x):
        y = F.conv2d(x, W, b, pad=1)
        _, dW, _ = F.conv2d_backward(y, x, W, pad=1)
        out, _ = F.max_pool2d(y, 2, 2, stride=2)
        return y, dW, out, F.gemm(x.reshape(90, 10), x.reshape(90, 10), trans_a=True)

    serial = [work(x) for x in xs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(work, xs))
    for s, c in zip(serial, concurrent):
        for a1, a2 in zip(s, c):
            np.testing.assert_array_equal(a1, a2)


@pytest.mark.parametrize("value", ["1", "3"])
def test_omp_num_threads_env(value):
    if not pyconv.config()["openmp"].startswith("yes"):
        pytest.skip("serial build (no OpenMP): the default thread count is 1")
    env = dict(os.environ, OMP_NUM_THREADS=value)
    code = "import pyconv; print(pyconv.get_num_threads(), pyconv.config()['threads'])"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [value, value]


# Products below and above any threshold, plain and with A transposed: the
# sizes where gemm_small (one thread) and the packed path (threads) take turns.
_THRESHOLD_SCRIPT = r"""
import sys
import numpy as np
import pyconv
import pyconv.functional as F

pyconv.set_num_threads(2)
cfg = pyconv.config()
print(cfg["gemm_parallel_flops_float32"], cfg["gemm_parallel_flops_float64"],
      cfg["gemm_contended_parallel_flops_float32"], cfg["gemm_contended_parallel_flops_float64"])
rng = np.random.default_rng(5)
out = {}
for dt in (np.float32, np.float64):
    for m, n, k in [(64, 1024, 27), (100, 10, 100), (6, 64, 128), (64, 64, 64), (25, 576, 30),
                    (1000, 30, 25), (30, 64, 2000), (128, 128, 128), (60, 768, 64),
                    (7, 300, 900), (257, 255, 260)]:
        a = rng.standard_normal((m, k)).astype(dt)
        b = rng.standard_normal((k, n)).astype(dt)
        out[f"{dt.__name__}-{m}-{n}-{k}"] = F.gemm(a, b)
        out[f"{dt.__name__}-{m}-{n}-{k}-t"] = F.gemm(np.ascontiguousarray(a.T), b, trans_a=True)
np.savez(sys.argv[1], **out)
"""


def _run_threshold_script(tmp_path, name, value):
    env = {k: v for k, v in os.environ.items() if k != "PYCONV_PARALLEL_FLOPS"}
    if value is not None:
        env["PYCONV_PARALLEL_FLOPS"] = value
    path = tmp_path / f"{name}.npz"
    res = subprocess.run([sys.executable, "-c", _THRESHOLD_SCRIPT, str(path)], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return [float(v) for v in res.stdout.split()], arrays


def test_parallel_threshold_never_changes_results(tmp_path):
    # PYCONV_PARALLEL_FLOPS=0 lets every product use both threads, 1e30 none:
    # each element of C is summed by one thread in one order either way, so
    # the bits agree. By default the quiet threshold is measured (between 0
    # and the fixed one used while contended); junk is ignored.
    if not pyconv.config()["openmp"].startswith("yes"):
        pytest.skip("serial build (no OpenMP): every product runs on one thread")
    zero, threads = _run_threshold_script(tmp_path, "zero", "0")
    never, serial = _run_threshold_script(tmp_path, "never", "1e30")
    unset, default = _run_threshold_script(tmp_path, "default", None)
    ignored, junk = _run_threshold_script(tmp_path, "junk", "lots")
    assert zero == [0.0] * 4 and never == [1e30] * 4
    for quiet32, quiet64, busy32, busy64 in (unset, ignored):
        assert [busy32, busy64] == [2.5e7, 1.5e7]
        assert 0 < quiet32 <= busy32 and 0 < quiet64 <= busy64
    assert threads.keys() == serial.keys() == default.keys() == junk.keys()
    for key in threads:
        for other in (serial, default, junk):
            np.testing.assert_array_equal(threads[key], other[key], err_msg=key)
