"""The installed core on CPUs older than this one: import, select and compute.

Each ISA's kernels are compiled with that ISA's flags, so any code of theirs
that runs before the CPU check (a table built at load, say) is an illegal
instruction on a CPU without it: SIGILL, not a Python error. The tests on this
machine cannot see that, so these run a short script in a fresh interpreter
under qemu-user, emulating a CPU without AVX-512 (Haswell: AVX2 + FMA) and one
without AVX (Nehalem: SSE4.2, NumPy's own baseline). QEMU 7.2 does not emulate
AVX-512, so the AVX-512 path is tested only on hosts that have it (the other
test files force every path the host supports).

Needs ``qemu-x86_64`` (Debian's qemu-user; ``.ci/run`` installs it) and an
x86-64 host; skips, saying which, otherwise.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys

import pytest

QEMU = shutil.which("qemu-x86_64")

pytestmark = [
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                       reason="emulates x86-64 CPU models; this host is not x86-64"),
    pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 not found (Debian: qemu-user)"),
]

# Each run checks its own results against float64 loops written here, not
# against the package: gemm in both dtypes and transposes, a padded strided
# convolution forward and backward (dx by the adjoint identity), and pooling.
SCRIPT = r"""
import sys
import numpy as np
import pyconv
from pyconv import _core
import pyconv.functional as F

expected_isas = sys.argv[1].split(",")
assert _core.available_isas() == expected_isas, _core.available_isas()
assert pyconv.config()["simd"] == expected_isas[0], pyconv.config()["simd"]
rng = np.random.default_rng(0)

def conv_ref(x, w, b, s, p):
    n, c, h, ww = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = (h + 2 * p - kh) // s + 1, (ww + 2 * p - kw) // s + 1
    y = np.empty((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * s:i * s + kh, j * s:j * s + kw]
            y[:, :, i, j] = np.tensordot(win, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return y

for isa in expected_isas:
    _core.set_isa(isa)
    assert pyconv.config()["simd"] == isa
    for dt, tol in ((np.float32, 1e-5), (np.float64, 1e-13)):
        for m, n, k in ((1, 1, 1), (7, 19, 33), (70, 45, 300)):
            a = rng.standard_normal((k, m)).astype(dt).T      # A transposed
            b = rng.standard_normal((k, n)).astype(dt)
            ref = a.astype(np.float64) @ b.astype(np.float64)
            mag = abs(a.astype(np.float64)) @ abs(b.astype(np.float64))
            assert (np.abs(F.gemm(a, b) - ref) <= tol * mag).all(), (isa, m, n, k)
        for (C, H, Fn, K, s, p) in ((1, 9, 3, 3, 1, 0), (3, 11, 5, 3, 2, 1), (20, 8, 17, 3, 1, 1)):
            x = rng.standard_normal((2, C, H, H)).astype(dt)
            w = rng.standard_normal((Fn, C, K, K)).astype(dt)
            bias = rng.standard_normal(Fn).astype(dt)
            y = F.conv2d(x, w, bias, stride=s, pad=p)
            ref = conv_ref(x.astype(np.float64), w.astype(np.float64), bias, s, p)
            mag = conv_ref(abs(x.astype(np.float64)), abs(w.astype(np.float64)), abs(bias), s, p)
            assert (np.abs(y - ref) <= tol * mag).all(), (isa, dt, C, H, Fn, K, s, p)
            dy = rng.standard_normal(y.shape).astype(dt)
            dx, dw, db = F.conv2d_backward(dy, x, w, stride=s, pad=p)
            # <dy, conv(x)> is linear in x and in w: its gradients are dx, dw.
            dxr = rng.standard_normal(x.shape)
            dy64, w64, x64 = (v.astype(np.float64) for v in (dy, w, x))
            zero = np.zeros(Fn)
            lhs = np.vdot(dy64, conv_ref(dxr, w64, zero, s, p))
            mag = np.vdot(abs(dy64), conv_ref(abs(dxr), abs(w64), zero, s, p))  # the sum's scale
            assert abs(lhs - np.vdot(dx, dxr)) <= tol * mag, (isa, "dx")
            dwr = rng.standard_normal(w.shape)
            lhs = np.vdot(dy64, conv_ref(x64, dwr, zero, s, p))
            mag = np.vdot(abs(dy64), conv_ref(abs(x64), abs(dwr), zero, s, p))
            assert abs(lhs - np.vdot(dw, dwr)) <= tol * mag, (isa, "dw")
            assert np.allclose(db, dy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=tol * 10)
        x = rng.standard_normal((2, 3, 8, 8)).astype(dt)
        out, arg = F.max_pool2d(x, 2, 2, stride=2)
        ref = x.reshape(2, 3, 4, 2, 4, 2).max(axis=(3, 5))
        assert np.array_equal(out, ref), isa
print("ok", ",".join(expected_isas))
"""


@pytest.mark.parametrize(
    ("model", "isas"),
    [("Haswell", "avx2,generic"), ("Nehalem", "generic")],
    ids=["no-avx512", "no-avx"],
)
def test_core_runs_on_an_older_cpu(model, isas):
    proc = subprocess.run(
        [QEMU, "-cpu", model, sys.executable, "-c", SCRIPT, isas],
        capture_output=True, text=True, timeout=600,
    )
    # qemu warns about CPUID bits TCG lacks (rtm, invpcid, ...): noise, not failure.
    stderr = "\n".join(line for line in proc.stderr.splitlines()
                       if "TCG doesn't support requested feature" not in line)
    assert proc.returncode == 0, (
        f"under qemu -cpu {model}: exit {proc.returncode}"
        f"{' (SIGILL: an instruction this CPU lacks)' if proc.returncode in (-4, 132) else ''}"
        f"\nstdout:\n{proc.stdout}\nstderr:\n{stderr}")
    assert proc.stdout.strip() == f"ok {isas}", proc.stdout
