"""Robustness fuzzing: no input crashes the interpreter, and every bad input is a
clear ``ValueError`` or ``TypeError``.

Each hypothesis test draws a call that is usually *almost* valid (coherent shapes)
and then perturbs it: a dimension set to 0, off by one or dropped, a dtype from
float16/int8/bool/complex/object/str/big-endian/datetime, a layout that is
Fortran-ordered, strided, reversed, broadcast (zero strides), read-only or
misaligned, a hyper-parameter that is negative, zero or huge (up to 2**63 - 1 and
beyond int64), or not an integer at all. A small model of the documented contract
(CONTEXT.md "API contract", the ``check_*`` functions of ``csrc/bindings.cpp``)
predicts the outcome, and the test checks it:

* valid call   -> arrays of the documented shapes and dtype (values are checked
  against ``tests/reference.py`` for small valid cases); a *genuinely huge*
  valid request may instead raise ``MemoryError`` or NumPy's "array is too big"
  ``ValueError``; mid-sized requests (64 MiB .. 64 GiB) are not drawn;
* a misaligned (but C-contiguous) array is a ``ValueError`` in ``_core``; the
  public API accepts it (it copies);
* invalid call -> ``TypeError`` for wrong types (``_core`` is strict: pybind11
  rejects any non-float32/float64, non-C-contiguous or non-native-endian array
  and any non-integer or out-of-int64 integer) or ``ValueError`` for wrong
  shapes/values; a ``_core`` ``ValueError`` must name its op ("conv2d_forward: ...").
  Where a call is wrong in both ways and the API checks in Python first, either is
  accepted.

Scenarios that once crashed the interpreter (found by this fuzzing under
ASAN/UBSAN, fixed in the core) run in a subprocess, so a regression fails one
test instead of killing pytest. Multi-threaded use (GIL released) is checked at
the end.

Scale with ``PYCONV_FUZZ_EXAMPLES`` (default 30 per test); the long campaign runs
e.g. ``PYCONV_FUZZ_EXAMPLES=3000 tools/asan_build.sh pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import pyconv
import pyconv.functional as F
from pyconv import _core
from pyconv.layers import Convolution, Pooling

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
FUZZ_EXAMPLES = int(os.environ.get("PYCONV_FUZZ_EXAMPLES", "30"))
MAX_THREADS = 1024  # set_num_threads bound; also bounds per-thread scratch (bindings.cpp)

fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)

# Output sizes (bytes) the tests allow to be allocated, and above which a request
# counts as genuinely huge (more than this machine's RAM: MemoryError is fine).
SMALL_BYTES = 2**26
HUGE_BYTES = 2**36

# ---- values ----------------------------------------------------------------------------

EDGE_INTS = [0, -1, -7, I64_MIN, 2**17, 2**20, 2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**61, 2**62,
             I64_MAX]
BEYOND_INT64 = [2**63, -(2**63) - 1, 2**64, 10**30]


class _Opaque:
    """An object nothing should accept as an int or an array."""

    def __repr__(self):
        return "_Opaque()"


NOT_INTS = [None, 1.5, "2", b"2", 2j, [2], np.float64(2.0), _Opaque()]


def int_params(small_lo=0, small_hi=3, noisy=True):
    """Mostly small ints, sometimes an edge value, rarely something beyond int64
    or not an integer at all (np.int64 and bool included). Not noisy: small only."""
    if not noisy:
        return st.integers(small_lo, small_hi)
    return st.one_of(
        st.integers(small_lo, small_hi),
        st.integers(small_lo, small_hi),
        st.integers(small_lo, small_hi).map(np.int64),
        st.sampled_from(EDGE_INTS),
        st.sampled_from(BEYOND_INT64 + NOT_INTS + [True, False]),
    )


# dtypes: the two compute types (weighted up) and everything else.
GOOD_DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
ODD_DTYPES = [np.dtype(d) for d in (np.float16, np.int8, np.uint8, np.int16, np.int32,
                                    np.int64, np.bool_, np.complex64, np.complex128, object,
                                    "U2", "S2", ">f8", ">f4", "M8[s]")]
dtypes = st.one_of(st.sampled_from(GOOD_DTYPES), st.sampled_from(GOOD_DTYPES),
                   st.sampled_from(ODD_DTYPES))
LAYOUTS = ["c", "readonly", "fortran", "strided", "reversed", "broadcast", "misaligned"]
layouts = st.one_of(st.just("c"), st.just("c"), st.sampled_from(LAYOUTS))


def _values(rng, size, dtype):
    kind = dtype.kind
    if kind == "f":
        return rng.standard_normal(size).astype(dtype)
    if kind == "c":
        return (rng.standard_normal(size) + 1j * rng.standard_normal(size)).astype(dtype)
    if kind in "iu":
        return rng.integers(0, 5, size).astype(dtype)
    if kind == "b":
        return rng.random(size) < 0.5
    if kind == "O":
        out = np.empty(size, dtype=object)
        out[:] = list(rng.standard_normal(size))
        return out
    if kind in "US":
        return np.full(size, "ab", dtype=dtype)
    return np.arange(size).astype(dtype)  # datetime


def build_array(rng, shape, dtype, layout, values=None):
    """An array of ``shape``/``dtype`` in the given memory layout."""
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) if shape else 1
    flat = _values(rng, size, dtype) if values is None else np.asarray(values).astype(dtype)
    base = flat.reshape(shape)
    if layout == "readonly":
        a = base.copy()
        a.flags.writeable = False
        return a
    if layout == "fortran":
        return np.asfortranarray(base)
    if layout == "strided" and base.ndim >= 1:
        full = np.repeat(base, 2, axis=-1)
        return full[..., ::2]
    if layout == "reversed" and base.ndim >= 1:
        return np.ascontiguousarray(base[..., ::-1])[..., ::-1]
    if layout == "broadcast" and base.ndim >= 1 and shape[0] >= 1:
        return np.broadcast_to(base[:1], shape)
    if layout == "misaligned" and dtype.kind != "O" and dtype.itemsize > 1:
        buf = np.zeros(base.nbytes + dtype.itemsize, dtype=np.uint8)
        a = buf[1 : 1 + base.nbytes].view(dtype).reshape(shape)
        a[...] = base
        return a
    return np.ascontiguousarray(base)


@st.composite
def arrays_like(draw, shape, dtype=None, layout=None, noisy=True):
    """An array of (a possibly perturbed) ``shape``; dtype/layout drawn if not given.
    Not noisy: the exact shape, a float32/float64 dtype, C order (maybe read-only)."""
    shape = list(shape)
    if not noisy:
        dtype = draw(st.sampled_from(GOOD_DTYPES)) if dtype is None else np.dtype(dtype)
        seed = draw(st.integers(0, 2**32 - 1))
        layout = draw(st.sampled_from(["c", "c", "c", "readonly"]))
        return build_array(np.random.default_rng(seed), shape, dtype, layout)
    mutation = draw(st.sampled_from(["none"] * 6 + ["dim", "drop", "add", "zero"]))
    if mutation == "dim" and shape:
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = max(0, shape[i] + draw(st.sampled_from([-1, 1, 2])))
    elif mutation == "drop" and shape:
        shape.pop(draw(st.integers(0, len(shape) - 1)))
    elif mutation == "add":
        shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(1, 2)))
    elif mutation == "zero" and shape:
        shape[draw(st.integers(0, len(shape) - 1))] = 0
    dtype = draw(dtypes) if dtype is None else np.dtype(dtype)
    layout = draw(layouts) if layout is None else layout
    seed = draw(st.integers(0, 2**32 - 1))
    return build_array(np.random.default_rng(seed), shape, dtype, layout)


def noise(draw):
    """Per call: about 40% clean calls (exact shapes, float dtypes, small ints, so
    the valid paths get exercised), the rest perturbed."""
    return draw(st.integers(0, 4)) >= 2


# ---- the model -------------------------------------------------------------------------


class Expect:
    """What a call should do: problems found by the model, and its outputs if valid."""

    def __init__(self, op):
        self.op = op
        self.type_problems: list[str] = []
        self.value_problems: list[str] = []
        self.outputs: list[tuple[tuple, np.dtype] | None] = []  # None: output is None

    def type(self, why):
        self.type_problems.append(why)

    def value(self, why):
        self.value_problems.append(why)

    @property
    def valid(self):
        return not self.type_problems and not self.value_problems

    def __repr__(self):
        return (f"Expect({self.op}: type={self.type_problems}, value={self.value_problems}, "
                f"outputs={self.outputs})")


def core_array(ex, name, a, dtype=None):
    """``_core`` takes C-contiguous native float32/float64 arrays (argmax: int64), as is."""
    if not isinstance(a, np.ndarray):
        ex.type(f"{name} not an ndarray")
        return None
    allowed = GOOD_DTYPES if dtype is None else [np.dtype(dtype)]
    if a.dtype not in allowed or not a.dtype.isnative:
        ex.type(f"{name} dtype {a.dtype}")
        return None
    if not a.flags.c_contiguous:
        ex.type(f"{name} not C-contiguous")
        return None
    if not a.flags.aligned:
        ex.value(f"{name} misaligned")
    return a


def core_int(ex, name, v):
    """pybind11's int64 caster: int, bool and NumPy integers inside int64."""
    if isinstance(v, (bool, int, np.integer)) and not isinstance(v, np.bool_):
        if I64_MIN <= int(v) <= I64_MAX:
            return int(v)
    ex.type(f"{name}={v!r} not an int64")
    return None


def api_int(ex, name, v):
    """pyconv.functional._int_arg: no bools; then the core's int64 range."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        ex.type(f"{name}={v!r} not an integer")
        return None
    return core_int(ex, name, v)


def layer_int(ex, name, v):
    """Layer constructors (layers._check_hyper): any integer but bool (TypeError);
    beyond int64 is a ValueError there, as is a value below the minimum."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        ex.type(f"{name}={v!r} not an integer")
        return None
    if int(v) > I64_MAX:
        ex.value(f"{name}={v!r} beyond int64")
    return int(v)


def api_array(ex, name, a, dtype=None):
    """pyconv.functional.as_compute_array: any real dtype, any layout, converted."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        ex.type(f"{name} dtype {arr.dtype}")
        return None
    return arr, (F.compute_dtype(arr.dtype) if dtype is None else np.dtype(dtype))


def _prod_ok(dims):
    """bindings.cpp checked_mul: the running product stays inside int64."""
    out = 1
    for d in dims:
        out *= d
        if not I64_MIN <= out <= I64_MAX:
            return False
    return True


def _window_ok(ex, h, w, kh, kw, pad):
    """bindings.cpp check_window (after stride/pad >= ...): padded sizes and 8x them
    fit in int64, and the window fits in the padded input."""
    if not all(_prod_ok(d) for d in ((2, pad), (8, h + 2 * pad), (8, w + 2 * pad))):
        ex.value("padded size overflows int64")
        return False
    if kh > h + 2 * pad or kw > w + 2 * pad:
        ex.value("window larger than the padded input")
        return False
    return True


def conv_geometry(ex, n, c, h, w, f, kh, kw, stride, pad):
    """bindings.cpp conv_shape: (OH, OW), or None after recording the ValueError."""
    if None in (n, c, h, w, f, kh, kw, stride, pad):
        return None
    bad = (n < 0 or h < 1 or w < 1 or c < 1 or kh < 1 or kw < 1 or stride < 1 or pad < 0)
    if bad:
        ex.value(f"bad sizes n={n} c={c} h={h} w={w} k=({kh},{kw}) stride={stride} pad={pad}")
        return None
    if not _window_ok(ex, h, w, kh, kw, pad):
        return None
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    # x, w, y, the column matrix, and the scratch: one image's column matrix and
    # one dW partial per thread, in bytes (at most MAX_THREADS threads).
    for dims in ((n, c, h, w), (f, c, kh, kw), (n, f, oh, ow), (n, c, kh, kw, oh, ow),
                 (c, kh, kw, oh, ow, 8, MAX_THREADS), (f + 1, c, kh, kw, 8, MAX_THREADS)):
        if not _prod_ok(dims):
            ex.value(f"size {dims} overflows int64")
            return None
    return oh, ow


def pool_geometry(ex, x_shape, kh, kw, stride, pad):
    """bindings.cpp max_pool2d_forward_py checks: (OH, OW) or None."""
    if len(x_shape) != 4:
        ex.value(f"x of shape {x_shape} is not 4-D")
        return None
    if None in (kh, kw, stride, pad):
        return None
    n, c, h, w = x_shape
    if kh < 1 or kw < 1 or pad < 0 or pad > kh // 2 or pad > kw // 2 or h < 1 or w < 1 \
            or stride < 1:
        ex.value(f"bad pool ({kh},{kw}) stride={stride} pad={pad} on {x_shape}")
        return None
    if not _window_ok(ex, h, w, kh, kw, pad):
        return None
    return (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1


# ---- running a call against the model ----------------------------------------------------


def _nbytes(shape, dtype):
    return int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize


def _numpy_refuses(shape, dtype):
    """NumPy's "array is too big": product of the non-zero dims overflows intp."""
    prod = np.dtype(dtype).itemsize
    for d in shape:
        prod *= d if d else 1
    return prod > I64_MAX


def size_class(ex):
    """'small', 'huge' or 'mid' (mid: too big to allocate here safely, not drawn)."""
    outs = [o for o in ex.outputs if o is not None]
    if any(_numpy_refuses(s, d) for s, d in outs):
        return "huge"
    total = sum(_nbytes(s, d) for s, d in outs)
    if total <= SMALL_BYTES:
        return "small"
    return "huge" if total > HUGE_BYTES else "mid"


def _flatten(result):
    if isinstance(result, tuple):
        return list(result)
    return [result]


def run(ex, call, *, strict_types=True):
    """Make the call and check it against ``ex``. Returns the result (or None)."""
    kind = size_class(ex)
    if ex.valid:
        assume(kind != "mid")
        event(f"{ex.op}: valid ({kind})")
    else:
        event(f"{ex.op}: {'TypeError' if ex.type_problems else 'ValueError'} expected")
    try:
        result = call()
    except (ValueError, TypeError, MemoryError) as e:
        msg = str(e)
        if ex.valid:
            assert kind == "huge", f"{ex.op}: valid call raised {type(e).__name__}: {msg}\n{ex}"
            if isinstance(e, ValueError):
                assert "too big" in msg or "overflow" in msg, f"{ex.op}: {msg}\n{ex}"
            return None
        if isinstance(e, MemoryError):
            raise AssertionError(f"{ex.op}: invalid call raised MemoryError: {msg}\n{ex}") from e
        assert msg, f"{ex.op}: {type(e).__name__} without a message\n{ex}"
        if strict_types and ex.type_problems:
            assert isinstance(e, TypeError), f"{ex.op}: expected TypeError, got {e!r}\n{ex}"
        elif not ex.type_problems:
            assert isinstance(e, ValueError), f"{ex.op}: expected ValueError, got {e!r}\n{ex}"
        return None
    assert ex.valid, f"{ex.op}: invalid call returned instead of raising\n{ex}"
    got = _flatten(result)
    assert len(got) == len(ex.outputs), f"{ex.op}: {len(got)} results, expected {ex}"
    for r, o in zip(got, ex.outputs):
        if o is None:
            assert r is None, f"{ex.op}: expected None, got {type(r)}"
            continue
        shape, dtype = o
        assert isinstance(r, np.ndarray), f"{ex.op}: result {type(r)}"
        assert r.shape == tuple(shape), f"{ex.op}: shape {r.shape} != {tuple(shape)}\n{ex}"
        assert r.dtype == dtype, f"{ex.op}: dtype {r.dtype} != {dtype}\n{ex}"
    return result


def core_value_error_names_op(op, call):
    """A _core ValueError (non-huge) starts with the op's name."""
    try:
        call()
    except ValueError as e:
        msg = str(e)
        assert msg.startswith(op + ":") or "too big" in msg, f"unclear message: {msg!r}"
    except (TypeError, MemoryError):
        pass


def _small(*vals):
    return all(isinstance(v, int) and 0 <= v <= 8 for v in vals)


# ---- im2col / col2im ---------------------------------------------------------------------


@st.composite
def im2col_cases(draw):
    nz = noise(draw)
    n = draw(st.integers(0, 3))
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    x = draw(arrays_like((n, c, h, w), noisy=nz))
    kh, kw = draw(int_params(1, 4, nz)), draw(int_params(1, 4, nz))
    stride, pad = draw(int_params(1, 3, nz)), draw(int_params(0, 2, nz))
    return x, kh, kw, stride, pad


def _im2col_expect(x, kh, kw, stride, pad, api):
    ex = Expect("im2col")
    to_int = api_int if api else core_int
    ints = [to_int(ex, nm, v) for nm, v in
            (("kernel_h", kh), ("kernel_w", kw), ("stride", stride), ("pad", pad))]
    if api:
        conv = api_array(ex, "input_data", x)
        arr, dtype = conv if conv else (None, None)
    else:
        arr = core_array(ex, "x", x)
        dtype = None if arr is None else arr.dtype
    if arr is not None:
        if arr.ndim != 4:
            ex.value("x not 4-D")
        elif None not in ints:
            n, c, h, w = arr.shape
            geo = conv_geometry(ex, n, c, h, w, 1, *ints)
            if geo is not None:
                ex.outputs = [((n * geo[0] * geo[1], c * ints[0] * ints[1]), dtype)]
    return ex, ints


@fuzz
@given(im2col_cases(), st.booleans())
def test_fuzz_im2col(case, api):
    x, kh, kw, stride, pad = case
    ex, ints = _im2col_expect(x, kh, kw, stride, pad, api)
    if api:
        col = run(ex, lambda: pyconv.im2col(x, kh, kw, stride, pad), strict_types=False)
    else:
        col = run(ex, lambda: _core.im2col(x, kh, kw, stride, pad))
        if not ex.valid:
            core_value_error_names_op("im2col", lambda: _core.im2col(x, kh, kw, stride, pad))
    if col is not None and _small(*ints) and x.dtype.kind in "biuf":
        expected = ref.im2col(np.asarray(x, dtype=np.float64), *ints)
        np.testing.assert_array_equal(col, expected.astype(col.dtype))


@st.composite
def col2im_cases(draw):
    nz = noise(draw)
    n = draw(st.integers(0, 2))
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, pad = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    rows = max(n * oh * ow, 0) if oh > 0 and ow > 0 else draw(st.integers(0, 3))
    col = draw(arrays_like((rows, c * kh * kw), noisy=nz))
    dims = [n, c, h, w, kh, kw, stride, pad]
    # Replace some declared sizes by arbitrary ones (huge included).
    for i in draw(st.lists(st.integers(0, 7), max_size=2 if nz else 0)):
        dims[i] = draw(int_params(0, 4))
    return col, dims


@fuzz
@given(col2im_cases(), st.booleans())
def test_fuzz_col2im(case, api):
    col, dims = case
    ex = Expect("col2im")
    to_int = api_int if api else core_int
    names = ("batch", "channels", "height", "width", "kernel_h", "kernel_w", "stride", "pad")
    ints = [to_int(ex, nm, v) for nm, v in zip(names, dims)]
    if api:
        conv = api_array(ex, "col", col)
        arr, dtype = conv if conv else (None, None)
    else:
        arr = core_array(ex, "col", col)
        dtype = None if arr is None else arr.dtype
    if arr is not None:
        if arr.ndim != 2:
            ex.value("col not 2-D")
        elif None not in ints:
            n, c, h, w, kh, kw, stride, pad = ints
            geo = conv_geometry(ex, n, c, h, w, 1, kh, kw, stride, pad)
            if geo is not None:
                if arr.shape != (n * geo[0] * geo[1], c * kh * kw):
                    ex.value(f"col shape {arr.shape}")
                else:
                    ex.outputs = [((n, c, h, w), dtype)]
    if api:
        x = run(ex, lambda: pyconv.col2im(col, tuple(dims[:4]), *dims[4:]), strict_types=False)
    else:
        x = run(ex, lambda: _core.col2im(col, *dims))
        if not ex.valid:
            core_value_error_names_op("col2im", lambda: _core.col2im(col, *dims))
    if x is not None and _small(*ints) and col.dtype.kind in "biuf":
        expected = ref.col2im(np.asarray(col, dtype=np.float64), ints[:4], *ints[4:])
        np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)


# ---- convolution ---------------------------------------------------------------------------


@st.composite
def conv_cases(draw):
    nz = noise(draw)
    n = draw(st.integers(0, 3))
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    f, kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, pad = draw(int_params(1, 3, nz)), draw(int_params(0, 2, nz))
    dtype = draw(st.sampled_from(GOOD_DTYPES))
    same = not nz or draw(st.booleans())  # all arrays of one dtype (else each drawn)
    x = draw(arrays_like((n, c, h, w), dtype=dtype if same else None, noisy=nz))
    W = draw(arrays_like((f, c, kh, kw), dtype=dtype if same else None, noisy=nz))
    b = draw(arrays_like((f,), dtype=dtype if same else None, noisy=nz))
    sane = _small(stride, pad) and stride >= 1
    oh = (h + 2 * pad - kh) // stride + 1 if sane else 1
    ow = (w + 2 * pad - kw) // stride + 1 if sane else 1
    dy = draw(arrays_like((n, f, max(oh, 0), max(ow, 0)), dtype=dtype if same else None,
                          noisy=nz))
    need_dx = draw(st.booleans())
    return x, W, b, dy, stride, pad, need_dx


def _conv_expect(op, x, W, b_or_dy, stride, pad, api, backward, need_dx=True):
    ex = Expect(op)
    to_int = api_int if api else core_int
    s, p = to_int(ex, "stride", stride), to_int(ex, "pad", pad)
    if api:
        conv_w = api_array(ex, "W", W)
        dtype = conv_w[1] if conv_w else None
        arrs = [conv_w[0] if conv_w else None]
        for nm, a in (("x", x), ("b/dout", b_or_dy)):
            conv = api_array(ex, nm, a, dtype=dtype or np.float64)
            arrs.append(conv[0] if conv else None)
        wa, xa, ba = arrs
    else:
        xa, wa, ba = (core_array(ex, nm, a) for nm, a in (("x", x), ("w", W), ("b/dout", b_or_dy)))
        if all(v is not None for v in (xa, wa, ba)) and not (xa.dtype == wa.dtype == ba.dtype):
            ex.type("mixed dtypes")
        dtype = None if wa is None else wa.dtype
    if ex.type_problems and not api:
        return ex, (s, p)
    if any(v is None for v in (xa, wa, ba)):
        return ex, (s, p)
    if xa.ndim != 4 or wa.ndim != 4:
        ex.value("x or w not 4-D")
        return ex, (s, p)
    if min(wa.shape) < 1:
        ex.value("w has a zero dim")
        return ex, (s, p)
    if xa.shape[1] != wa.shape[1]:
        ex.value("channels differ")
        return ex, (s, p)
    n, c, h, w = xa.shape
    f, _, kh, kw = wa.shape
    geo = conv_geometry(ex, n, c, h, w, f, kh, kw, s, p)
    if geo is None:
        return ex, (s, p)
    oh, ow = geo
    if not backward:
        if ba.shape != (f,):
            ex.value("b shape")
        ex.outputs = [((n, f, oh, ow), dtype)]
    else:
        if ba.shape != (n, f, oh, ow):
            ex.value("dout shape")
        ex.outputs = [((n, c, h, w), dtype) if need_dx else None, (wa.shape, dtype), ((f,), dtype)]
    if ex.type_problems:
        ex.outputs = []
    return ex, (s, p)


@fuzz
@given(conv_cases(), st.booleans())
def test_fuzz_conv2d_forward(case, api):
    x, W, b, _, stride, pad, _ = case
    ex, (s, p) = _conv_expect("conv2d_forward", x, W, b, stride, pad, api, backward=False)
    if api:
        y = run(ex, lambda: F.conv2d(x, W, b, stride, pad), strict_types=False)
    else:
        y = run(ex, lambda: _core.conv2d_forward(x, W, b, stride, pad))
        if not ex.valid:
            core_value_error_names_op("conv2d_forward",
                                      lambda: _core.conv2d_forward(x, W, b, stride, pad))
    if y is not None and _small(s, p):
        dt = y.dtype
        expected = ref.conv2d_forward(x.astype(np.float64), W.astype(dt).astype(np.float64),
                                      b.astype(dt).astype(np.float64), s, p)
        tol = 1e-4 if dt == np.float32 else 1e-10
        scale = ref.conv2d_forward(np.abs(x.astype(np.float64)), np.abs(W.astype(np.float64)),
                                   np.abs(b.astype(np.float64)), s, p)
        atol = tol * max(1.0, float(scale.max(initial=0.0)))
        np.testing.assert_allclose(y, expected, rtol=tol, atol=atol)


@fuzz
@given(conv_cases(), st.booleans())
def test_fuzz_conv2d_backward(case, api):
    x, W, _, dy, stride, pad, need_dx = case
    ex, _ = _conv_expect("conv2d_backward", x, W, dy, stride, pad, api, backward=True,
                         need_dx=need_dx)
    if api:
        run(ex, lambda: F.conv2d_backward(dy, x, W, stride, pad, need_dx), strict_types=False)
    else:
        run(ex, lambda: _core.conv2d_backward(x, W, dy, stride, pad, need_dx))
        if not ex.valid:
            core_value_error_names_op(
                "conv2d_backward", lambda: _core.conv2d_backward(x, W, dy, stride, pad, need_dx))


# ---- max pooling ---------------------------------------------------------------------------


@st.composite
def pool_cases(draw):
    nz = noise(draw)
    n, c = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    x = draw(arrays_like((n, c, h, w), noisy=nz))
    kh, kw = draw(int_params(1, 4, nz)), draw(int_params(1, 4, nz))
    stride, pad = draw(int_params(1, 3, nz)), draw(int_params(0, 2 if nz else 1, nz))
    return x, kh, kw, stride, pad


@fuzz
@given(pool_cases(), st.booleans())
def test_fuzz_max_pool2d_forward(case, api):
    x, kh, kw, stride, pad = case
    ex = Expect("max_pool2d_forward")
    to_int = api_int if api else core_int
    ints = [to_int(ex, nm, v) for nm, v in
            (("pool_h", kh), ("pool_w", kw), ("stride", stride), ("pad", pad))]
    if api:
        conv = api_array(ex, "x", x)
        arr, dtype = conv if conv else (None, None)
    else:
        arr = core_array(ex, "x", x)
        dtype = None if arr is None else arr.dtype
    if arr is not None and (api or not ex.type_problems):
        geo = pool_geometry(ex, arr.shape, *ints)
        if geo is not None:
            n, c = arr.shape[:2]
            ex.outputs = [((n, c, *geo), dtype), ((n, c, *geo), np.dtype(np.int64))]
    if api:
        res = run(ex, lambda: F.max_pool2d(x, kh, kw, stride, pad), strict_types=False)
    else:
        res = run(ex, lambda: _core.max_pool2d_forward(x, kh, kw, stride, pad))
        if not ex.valid:
            core_value_error_names_op("max_pool2d_forward",
                                      lambda: _core.max_pool2d_forward(x, kh, kw, stride, pad))
    if res is not None and _small(*ints) and x.size:
        out, argmax = res
        exp_out, exp_arg = ref.max_pool2d_forward(np.asarray(x, dtype=out.dtype), *ints)
        np.testing.assert_array_equal(out, exp_out.astype(out.dtype))
        np.testing.assert_array_equal(argmax, exp_arg)


@st.composite
def pool_backward_cases(draw):
    nz = noise(draw)
    n, c = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    oh, ow = draw(st.integers(0, 4)), draw(st.integers(1, 4))
    h, w = draw(int_params(1, 8, nz)), draw(int_params(1, 8, nz))
    dy = draw(arrays_like((n, c, oh, ow), noisy=nz))
    # argmax: in range for a (1..8)x(1..8) plane, sometimes out of range or mistyped.
    ranges = [(0, 1), (0, 8), (-3, 70), (0, 2**40), (I64_MIN, I64_MAX)]
    lo, hi = draw(st.sampled_from(ranges if nz else ranges[:1]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ashape = list(dy.shape) if not nz or draw(st.integers(0, 4)) else [n, c, oh + 1, ow]
    vals = rng.integers(lo, hi, size=int(np.prod(ashape)), endpoint=True)
    odd = [np.int32, ">i8", np.float64, np.uint64] if nz else []
    adtype = draw(st.sampled_from([np.int64] * 4 + odd))
    alayout = draw(layouts) if nz else "c"
    argmax = build_array(rng, ashape, adtype, alayout, values=vals.astype(np.int64))
    return dy, argmax, h, w


@fuzz
@given(pool_backward_cases(), st.booleans())
def test_fuzz_max_pool2d_backward(case, api):
    dy, argmax, h, w = case
    ex = Expect("max_pool2d_backward")
    to_int = api_int if api else core_int
    hi, wi = to_int(ex, "height", h), to_int(ex, "width", w)
    if api:
        conv = api_array(ex, "dout", dy)
        arr, dtype = conv if conv else (None, None)
        am = np.asarray(argmax)
        if am.dtype != np.dtype(np.int64):
            ex.type("argmax dtype")
            am = None

    else:
        arr = core_array(ex, "dout", dy)
        dtype = None if arr is None else arr.dtype
        am = core_array(ex, "argmax", argmax, dtype=np.int64)
    if arr is not None and am is not None and None not in (hi, wi) \
            and (api or not ex.type_problems):
        if arr.ndim != 4:
            ex.value("dout not 4-D")
        elif hi < 1 or wi < 1:
            ex.value("H or W < 1")
        elif am.shape != arr.shape:
            ex.value("argmax shape")
        elif not _prod_ok((hi, wi)) or not _prod_ok((*arr.shape[:2], hi, wi)):
            ex.value("H*W overflows")
        elif am.size and (am.min() < 0 or am.max() >= hi * wi):
            ex.value("argmax out of range")
        else:
            ex.outputs = [((*arr.shape[:2], hi, wi), dtype)]
    if api:
        x_shape = (dy.shape[0] if dy.ndim else 0, dy.shape[1] if dy.ndim > 1 else 0, h, w)
        dx = run(ex, lambda: F.max_pool2d_backward(dy, argmax, x_shape), strict_types=False)
    else:
        dx = run(ex, lambda: _core.max_pool2d_backward(dy, argmax, h, w))
        if not ex.valid:
            core_value_error_names_op("max_pool2d_backward",
                                      lambda: _core.max_pool2d_backward(dy, argmax, h, w))
    if dx is not None and dx.size:
        expected = ref.max_pool2d_backward(np.asarray(dy, dtype=dx.dtype), np.asarray(argmax),
                                           dx.shape)
        np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-5)


# ---- gemm -----------------------------------------------------------------------------------

SCALARS = [0.0, 1.0, -2.5, 0, 3, np.float32(0.5), float("nan"), float("inf"), 10**400, "1",
           None, 1j]


@st.composite
def gemm_cases(draw):
    nz = noise(draw)
    m, n, k = draw(st.integers(0, 9)), draw(st.integers(0, 9)), draw(st.integers(0, 9))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    dtype = draw(st.sampled_from(GOOD_DTYPES))
    same = not nz or draw(st.booleans())
    a = draw(arrays_like((k, m) if ta else (m, k), dtype=dtype if same else None, noisy=nz))
    b = draw(arrays_like((n, k) if tb else (k, n), dtype=dtype if same else None, noisy=nz))
    kinds = ["none", "none", "fresh", "fresh", "alias_a", "alias_b", "overlap", "other"]
    kind = draw(st.sampled_from(kinds if nz else kinds[:4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "none":
        out = None
    elif kind == "fresh":
        out = draw(arrays_like((m, n), dtype=dtype if same else None, noisy=nz))
    elif kind == "alias_a":
        out = a
    elif kind == "alias_b":
        out = b
    elif kind == "overlap":  # out and a share one buffer, shifted by a row
        buf = rng.standard_normal((m + 1) * max(n, k, 1) * 2).astype(dtype)
        a = buf[: m * k].reshape(m, k)
        ta = False
        out = buf[k : k + m * n].reshape(m, n)
    else:
        out = draw(st.sampled_from([np.zeros((m, n)).tolist(), "out", 3.0]))
    scalars = st.one_of(st.floats(-3, 3), st.sampled_from(SCALARS)) if nz else st.floats(-3, 3)
    alpha, beta = draw(scalars), draw(scalars)
    return a, b, ta, tb, alpha, beta, out


def _core_scalar(ex, name, v):
    if isinstance(v, (bool, int, float, np.floating, np.integer)) and not isinstance(v, str):
        try:
            return float(v)
        except OverflowError:
            pass
    ex.type(f"{name}={v!r}")
    return None


@fuzz
@given(gemm_cases(), st.booleans())
def test_fuzz_gemm(case, api):
    a, b, ta, tb, alpha, beta, out = case
    ex = Expect("gemm")
    out_before = out.copy() if isinstance(out, np.ndarray) else None
    if api:
        ca, cb = api_array(ex, "a", a), api_array(ex, "b", b)
        if ca and cb:
            dtype = np.result_type(ca[1], cb[1])
            A, B = ca[0], cb[0]
            if A.ndim != 2 or B.ndim != 2:
                ex.value("a or b not 2-D")
        else:
            dtype, A, B = None, None, None
        if out is not None and dtype is not None and not (
                isinstance(out, np.ndarray) and out.dtype == dtype and out.flags.c_contiguous
                and out.flags.writeable):
            ex.type("out not a writeable C-contiguous array of the compute dtype")
        elif isinstance(out, np.ndarray) and not out.flags.aligned:
            ex.value("out misaligned (written in place, so it cannot be copied)")
        for nm, v in (("alpha", alpha), ("beta", beta)):
            try:
                if not np.isfinite(float(v)):
                    ex.value(f"{nm}={v!r} not finite")
            except (TypeError, ValueError, OverflowError):
                ex.type(f"{nm}={v!r} not a real number")
    else:
        A, B = core_array(ex, "a", a), core_array(ex, "b", b)
        dtype = A.dtype if A is not None else None
        if A is not None and B is not None and A.dtype != B.dtype:
            ex.type("mixed dtypes")
        if out is not None:
            o = core_array(ex, "out", out)
            if o is not None and dtype is not None and o.dtype != dtype:
                ex.type("out dtype")
        _core_scalar(ex, "alpha", alpha)
        _core_scalar(ex, "beta", beta)
        if A is not None and B is not None and (A.ndim != 2 or B.ndim != 2):
            ex.value("a or b not 2-D")
    if A is not None and B is not None and A.ndim == 2 and B.ndim == 2 and not (
            api and ex.type_problems):
        m, k = (A.shape[::-1] if ta else A.shape)
        kb, n = (B.shape[::-1] if tb else B.shape)
        if k != kb:
            ex.value("inner dims differ")
        elif isinstance(out, np.ndarray):
            if out.shape != (m, n):
                ex.value("out shape")
            elif not out.flags.writeable:
                ex.value("out read-only")
            elif (np.may_share_memory(out, A) and A.size and out.size) or (
                    np.may_share_memory(out, B) and B.size and out.size):
                ex.value("out overlaps a or b")
        ex.outputs = [((m, n), dtype)]
    if ex.type_problems and not api:
        ex.outputs = []
    if api:
        c = run(ex, lambda: F.gemm(a, b, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta,
                                   out=out), strict_types=False)
    else:
        c = run(ex, lambda: _core.gemm(a, b, ta, tb, alpha, beta, out))
        if not ex.valid:
            core_value_error_names_op("gemm", lambda: _core.gemm(a, b, ta, tb, alpha, beta, out))
    if c is not None:
        if out is not None:
            assert c is out or np.shares_memory(c, out), "gemm did not write into out"
        with np.errstate(all="ignore"):
            A64 = np.asarray(a, dtype=np.float64)
            B64 = np.asarray(b, dtype=np.float64)
            opa, opb = (A64.T if ta else A64), (B64.T if tb else B64)
            expected = float(alpha) * (opa @ opb)
            if out is not None and float(beta) != 0.0:
                expected = expected + float(beta) * out_before.astype(np.float64)
            scale = abs(float(alpha)) * (np.abs(opa) @ np.abs(opb))
            if out is not None and float(beta) != 0.0:
                scale = scale + abs(float(beta)) * np.abs(out_before.astype(np.float64))
        finite = np.isfinite(expected) & np.isfinite(scale)
        tol = 1e-4 if c.dtype == np.float32 else 1e-10
        np.testing.assert_allclose(np.asarray(c, dtype=np.float64)[finite], expected[finite],
                                   rtol=tol, atol=tol * max(1.0, float(scale[finite].max(
                                       initial=0.0))))


# ---- ReLU ----------------------------------------------------------------------------------


@st.composite
def relu_cases(draw):
    nz = noise(draw)
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=4))
    x = draw(arrays_like(shape, noisy=nz))
    dout = draw(arrays_like(shape, dtype=x.dtype if x.dtype in GOOD_DTYPES else None,
                            noisy=nz))
    mask_kind = draw(st.sampled_from(["forward"] * 3 + (["int", "shape", "fortran"] if nz else [])))
    return x, dout, mask_kind


@fuzz
@given(relu_cases())
def test_fuzz_relu_core(case):
    x, dout, mask_kind = case
    ex = Expect("relu_forward")
    xa = core_array(ex, "x", x)
    if xa is not None:
        ex.outputs = [(xa.shape, xa.dtype), (xa.shape, np.dtype(np.bool_))]
    res = run(ex, lambda: _core.relu_forward(x))
    if res is None:
        return
    y, mask = res
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(mask, x > 0)
        np.testing.assert_array_equal(y[mask], x[mask])
        assert not np.any(y[~mask & ~np.isnan(x)])
    if mask_kind == "int":
        mask = mask.astype(np.int8)
    elif mask_kind == "shape":
        mask = np.ones((*mask.shape, 2), dtype=bool)
    elif mask_kind == "fortran" and mask.ndim >= 2:
        mask = np.asfortranarray(np.ones(mask.shape[::-1], dtype=bool)).T
    bex = Expect("relu_backward")
    da = core_array(bex, "dout", dout)
    core_array(bex, "mask", mask, dtype=np.bool_)
    if da is not None and not bex.type_problems:
        if da.shape != mask.shape:
            bex.value("shapes differ")
        bex.outputs = [(da.shape, da.dtype)]
    dx = run(bex, lambda: _core.relu_backward(dout, mask))
    if not bex.valid:
        core_value_error_names_op("relu_backward", lambda: _core.relu_backward(dout, mask))
    if dx is not None:
        np.testing.assert_array_equal(dx, np.where(mask, dout, 0).astype(dx.dtype))


@fuzz
@given(relu_cases(), st.booleans())
def test_fuzz_relu_layer(case, wrong_shape):
    from pyconv.layers import Relu

    x, dout, _ = case
    layer = Relu()
    ex = Expect("Relu.forward")
    conv = api_array(ex, "x", x)
    if conv:
        ex.outputs = [(conv[0].shape, conv[1])]
    y = run(ex, lambda: layer.forward(x), strict_types=False)
    if y is None:
        return
    if wrong_shape:
        dout = np.ones((*y.shape, 1))
    bex = Expect("Relu.backward")
    conv = api_array(bex, "dout", dout)
    if np.shape(dout) != y.shape:
        bex.value("dout shape")
    elif conv:
        bex.outputs = [(y.shape, conv[1])]
    run(bex, lambda: layer.backward(dout), strict_types=False)


# ---- conv2d_plan, set_num_threads, set_isa ---------------------------------------------------


@fuzz
@given(st.sampled_from(["float32", "float64", "int8", "", "float32 "]),
       st.lists(int_params(0, 5), min_size=9, max_size=9), st.booleans(), int_params(-1, 4))
def test_fuzz_conv2d_plan(dtype, dims, backward, nthreads):
    ex = Expect("conv2d_plan")
    ints = [core_int(ex, f"arg{i}", v) for i, v in enumerate(dims)]
    nt = core_int(ex, "nthreads", nthreads)
    if nt is not None and not -(2**31) <= nt < 2**31:
        ex.type("nthreads not an int")
    if not ex.type_problems:
        n, c, h, w, f, kh, kw, s, p = ints
        if f < 1:
            ex.value("filters < 1")
        elif conv_geometry(ex, n, c, h, w, f, kh, kw, s, p) is None:
            pass
        elif not 0 <= nt <= MAX_THREADS:
            ex.value("nthreads")
        elif dtype not in ("float32", "float64"):
            ex.type("dtype")
    try:
        plan = _core.conv2d_plan(dtype, *dims, backward, nthreads)
    except (ValueError, TypeError) as e:
        assert not ex.valid, f"conv2d_plan raised {e!r} for a valid shape\n{ex}"
        if ex.type_problems and not ex.value_problems:
            assert isinstance(e, TypeError), repr(e)
        return
    assert ex.valid, f"conv2d_plan accepted an invalid call\n{ex}"
    assert set(plan) == {"team", "gemm_threads", "direct", "padded", "dx_conv",
                         "fwd_direct", "dx_direct", "dw_direct", "dw_dot", "workspace_bytes"}
    assert plan["team"] >= 1 and plan["gemm_threads"] >= 1
    assert plan["workspace_bytes"] >= 0
    assert backward or not plan["dx_conv"]  # a forward computes no dx
    assert not (plan["direct"] and plan["padded"])  # a 1x1 layer reads x in place
    # The direct convolution reads the padded copy: of x in the forward, of
    # dy in dx_conv; a plan runs one of the two.
    assert not plan["fwd_direct"] or (plan["padded"] and not backward)
    assert not plan["dx_direct"] or plan["dx_conv"]
    assert not plan["dw_direct"] or (plan["padded"] and backward)
    assert not plan["dw_dot"] or (plan["padded"] and backward and not plan["dw_direct"])


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.one_of(st.integers(-5, 8), st.sampled_from(EDGE_INTS + BEYOND_INT64 + NOT_INTS)))
def test_fuzz_set_num_threads_arguments(n):
    before = pyconv.get_num_threads()
    try:
        is_int = isinstance(n, (int, np.integer)) and not isinstance(n, bool)
        if is_int and 1 <= n <= 8:
            pyconv.set_num_threads(n)
            assert pyconv.get_num_threads() == n
        elif is_int and not 1 <= n <= MAX_THREADS:
            with pytest.raises(ValueError, match="set_num_threads"):
                pyconv.set_num_threads(n)
            # pybind11 takes a C++ long long: TypeError beyond int64, else ValueError.
            with pytest.raises(ValueError if I64_MIN <= n <= I64_MAX else TypeError):
                _core.set_num_threads(n)
            assert pyconv.get_num_threads() == before
        elif not is_int:
            with pytest.raises(TypeError):
                pyconv.set_num_threads(n)
            assert pyconv.get_num_threads() == before
    finally:
        pyconv.set_num_threads(before)


@pytest.mark.parametrize("name", ["", "AVX512", "sse", "avx512 ", "x" * 1000, "generic\0"])
def test_set_isa_unknown_name(name):
    before = _core.current_isa()
    with pytest.raises(ValueError, match="set_isa"):
        _core.set_isa(name)
    assert _core.current_isa() == before


@pytest.mark.parametrize("name", [None, 3, 2.5, ["generic"]])
def test_set_isa_not_a_string(name):
    with pytest.raises(TypeError):
        _core.set_isa(name)


# ---- layers -----------------------------------------------------------------------------------


@fuzz
@given(conv_cases(), st.booleans(), st.booleans())
def test_fuzz_convolution_layer(case, bad_init_types, bad_dout):
    x, W, b, dy, stride, pad, _ = case
    init = Expect("Convolution")
    for nm, arr in (("W", W), ("b", b)):
        if not isinstance(arr, np.ndarray) or arr.dtype not in GOOD_DTYPES:
            init.type(f"{nm} dtype")
    if not init.type_problems:
        if W.ndim != 4:
            init.value("W not 4-D")
        elif b.dtype != W.dtype:
            init.type("b dtype")
        elif b.shape != (W.shape[0],):
            init.value("b shape")
        elif min(W.shape) < 1:
            init.value("W zero dim")
    s, p = layer_int(init, "stride", stride), layer_int(init, "pad", pad)
    if s is not None and s < 1:
        init.value("stride < 1")
    if p is not None and p < 0:
        init.value("pad < 0")
    try:
        layer = Convolution(W, b, stride=stride, pad=pad)
    except (ValueError, TypeError) as e:
        assert not init.valid, f"Convolution() raised {e!r}\n{init}"
        return
    assert init.valid, f"Convolution() accepted invalid arguments\n{init}"
    # Misaligned W/b held by the layer: test_convolution_layer_misaligned_parameters.
    assume(W.flags.aligned and b.flags.aligned)
    ex, _ = _conv_expect("Convolution.forward", x, W, b, stride, pad, api=True, backward=False)
    y = run(ex, lambda: layer.forward(x), strict_types=False)
    if y is None:
        return
    dout = dy if bad_dout else np.ones(y.shape, dtype=y.dtype)
    bex = Expect("Convolution.backward")
    conv = api_array(bex, "dout", dout)
    if conv and np.shape(dout) != y.shape:
        bex.value("dout shape")
    elif conv:
        bex.outputs = [(np.shape(x), y.dtype)]
    dx = run(bex, lambda: layer.backward(dout), strict_types=False)
    if dx is not None:
        assert layer.dW.shape == W.shape and layer.db.shape == b.shape


@fuzz
@given(pool_cases(), st.booleans())
def test_fuzz_pooling_layer(case, bad_dout):
    x, kh, kw, stride, pad = case
    init = Expect("Pooling")
    names = ("pool_h", "pool_w", "stride", "pad")
    ints = [layer_int(init, nm, v) for nm, v in zip(names, (kh, kw, stride, pad))]
    if None not in ints:
        ph, pw, s, p = ints
        if ph < 1 or pw < 1 or s < 1 or p < 0 or p > min(ph, pw) // 2:
            init.value("hyper-parameters")
    try:
        layer = Pooling(kh, kw, stride=stride, pad=pad)
    except (ValueError, TypeError) as e:
        assert not init.valid, f"Pooling() raised {e!r}\n{init}"
        return
    assert init.valid, f"Pooling() accepted invalid arguments\n{init}"
    ex = Expect("Pooling.forward")
    ints = [api_int(ex, nm, v) for nm, v in zip(names, (kh, kw, stride, pad))]
    conv = api_array(ex, "x", x)
    if conv:
        geo = pool_geometry(ex, conv[0].shape, *ints)
        if geo is not None:
            ex.outputs = [((*x.shape[:2], *geo), conv[1])]
    y = run(ex, lambda: layer.forward(x), strict_types=False)
    if y is None:
        return
    dout = np.ones((y.shape[0], y.shape[1] + 1, *y.shape[2:])) if bad_dout else np.ones(y.shape)
    bex = Expect("Pooling.backward")
    if dout.shape != y.shape:
        bex.value("dout shape")
    else:
        bex.outputs = [(x.shape, y.dtype)]
    run(bex, lambda: layer.backward(dout), strict_types=False)


# ---- scenarios that crashed the interpreter: each in a subprocess --------------------------------


def run_isolated(code: str, timeout: float = 240.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (same environment, so also under ASAN)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, check=False)


def assert_survived(res: subprocess.CompletedProcess, expect_stdout: str) -> None:
    detail = f"rc={res.returncode}\nstdout:\n{res.stdout[-2000:]}\nstderr:\n{res.stderr[-4000:]}"
    assert res.returncode == 0, "the interpreter died: " + detail
    assert expect_stdout in res.stdout, detail


def test_set_isa_while_computing_subprocess():
    # Switching the GEMM code path while another thread is inside conv2d: the
    # scratch was sized for the old ISA's block sizes.
    res = run_isolated("""
        import threading, time, numpy as np
        from pyconv import _core
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, 16, 64, 64), dtype=np.float32)
        w = rng.standard_normal((300, 16, 5, 5), dtype=np.float32)
        b = np.zeros(300, np.float32)
        isas = _core.available_isas()
        expected = _core.conv2d_forward(x, w, b, 1, 2)
        stop = False
        def flip():
            i = 0
            while not stop:
                _core.set_isa(isas[i % len(isas)]); i += 1
        t = threading.Thread(target=flip); t.start()
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 4:
                y = _core.conv2d_forward(x, w, b, 1, 2)
                np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-2)
        finally:
            stop = True; t.join()
        print("survived")
    """)
    assert_survived(res, "survived")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses MAP_NORESERVE")
def test_backward_scratch_size_overflow_subprocess():
    # One image's column matrix is 2**61 doubles (2**64 bytes): must be a
    # MemoryError/ValueError, not a wrapped 19 MB buffer. dout (8 TiB) is never touched.
    res = run_isolated("""
        import mmap, numpy as np
        from pyconv import _core
        C, H, W, P = 2**21, 2, 2, 2**19 - 1
        OH = OW = H + 2 * P
        x = np.zeros((1, C, H, W)); w = np.zeros((1, C, 1, 1))
        buf = mmap.mmap(-1, OH * OW * 8,
                        flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)  # NORESERVE
        dy = np.frombuffer(buf, dtype=np.float64).reshape(1, 1, OH, OW)
        try:
            _core.conv2d_backward(x, w, dy, 1, P, False)
            print("returned")
        except (MemoryError, ValueError) as e:
            print("raised", type(e).__name__)
    """, timeout=120)
    assert_survived(res, "raised")


def test_plan_reports_unwrapped_workspace():
    # Same shape through conv2d_plan: 2**64 bytes cannot be reported as a
    # (wrapped) int64; the plan must refuse instead.
    with pytest.raises((ValueError, MemoryError)):
        _core.conv2d_plan("float64", 1, 2**21, 2, 2, 1, 1, 1, 1, 2**19 - 1, True, 1)


@pytest.mark.parametrize("n", [100_000, 2**31 - 1])
def test_huge_thread_count_subprocess(n):
    res = run_isolated(f"""
        import numpy as np, pyconv
        try:
            pyconv.set_num_threads({n})
        except ValueError as e:
            print("refused", e)
        else:
            pyconv.functional.max_pool2d(np.ones((4, 3, 8, 8)), 2, 2, stride=2)
            print("computed")
    """, timeout=120)
    assert_survived(res, "refused")


def test_argmax_rewritten_during_backward_subprocess():
    # argmax is validated with the GIL held; another thread rewrites it while
    # the scatter runs without the GIL.
    res = run_isolated("""
        import threading, time, numpy as np
        from pyconv import _core
        dy = np.ones((8, 64, 32, 32))
        am = np.zeros(dy.shape, np.int64)
        stop = False
        def poke():
            while not stop:
                am[...] = 1 << 40
                am[...] = 0
        t = threading.Thread(target=poke); t.start()
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 3:
                try:
                    _core.max_pool2d_backward(dy, am, 64, 64)
                except ValueError:
                    pass
        finally:
            stop = True; t.join()
        print("survived")
    """)
    assert_survived(res, "survived")


@pytest.mark.parametrize("stride", [2**63 - 1, 2**62 + 1])
def test_huge_stride_subprocess(stride):
    res = run_isolated(f"""
        import numpy as np
        from pyconv import _core
        x = np.ones((1, 1, 3, 3)); w = np.ones((1, 1, 3, 3)); b = np.zeros(1)
        for pad in (1, 2, 2**61):
            for call in (lambda: _core.conv2d_forward(x, w, b, {stride}, pad),
                         lambda: _core.conv2d_backward(x, w, np.ones((1, 1, 1, 1)), {stride},
                                                       pad, True),
                         lambda: _core.im2col(x, 3, 3, {stride}, pad),
                         lambda: _core.col2im(np.ones((1, 9)), 1, 1, 3, 3, 3, 3, {stride}, pad),
                         lambda: _core.max_pool2d_forward(np.ones((1, 1, 5, 5)), 3, 3,
                                                          {stride}, min(pad, 1))):
                try:
                    call()
                except ValueError:
                    pass
        y = _core.conv2d_forward(x, w, b, {stride}, 2)
        assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == 1.0, y
        print("survived")
    """, timeout=120)
    assert_survived(res, "survived")


# ---- threads ----------------------------------------------------------------------------------


def _workload(rng, dtype):
    x = rng.standard_normal((3, 3, 11, 10)).astype(dtype)
    W = rng.standard_normal((5, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    a = rng.standard_normal((70, 40)).astype(dtype)
    c = rng.standard_normal((40, 90)).astype(dtype)
    # A 300 x 300 result (>= 256 KiB): its block goes back to the output cache
    # when released and is handed to whichever thread asks next.
    a2 = rng.standard_normal((300, 20)).astype(dtype)
    c2 = rng.standard_normal((20, 300)).astype(dtype)

    def work():
        y = _core.conv2d_forward(x, W, b, 1, 1)
        dx, dW, db = _core.conv2d_backward(x, W, y, 1, 1, True)
        p, am = _core.max_pool2d_forward(y, 3, 3, 2, 1)
        dp = _core.max_pool2d_backward(p, am, y.shape[2], y.shape[3])
        col = _core.im2col(x, 3, 3, 2, 1)
        xi = _core.col2im(col, 3, 3, 11, 10, 3, 3, 2, 1)
        out = np.full((70, 90), np.nan, dtype=dtype)
        g = _core.gemm(a, c, False, False, 1.0, 0.0, out)
        big = _core.gemm(a2, c2, False, False, 1.0, 0.0, None)
        return y, dx, dW, db, p, am, dp, col, xi, g, big

    return work


def test_many_python_threads_match_serial():
    # GIL released in every op: 4 Python threads x 2 OpenMP threads, both dtypes,
    # results bitwise equal to serial calls at the same thread count.
    before = pyconv.get_num_threads()
    pyconv.set_num_threads(2)
    try:
        rng = np.random.default_rng(40)
        works = [_workload(rng, dt) for dt in (np.float32, np.float64) * 3]
        serial = [w() for w in works]
        errors = []

        def worker(i):
            try:
                for _ in range(5):
                    for w, expected in zip(works[i:] + works[:i], serial[i:] + serial[:i]):
                        for got, exp in zip(w(), expected):
                            np.testing.assert_array_equal(got, exp)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
    finally:
        pyconv.set_num_threads(before)


def test_set_num_threads_while_other_threads_compute():
    # The thread count is read once per op, so changing it mid-flight only
    # changes how later ops split their work: results stay within rounding.
    before = pyconv.get_num_threads()
    try:
        rng = np.random.default_rng(41)
        works = [_workload(rng, dt) for dt in (np.float32, np.float64)]
        pyconv.set_num_threads(1)
        serial = [w() for w in works]
        stop = threading.Event()
        errors = []

        def flipper():
            i = 0
            while not stop.is_set():
                pyconv.set_num_threads(1 + i % 4)
                i += 1

        def worker(w, expected):
            try:
                for _ in range(8):
                    for got, exp in zip(w(), expected):
                        tol = 1e-4 if exp.dtype == np.float32 else 1e-10
                        if exp.dtype == np.int64:
                            np.testing.assert_array_equal(got, exp)
                        else:
                            np.testing.assert_allclose(got, exp, rtol=tol, atol=tol * 100)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        flip = threading.Thread(target=flipper)
        workers = [threading.Thread(target=worker, args=(w, e)) for w, e in zip(works, serial)]
        flip.start()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        stop.set()
        flip.join()
        assert not errors, errors[0]
    finally:
        pyconv.set_num_threads(before)


# ---- gaps the fuzzing found in the Python layer (fixed) ----------------------------------------


def test_gemm_scalar_too_large_for_float():
    # float(10**400) raises OverflowError, which is neither ValueError nor TypeError.
    with pytest.raises((ValueError, TypeError)):
        F.gemm(np.ones((2, 2)), np.ones((2, 2)), alpha=10**400)


def test_max_pool2d_backward_checks_x_shape_batch_and_channels():
    out, argmax = F.max_pool2d(np.ones((1, 1, 2, 2)), 2, 2)
    with pytest.raises(ValueError, match="x_shape"):
        F.max_pool2d_backward(out, argmax, (5, 7, 2, 2))


def test_relu_layer_keeps_0d_shape():
    from pyconv.layers import Relu

    layer = Relu()
    y = layer.forward(np.float64(-2.0) * np.ones(()))
    assert y.shape == ()
    assert layer.backward(np.ones(())).shape == ()


def test_conv2d_rejects_0d_bias():
    with pytest.raises(ValueError, match="b"):
        F.conv2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 1, 1)), np.float64(0.5) * np.ones(()))


def test_convolution_layer_misaligned_parameters():
    # W and b are held by reference; a misaligned (C-contiguous) one must either
    # work or be a clear ValueError, never reach the core's kernels.
    buf = np.zeros(4 * 9 + 4 + 1, dtype=np.uint8)
    W = buf[1 : 1 + 36].view(np.float32).reshape(1, 1, 3, 3)
    b = buf[1 + 36 : 1 + 40].view(np.float32)
    W[...] = 1.0
    b[...] = 0.5
    assert not W.flags.aligned and not b.flags.aligned
    layer = Convolution(W, b, pad=1)
    x = np.ones((2, 1, 4, 4), dtype=np.float32)
    try:
        y = layer.forward(x)
    except ValueError as e:
        assert "aligned" in str(e)
        return
    np.testing.assert_allclose(y, ref.conv2d_forward(x, W, b, 1, 1), rtol=1e-6)
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape and layer.dW.shape == W.shape and layer.db.shape == b.shape


def test_max_pool2d_backward_misaligned_argmax():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    out, argmax = F.max_pool2d(x, 2, 2, stride=2)
    buf = np.zeros(argmax.nbytes + 1, dtype=np.uint8)
    am = buf[1:].view(np.int64).reshape(argmax.shape)
    am[...] = argmax
    assert not am.flags.aligned
    dx = F.max_pool2d_backward(np.ones_like(out), am, x.shape)
    np.testing.assert_array_equal(dx, F.max_pool2d_backward(np.ones_like(out), argmax, x.shape))
