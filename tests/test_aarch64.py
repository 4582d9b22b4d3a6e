"""The kernels on aarch64: built by the project's CMake, checked by their own C++ driver.

Wheels are built for aarch64 too, where the kernels compile as the portable
path (16-byte vectors: NEON). No aarch64 Python is at hand on an x86 host, so
this builds ``tests/native/kernel_check.cpp`` with the kernels (CMake option
``PYCONV_KERNEL_CHECK``: every source but the binding file, with the module's
flags) and runs it: under qemu-user with Debian's cross compiler on x86-64, or
natively on an aarch64 host. The driver checks GEMM (transposes, alpha/beta,
edges), convolution forward and backward, max pooling and the pointwise
kernels, float32 and float64, 1 and 2 threads, against float64 loops of its
own, and exits non-zero on any mismatch.

Needs ``cmake`` and either an aarch64 host with ``g++`` or
``aarch64-linux-gnu-g++`` and ``qemu-aarch64`` (Debian's g++-aarch64-linux-gnu
and qemu-user; ``.ci/run`` installs them); skips, saying which, otherwise.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CMAKE = shutil.which("cmake")
NATIVE = platform.machine() in ("aarch64", "arm64")
CROSS_CXX = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64")
SYSROOT = Path("/usr/aarch64-linux-gnu")  # Debian's cross libraries (libgomp, libstdc++)


def _skip_reason() -> str | None:
    if not (ROOT / "CMakeLists.txt").is_file():
        return "no source tree beside the tests"
    if CMAKE is None:
        return "cmake not found"
    if NATIVE:
        return None if shutil.which("g++") else "g++ not found"
    if CROSS_CXX is None:
        return "aarch64-linux-gnu-g++ not found (Debian: g++-aarch64-linux-gnu)"
    if QEMU is None:
        return "qemu-aarch64 not found (Debian: qemu-user)"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
def test_kernels_on_aarch64(tmp_path):
    configure = [CMAKE, "-S", str(ROOT), "-B", str(tmp_path), "-DPYCONV_KERNEL_CHECK=ON",
                 "-DCMAKE_BUILD_TYPE=Release"]
    if not NATIVE:
        configure += ["-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
                      f"-DCMAKE_CXX_COMPILER={CROSS_CXX}"]
    for cmd in (configure, [CMAKE, "--build", str(tmp_path), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        log = f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        assert proc.returncode == 0, log
        assert "warning:" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr

    exe = tmp_path / "kernel_check"
    run = [str(exe)] if NATIVE else [QEMU, "-L", str(SYSROOT), str(exe)]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    # One ISA on aarch64 (the portable one); some hundreds of checks, none failed.
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("kernel_check: isas generic: ") and summary.endswith(" 0 failed"), (
        proc.stdout)
