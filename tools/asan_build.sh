#!/usr/bin/env bash
# Build pyconv._core with AddressSanitizer + UndefinedBehaviorSanitizer OUTSIDE
# the source tree and run a command against it (by default the test suite).
#
# Usage:  tools/asan_build.sh [build|run CMD...|pytest [PYTEST ARGS...]]
#   build          configure + build into $ASAN_DIR/build (default /tmp/pyconv-asan),
#                  then copy the pyconv package with the ASAN _core .so into
#                  $ASAN_DIR/site/pyconv (the repo's editable install is untouched)
#   run CMD...     run CMD with the sanitizer runtime preloaded and $ASAN_DIR/site
#                  first on PYTHONPATH, so `import pyconv` gets the ASAN build
#   pytest ARGS    build, then `run python -m pytest -q -s -p no:cacheprovider ARGS`
#                  from $ASAN_DIR (not the repo root, whose pyconv/ would shadow
#                  the copy); the repo's tests/ is added unless ARGS name a path
#
# Needs: gcc with libasan/libubsan, cmake, ninja, a Python with pybind11 and numpy
# (set PYTHON=..., default: python on PATH, e.g. after `source venv/bin/activate`).
# Python itself is not instrumented, so libasan is LD_PRELOADed; detect_leaks=0
# because CPython "leaks" by design. allocator_may_return_null=1 makes a huge
# malloc return NULL (-> MemoryError) instead of aborting, as glibc would.
# Findings go to stderr; with halt_on_error (the default here) the first one
# aborts the process. pytest runs with -s: a report printed into pytest's
# capture of fd 2 would be lost when the sanitizer aborts (UBSAN ignores log_path).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASAN_DIR="${ASAN_DIR:-/tmp/pyconv-asan}"
PYTHON="${PYTHON:-python}"
SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -g -O1"

build() {
  local pb11
  pb11="$("$PYTHON" -m pybind11 --cmakedir)"
  cmake -S "$REPO" -B "$ASAN_DIR/build" -G Ninja \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS="$SAN_FLAGS" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
    -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
    -Dpybind11_DIR="$pb11" \
    -DPython_EXECUTABLE="$(command -v "$PYTHON")" \
    -DSKBUILD_PROJECT_NAME=pyconv -DSKBUILD_PROJECT_VERSION=0.1.0 >/dev/null
  cmake --build "$ASAN_DIR/build" >/dev/null
  rm -rf "$ASAN_DIR/site"
  mkdir -p "$ASAN_DIR/site"
  cp -r "$REPO/pyconv" "$ASAN_DIR/site/pyconv"
  find "$ASAN_DIR/site/pyconv" \( -name '_core*.so' -o -name '__pycache__' \) -prune \
    -exec rm -rf {} +
  cp "$ASAN_DIR"/build/_core*.so "$ASAN_DIR/site/pyconv/"
  # An editable install (scikit-build-core) puts a finder on sys.meta_path that
  # wins over PYTHONPATH; sitecustomize runs after the .pth files and drops it.
  cat >"$ASAN_DIR/site/sitecustomize.py" <<'PY'
import sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not type(f).__module__.startswith("_editable_")]
PY
  echo "ASAN build: $(ls "$ASAN_DIR"/site/pyconv/_core*.so)"
}

run() {
  LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=1}" \
  UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:abort_on_error=1}" \
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" \
  PYTHONPATH="$ASAN_DIR/site${PYTHONPATH:+:$PYTHONPATH}" \
  PYTHONDONTWRITEBYTECODE=1 \
    "$@"
}

case "${1:-pytest}" in
  build) build ;;
  run) shift; run "$@" ;;
  pytest)
    shift || true
    build
    args=("$@")
    have_path=0
    for a in "$@"; do [[ -e "${a%%::*}" ]] && have_path=1; done
    ((have_path)) || args+=("$REPO/tests")
    cd "$ASAN_DIR"
    run "$PYTHON" -m pytest -q -s -p no:cacheprovider --rootdir="$REPO" -c "$REPO/pyproject.toml" \
      "${args[@]}"
    ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
