"""GEMM against a float64 NumPy oracle: every size straddling the micro-kernel
and cache-block edges, all transpose combinations, alpha/beta (beta == 0 never
reads C), ``out=``, and a large product checked by projection; under every ISA.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import DTYPES, assert_close

import pyconv.functional as F
from pyconv import _core

TRANS = list(itertools.product((False, True), repeat=2))
TRANS_IDS = [f"{'T' if ta else 'N'}{'T' if tb else 'N'}" for ta, tb in TRANS]

# (alpha, beta) pairs cycled through the size sweeps; beta == 0 runs with an
# `out` full of NaN, which must never be read.
ALPHA_BETA = [(1.0, 0.0), (-0.5, 0.0), (2.0, 1.0), (0.5, -1.5), (1.0, 1.0), (0.0, 0.5),
              (1.0, None)]  # None: no `out` at all


def _operands(rng, m, n, k, dtype, trans_a, trans_b):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


def _check_gemm(rng, m, n, k, dtype, trans_a, trans_b, alpha, beta, *, functional=False):
    a, b = _operands(rng, m, n, k, dtype, trans_a, trans_b)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    opa, opb = (a64.T if trans_a else a64), (b64.T if trans_b else b64)
    name = (f"gemm m={m} n={n} k={k} {np.dtype(dtype).name} trans_a={trans_a} "
            f"trans_b={trans_b} alpha={alpha} beta={beta}")
    if beta is None:
        out = None
        c0 = np.zeros((m, n))
        beta_eff = 0.0
    elif beta == 0.0:
        out = np.full((m, n), np.nan, dtype=dtype)
        c0 = np.zeros((m, n))
        beta_eff = 0.0
    else:
        out = rng.standard_normal((m, n)).astype(dtype)
        c0 = out.astype(np.float64)
        beta_eff = beta
    if functional:
        c = F.gemm(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha,
                   beta=0.0 if beta is None else beta, out=out)
    else:
        c = _core.gemm(a, b, trans_a, trans_b, alpha, 0.0 if beta is None else beta, out)
    expected = alpha * (opa @ opb) + beta_eff * c0
    scale = abs(alpha) * (np.abs(opa) @ np.abs(opb)) + abs(beta_eff) * np.abs(c0)
    assert_close(c, expected, dtype=dtype, name=name, scale=scale)
    if out is not None:
        assert np.shares_memory(c, out), f"{name}: result is not written to out"


def _blocking(dtype) -> dict[str, int]:
    """The active GEMM path's block sizes for dtype (mr, nr, kc, mc, nc) and
    the widest small product read in place, in nr panels (small_panels)."""
    return {k: int(v) for k, v in _core.config()[f"gemm_blocking_{np.dtype(dtype).name}"].items()}


def _edge_sizes(dtype) -> list[int]:
    """Sizes around the micro-tile (MR, NR), the cache blocks (MC, KC) and the
    round numbers 64..512."""
    bs = _blocking(dtype)
    sizes = {1, 2, 3}
    for base in (64, 128, 256, 384, 512):
        sizes |= {base - 1, base, base + 1}
    for key in ("mr", "nr", "mc", "kc"):
        v = bs[key]
        if 1 < v <= 600:
            sizes |= {v - 1, v, v + 1, 2 * v + 1}
    return sorted(s for s in sizes if 1 <= s <= 600)


@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_small_size(isa, dtype, trans_a, trans_b):
    # Every m, n, k in 1..40, each with the other two fixed at awkward sizes.
    rng = np.random.default_rng(20)
    cycle = itertools.cycle(ALPHA_BETA)
    for s in range(1, 41):
        for m, n, k in ((s, s, s), (s, 7, 13), (13, s, 7), (7, 13, s)):
            alpha, beta = next(cycle)
            _check_gemm(rng, m, n, k, dtype, trans_a, trans_b, alpha, beta)


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_edges(isa, dtype):
    rng = np.random.default_rng(21)
    edges = _edge_sizes(dtype)
    cycle = itertools.cycle(ALPHA_BETA)
    trans = itertools.cycle(TRANS)
    cases = []
    for e in edges:
        cases += [(e, 5, 9), (5, e, 9), (9, 5, e), (e, 17, 3)]
    # plus triples of edge sizes, drawn with a fixed seed
    for _ in range(24):
        cases.append(tuple(int(v) for v in rng.choice(edges, size=3)))
    for m, n, k in cases:
        alpha, beta = next(cycle)
        ta, tb = next(trans)
        _check_gemm(rng, m, n, k, dtype, ta, tb, alpha, beta)


@pytest.mark.parametrize("dtype", DTYPES)
def test_both_sides_of_the_unpacked_width(isa, dtype):
    # Small products at most small_panels NR-wide panels wide run with A read
    # in place (and B where its rows are contiguous and do not alias in L1);
    # one column more and they take the packed path. Both sides, at row
    # counts that split into unequal tiles, k around KC, every transpose; and
    # B rows 2 KiB apart (512 float32 or 256 float64 columns, 8 wide panels
    # on AVX-512), which the unpacked path packs, against strides that are not.
    bs = _blocking(dtype)
    mr, kc, wide = bs["mr"], bs["kc"], bs["small_panels"] * bs["nr"]
    rng = np.random.default_rng(28)
    cycle = itertools.cycle(ALPHA_BETA)
    trans = itertools.cycle(TRANS)
    for n in (2048 // np.dtype(dtype).itemsize, wide - 1, wide, wide + 1):
        for m, k in ((1, 1), (mr - 1, kc + 1), (mr + 1, kc - 1), (4 * mr + 1, 3), (29, 2 * kc)):
            alpha, beta = next(cycle)
            ta, tb = next(trans)
            _check_gemm(rng, m, n, k, dtype, ta, tb, alpha, beta)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_packing_orders(isa, dtype, threads, restore_threads):
    # The packed path's block packers, past the small-product path: an A
    # stored transposed, packed k by k across a block of several panels with
    # a partial last one, over several ic and pc blocks; a row-major A by
    # register transposes with k tails; a row-major B packed row by row in
    # groups of panels, many groups wide in one ic block, with a partial last
    # panel. Every transpose pairs with each shape; all are over
    # small_panels panels wide, so none takes the small-product path.
    bs = _blocking(dtype)
    mr, nr, kc, mc = bs["mr"], bs["nr"], bs["kc"], bs["mc"]
    over = bs["small_panels"] + 1
    rng = np.random.default_rng(29)
    cycle = itertools.cycle(ALPHA_BETA)
    _core.set_num_threads(threads)
    for m, n, k in ((mc - 1, 40 * nr + 3, kc + 7), (2 * mc + mr + 1, over * nr + 1, kc + 3),
                    (mc + 5, over * nr, kc - 3), (mr, over * nr + 1, 2 * kc + 5)):
        for ta, tb in TRANS:
            alpha, beta = next(cycle)
            _check_gemm(rng, m, n, k, dtype, ta, tb, alpha, beta)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_vector_last_panel(isa, dtype, threads, restore_threads):
    # A last B panel of one vector or less runs its row panels two at a time
    # (half vectors where they cover it): every width of that panel, 1..NR
    # (the wider ones take the usual kernels, their last vector halved where
    # a half covers it on AVX-512), against row counts that make
    # whole pairs, a pair and a single panel, a pair whose second panel is
    # one row, and several pairs with partial rows; k over one and two KC
    # blocks (the second adds to C). small_panels + 1 panels wide: the
    # packed path.
    bs = _blocking(dtype)
    mr, nr, kc, wide = bs["mr"], bs["nr"], bs["kc"], bs["small_panels"] * bs["nr"]
    rng = np.random.default_rng(31)
    cycle = itertools.cycle(ALPHA_BETA)
    trans = itertools.cycle(TRANS)
    _core.set_num_threads(threads)
    for t in range(1, nr + 1):
        for m in (2 * mr, 2 * mr + 1, mr + 1, 3 * mr - 1, 7 * mr + 3):
            ta, tb = next(trans)
            alpha, beta = next(cycle)
            k = kc + 5 if (t + m) % 3 == 0 else 37
            _check_gemm(rng, m, wide + t, k, dtype, ta, tb, alpha, beta)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_half_vector_tails(isa, dtype, threads, restore_threads):
    # The packed path runs a last panel of two or more vectors whose last
    # vector half a vector covers as full vectors and a half one (AVX-512;
    # the other paths run whole vectors: the same results). Products over
    # the small-product flop limit whose last panel ends in a half vector, a
    # whole one, or just past a half, in either configuration (the narrow one
    # takes n <= ~30): affine1's 100 columns among them; 2003 rows (a partial
    # last row panel), k over KC. On 2 threads they run packed; on 1, those
    # of one panel (any A) or few (row-major A) run with A read in place at
    # this size (use_small), the others packed. The wide configuration's
    # every width is also in test_one_vector_last_panel.
    kc = _blocking(dtype)["kc"]
    rng = np.random.default_rng(33)
    cycle = itertools.cycle(ALPHA_BETA)
    trans = itertools.cycle(TRANS)
    _core.set_num_threads(threads)
    m = 2003
    for n in (9, 12, 13, 20, 24, 25, 36, 40, 41, 52, 56, 57, 100):
        k = max(kc + 7, -(-16_000_000 // (m * n)))
        ta, tb = next(trans)
        alpha, beta = next(cycle)
        _check_gemm(rng, m, n, k, dtype, ta, tb, alpha, beta)


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_product_half_vector_tails(isa, dtype, restore_threads):
    # Small products (one thread, A read in place) run a last vector that
    # half a vector covers as half of one, where the ISA has half vectors: a
    # tile of full vectors and a half one, or all of half vectors. Every
    # width 1..2 NR (every count of full vectors, with each tail width and
    # without), against every row count of a tile (the row tiles are equal:
    # m = 1..MR, then several tiles of unequal rows, as affine2's 100 rows
    # on MR = 6 make), k short and across KC (the second block adds to C);
    # every transpose (B^T is packed, so is a B that ends mid-vector).
    bs = _blocking(dtype)
    mr, nr, kc = bs["mr"], bs["nr"], bs["kc"]
    rng = np.random.default_rng(32)
    cycle = itertools.cycle(ALPHA_BETA)
    trans = itertools.cycle(TRANS)
    _core.set_num_threads(1)
    for n in range(1, 2 * nr + 1):
        for m in (*range(1, mr + 1), 2 * mr + 1, 17 * mr - 2):
            ta, tb = next(trans)
            alpha, beta = next(cycle)
            k = kc + 3 if (n + m) % 4 == 0 else 10
            _check_gemm(rng, m, n, k, dtype, ta, tb, alpha, beta)


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_products_with_b_transposed(isa, dtype):
    # A (m x k) times B^T with both row-major along k, computed as dot
    # products on AVX-512 wherever its cost model prefers them to packing
    # B^T: blocks of up to 5 x 5 elements, rows and columns in equal blocks,
    # a k % 16 (% 8) tail by masked loads. Every block shape 1..5 x 1..5 and
    # equal splits of 6..12 rows or columns, k a whole number of vectors,
    # with a tail, and below one vector; then the conv weight-gradient shapes
    # and the model's borderline cases (either path must give the product).
    rng = np.random.default_rng(27)
    cycle = itertools.cycle(ALPHA_BETA)
    cases = [(m, n, k) for m in (1, 2, 3, 4, 5, 8) for n in (1, 2, 3, 4, 5, 7) for k in (64, 79)]
    cases += [(m, n, 300) for m in (6, 9, 11, 12) for n in (6, 10, 12)]
    cases += [(5, 5, 5), (4, 3, 15), (1, 1, 1)]
    cases += [(25, 30, 576), (30, 25, 576), (27, 64, 1024), (64, 64, 1024), (64, 63, 1023),
              (17, 33, 200), (64, 1, 4096), (64, 27, 64), (64, 27, 128), (100, 100, 100),
              (30, 8, 576), (200, 27, 576)]
    for m, n, k in cases:
        alpha, beta = next(cycle)
        _check_gemm(rng, m, n, k, dtype, False, True, alpha, beta)
    # B^T a strided view (rows of a wider matrix): not the unpacked path's
    # layout, so it must fall back to packing, with the same result.
    a = rng.standard_normal((12, 100)).astype(dtype)
    wide = rng.standard_normal((9, 200)).astype(dtype)
    got = F.gemm(a, wide[:, :100], trans_b=True)
    assert_close(got, a.astype(np.float64) @ wide[:, :100].T.astype(np.float64), dtype=dtype,
                 name="gemm with a strided B^T")


@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_gemm(dtype, trans_a, trans_b):
    rng = np.random.default_rng(22)
    for (m, n, k), (alpha, beta) in zip(
        [(1, 1, 1), (5, 33, 17), (70, 9, 130), (31, 64, 257), (129, 130, 3)], ALPHA_BETA
    ):
        _check_gemm(rng, m, n, k, dtype, trans_a, trans_b, alpha, beta, functional=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_transposed_views_and_promotion(dtype):
    rng = np.random.default_rng(23)
    a = rng.standard_normal((37, 29)).astype(dtype)
    b = rng.standard_normal((29, 41)).astype(dtype)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    # F-ordered operands (a transposed view) and strided views
    for aa, bb, label in [
        (np.asfortranarray(a), b, "fortran a"),
        (a, np.asfortranarray(b), "fortran b"),
        (np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T, "both transposed views"),
        (np.repeat(a, 2, axis=1)[:, ::2], b, "strided a"),
    ]:
        c = F.gemm(aa, bb)
        assert_close(c, expected, dtype=dtype, name=label, scale=scale)
    # trans flags on top of a transposed view
    c = F.gemm(np.asfortranarray(a).T, b, trans_a=True)
    assert_close(c, expected, dtype=dtype, name="trans_a of a.T view", scale=scale)
    # mixed dtypes compute in float64
    c = F.gemm(a.astype(np.float32), b.astype(np.float64))
    assert c.dtype == np.float64
    c = F.gemm(a.astype(np.int16), b.astype(np.float32))
    assert c.dtype == np.float32


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_is_written_in_place(dtype):
    rng = np.random.default_rng(24)
    a = rng.standard_normal((20, 30)).astype(dtype)
    b = rng.standard_normal((30, 10)).astype(dtype)
    out = np.full((20, 10), np.nan, dtype=dtype)
    c = F.gemm(a, b, out=out)
    assert np.shares_memory(c, out)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    assert_close(out, expected, dtype=dtype, name="out=")
    # beta = 1 accumulates into out
    F.gemm(a, b, alpha=2.0, beta=1.0, out=out)
    assert_close(out, 3 * expected, dtype=dtype, name="accumulate into out")


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_dimensions(dtype):
    rng = np.random.default_rng(25)
    # k == 0: op(a) @ op(b) is all zeros, so C = beta * C; NaN out with beta 0 -> 0.
    a, b = np.zeros((4, 0), dtype=dtype), np.zeros((0, 3), dtype=dtype)
    out = np.full((4, 3), np.nan, dtype=dtype)
    c = _core.gemm(a, b, False, False, 1.0, 0.0, out)
    np.testing.assert_array_equal(c, np.zeros((4, 3)))
    c0 = rng.standard_normal((4, 3)).astype(dtype)
    out = c0.copy()
    _core.gemm(a, b, False, False, 1.0, 0.5, out)
    np.testing.assert_allclose(out, 0.5 * c0.astype(np.float64), rtol=1e-6)
    assert _core.gemm(np.zeros((0, 5), dtype=dtype), np.ones((5, 3), dtype=dtype),
                      False, False, 1.0, 0.0, None).shape == (0, 3)
    assert _core.gemm(np.ones((2, 5), dtype=dtype), np.ones((5, 0), dtype=dtype),
                      False, False, 1.0, 0.0, None).shape == (2, 0)


def test_core_gemm_dispatches_on_dtype():
    # _core.gemm is one entry for both dtypes: the arrays pick the kernel, and
    # a mix, or a layout the core does not take as it is, is a TypeError that
    # names the dtypes (F.gemm converts those instead, through its checks).
    rng = np.random.default_rng(27)
    a64, b64 = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    for dtype in DTYPES:
        a, b = a64.astype(dtype), b64.astype(dtype)
        out = np.full((3, 5), np.nan, dtype=dtype)
        c = _core.gemm(a, b, False, False, 1.0, 0.0, out)
        assert c.dtype == dtype and np.shares_memory(c, out)
        assert_close(c, a64 @ b64, dtype=dtype, name=f"core gemm {dtype}")
    f32, f64 = a64.astype(np.float32), b64
    for args, pattern in [
        ((f32, f64, None), r"float32 and float64"),
        ((f64, f64, np.zeros((3, 5), np.float32)), r"float64 and float64 and float32"),
        ((f64, np.asfortranarray(f64), None), r"C-contiguous"),
        ((f64.astype(np.float16), f64, None), r"float16"),
    ]:
        a, b, out = args
        with pytest.raises(TypeError, match=pattern):
            _core.gemm(a, b, False, False, 1.0, 0.0, out)
    # the public entry converts what the core refuses
    assert_close(F.gemm(f32, f64), a64.astype(np.float32).astype(np.float64) @ b64,
                 dtype=np.float64, name="F.gemm mixed")


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_by_projection(isa, dtype):
    # C = alpha A B + beta C0 is checked as C t == alpha A (B t) + beta C0 t
    # for a random vector t: O(mn + nk) oracle work instead of O(mnk).
    rng = np.random.default_rng(26)
    m, n, k = 1500, 1300, 1100
    for trans_a, trans_b, alpha, beta in [(False, False, 1.0, 0.0), (True, True, 0.5, 2.0)]:
        a, b = _operands(rng, m, n, k, dtype, trans_a, trans_b)
        c0 = rng.standard_normal((m, n)).astype(dtype)
        out = c0.copy() if beta != 0.0 else np.full((m, n), np.nan, dtype=dtype)
        c = _core.gemm(a, b, trans_a, trans_b, alpha, beta, out)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        opa, opb = (a64.T if trans_a else a64), (b64.T if trans_b else b64)
        t = rng.standard_normal(n)
        lhs = c.astype(np.float64) @ t
        rhs = alpha * (opa @ (opb @ t)) + beta * (c0.astype(np.float64) @ t)
        scale = abs(alpha) * (np.abs(opa) @ (np.abs(opb) @ np.abs(t)))
        scale += abs(beta) * (np.abs(c0.astype(np.float64)) @ np.abs(t))
        tol = 1e-4 if dtype == np.float32 else 1e-10
        name = f"large gemm {m}x{n}x{k} {np.dtype(dtype).name} trans=({trans_a}, {trans_b})"
        assert np.all(np.isfinite(lhs)), name
        np.testing.assert_allclose(lhs, rhs, rtol=tol, atol=tol * scale.max(), err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fma_peak_probe(isa, dtype):
    # The benchmarks' ceiling: a finite, positive rate from every code path
    # (its size is the benchmarks' business; tests are not timing-sensitive).
    for threads in (1, 2):
        rate = _core.fma_peak(dtype, threads, 0.01)
        assert np.isfinite(rate) and rate > 0, (isa, dtype, threads, rate)


@pytest.mark.parametrize(
    "args, error",
    [
        (("float16", 1, 0.1), TypeError),
        (("float32", 0, 0.1), ValueError),
        (("float32", 1, 0.0), ValueError),
        (("float32", 1, float("nan")), ValueError),
        (("float64", 1, 61.0), ValueError),
    ],
)
def test_fma_peak_rejects_bad_arguments(args, error):
    with pytest.raises(error, match="fma_peak"):
        _core.fma_peak(*args)
