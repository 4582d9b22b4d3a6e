// The GEMM kernels, compiled once per ISA level: each gemm_<isa>.cpp defines
// PYCONV_ISA (a namespace name) and one of PYCONV_ISA_AVX512 / PYCONV_ISA_AVX2
// (none: the portable baseline), then includes this file with its own compiler
// flags. Everything here has internal linkage or lives in namespace
// pyconv::PYCONV_ISA, and no std:: template is instantiated, so no function
// compiled with wider instructions can leak into another translation unit.
//
// Layout: packed A is MR x KC micro-panels stored k-major (a[p*MR + i]);
// packed B is KC x NR micro-panels (b[p*NR + j]); both zero-padded to MR/NR so
// the micro-kernel's k loop has no edge case. Edges are handled only when
// writing C.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "gemm.h"
#include "im2col.h"
#include "runtime.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(PYCONV_ISA_AVX512) || defined(PYCONV_ISA_AVX2)
#include <immintrin.h>
#endif

#ifndef PYCONV_ISA
#error "define PYCONV_ISA before including gemm_kernels.h"
#endif

namespace pyconv {
namespace PYCONV_ISA {
namespace {

using std::int64_t;

// ---- Block sizes: the one place they are set --------------------------------
// A configuration: MR x NR is the register block (MR broadcasts of A times
// NV = NR/VL vectors of B: MR*NV accumulators). KC: the KC x NR micro-panel of
// B stays in L1 (32 KiB of the 48 KiB L1d of both machines tuned on, a Zen 5
// and a Xeon family 6 model 167) while the ir loop streams A. On a Zen 4 the
// panel fills the whole 32 KiB L1d, and still KC 96 measured slower there
// (float32 2048^2: 102.6 -> 98.8 GFLOP/s on 1 thread, 200 -> 173 on 2), and
// the AVX-512 Wide kernels take KC 256 there (see Blocking). MC: the MC x KC
// block of A (float32 72 KiB at KC 128; AVX-512 at KC 256: float32 144 KiB,
// float64 288 KiB) stays in L2 (1 MiB a core on the Zen 4 and Zen 5, 2 MiB on
// the Xeon). NC: the KC x NC block of B stays in L2/L3.
// Wide is the workhorse; Narrow (NR halved, MR doubled) serves products whose
// n would leave most of a wide panel as padding (conv weight gradients with
// 25-30 columns, say).
#if defined(PYCONV_ISA_AVX512)
constexpr int kVecBytes = 64;  // 32 zmm registers
#elif defined(PYCONV_ISA_AVX2)
constexpr int kVecBytes = 32;  // 16 ymm registers
#else
constexpr int kVecBytes = 16;  // SSE2: 16 xmm registers; NEON (aarch64): 32 q
#endif

template <typename T_, int MR_, int NV_, int64_t KC_, int64_t MC_, int64_t NC_>
struct Cfg {
  using T = T_;
  static constexpr int MR = MR_, NV = NV_;
  static constexpr int VL = kVecBytes / static_cast<int>(sizeof(T_));
  static constexpr int NR = NV_ * VL;
  static constexpr int64_t KC = KC_, MC = MC_, NC = NC_;
};

template <typename T> struct Blocking;
#if defined(PYCONV_ISA_AVX512)
template <> struct Blocking<float> {
  // 6x64: 24 accumulators + 4 B vectors. KC 256 as for float64 (below): Zen
  // 4, `benchmarks/ab.py` against KC 128, 2 rounds, B/A: squares 512^2-2048^2
  // 0.95-0.97 on 1 thread, 0.92-0.98 on 2; c's forward and B^T dW 0.93, d's
  // three products 0.96; worse: b's B^T dW 1.12 on 1 thread (np/pc 2.0 ->
  // 1.8), c's A^T dx 1.07 on 2.
  using Wide = Cfg<float, 6, 4, 256, 144, 4096>;
  using Narrow = Cfg<float, 12, 2, 256, 144, 4096>;  // 12x32: 24 + 2
  // Direct convolution (conv_direct): 6 pixels x 64 filters; KC taps of
  // the packed weights (KC x 64, 256 KiB) stay in L2 while a group of tiles
  // passes (Xeon, d's dx, 6400 taps unblocked: 109 GFLOP/s; blocks <= 1600,
  // swept by all tiles: 138). Groups of kDirectGroup tiles against blocks
  // swept by all tiles, Zen 4 (1 MiB L2), torch/pyconv: d's forward 0.90 ->
  // 0.94, fwd+bwd 0.92 -> 0.95, e's forward 1.19 -> 1.23; not yet timed on a
  // Xeon.
  using Direct = Cfg<float, 6, 4, 1024, 0, 0>;
  // Widest small product read in place (use_small): the MNIST conv's 576
  // output pixels, 9 wide panels here and 18 in float64. Zen 4, 1 thread,
  // np/pc in alternating processes, 8 panels -> 9 / 18: 30 x 576 x 25 0.90
  // -> 1.00 (float64 0.87 -> 0.96), 25 x 576 x 30 A^T 0.89 -> 1.04 (0.87 ->
  // 0.98). Wider was not better: 64 x 1024 x 27 4% slower at 16 float32
  // panels, 6% at 32 float64 ones; level (+-5%) at 16-18 panels on 100 x 1024
  // x 30, 300 x 1000 x 40 (float32), 64 x 512 x 64, 500 x 576 x 20 (float64).
  // An older Xeon build measured the packed path 9% faster on 60 x 768 x 64
  // (12 float32 panels; the Zen 4 has it 5% slower).
  static constexpr int64_t kSmallPanels = 9;
  // Products of any size read in place when A is row-major and at most this
  // many panels use it (use_small).
  static constexpr int64_t kSmallRowsPanels = 2;
};
template <> struct Blocking<double> {
  // 6x32. KC 256: its B micro-panel (64 KiB; float32's too) outgrows L1 and
  // is read from L2, and the tile's C update comes half as often. Zen 4, 1 thread,
  // `benchmarks/ab.py` against KC 128 (2 rounds, np/pc 128 -> 256): squares
  // 256^2-2048^2 2-5% faster (2048^2 0.96 -> 1.00, 1536^2 0.97 -> 1.02), d's
  // B^T dW 0.94 -> 0.97, dx 1.06 -> 1.11; the rest within +-3%. Not yet
  // timed on a Xeon (48 KiB L1d).
  using Wide = Cfg<double, 6, 4, 256, 144, 2048>;
  using Narrow = Cfg<double, 12, 2, 256, 144, 2048>;  // 12x16
  using Direct = Cfg<double, 6, 4, 1024, 0, 0>;       // 6x32, KC x 32 = 256 KiB
  static constexpr int64_t kSmallPanels = 18;         // 576 columns: see float
  static constexpr int64_t kSmallRowsPanels = 4;      // 128 columns: see use_small
};
#elif defined(PYCONV_ISA_AVX2)
template <> struct Blocking<float> {  // 6x16: 12 accumulators + 2 B vectors
  using Wide = Cfg<float, 6, 2, 256, 144, 4096>;
  using Narrow = Wide;
  // Direct convolution: 3 pixels x 32 filters (oneDNN's AVX2 tile: 12
  // accumulators, 3 broadcasts live, one filter vector at a time; 3
  // broadcasts + 4 loads per 12 FMAs); KC x 32 filters = 64 KiB of packed
  // weights per sum block. Against 6 x 16 with 1024-tap blocks (1 thread,
  // alternating processes, torch/pyconv in each, Zen 1): e's forward
  // 0.93-0.96 -> 1.01-1.02, c's 1.07 -> 1.09, a's fwd+bwd 4.98 -> 5.13, d
  // unchanged (0.90-0.91). Not on AVX-512, whose 6 x 64 tile keeps 4 filter
  // vectors and 24 accumulators in its 32 registers.
  using Direct = Cfg<float, 3, 4, 512, 0, 0>;
  static constexpr int64_t kSmallPanels = 8;  // see use_small
  static constexpr int64_t kSmallRowsPanels = 1;
};
template <> struct Blocking<double> {  // 6x8
  using Wide = Cfg<double, 6, 2, 256, 96, 2048>;
  using Narrow = Wide;
  static constexpr int64_t kSmallPanels = 8;
  static constexpr int64_t kSmallRowsPanels = 1;
  // No direct convolution in float64: its tile's pixels must fit one
  // vector's 4 lanes (the forward's transposed store), and the 4 x 8 tile
  // (8 accumulators) measured slower than the GEMM path on c, d, e's forward
  // (4-7%) and d, e's backward (3-9%), faster only on a and b's backward.
};
#elif defined(__aarch64__)
// BLIS's armv8a configuration (Cortex-A57, ThunderX2; its Neoverse and Apple
// configurations use the same register blocks): NEON has 32 registers, where
// the SSE2 blocking below keeps only 8 accumulators. Not yet measured on
// aarch64 hardware (tests/test_aarch64.py checks it under qemu-user): KC x NR
// float32 = 30 KiB for L1, MC x KC = 300 KiB for L2.
template <> struct Blocking<float> {  // 8x12: 24 accumulators + 3 B vectors
  using Wide = Cfg<float, 8, 3, 640, 120, 3072>;
  using Narrow = Wide;
  static constexpr int64_t kSmallPanels = 8;
  static constexpr int64_t kSmallRowsPanels = 1;
};
template <> struct Blocking<double> {  // 6x8: 24 accumulators + 4 B vectors
  using Wide = Cfg<double, 6, 4, 240, 120, 3072>;
  using Narrow = Wide;
  static constexpr int64_t kSmallPanels = 8;
  static constexpr int64_t kSmallRowsPanels = 1;
};
#else
template <> struct Blocking<float> {  // 4x8: 8 accumulators + 2 B vectors
  using Wide = Cfg<float, 4, 2, 256, 128, 2048>;
  using Narrow = Wide;
  static constexpr int64_t kSmallPanels = 8;
  static constexpr int64_t kSmallRowsPanels = 1;
};
template <> struct Blocking<double> {  // 4x4
  using Wide = Cfg<double, 4, 2, 256, 64, 1024>;
  using Narrow = Wide;
  static constexpr int64_t kSmallPanels = 8;
  static constexpr int64_t kSmallRowsPanels = 1;
};
#endif

// Bytes of packed B panels that gemm_slice's one-ic-block case packs ahead
// of their use: half the smallest L2 these blockings meet (256 KiB, Intel's
// Haswell to Skylake client cores), so the panels wait in L2. While a group
// runs, its micro-kernels prefetch the next group's source rows (as many
// bytes again, a little more for unaligned rows) into the same L2: on such
// a core the two fill it, a case not measured (Zen 4's L2 is 1 MiB).
constexpr int64_t kPackedBAheadBytes = 128 * 1024;

// Tiles of the direct convolution that run each KC block of the sum before
// the next block (direct_tiles): the block is read from memory once per
// group and from cache by the group's other tiles, which re-reads a panel of
// weights once per 16 tiles (AVX2: 128 bytes per tap against 16 x 12 FMAs).
// Their accumulators wait between blocks on the stack: 16 x 1.5 KiB at most
// (AVX-512's 6 x 64 float tile).
constexpr int64_t kDirectGroup = 16;

// GCC/Clang vector extensions: the compiler maps them to the widest registers
// of this translation unit's ISA (or, with Bytes, to a narrower register),
// with no intrinsics. VU is the unaligned flavour used to touch C.
template <typename T, int Bytes = kVecBytes>
struct VecOf {
  typedef T V __attribute__((vector_size(Bytes)));
  typedef T VU __attribute__((vector_size(Bytes), aligned(sizeof(T))));
  static constexpr int64_t L = Bytes / static_cast<int64_t>(sizeof(T));  // lanes
};

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// All lanes = s, written as a constructor of identical elements so that it
// compiles to one broadcast (V{} + s would be a real addition, since
// -0.0 + 0.0 != -0.0). std::integer_sequence is only a type here: no code.
template <typename V, typename T, std::size_t... I>
inline V splat_impl(T s, std::index_sequence<I...>) {
  return V{((void)I, s)...};
}
template <typename V, typename T>
inline V splat(T s) {
  return splat_impl<V>(s, std::make_index_sequence<sizeof(V) / sizeof(T)>{});
}

// ---- Micro-kernel ------------------------------------------------------------
// Asks for an m_cur x NU-vector tile of C now, so that its lines arrive during
// the k loop instead of stalling the update (C is revisited once per KC block
// and a large C lives in DRAM). NU vectors span at most NU + 1 lines.
template <int NU, int VL, typename T>
inline void prefetch_tile(const T* c, int64_t ldc, int64_t m_cur) {
  for (int64_t i = 0; i < m_cur; ++i)
#pragma GCC unroll 8
    for (int j = 0; j <= NU; ++j) __builtin_prefetch(c + i * ldc + j * VL, 1, 3);
}

// C[0:m_cur, 0:n_cur] = alpha * acc + beta * C (+ bias[i] on row i): whole
// vectors go straight to C; only the lanes past n_cur in the last vector (and
// rows past m_cur) take the scalar path. A row's bias is added last (no bias:
// nothing added, so -0.0 stays -0.0).
template <int NU, int MU, int VL, typename T, typename V>
inline void store_tile(const V (&acc)[MU][NU], T* __restrict c, int64_t ldc, T alpha, T beta,
                       const T* bias, int64_t m_cur, int64_t n_cur) {
  using VU = typename VecOf<T, sizeof(V)>::VU;
  const int64_t full_vecs = n_cur / VL;
#pragma GCC unroll 32
  for (int i = 0; i < MU; ++i) {
    if (i >= m_cur) break;
#pragma GCC unroll 8
    for (int j = 0; j < NU; ++j) {
      if (j < full_vecs) {
        VU* cp = reinterpret_cast<VU*>(c + i * ldc + j * VL);
        V v = alpha * acc[i][j];
        if (beta != T(0)) v += beta * *cp;
        if (bias != nullptr) v += splat<V>(bias[i]);
        *cp = v;
      } else if (j == full_vecs) {
        alignas(64) T lane[VL];
        *reinterpret_cast<V*>(lane) = acc[i][j];
        T* cp = c + i * ldc + j * VL;
        for (int64_t l = 0; l < n_cur - j * VL; ++l) {
          T v = alpha * lane[l];
          if (beta != T(0)) v += beta * cp[l];
          if (bias != nullptr) v += bias[i];
          cp[l] = v;
        }
      }
    }
  }
}

// acc = the kc-step sum of one tile, the loop every GEMM micro-kernel runs:
// step p broadcasts MU elements of A (row i at a[i * lda + p] when kRowsA,
// else together at a[p * lda + i], as in a packed panel) against NU vectors
// of B at b + p * ldb (aligned loads when kAligned: a packed panel). Rows
// from kHi on are read at a + a_hi instead (row kHi + i at a[a_hi + p * lda
// + i]): the second of two packed panels. With a tail (VT narrower than V,
// acc_t given), each row also sums one VT vector of B at b + NU * VL into
// acc_t[i][0], broadcasting the same element: NU vectors and a fraction of
// one more. With kPf, step p also prefetches the line at pf + p * pf_rs into
// L2 (gemm_slice's next B group). Always inlined, so a packed kernel's
// strides (MR, NU * VL) stay constants.
template <int NU, int MU, int VL, bool kRowsA, bool kAligned, int kHi = MU, bool kPf = false,
          typename T, typename V, typename VT = V>
__attribute__((always_inline)) inline void tile_sum(V (&acc)[MU][NU], int64_t kc,
                                                    const T* __restrict a, int64_t lda,
                                                    const T* __restrict b, int64_t ldb,
                                                    int64_t a_hi = 0,
                                                    VT (*acc_t)[1] = nullptr,
                                                    const T* pf = nullptr, int64_t pf_rs = 0) {
  using VU = typename VecOf<T, sizeof(V)>::VU;
  using VTU = typename VecOf<T, sizeof(VT)>::VU;
  constexpr bool kTail = sizeof(VT) < sizeof(V);
#pragma GCC unroll 32
  for (int i = 0; i < MU; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NU; ++j) acc[i][j] = V{};
    if constexpr (kTail) acc_t[i][0] = VT{};
  }
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    V bv[NU];
#pragma GCC unroll 8
    for (int j = 0; j < NU; ++j)
      bv[j] = kAligned ? *reinterpret_cast<const V*>(b + j * VL)
                       : V(*reinterpret_cast<const VU*>(b + j * VL));
    VT bt{};
    if constexpr (kTail) bt = VT(*reinterpret_cast<const VTU*>(b + NU * VL));
#pragma GCC unroll 32
    for (int i = 0; i < MU; ++i) {
      const V av = splat<V>(kRowsA ? a[i * lda + p] : i < kHi ? a[i] : a[a_hi + i - kHi]);
#pragma GCC unroll 8
      for (int j = 0; j < NU; ++j) acc[i][j] += av * bv[j];
      if constexpr (kTail) {
        VT at;  // av's low lanes: the register's narrower view, no instruction
        __builtin_memcpy(&at, &av, sizeof at);
        acc_t[i][0] += at * bt;
      }
    }
    if constexpr (kPf) __builtin_prefetch(pf + p * pf_rs, 0, 2);
    if (!kRowsA) a += lda;
    b += ldb;
  }
}

// The tile update both micro-kernels run: C[0:m_cur, 0:n_cur] = alpha * the
// kc-step sum of MU rows of A against NF full vectors of B (tile_sum's
// operands and layouts), plus, with kTail, one half vector of B after them
// (VT: a vector of kBytes / 2), then + beta * C (+ bias), by store_tile.
// With kPf, tile_sum's prefetches of pf + p * pf_rs.
template <int NF, int MU, int kBytes, bool kRowsA, bool kAligned, bool kTail, bool kPf = false,
          typename T>
__attribute__((always_inline)) inline void tile_update(int64_t kc, const T* __restrict a,
                                                       int64_t lda, const T* __restrict b,
                                                       int64_t ldb, T* __restrict c,
                                                       int64_t ldc, T alpha, T beta,
                                                       const T* bias, int64_t m_cur,
                                                       int64_t n_cur, const T* pf = nullptr,
                                                       int64_t pf_rs = 0) {
  using V = typename VecOf<T, kBytes>::V;
  using VT = typename VecOf<T, kTail ? kBytes / 2 : kBytes>::V;  // V: no tail
  constexpr int VL = kBytes / static_cast<int>(sizeof(T));
  V acc[MU][NF];
  VT acc_t[MU][1];
  tile_sum<NF, MU, VL, kRowsA, kAligned, MU, kPf>(acc, kc, a, lda, b, ldb, 0,
                                                 kTail ? acc_t : nullptr, pf, pf_rs);
  store_tile<NF, MU, VL>(acc, c, ldc, alpha, beta, bias, m_cur, kTail ? NF * VL : n_cur);
  if constexpr (kTail)
    store_tile<1, MU, VL / 2>(acc_t, c + NF * VL, ldc, alpha, beta, bias, m_cur, n_cur - NF * VL);
}

// Whether half a vector covers the last of a tile's NU vectors: n_cur <= (NU
// - 1) full vectors and half of one (kHalfTail, kPackedTail).
template <int NU, int VL>
constexpr bool half_covers(int64_t n_cur) {
  return n_cur <= (NU - 1) * VL + VL / 2;
}

// C[0:m_cur, 0:n_cur] = alpha * (A_panel * B_panel) + beta * C, over kc, with
// NU of the configuration's NV vector columns (n_cur <= NU*VL): the B panel is
// NU*VL wide (panel_width). The last panel of a product whose n is not a
// multiple of NR is packed and run only as wide as it needs (n = 196 on a
// 64-wide panel: 3 full panels + one 16-wide, not 4 full; n = 10: one vector,
// not 64 columns of which 54 are zeros). Likewise only the first MU of the
// panel's MR rows are multiplied (m_cur <= MU): a last row panel with 1 of 12
// rows does one row's work, not twelve.
// With kTail, the panel's last vector runs as a half vector (half_covers;
// kPackedTail). Step p of the k loop prefetches pf + p * pf_rs (a line of B
// that gemm_slice packs next); with no pf, the B row it loads (an L1 hit,
// one load slot beside a step's 8-10 loads: one loop compiled, not two;
// `benchmarks/ab.py` showed no product slower for it).
template <class C, int NU = C::NV, int MU = C::MR, bool kTail = false,
          typename T = typename C::T>
inline void micro_kernel(int64_t kc, const T* __restrict a, const T* __restrict b,
                         T* __restrict c, int64_t ldc, T alpha, T beta, const T* bias,
                         int64_t m_cur, int64_t n_cur, const T* pf, int64_t pf_rs) {
  constexpr int MR = C::MR, VL = C::VL;
  static_assert(NU >= 1 && NU <= C::NV, "NU vectors of an NV-vector panel");
  static_assert(MU >= 1 && MU <= MR, "MU rows of an MR-row panel");
  prefetch_tile<NU, VL>(c, ldc, m_cur);
  if (pf == nullptr) pf = b, pf_rs = NU * VL;
  tile_update<kTail ? NU - 1 : NU, MU, kVecBytes, false, true, kTail, true>(
      kc, a, MR, b, NU * VL, c, ldc, alpha, beta, bias, m_cur, n_cur, pf, pf_rs);
}

// The micro-kernel on operands read in place, for products too small to
// repay packing (gemm_small): exactly MU rows of A, and NU whole vectors of B
// per k step, row p at b + p * ldb (unaligned loads). A is row-major (kRowsA:
// row i at a + i * lda, one pointer per row stepping along k) or transposed
// (its MU elements of step p together at a + p * lda). A stride multiplied in
// the loop instead cost GCC spills of the row pointers.
// Vectors of kBytes (the tile in half vectors: kBytes = kVecBytes / 2); with
// kTail, NU full vectors and a half vector (micro_kernel_unpacked_fit).
template <class C, int NU, int MU, bool kRowsA, int kBytes = kVecBytes, bool kTail = false,
          typename T = typename C::T>
inline void micro_kernel_unpacked(int64_t kc, const T* __restrict a, int64_t lda,
                                  const T* __restrict b, int64_t ldb, T* __restrict c,
                                  int64_t ldc, T alpha, T beta, const T* bias, int64_t n_cur) {
  constexpr int VL = kBytes / static_cast<int>(sizeof(T));
  // C's tile is asked for only where it will be read (beta != 0). Its k loop
  // is short (gemm_small: k <= KC, mostly a convolution's 9-30 taps), and the
  // prefetches at its start cost more than the stores they would speed: Zen
  // 4, 1 thread, alternating processes, always / beta != 0, us: float64 30 x
  // 576 x 25 17.6-17.9 / 17.1-17.3, 64 x 1024 x 27 75.9-77.4 / 74.3-74.4,
  // 3500 x 512 x 4 (14 MB of C) 807-890 / 717-754; float32 30 x 576 x 25
  // 9.0-9.2 / 8.7-9.0. The packed kernels keep theirs: there it pays even
  // for a C only written (float64 576 x 3136 x 64, k within one KC block:
  // 4.49-4.74 ms with it, 5.02-5.18 without).
  if (beta != T(0)) prefetch_tile<NU, VL>(c, ldc, MU);
  tile_update<NU, MU, kBytes, kRowsA, false, kTail>(kc, a, lda, b, ldb, c, ldc, alpha, beta,
                                                     bias, MU, n_cur);
}

// Whether a tile of MU rows and NU vectors runs its last vector as half of
// one (a tail) where half covers it. Each element is the same chain of FMAs
// in k order, so the bits do not change; the B panel of such a tile ends
// mid-vector and is always packed, so the half vector reads padding, never
// past B.
// - AVX2, where a 128-bit FMA is one micro-op on Zen 1 and a 256-bit one two
//   (Intel's cores issue either as one: nothing lost there). 100 x 10 x 100
//   on Zen 1: 19.1 -> 22.1 GFLOP/s (np/pc 0.91 -> 1.04). The tail's
//   accumulators and B vector must fit the 16 registers.
// - AVX-512 for tiles of one or two vectors, where the half saves a quarter
//   to a half of the FMAs: Zen 4 runs a 512-bit FMA as two 256-bit ones
//   (a Xeon issues either at one rate: no gain there; not timed). Zen 4, 1 thread,
//   np/pc in alternating processes, float64: affine2's 100 x 10 x 100 (8 + 4
//   columns) 0.77-0.83 -> 0.90-0.96, its A^T dW 0.64-0.73 -> 0.86-0.91, 30 x
//   10 x 200 0.75-0.79 -> 0.87-0.93; float32 100 x 8 x 100 0.88-0.91 ->
//   1.18-1.21, 60 x 20 x 128 0.74-0.79 -> 0.88-1.11. Wider tiles gain less
//   and would add more kernels: these ones made the unit's code 23% larger
//   (every NU of the narrow 12 x 2-vector configuration and NU <= 2 of the
//   wide one; for all NU it was 39%). Not in the packed path: its one-vector
//   last panels run in pairs (pair_panels), and a tail on the wider ones
//   would save a sliver of the products that reach it (d's n = 729 = 45 x 16
//   + 9: some 0.5% of the time).
template <class C, int NU, int MU>
constexpr bool kHalfTail =
    kVecBytes == 32 ? MU * NU + NU + 1 <= 16 : kVecBytes == 64 && NU <= 2;

// micro_kernel_unpacked with the fewest vectors that cover n_cur columns and
// exactly m_cur rows (A is read in place: no padded rows to read), the last
// vector halved where half covers it (kHalfTail): on AVX2, affine2's float32
// 100 x 10 x 100 runs 8 + 4 columns, not 8 + 8, and 4 columns run in 128-bit
// vectors; on AVX-512 its float64 twin runs 8 + 4 in a 512- and a 256-bit one.
template <class C, bool kRowsA, int NU = C::NV, int MU = C::MR, typename T = typename C::T>
inline void micro_kernel_unpacked_fit(int64_t kc, const T* a, int64_t lda, const T* b,
                                      int64_t ldb, T* c, int64_t ldc, T alpha, T beta,
                                      const T* bias, int64_t m_cur, int64_t n_cur) {
  if constexpr (NU > 1) {
    if (n_cur <= (NU - 1) * C::VL) {
      micro_kernel_unpacked_fit<C, kRowsA, NU - 1>(kc, a, lda, b, ldb, c, ldc, alpha, beta,
                                                   bias, m_cur, n_cur);
      return;
    }
  }
  if constexpr (MU > 1) {
    if (m_cur < MU) {
      micro_kernel_unpacked_fit<C, kRowsA, NU, MU - 1>(kc, a, lda, b, ldb, c, ldc, alpha, beta,
                                                       bias, m_cur, n_cur);
      return;
    }
  }
  if constexpr (kHalfTail<C, NU, MU>) {
    if (half_covers<NU, C::VL>(n_cur)) {
      if constexpr (NU == 1)
        micro_kernel_unpacked<C, 1, MU, kRowsA, kVecBytes / 2>(kc, a, lda, b, ldb, c, ldc, alpha,
                                                               beta, bias, n_cur);
      else
        micro_kernel_unpacked<C, NU - 1, MU, kRowsA, kVecBytes, true>(kc, a, lda, b, ldb, c, ldc,
                                                                      alpha, beta, bias, n_cur);
      return;
    }
  }
  micro_kernel_unpacked<C, NU, MU, kRowsA>(kc, a, lda, b, ldb, c, ldc, alpha, beta, bias,
                                           n_cur);
}

// The width a B panel of n_cur columns is packed at: whole vectors, <= NR.
template <class C>
inline int64_t panel_width(int64_t n_cur) {
  return ceil_div(n_cur, C::VL) * C::VL;
}

// micro_kernel of full width with exactly m_cur < MR rows.
template <class C, int MU = C::MR - 1, typename T = typename C::T>
inline void micro_kernel_rows(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, T alpha,
                              T beta, const T* bias, int64_t m_cur, int64_t n_cur, const T* pf,
                              int64_t pf_rs) {
  if constexpr (MU > 1) {
    if (m_cur < MU) {
      micro_kernel_rows<C, MU - 1>(kc, a, b, c, ldc, alpha, beta, bias, m_cur, n_cur, pf, pf_rs);
      return;
    }
  }
  micro_kernel<C, C::NV, MU>(kc, a, b, c, ldc, alpha, beta, bias, m_cur, n_cur, pf, pf_rs);
}

// Whether a packed panel of NU vectors (NU >= 2: one-vector panels run in
// pairs, pair_panels) runs its last vector as a half where that covers it:
// AVX-512, where Zen 4 runs a 512-bit FMA as two 256-bit ones (a Xeon issues
// either at one rate: the same time there). The B panel stays packed whole
// vectors wide; the half vector reads its first half. Products whose last
// panel it reaches: affine1's n = 100 (64 + 36 columns in float32: 4 + 2.5
// vectors a row instead of 4 + 3), d's float64 n = 729 (22 x 32 + 25). Zen 4,
// 1 thread, alternating processes, float32, us: affine1's 4320 x 100 x 100
// (A^T) 934-1019 -> 872-878 (np/pc 0.97-0.99 -> 1.06-1.07), its forward 100 x
// 100 x 4320 981-985 -> 940-990 (0.92-0.95 -> 0.97-1.00: A's packing, used by
// two panels, weighs there). Every element is the same chain of FMAs: the bits
// do not change.
template <int NU>
constexpr bool kPackedTail = kVecBytes == 64 && NU >= 2;

// micro_kernel with the fewest vectors that cover n_cur columns (its B panel
// packed panel_width(n_cur) wide) and, for a full-width panel, the fewest
// rows that cover m_cur (a panel both narrow and short is one corner of a
// product: it keeps all MR rows, which halves the kernels compiled).
// pf, pf_rs: micro_kernel's prefetches (none: nullptr).
template <class C, int NU = C::NV, typename T = typename C::T>
inline void micro_kernel_fit(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, T alpha,
                             T beta, const T* bias, int64_t m_cur, int64_t n_cur,
                             const T* pf = nullptr, int64_t pf_rs = 0) {
  if constexpr (NU > 1) {
    if (n_cur <= (NU - 1) * C::VL) {
      micro_kernel_fit<C, NU - 1>(kc, a, b, c, ldc, alpha, beta, bias, m_cur, n_cur, pf, pf_rs);
      return;
    }
  }
  if constexpr (NU == C::NV && C::MR > 1) {
    if (m_cur < C::MR) {
      micro_kernel_rows<C>(kc, a, b, c, ldc, alpha, beta, bias, m_cur, n_cur, pf, pf_rs);
      return;
    }
  }
  if constexpr (kPackedTail<NU>) {
    if (half_covers<NU, C::VL>(n_cur)) {
      micro_kernel<C, NU, C::MR, true>(kc, a, b, c, ldc, alpha, beta, bias, m_cur, n_cur, pf,
                                       pf_rs);
      return;
    }
  }
  micro_kernel<C, NU>(kc, a, b, c, ldc, alpha, beta, bias, m_cur, n_cur, pf, pf_rs);
}

// Two MR-row panels at once (the second at a + MR * kc, where packing puts
// it) against a B panel of one vector (n_cur <= VL; packed VL wide), with
// vectors of kBytes: a one-vector panel alone keeps only MR chains of FMAs,
// fewer than a core needs in flight (latency x pipes: 8-10), and 2 MR fill
// it. Half vectors (n_cur <= VL / 2) halve the work where a full vector
// takes two micro-ops (256-bit FMAs on Zen 1, 512-bit on Zen 4). Every
// element is the same chain of FMAs in k order as in micro_kernel: the bits
// do not depend on which kernel ran.
template <class C, int kBytes, typename T = typename C::T>
inline void micro_kernel_pair(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, T alpha,
                              T beta, const T* bias, int64_t m_cur, int64_t n_cur) {
  using V = typename VecOf<T, kBytes>::V;
  constexpr int MR = C::MR, VL = kBytes / static_cast<int>(sizeof(T));
  prefetch_tile<1, VL>(c, ldc, m_cur);
  V acc[2 * MR][1];
  tile_sum<1, 2 * MR, VL, false, true, MR>(acc, kc, a, MR, b, C::VL, MR * kc);
  store_tile<1, 2 * MR, VL>(acc, c, ldc, alpha, beta, bias, m_cur, n_cur);
}

// The ir loop's pairs: for a B panel of one vector (n_cur <= VL), the MR x kc
// panels of packed A at pa (panel r at pa + r * MR * kc) two at a time
// (micro_kernel_pair), in half vectors where they cover the panel and the ISA
// has them (AVX2: 128-bit; AVX-512: 256-bit). Returns the rows done, 0 for a
// wider panel; gemm_slice's ir loop runs the rest. That loop stays as it was:
// folded into one helper, GCC no longer inlined the 6 x 16 kernel into it,
// and 64 x 1024 x 27 (k = 27: short tiles) ran 10% slower on the Zen 1.
template <class C, typename T = typename C::T>
int64_t pair_panels(int64_t kc, const T* pa, int64_t rows, const T* pb, T* c, int64_t ldc,
                    T alpha, T beta, const T* bias, int64_t n_cur) {
  constexpr int64_t MR = C::MR;
  if (n_cur > C::VL) return 0;
  int64_t ir = 0;
  for (; ir + MR < rows; ir += 2 * MR) {
    const T* bias_ir = bias != nullptr ? bias + ir : nullptr;
    const int64_t m_cur = min64(2 * MR, rows - ir);
    if constexpr (kVecBytes >= 32) {
      if (2 * n_cur <= C::VL) {
        micro_kernel_pair<C, kVecBytes / 2>(kc, pa + ir * kc, pb, c + ir * ldc, ldc, alpha, beta,
                                            bias_ir, m_cur, n_cur);
        continue;
      }
    }
    micro_kernel_pair<C, kVecBytes>(kc, pa + ir * kc, pb, c + ir * ldc, ldc, alpha, beta,
                                    bias_ir, m_cur, n_cur);
  }
  return ir;
}

#if defined(PYCONV_ISA_AVX512)
template <typename T>
struct Zmm;  // the masked AVX-512 operations the packing and segment loops need
template <>
struct Zmm<float> {
  static constexpr int L = 16;
  using V = __m512;
  using K = __mmask16;
  static K mask(int64_t n) {  // the low min(max(n, 0), L) lanes
    return static_cast<K>(n >= L ? 0xFFFFu : n <= 0 ? 0u : (1u << n) - 1u);
  }
  static K even_lanes() { return static_cast<K>(0x5555u); }
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load(K k, const float* p) { return _mm512_maskz_loadu_ps(k, p); }
  static V expand(K k, const float* p) { return _mm512_maskz_expandloadu_ps(k, p); }
  // v with lanes k loaded from p (the others kept; lanes outside k not read)
  static V merge(V v, K k, const float* p) { return _mm512_mask_loadu_ps(v, k, p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store(float* p, K k, V v) { _mm512_mask_storeu_ps(p, k, v); }
  // The first n lanes (all for n >= L): one masked access, as cheap as a whole one.
  static V load_n(const float* p, int64_t n) { return load(mask(n), p); }
  static void store_n(float* p, V v, int64_t n) { store(p, mask(n), v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V add(K k, V a, V b) { return _mm512_mask_add_ps(a, k, a, b); }  // a + b in lanes k
  static V evens(V a, V b) {  // lanes 0, 2, ... of concat(a, b)
    return _mm512_permutex2var_ps(
        a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
  }
  // The spreads are maskz with every lane: the same vpermps, but without
  // the plain intrinsic's _mm512_undefined_ps, which GCC 12 reports as
  // "may be used uninitialized" wherever it inlines it.
  static V spread_low(V c) {  // c[i] at lane 2i, i < L/2
    return _mm512_maskz_permutexvar_ps(
        0xFFFF, _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7), c);
  }
  static V spread_high(V c) {  // c[L/2 + i] at lane 2i
    return _mm512_maskz_permutexvar_ps(
        0xFFFF, _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15), c);
  }
};
template <>
struct Zmm<double> {
  static constexpr int L = 8;
  using V = __m512d;
  using K = __mmask8;
  static K mask(int64_t n) {
    return static_cast<K>(n >= L ? 0xFFu : n <= 0 ? 0u : (1u << n) - 1u);
  }
  static K even_lanes() { return static_cast<K>(0x55u); }
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static V load(K k, const double* p) { return _mm512_maskz_loadu_pd(k, p); }
  static V expand(K k, const double* p) { return _mm512_maskz_expandloadu_pd(k, p); }
  static V merge(V v, K k, const double* p) { return _mm512_mask_loadu_pd(v, k, p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static void store(double* p, K k, V v) { _mm512_mask_storeu_pd(p, k, v); }
  static V load_n(const double* p, int64_t n) { return load(mask(n), p); }
  static void store_n(double* p, V v, int64_t n) { store(p, mask(n), v); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V add(K k, V a, V b) { return _mm512_mask_add_pd(a, k, a, b); }
  static V evens(V a, V b) {
    return _mm512_permutex2var_pd(a, _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), b);
  }
  static V spread_low(V c) {
    return _mm512_maskz_permutexvar_pd(0xFF, _mm512_setr_epi64(0, 0, 1, 1, 2, 2, 3, 3), c);
  }
  static V spread_high(V c) {
    return _mm512_maskz_permutexvar_pd(0xFF, _mm512_setr_epi64(4, 4, 5, 5, 6, 6, 7, 7), c);
  }
};
template <typename T>
using MaskedVec = Zmm<T>;
#elif defined(PYCONV_ISA_AVX2)
// The masked loads and stores the direct convolution needs, on AVX2's
// vmaskmov (a lane mask in a vector register instead of a k register).
// float only: float64 keeps the GEMM on AVX2 (Blocking<double>).
template <typename T>
struct Ymm;
template <>
struct Ymm<float> {
  static constexpr int L = 8;
  using V = __m256;
  using K = __m256i;
  static K mask(int64_t n) {  // the low min(max(n, 0), L) lanes
    const int c = n >= L ? L : n <= 0 ? 0 : static_cast<int>(n);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V load(K k, const float* p) { return _mm256_maskload_ps(p, k); }
  static void store(float* p, K k, V v) { _mm256_maskstore_ps(p, k, v); }
  // The first n lanes: whole vectors by plain accesses, since vmaskmov is
  // several micro-ops (microcoded on some AMD cores); the rest masked.
  static V load_n(const float* p, int64_t n) {
    return n >= L ? _mm256_loadu_ps(p) : load(mask(n), p);
  }
  static void store_n(float* p, V v, int64_t n) {
    if (n >= L)
      _mm256_storeu_ps(p, v);
    else
      store(p, mask(n), v);
  }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
};
template <typename T>
using MaskedVec = Ymm<T>;
#endif

// ---- Packing -----------------------------------------------------------------
// A block (mc x kc at a, strides rs/cs) -> ceil(mc/MR) micro-panels MR x kc.
#if defined(PYCONV_ISA_AVX512)
// Six rows of 16 floats (consecutive k) -> 96 floats k-major (dst[q*6 + i] =
// row_i[q]): the transpose at the heart of packing a row-major A. 18 two-source
// shuffles (vpermt2ps) instead of 96 scalar moves.
inline void interleave6x16(const float* a, int64_t rs, float* dst) {
  typedef float V __attribute__((vector_size(64), aligned(4)));
  typedef int M __attribute__((vector_size(64)));
  const M lo = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
  const M hi = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const M m1[3] = {{0, 1, 16, 17, 0, 0, 2, 3, 18, 19, 0, 0, 4, 5, 20, 21},
                   {0, 0, 6, 7, 22, 23, 0, 0, 8, 9, 24, 25, 0, 0, 10, 11},
                   {26, 27, 0, 0, 12, 13, 28, 29, 0, 0, 14, 15, 30, 31, 0, 0}};
  const M m2[3] = {{0, 1, 2, 3, 16, 17, 6, 7, 8, 9, 18, 19, 12, 13, 14, 15},
                   {20, 21, 2, 3, 4, 5, 22, 23, 8, 9, 10, 11, 24, 25, 14, 15},
                   {0, 1, 26, 27, 4, 5, 6, 7, 28, 29, 10, 11, 12, 13, 30, 31}};
  V r[6];
  for (int i = 0; i < 6; ++i) r[i] = *reinterpret_cast<const V*>(a + i * rs);
  // Pairs of rows interleaved: q 0..7 (lo) and 8..15 (hi).
  const V l01 = __builtin_shuffle(r[0], r[1], lo), h01 = __builtin_shuffle(r[0], r[1], hi);
  const V l23 = __builtin_shuffle(r[2], r[3], lo), h23 = __builtin_shuffle(r[2], r[3], hi);
  const V l45 = __builtin_shuffle(r[4], r[5], lo), h45 = __builtin_shuffle(r[4], r[5], hi);
  V* out = reinterpret_cast<V*>(dst);
  for (int v = 0; v < 3; ++v) {
    out[v] = __builtin_shuffle(__builtin_shuffle(l01, l23, m1[v]), l45, m2[v]);
    out[3 + v] = __builtin_shuffle(__builtin_shuffle(h01, h23, m1[v]), h45, m2[v]);
  }
}

#elif defined(PYCONV_ISA_AVX2)
// The same for one ymm of k: six rows of 8 floats or 4 doubles -> k-major
// (dst[q*6 + i] = row_i[q]).
// Only shuffles within 128-bit lanes (unpcklps/unpckhps, shufps) and 128-bit
// loads into either half (vinsertf128): Zen 1 runs a lane-crossing vperm2f128
// as 8 macro-ops. Rows i and i + 4 share a vector (low / high half), so one
// in-lane 4 x 4 transpose gives each q's six elements in lanes 0-5.
inline void interleave6_ymm(const float* a, int64_t rs, float* dst) {
  __m256 c[8];
  for (int h = 0; h < 2; ++h) {  // k 0-3, then 4-7
    const float* s = a + 4 * h;
    __m256 r[4];
    for (int i = 0; i < 4; ++i) {  // rows i | i + 4 (zeros past row 5)
      const __m128 high = i < 2 ? _mm_loadu_ps(s + (i + 4) * rs) : _mm_setzero_ps();
      r[i] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(s + i * rs)), high, 1);
    }
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    c[4 * h + 0] = _mm256_shuffle_ps(t0, t2, 0x44);
    c[4 * h + 1] = _mm256_shuffle_ps(t0, t2, 0xEE);
    c[4 * h + 2] = _mm256_shuffle_ps(t1, t3, 0x44);
    c[4 * h + 3] = _mm256_shuffle_ps(t1, t3, 0xEE);
  }
  // Each store of 8 lanes runs 2 into the next q's place, which that q's
  // store then overwrites; the last stores only its 6.
  for (int q = 0; q < 7; ++q) _mm256_storeu_ps(dst + 6 * q, c[q]);
  _mm_storeu_ps(dst + 42, _mm256_castps256_ps128(c[7]));
  _mm_storel_pi(reinterpret_cast<__m64*>(dst + 46), _mm256_extractf128_ps(c[7], 1));
}

inline void interleave6_ymm(const double* a, int64_t rs, double* dst) {
  for (int h = 0; h < 2; ++h) {  // k 0-1, then 2-3
    const double* s = a + 2 * h;
    auto rows = [&](int i) {  // rows i | i + 2
      return _mm256_insertf128_pd(_mm256_castpd128_pd256(_mm_loadu_pd(s + i * rs)),
                                  _mm_loadu_pd(s + (i + 2) * rs), 1);
    };
    const __m256d r0 = rows(0), r1 = rows(1);
    const __m128d r4 = _mm_loadu_pd(s + 4 * rs), r5 = _mm_loadu_pd(s + 5 * rs);
    double* d = dst + 12 * h;
    _mm256_storeu_pd(d, _mm256_unpacklo_pd(r0, r1));  // q = 2h: rows 0-3
    _mm_storeu_pd(d + 4, _mm_unpacklo_pd(r4, r5));    //         rows 4-5
    _mm256_storeu_pd(d + 6, _mm256_unpackhi_pd(r0, r1));
    _mm_storeu_pd(d + 10, _mm_unpackhi_pd(r4, r5));
  }
}
#endif

#if defined(PYCONV_ISA_AVX512) || defined(PYCONV_ISA_AVX2)
// Square block transpose with two-source shuffles (vpermt2ps/pd on AVX-512):
// dst[p*ldd + j] = src[j*lds + p] for j, p < L (one vector's lanes: 16 / 8
// on AVX-512, 8 / 4 on AVX2), rows j >= `rows` read as zeros (so a last
// partial block pads itself). Stage b swaps bit b of the row index with bit b
// of the column index in every pair of rows (r, r | b): log2(L) stages of L
// shuffles instead of L * L scalar moves.
template <typename T>
struct TransposeVec {  // one vector of T and its shuffle-index type
  static constexpr int L = kVecBytes / static_cast<int>(sizeof(T));
  typedef T V __attribute__((vector_size(kVecBytes), aligned(sizeof(T))));
  typedef std::conditional_t<sizeof(T) == 4, int, long long> I;
  typedef I M __attribute__((vector_size(kVecBytes)));
};

// Stage `bit` masks over concat(x, y): lanes with that bit clear keep x[C] in
// the low row and take x[C | bit] in the high row; lanes with it set take
// y[C ^ bit] / y[C]. Constant vectors, so each shuffle is one vpermt2ps/pd.
template <typename T, int Bit, std::size_t... C>
inline typename TransposeVec<T>::M low_mask(std::index_sequence<C...>) {
  constexpr int L = TransposeVec<T>::L;
  const typename TransposeVec<T>::M m = {
      static_cast<typename TransposeVec<T>::I>((C & Bit) ? L + (C ^ Bit) : C)...};
  return m;
}
template <typename T, int Bit, std::size_t... C>
inline typename TransposeVec<T>::M high_mask(std::index_sequence<C...>) {
  constexpr int L = TransposeVec<T>::L;
  const typename TransposeVec<T>::M m = {
      static_cast<typename TransposeVec<T>::I>((C & Bit) ? L + C : (C | Bit))...};
  return m;
}

template <typename T, int Bit>
inline void transpose_stage(typename TransposeVec<T>::V* r) {
  constexpr int L = TransposeVec<T>::L;
  constexpr auto lanes = std::make_index_sequence<L>{};
  const typename TransposeVec<T>::M ma = low_mask<T, Bit>(lanes), mb = high_mask<T, Bit>(lanes);
  for (int j = 0; j < L; ++j) {
    if (j & Bit) continue;
    const typename TransposeVec<T>::V x = r[j], y = r[j | Bit];
    r[j] = __builtin_shuffle(x, y, ma);
    r[j | Bit] = __builtin_shuffle(x, y, mb);
  }
}

// r[0..L) transposed in place: lane p of vector j moves to lane j of vector p.
template <typename T>
inline void transpose_vectors(typename TransposeVec<T>::V* r) {
  transpose_stage<T, 1>(r);
  transpose_stage<T, 2>(r);
  if constexpr (TransposeVec<T>::L >= 8) transpose_stage<T, 4>(r);
  if constexpr (TransposeVec<T>::L >= 16) transpose_stage<T, 8>(r);
}

template <typename T>
inline void transpose_block(const T* src, int64_t lds, int64_t rows, T* dst, int64_t ldd) {
  using V = typename TransposeVec<T>::V;
  constexpr int L = TransposeVec<T>::L;
  V r[L];
  for (int j = 0; j < L; ++j) r[j] = j < rows ? *reinterpret_cast<const V*>(src + j * lds) : V{};
  transpose_vectors<T>(r);
  for (int p = 0; p < L; ++p) *reinterpret_cast<V*>(dst + p * ldd) = r[p];
}
#endif

#if defined(PYCONV_ISA_AVX512)
// A row-major A's micro-panel by register transposes: dst[p*MR + i] =
// a[i*rs + p] for i < m_cur, zeros for m_cur <= i < MR. Rows go in groups of
// one vector's lanes (L), k in blocks of L; each transposed vector is one
// masked store of the group's MR lanes. The float 6-row panel has its own
// cheaper interleave; this serves the 12-row (narrow) float panels and every
// float64 panel, which were packed element by element (36% of a 100 x 10 x
// 100 float32 call on the narrow kernel).
template <int MR, typename T>
void pack_a_transposed(int64_t kc, int64_t m_cur, const T* a, int64_t rs, T* dst) {
  using Z = Zmm<T>;
  using V = typename TransposeVec<T>::V;
  constexpr int L = Z::L;
  for (int g0 = 0; g0 < MR; g0 += L) {
    const int lanes = MR - g0 < L ? MR - g0 : L;
    const int64_t live = min64(lanes, m_cur - g0 > 0 ? m_cur - g0 : 0);
    const typename Z::K store = Z::mask(lanes);
    const T* rows = a + g0 * rs;
    for (int64_t p0 = 0; p0 < kc; p0 += L) {
      const int64_t np = min64(L, kc - p0);
      V r[L];
      for (int j = 0; j < L; ++j) {
        if (j >= live)
          r[j] = V{};
        else if (np == L)
          r[j] = *reinterpret_cast<const V*>(rows + j * rs + p0);
        else
          r[j] = reinterpret_cast<V>(Z::load(Z::mask(np), rows + j * rs + p0));
      }
      transpose_vectors<T>(r);
      for (int64_t p = 0; p < np; ++p)
        Z::store(dst + (p0 + p) * MR + g0, store, reinterpret_cast<typename Z::V>(r[p]));
    }
  }
}
#endif

template <class C, typename T = typename C::T>
void pack_a_panel(int64_t kc, int64_t m_cur, const T* a, int64_t rs, int64_t cs, T* dst) {
  constexpr int MR = C::MR;
#if defined(PYCONV_ISA_AVX512)
  if (cs == 1) {
    if constexpr (sizeof(T) == 4 && MR == 6) {
      if (m_cur == MR) {
        int64_t p = 0;
        for (; p + 16 <= kc; p += 16) interleave6x16(a + p, rs, dst + p * MR);
        for (; p < kc; ++p)
          for (int i = 0; i < MR; ++i) dst[p * MR + i] = a[i * rs + p];
        return;
      }
    }
    pack_a_transposed<MR>(kc, m_cur, a, rs, dst);
    return;
  }
#elif defined(PYCONV_ISA_AVX2)
  if constexpr (MR == 6) {
    if (cs == 1 && m_cur == MR) {  // 2.1x the element loop (144 x 256: 8.2 against 17 us)
      constexpr int64_t L = 32 / static_cast<int64_t>(sizeof(T));
      int64_t p = 0;
      for (; p + L <= kc; p += L) interleave6_ymm(a + p, rs, dst + p * MR);
      for (; p < kc; ++p)
        for (int i = 0; i < MR; ++i) dst[p * MR + i] = a[i * rs + p];
      return;
    }
  }
#endif
  if (cs == 1) {
    for (int64_t i = 0; i < m_cur; ++i)
      for (int64_t p = 0; p < kc; ++p) dst[p * MR + i] = a[i * rs + p];
  } else {
    for (int64_t p = 0; p < kc; ++p)
      for (int64_t i = 0; i < m_cur; ++i) dst[p * MR + i] = a[i * rs + p * cs];
  }
  for (int64_t i = m_cur; i < MR; ++i)
    for (int64_t p = 0; p < kc; ++p) dst[p * MR + i] = T(0);
}

// A block (rows x kc at a, strides rs/cs) -> its ceil(rows/MR) micro-panels,
// panel r at dst + r * MR * kc. An A stored transposed (rs == 1: the rows of
// one k side by side) goes k by k across all the panels, reading `rows`
// contiguous elements each time; panel by panel, each of a panel's kc reads
// touched a new cache line and, at a wide stride, a new page (affine1's dW,
// A = x^T with 4320-element columns: 19% of the call, `perf`).
template <class C, typename T = typename C::T>
void pack_a_block(int64_t kc, int64_t rows, const T* __restrict a, int64_t rs, int64_t cs,
                  T* __restrict dst) {
  constexpr int64_t MR = C::MR;
  if (rs == 1 && cs != 1) {
    const int64_t whole = rows / MR * MR;
    for (int64_t p = 0; p < kc; ++p) {
      const T* src = a + p * cs;
      T* d = dst + p * MR;
      for (int64_t r = 0; r < whole; r += MR)
        for (int64_t i = 0; i < MR; ++i) d[r * kc + i] = src[r + i];
      if (whole < rows)  // the last panel, zeros past the block's rows
        for (int64_t i = 0; i < MR; ++i)
          d[whole * kc + i] = whole + i < rows ? src[whole + i] : T(0);
    }
    return;
  }
  for (int64_t r = 0; r < rows; r += MR)
    pack_a_panel<C>(kc, min64(MR, rows - r), a + r * rs, rs, cs, dst + r * kc);
}

// d[0, n) = src[0, n) and zeros in d[n, nr): one row of a packed B panel.
template <typename T>
inline void copy_row_padded(const T* __restrict src, int64_t n, int64_t nr, T* __restrict d) {
#if defined(PYCONV_ISA_AVX512)
  using Z = Zmm<T>;  // whole vectors, a masked tail (lanes past n load as zeros), zeros
  constexpr int L = Z::L;
  int64_t j = 0;
  for (; j + L <= n; j += L) Z::store(d + j, Z::load(src + j));
  if (j < n) {
    Z::store(d + j, Z::load(Z::mask(n - j), src + j));
    j += L;
  }
  for (; j < nr; j += L) Z::store(d + j, Z::zero());
#else
  for (int64_t j = 0; j < n; ++j) d[j] = src[j];
  for (int64_t j = n; j < nr; ++j) d[j] = T(0);
#endif
}

// A row-major B block (kc x n at b, row stride rs) -> its ceil(n/NR) panels,
// panel jp at dst + jp * NR * kc, the last panel_width(n % NR) wide. Row by
// row across all the panels, so B is read in order, a stream the prefetchers
// follow; panel by panel, each panel read NR columns of every row and missed
// the cache on each (affine1's forward, B 4320 x 100: 61% of the packing's
// samples on its loads of B). __restrict, as in pack_a_block: without it GCC
// copied element by element, for fear of overlap.
template <class C, typename T = typename C::T>
void pack_b_rows(int64_t kc, int64_t n, const T* __restrict b, int64_t rs,
                 T* __restrict dst) {
  constexpr int64_t NR = C::NR;
  const int64_t whole = n / NR * NR, tail = n - whole;
  const int64_t tail_nr = tail > 0 ? panel_width<C>(tail) : 0;
  for (int64_t p = 0; p < kc; ++p) {
    const T* src = b + p * rs;
    for (int64_t j = 0; j < whole; j += NR)
      for (int64_t q = 0; q < NR; ++q) dst[j * kc + p * NR + q] = src[j + q];
    if (tail > 0) copy_row_padded(src + whole, tail, tail_nr, dst + whole * kc + p * tail_nr);
  }
}

// B block column panel (kc x n_cur at b, strides rs/cs) -> one packed panel:
// kc rows of nr = panel_width(n_cur), zeros past n_cur.
template <class C, typename T = typename C::T>
void pack_b_panel(int64_t kc, int64_t n_cur, const T* b, int64_t rs, int64_t cs, T* dst) {
  if (cs == 1) {  // row-major: one panel of pack_b_rows
    pack_b_rows<C>(kc, n_cur, b, rs, dst);
    return;
  }
  const int64_t nr = panel_width<C>(n_cur);
  int64_t j0 = 0;
#if defined(PYCONV_ISA_AVX512) || defined(PYCONV_ISA_AVX2)
  // B is a transposed row-major matrix (rs == 1): transpose whole blocks.
  constexpr int64_t TB = TransposeVec<T>::L;
  if (rs == 1) {
    for (; j0 < n_cur; j0 += TB) {  // the last block zero-fills its missing rows
      const int64_t rows = min64(TB, n_cur - j0);
      // Each block also prefetches the lines the next TB rows' block reads at
      // the same p, kc / TB blocks later: d's float64 B^T dW (256 x 2400 x
      // 729) spent 10.1% of its time in the transposes, 8.3% with this.
      const int64_t ahead = min64(TB, n_cur - j0 - TB);
      int64_t p = 0;
      for (; p + TB <= kc; p += TB) {
        for (int64_t r = 0; r < ahead; ++r) __builtin_prefetch(b + (j0 + TB + r) * cs + p, 0, 3);
        transpose_block(b + j0 * cs + p, cs, rows, dst + p * nr + j0, nr);
      }
      for (; p < kc; ++p)
        for (int64_t j = j0; j < j0 + TB; ++j)
          dst[p * nr + j] = j < n_cur ? b[j * cs + p] : T(0);
    }
  }
#endif
  for (int64_t j = j0; j < n_cur; ++j)
    for (int64_t p = 0; p < kc; ++p) dst[p * nr + j] = b[j * cs + p * rs];
  const int64_t j_pad = j0 > n_cur ? j0 : n_cur;
  for (int64_t p = 0; p < kc; ++p)
    for (int64_t j = j_pad; j < nr; ++j) dst[p * nr + j] = T(0);
}

// ---- Row segments of im2col and col2im ---------------------------------------
// copy_taps: d[q] = row[q * stride] for q in [lo, hi) (a segment of an im2col
// row; writes only d[lo, hi)). add_taps: row[i * stride] += c[i] for i in
// [0, n) (its adjoint). On AVX-512, strides 1 and 2 go by 64-byte vectors, a
// stride-2 segment as the even lanes of two (14 taps at stride 2 in a 28 -> 14
// layer: no scalar loop, no gather). Image vectors are whole while they end at
// or before `end` (the image's end; add_taps then writes untouched lanes back
// unchanged, as one thread owns the image) and masked past it: a masked load
// whose dropped lanes cross a page takes a microcode assist on AMD cores,
// measured as most of the stride-2 copy when every load was masked.

template <typename T>
inline void copy_taps(const T* __restrict row, int64_t stride, int64_t lo, int64_t hi,
                      T* __restrict d, [[maybe_unused]] const T* end) {
#if defined(PYCONV_ISA_AVX512)
  if (stride <= 2) {
    using Z = Zmm<T>;
    constexpr int L = Z::L;
    for (int64_t q = lo; q < hi; q += L) {
      const int64_t n = min64(L, hi - q);
      const T* src = row + stride * q;
      const bool whole = src + L * stride <= end;
      typename Z::V v;
      if (stride == 1) {
        v = whole ? Z::load(src) : Z::load(Z::mask(n), src);
      } else {  // 2n - 1 inputs from row[2q]
        const int64_t span = 2 * n - 1;
        v = whole ? Z::evens(Z::load(src), Z::load(src + L))
                  : Z::evens(Z::load(Z::mask(span), src), Z::load(Z::mask(span - L), src + L));
      }
      Z::store(d + q, Z::mask(n), v);
    }
    return;
  }
#endif
  if (stride == 1) {
    for (int64_t q = lo; q < hi; ++q) d[q] = row[q];
  } else {
    for (int64_t q = lo; q < hi; ++q) d[q] = row[q * stride];
  }
}

template <typename T>
inline void add_taps(const T* __restrict c, int64_t stride, int64_t n, T* __restrict row,
                     [[maybe_unused]] const T* end) {
#if defined(PYCONV_ISA_AVX512)
  if (stride <= 2) {
    using Z = Zmm<T>;
    constexpr int L = Z::L;
    for (int64_t q = 0; q < n; q += L) {
      const int64_t m = min64(L, n - q);
      const typename Z::V cv = Z::load(Z::mask(m), c + q);
      T* r = row + stride * q;
      const bool whole = r + L * stride <= end;
      if (stride == 1) {
        if (whole)
          Z::store(r, Z::add(Z::load(r), cv));
        else
          Z::store(r, Z::mask(m), Z::add(Z::load(Z::mask(m), r), cv));
        continue;
      }
      // r[2i], i < m: the even lanes of two vectors spanning 2m - 1 elements.
      const int64_t span = 2 * m - 1;
      const typename Z::K k0 = Z::mask(span), k1 = Z::mask(span - L);
      typename Z::V lo_v = whole ? Z::load(r) : Z::load(k0, r);
      typename Z::V hi_v = whole ? Z::load(r + L) : Z::load(k1, r + L);
      lo_v = Z::add(static_cast<typename Z::K>(Z::even_lanes() & k0), lo_v, Z::spread_low(cv));
      hi_v = Z::add(static_cast<typename Z::K>(Z::even_lanes() & k1), hi_v, Z::spread_high(cv));
      if (whole) {
        Z::store(r, lo_v);
        Z::store(r + L, hi_v);
      } else {
        Z::store(r, k0, lo_v);
        Z::store(r + L, k1, hi_v);
      }
    }
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) row[i * stride] += c[i];
}

// copy_run: d[q] = src[q * stride] for q in [0, n), from a padded image
// (im2col.h): whole-vector loads may read up to kPadSlack elements past the
// last tap, so nothing is bounded or masked but the last store. It is
// copy_taps with `end` never reached, kept apart: calling copy_taps with the
// padded copy's end (one function for both) made a's forward 8-12% slower
// (Zen 4, 1 thread: the per-vector bound test, and GCC kept it out of line).
template <typename T>
inline void copy_run(const T* __restrict src, int64_t stride, int64_t n, T* __restrict d) {
  int64_t q = 0;
#if defined(PYCONV_ISA_AVX512)
  using Z = Zmm<T>;
  constexpr int L = Z::L;
  if (stride == 1) {
    // Every store masked (store_n), not whole vectors then a masked tail: GCC
    // turned that whole-vector loop into a memmove call (9% of a's forward on
    // a Zen 4, on runs of 24 floats).
    for (; q < n; q += L) Z::store_n(d + q, Z::load(src + q), n - q);
    return;
  }
  if (stride == 2) {
    for (; q + L <= n; q += L)
      Z::store(d + q, Z::evens(Z::load(src + 2 * q), Z::load(src + 2 * q + L)));
    if (q < n)
      Z::store(d + q, Z::mask(n - q), Z::evens(Z::load(src + 2 * q), Z::load(src + 2 * q + L)));
    return;
  }
#else
  // Whole vectors of this ISA, the tail by elements (a masked store is
  // microcoded on AMD cores). Without this GCC made each run a memmove call:
  // 11% of a's forward on a Zen 1 (AVX2), on runs of 8-24 floats.
  if (stride == 1) {
    using VU = typename VecOf<T>::VU;
    constexpr int64_t L = VecOf<T>::L;
    for (; q + L <= n; q += L)
      *reinterpret_cast<VU*>(d + q) = *reinterpret_cast<const VU*>(src + q);
  }
#endif
  if (stride == 1) {
    for (; q < n; ++q) d[q] = src[q];
  } else {
    for (; q < n; ++q) d[q] = src[q * stride];
  }
}

// ---- Rows of the column matrix ------------------------------------------------
// Row r = (c, kh, kw) of one image's column matrix, walked in order: TapCursor
// starts at any r and steps to the next without divisions.
struct TapCursor {
  int64_t c, kh, kw;
  const Conv2dShape& s;
  TapCursor(int64_t r, const Conv2dShape& shape)
      : c(r / (shape.kernel_w * shape.kernel_h)),
        kh((r / shape.kernel_w) % shape.kernel_h),
        kw(r % shape.kernel_w),
        s(shape) {}
  __attribute__((always_inline)) void next() {
    if (++kw == s.kernel_w) {
      kw = 0;
      if (++kh == s.kernel_h) {
        kh = 0;
        ++c;
      }
    }
  }
};

// Rows of one image's column matrix read from its zero-padded copy (im2col.h),
// from column j0 on: output (oh, ow) of row (c, kh, kw) is at row oh*stride +
// kh, column ow*stride + kw of plane c, so each output row's columns are one
// run (copy_run). The first column's position is worked out once per panel,
// not per row.
template <typename T>
struct PaddedRows {
  const T* xp;
  const Conv2dShape& s;
  int64_t ow_n, wp, plane, oh0, ow0;
  PaddedRows(const Im2colPanels<T>& panels, int64_t j0)
      : xp(panels.xp),
        s(panels.s),
        ow_n((s.width + 2 * s.pad - s.kernel_w) / s.stride + 1),
        wp(s.width + 2 * s.pad),
        plane((s.height + 2 * s.pad) * wp),
        oh0(j0 / ow_n),
        ow0(j0 % ow_n) {}
  // d[q] = column j0 + q of the cursor's row, q < n. Inlined by force, as is
  // TapCursor::next: GCC kept both out of line in the avx512 unit, two calls
  // per packed panel row, and each row's first load waited on them (a's
  // forward, Zen 4, 1 thread: 1.12-1.14 -> 1.07-1.09 ms).
  __attribute__((always_inline)) void copy(const TapCursor& t, int64_t n, T* d) const {
    const T* row = xp + t.c * plane + (oh0 * s.stride + t.kh) * wp + t.kw;
    int64_t seg = min64(ow_n - ow0, n);
    copy_run(row + ow0 * s.stride, s.stride, seg, d);
    for (int64_t done = seg; done < n; done += seg) {  // later runs start at ow = 0
      row += s.stride * wp;
      seg = min64(ow_n, n - done);
      copy_run(row, s.stride, seg, d + done);
    }
  }
};

// ---- im2col packed straight into B panels ------------------------------------
// B = the column matrix of one image (row r = (c, kh, kw), column j = (oh, ow))
// without writing it: rows [pc, pc+kc) x columns [j0, j0+n_cur) into dst as kc
// rows of nr, zeros in columns n_cur..nr-1. PackB<T>::fill with ctx an
// Im2colPanels<T>. Output sizes are computed here rather than by the shape's
// member functions, so that nothing with external linkage is compiled in this
// ISA's translation unit.
template <typename T>
void pack_im2col(const void* ctx, int64_t pc, int64_t kc, int64_t j0, int64_t n_cur,
                 int64_t nr, T* dst) {
  const Im2colPanels<T>& panels = *static_cast<const Im2colPanels<T>*>(ctx);
  const Conv2dShape& s = panels.s;
  const int64_t oh_n = (s.height + 2 * s.pad - s.kernel_h) / s.stride + 1;
  const int64_t ow_n = (s.width + 2 * s.pad - s.kernel_w) / s.stride + 1;
  const int64_t oh0 = j0 / ow_n, ow0 = j0 % ow_n;
  TapCursor t(pc, s);
  if (panels.xp != nullptr) {
    const PaddedRows<T> rows(panels, j0);
    for (int64_t p = 0; p < kc; ++p, dst += nr, t.next()) {
      rows.copy(t, n_cur, dst);
      for (int64_t q = n_cur; q < nr; ++q) dst[q] = T(0);
    }
    return;
  }
  // The bounded packer, for an image too large to pad: per segment, only the
  // taps inside the image are read, the rest written as zeros.
  const T* const image_end = panels.x + s.channels * s.height * s.width;
  // Output columns [lo, hi) whose tap kw reads inside the row: ow*stride -
  // pad + kw in [0, width). Cached for small kernels (the divisions cost more
  // than a short row copy).
  constexpr int kCache = 16;
  int64_t lo_of[kCache], hi_of[kCache];
  auto range = [&](int64_t tap, int64_t* lo, int64_t* hi) {
    tap_range(tap, s.pad, s.stride, s.width, ow_n, lo, hi);
  };
  const bool cached = s.kernel_w <= kCache;
  if (cached)
    for (int64_t w = 0; w < s.kernel_w; ++w) range(w, &lo_of[w], &hi_of[w]);
  for (int64_t p = 0; p < kc; ++p, dst += nr, t.next()) {
    const int64_t c = t.c, kh = t.kh, kw = t.kw;
    const T* plane = panels.x + c * s.height * s.width;
    int64_t w_lo, w_hi;
    if (cached) {
      w_lo = lo_of[kw];
      w_hi = hi_of[kw];
    } else {
      range(kw, &w_lo, &w_hi);
    }
    int64_t done = 0, oh = oh0, ow = ow0;
    while (done < n_cur && oh < oh_n) {  // one output row segment at a time
      const int64_t seg = min64(ow_n - ow, n_cur - done);
      T* __restrict d = dst + done - ow;  // d[ow'] for ow' in [ow, ow + seg)
      const int64_t ih = oh * s.stride - s.pad + kh;
      const int64_t end = ow + seg;
      int64_t lo = end, hi = end;
      if (ih >= 0 && ih < s.height) {
        lo = min64(ow > w_lo ? ow : w_lo, end);
        hi = min64(end, w_hi);
        if (hi < lo) hi = lo;
      }
      for (int64_t q = ow; q < lo; ++q) d[q] = T(0);
      const T* row = plane + ih * s.width - s.pad + kw;  // row[ow'*stride]
      copy_taps(row, s.stride, lo, hi, d, image_end);
      for (int64_t q = hi; q < end; ++q) d[q] = T(0);
      done += seg;
      ow = 0;
      ++oh;
    }
    for (int64_t q = done; q < nr; ++q) dst[q] = T(0);
  }
}

// ---- im2col packed straight into A panels ------------------------------------
// The same column matrix as GEMM's A operand (the weight gradient's col_n *
// dy_n^T): rows [i0, i0+m_cur) x columns [pc, pc+kc) as one MR x kc panel.
// Each row's kc taps are copied as runs from the padded image into a small
// row-major block, which the ordinary A packing then transposes: the C*KH*KW
// x OH*OW matrix (7 MiB per image for c and d) is never written.
template <class C, typename T = typename C::T>
void pack_im2col_a_cfg(const Im2colPanels<T>& panels, int64_t i0, int64_t m_cur, int64_t pc,
                       int64_t kc, T* dst) {
  constexpr int MR = C::MR;
  constexpr int64_t KC = C::KC;
  alignas(64) T block[MR][KC];  // 3-24 KiB: rows past m_cur are never read
  const PaddedRows<T> rows(panels, pc);
  TapCursor t(i0, panels.s);
  for (int64_t i = 0; i < m_cur; ++i, t.next()) rows.copy(t, kc, block[i]);
  pack_a_panel<C>(kc, m_cur, &block[0][0], KC, 1, dst);
}

template <typename T>
void pack_im2col_a(const void* ctx, int64_t i0, int64_t m_cur, int64_t pc, int64_t kc,
                   int64_t mr, T* dst) {
  const Im2colPanels<T>& panels = *static_cast<const Im2colPanels<T>*>(ctx);
  using W = typename Blocking<T>::Wide;
  using N = typename Blocking<T>::Narrow;
  if (mr == W::MR)
    pack_im2col_a_cfg<W>(panels, i0, m_cur, pc, kc, dst);
  else
    pack_im2col_a_cfg<N>(panels, i0, m_cur, pc, kc, dst);
}

// ---- col2im, the adjoint of pack_im2col ------------------------------------------
#if defined(PYCONV_ISA_AVX512)
// Stride 1 by gathering: each vector of an image row sums, in a register, the
// column-matrix segments that land on it (one masked load per tap), and is
// stored once. Adding each segment into x in turn (the loop of col2im below)
// makes every add wait: at stride 1 the segments of neighbouring taps overlap
// in all but one element, and a load of a vector that a partly overlapping
// store has just written is not forwarded (MNIST's 5x5 taps on 28x28: col2im
// was 4.3 us of the layer's 40 us per image, perf). The sum for each element
// runs over the same taps in the same order, so the results are identical.
template <typename T>
void col2im_gather(const T* col, const Conv2dShape& s, int64_t oh_n, int64_t ow_n, T* x) {
  using Z = Zmm<T>;
  constexpr int64_t L = Z::L;
  const int64_t cols = oh_n * ow_n;
  for (int64_t c = 0; c < s.channels; ++c)
    for (int64_t ih = 0; ih < s.height; ++ih) {
      // Taps kh whose output row oh = ih + pad - kh is in [0, oh_n).
      const int64_t kh_lo = ih + s.pad - (oh_n - 1) > 0 ? ih + s.pad - (oh_n - 1) : 0;
      const int64_t kh_hi = min64(s.kernel_h, ih + s.pad + 1);
      T* x_row = x + (c * s.height + ih) * s.width;
      for (int64_t j = 0; j < s.width; j += L) {
        const int64_t lanes = min64(L, s.width - j);
        typename Z::V acc = Z::zero();
        for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
          const T* seg = col + (c * s.kernel_h + kh) * s.kernel_w * cols + (ih + s.pad - kh) * ow_n;
          for (int64_t kw = 0; kw < s.kernel_w; ++kw, seg += cols) {
            // Lane l takes seg[off + l], for the l whose ow = off + l is in [0, ow_n).
            const int64_t off = j + s.pad - kw;
            const int64_t lo = off < 0 ? -off : 0, hi = min64(lanes, ow_n - off);
            if (hi <= lo) continue;
            const auto k = static_cast<typename Z::K>(Z::mask(hi) & ~Z::mask(lo));
            // off < 0 (the first vector, kw > pad): lanes from lo on take
            // seg[0...] in order, without forming a pointer before seg.
            acc = Z::add(acc, off >= 0 ? Z::load(k, seg + off) : Z::expand(k, seg));
          }
        }
        Z::store(x_row + j, Z::mask(lanes), acc);
      }
    }
}
#else
// The same gathering without masked loads (vmaskmov is slow on AMD cores and
// absent from the baseline): a vector of an image row is summed in a
// register where every tap's lanes lie inside its segment, i.e. away from
// the row's ends; the elements near the ends are summed as scalars. Each
// element's taps are added in the same order as before, so the results are
// unchanged; vectors go two at a time so that the add latency of one chain
// overlaps the other's. a's dx (28-wide rows, 5x5
// taps): 16 of 28 elements by vectors on AVX2.
template <typename T>
void col2im_gather(const T* col, const Conv2dShape& s, int64_t oh_n, int64_t ow_n, T* x) {
  using V = typename VecOf<T>::V;
  using VU = typename VecOf<T>::VU;
  constexpr int64_t L = VecOf<T>::L;
  const int64_t cols = oh_n * ow_n, kw_n = s.kernel_w;
  // Vectors [j, j + L) with every tap inside: ow = j + l + pad - kw in
  // [0, ow_n) for all lanes l and taps kw, and the vector inside the row.
  const int64_t j_lo = min64(kw_n - 1 - s.pad > 0 ? kw_n - 1 - s.pad : 0, s.width);
  const int64_t j_hi = min64(ow_n - s.pad, s.width);  // vectors end at or before
  for (int64_t c = 0; c < s.channels; ++c)
    for (int64_t ih = 0; ih < s.height; ++ih) {
      const int64_t kh_lo = ih + s.pad - (oh_n - 1) > 0 ? ih + s.pad - (oh_n - 1) : 0;
      const int64_t kh_hi = min64(s.kernel_h, ih + s.pad + 1);
      T* x_row = x + (c * s.height + ih) * s.width;
      // seg0 + kh * kh_step + kw * cols: segment (c, kh, kw) of this row,
      // shifted so that element iw takes seg[iw - kw].
      const T* seg0 = col + c * s.kernel_h * kw_n * cols + (ih + s.pad) * ow_n + s.pad;
      const int64_t kh_step = kw_n * cols - ow_n;
      auto elements = [&](int64_t j0, int64_t j1) {  // x_row[j0, j1)
        for (int64_t iw = j0; iw < j1; ++iw) {
          // Taps kw whose ow = iw + pad - kw is in [0, ow_n): no branch inside.
          const int64_t kw_lo = iw + s.pad - ow_n + 1 > 0 ? iw + s.pad - ow_n + 1 : 0;
          const int64_t kw_hi = min64(kw_n, iw + s.pad + 1);
          T acc = T(0);
          for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
            const T* seg = seg0 + kh * kh_step + iw;
            for (int64_t kw = kw_lo; kw < kw_hi; ++kw) acc += seg[kw * cols - kw];
          }
          x_row[iw] = acc;
        }
      };
      // x_row[j, j + NV * L) by NV vectors summed side by side.
      auto vectors = [&](int64_t j, auto nv) {
        constexpr int NV = decltype(nv)::value;
        V acc[NV] = {};
        for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
          const T* seg = seg0 + kh * kh_step + j;
          for (int64_t kw = 0; kw < kw_n; ++kw, seg += cols)
            for (int v = 0; v < NV; ++v)
              acc[v] += V(*reinterpret_cast<const VU*>(seg - kw + v * L));
        }
        for (int v = 0; v < NV; ++v) *reinterpret_cast<VU*>(x_row + j + v * L) = acc[v];
      };
      elements(0, j_lo);
      int64_t j = j_lo;
      for (; j + 2 * L <= j_hi; j += 2 * L) vectors(j, std::integral_constant<int, 2>{});
      for (; j + L <= j_hi; j += L) vectors(j, std::integral_constant<int, 1>{});
      elements(j, s.width);
    }
}
#endif

template <typename T>
void col2im(const T* col, const Conv2dShape& s, T* x) {
  const int64_t oh_n = (s.height + 2 * s.pad - s.kernel_h) / s.stride + 1;
  const int64_t ow_n = (s.width + 2 * s.pad - s.kernel_w) / s.stride + 1;
  const int64_t image = s.channels * s.height * s.width;
  if (s.stride == 1) {
    col2im_gather(col, s, oh_n, ow_n, x);
    return;
  }
  const T* const end = x + image;
  for (int64_t i = 0; i < image; ++i) x[i] = T(0);
  for (int64_t c = 0; c < s.channels; ++c) {
    T* plane = x + c * s.height * s.width;
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        int64_t w_lo, w_hi;
        tap_range(kw, s.pad, s.stride, s.width, ow_n, &w_lo, &w_hi);
        const int64_t iw0 = w_lo * s.stride - s.pad + kw;
        for (int64_t oh = 0; oh < oh_n; ++oh, col += ow_n) {
          const int64_t ih = oh * s.stride - s.pad + kh;
          if (ih < 0 || ih >= s.height || w_hi <= w_lo) continue;
          add_taps(col + w_lo, s.stride, w_hi - w_lo, plane + ih * s.width + iw0, end);
        }
      }
    }
  }
}

// ---- The five loops ------------------------------------------------------------
template <typename T>
struct Problem {
  int64_t m, n, k;
  T alpha;
  MatRef<T> a, b;
  T beta;
  T* c;
  int64_t ldc;
  const PackB<T>* packer;    // null: pack from the strided b
  const PackA<T>* a_packer;  // null: pack from the strided a
  const T* packed_a;         // non-null: all of A packed by pack_a_whole (a not read)
  const T* row_bias;         // non-null: row_bias[i] added to row i of C
};

// Rows (of a thread's slice) up to which gemm_slice runs them as one ic block:
// A packed once per KC block, B's panels packed just before their
// micro-kernels and used from L1/L2 while warm. Beyond MC the loop over MC
// blocks first packs the whole KC x NC block of B (4 MiB in float64 d's
// B^T dW, 256 x 2400 x 729), writes it out of L2 and streams it back once per
// ic block: float64 packing was 10% of that product. Two MC blocks' worth of
// A (float64 AVX-512: 288 x 256 = 576 KiB; AVX2 float32 288 KiB, float64
// 384 KiB) still fits the L2 of the cores these blockings target (1-2 MiB on
// AVX-512 x86; Zen 1's 512 KiB for AVX2; aarch64's 460-600 KiB not measured on
// hardware). Zen 4, 1 thread, alternating processes, GFLOP/s float64:
// d's B^T dW 46.4-49.6 -> 50.9-51.7 (np/pc 0.91-0.96 -> 0.99-1.01), 288 x 2400
// x 729 47.8-48.3 -> 52.6-52.8, 150 x 2400 x 729 45.2-47.7 -> 51.0-52.7.
template <class C>
constexpr int64_t one_block_rows() {
  return 2 * C::MC;
}

// Scratch of one thread: its packed B block (KC x NC, 64-byte aligned first)
// and its packed A block (KC x up to one_block_rows rows).
template <class C, typename T = typename C::T>
int64_t cfg_workspace_elems(int64_t m, int64_t n, int64_t k) {
  constexpr int64_t MR = C::MR, KC = C::KC, NC = C::NC, NR = C::NR;
  constexpr int64_t line = 64 / static_cast<int64_t>(sizeof(T));
  const int64_t kc = min64(KC, k < 1 ? 1 : k);
  // A thread's slice of at most one_block_rows rows packs them all at once.
  const int64_t mc = ceil_div(min64(one_block_rows<C>(), m < 1 ? 1 : m), MR) * MR;
  const int64_t nc = ceil_div(min64(NC, n < 1 ? 1 : n), NR) * NR;
  return ceil_div(nc * kc, line) * line + ceil_div(mc * kc, line) * line;
}

// C[i0:i0+mm, j0:j0+nn] of the problem, on the calling thread alone:
// jc (NC) -> pc (KC, pack B) -> ic (MC, pack A) -> jr (NR) -> ir (MR) ->
// micro_kernel. Threads run this on disjoint slices of C (see run()).
template <class C, typename T = typename C::T>
void gemm_slice(const Problem<T>& P, int64_t i0, int64_t mm, int64_t j0, int64_t nn,
                T* work) {
  constexpr int64_t MR = C::MR, KC = C::KC, MC = C::MC, NC = C::NC, NR = C::NR;
  constexpr int64_t line = 64 / static_cast<int64_t>(sizeof(T));
  T* pack_b = work;
  T* pack_a = work + ceil_div(ceil_div(min64(NC, P.n), NR) * NR * min64(KC, P.k), line) * line;
  const int64_t m_pad = ceil_div(P.m, MR) * MR;  // rows of a prepacked A
  for (int64_t jc = 0; jc < nn; jc += NC) {  // loop 5: jc
    const int64_t nc_cur = min64(NC, nn - jc);
    const int64_t n_panels = ceil_div(nc_cur, NR);
    for (int64_t pc = 0; pc < P.k; pc += KC) {  // loop 4: pc
      const int64_t kc_cur = min64(KC, P.k - pc);
      const T beta_cur = pc == 0 ? P.beta : T(1);
      const T* bias_cur = pc == 0 ? P.row_bias : nullptr;  // added once, with beta's term
      auto bias_at = [&](int64_t row) { return bias_cur != nullptr ? bias_cur + row : nullptr; };
      auto pack_b_at = [&](int64_t jp, T* dst) {  // panel jp: kc x NR
        const int64_t col = j0 + jc + jp * NR;
        const int64_t n_cur = min64(NR, j0 + nn - col);
        if (P.packer != nullptr)
          P.packer->fill(P.packer->ctx, pc, kc_cur, col, n_cur, panel_width<C>(n_cur), dst);
        else
          pack_b_panel<C>(kc_cur, n_cur, P.b.data + pc * P.b.rs + col * P.b.cs, P.b.rs,
                          P.b.cs, dst);
      };
      // The MR x kc panels of rows [row0, row0 + rows): packed now, or
      // already in P.packed_a (block pc at pc * m_pad, rows r at r * kc_cur).
      auto a_panels = [&](int64_t row0, int64_t rows) -> const T* {
        if (P.packed_a != nullptr) return P.packed_a + pc * m_pad + row0 * kc_cur;
        if (P.a_packer != nullptr) {
          for (int64_t ir = 0; ir < rows; ir += MR)
            P.a_packer->fill(P.a_packer->ctx, row0 + ir, min64(MR, rows - ir), pc, kc_cur, MR,
                             pack_a + ir * kc_cur);
        } else {
          pack_a_block<C>(kc_cur, rows, P.a.data + row0 * P.a.rs + pc * P.a.cs, P.a.rs, P.a.cs,
                          pack_a);
        }
        return pack_a;
      };
      // A plain row-major B is packed row by row (pack_b_rows), panels side
      // by side: all of them here, up to kPackedBAheadBytes at a time in the
      // one-ic-block case below.
      const bool rows_b = P.packer == nullptr && P.b.cs == 1;
      auto pack_b_cols = [&](int64_t jp0, int64_t jp1) {  // panels [jp0, jp1) at pack_b
        if (rows_b) {
          const int64_t col0 = jp0 * NR;
          pack_b_rows<C>(kc_cur, min64(nc_cur, jp1 * NR) - col0,
                         P.b.data + pc * P.b.rs + j0 + jc + col0, P.b.rs, pack_b);
        } else {
          for (int64_t jp = jp0; jp < jp1; ++jp) pack_b_at(jp, pack_b + (jp - jp0) * NR * kc_cur);
        }
      };
      if (mm <= one_block_rows<C>()) {
        // One ic block (a convolution's F rows, say): pack A once, then B's
        // panels just before their micro-kernels: one at a time from a
        // packer, so the panel is used from L1 while it is warm and the
        // source (the image an im2col packer reads) is not evicted by a
        // whole packed block (c's forward: 1.6 MiB of panels, beyond L2);
        // a plain B in groups that wait in L2. Same arithmetic in the same
        // order as below.
        //   A group's rows are short (float64 KC 256: 2 panels, 512 bytes
        // of each of 256 rows, 25 KiB apart in c's 64 x 3136 x 576): too
        // short for the hardware's stream prefetchers, so pack_b_cols waited
        // on memory (25% of that product's time, its loads at ~11 GB/s).
        // The group's micro-kernels now bring the next group into L2: call
        // u prefetches line u of each of its rows, one row a k step (the
        // last call takes the rows' last elements, for rows that do not
        // start a line). Spread over the FMAs, not in a burst: 1024
        // prefetches before each panel gained nothing. Zen 4, 1 thread, c's
        // forward np/pc float64 0.91-0.92 -> 1.14-1.16, float32 1.01-1.06
        // -> 1.16-1.25. A group of fewer calls than lines (m < ~24) still
        // reads the rest from memory.
        constexpr int64_t kLine = 64 / int64_t(sizeof(T));
        const int64_t fit = kPackedBAheadBytes / (NR * kc_cur * int64_t(sizeof(T)));
        const int64_t group = rows_b && fit > 1 ? fit : 1;
        const T* pa = a_panels(i0, mm);
        for (int64_t jp0 = 0; jp0 < n_panels; jp0 += group) {
          const int64_t jp1 = min64(n_panels, jp0 + group);
          pack_b_cols(jp0, jp1);
          // The next group's rows: in this KC block, or after its last group
          // the next block's first, if that block has as many rows (the k
          // loop prefetches one row a step, kc_cur of them). Without the
          // latter, a block's first group read memory: every group of
          // affine1's float32 forward at 2 threads (50 rows, 2 panels a
          // thread). Zen 4, 1 thread, 3 rounds: 64 x 192 x 4096 float64 and
          // 64 x 256 x 4096 float32 1-3% faster.
          const T* next = nullptr;
          int64_t span = 0;
          if (rows_b && jp1 < n_panels) {
            next = P.b.data + pc * P.b.rs + j0 + jc + jp1 * NR;
            span = min64(nc_cur, (jp1 + group) * NR) - jp1 * NR;
          } else if (rows_b && pc + KC < P.k && P.k - (pc + KC) >= kc_cur) {
            next = P.b.data + (pc + KC) * P.b.rs + j0 + jc;
            span = min64(nc_cur, group * NR);
          }
          const int64_t lines = span > 0 ? ceil_div(span, kLine) + 1 : 0;
          int64_t call = 0;
          for (int64_t jp = jp0; jp < jp1; ++jp) {
            const int64_t col = j0 + jc + jp * NR;
            const int64_t n_cur = min64(NR, j0 + nn - col);
            const T* pb = pack_b + (jp - jp0) * NR * kc_cur;
            const int64_t paired = pair_panels<C>(kc_cur, pa, mm, pb, P.c + i0 * P.ldc + col,
                                                  P.ldc, P.alpha, beta_cur, bias_at(i0), n_cur);
            for (int64_t ir = paired; ir < mm; ir += MR, ++call) {
              const T* pf = call >= lines     ? nullptr
                            : call + 1 < lines ? next + call * kLine
                                               : next + (span - 1);
              micro_kernel_fit<C>(kc_cur, pa + ir * kc_cur, pb, P.c + (i0 + ir) * P.ldc + col,
                                  P.ldc, P.alpha, beta_cur, bias_at(i0 + ir),
                                  min64(MR, mm - ir), n_cur, pf, P.b.rs);
            }
          }
        }
        continue;
      }
      pack_b_cols(0, n_panels);
      for (int64_t ic = 0; ic < mm; ic += MC) {  // loop 3: ic
        const int64_t mc_cur = min64(MC, mm - ic);
        const int64_t row0 = i0 + ic;
        const T* pa = a_panels(row0, mc_cur);  // MR x kc panels
        for (int64_t jp = 0; jp < n_panels; ++jp) {  // loop 2: jr
          const int64_t col = j0 + jc + jp * NR;
          const int64_t n_cur = min64(NR, j0 + nn - col);
          const T* pb = pack_b + jp * NR * kc_cur;
          const int64_t paired = pair_panels<C>(kc_cur, pa, mc_cur, pb, P.c + row0 * P.ldc + col,
                                                P.ldc, P.alpha, beta_cur, bias_at(row0), n_cur);
          for (int64_t ir = paired; ir < mc_cur; ir += MR)  // loop 1: ir
            micro_kernel_fit<C>(kc_cur, pa + ir * kc_cur, pb, P.c + (row0 + ir) * P.ldc + col,
                                P.ldc, P.alpha, beta_cur, bias_at(row0 + ir),
                                min64(MR, mc_cur - ir), n_cur);
        }
      }
    }
  }
}

// All of A packed once, in the layout gemm_slice reads (for each KC block pc,
// the MR-row panels of every row at pc * m_pad + row * kc): a product run
// many times with the same A (a convolution's weights, image after image)
// then packs nothing of A per run.
template <class C, typename T = typename C::T>
int64_t cfg_packed_a_elems(int64_t m, int64_t k) {
  return ceil_div(m, C::MR) * C::MR * k;
}

template <class C, typename T = typename C::T>
void cfg_pack_a_whole(int64_t m, int64_t k, MatRef<T> a, T* dst) {
  constexpr int64_t MR = C::MR, KC = C::KC;
  const int64_t m_pad = ceil_div(m, MR) * MR;
  for (int64_t pc = 0; pc < k; pc += KC) {
    const int64_t kc_cur = min64(KC, k - pc);
    pack_a_block<C>(kc_cur, m, a.data + pc * a.cs, a.rs, a.cs, dst + pc * m_pad);
  }
}

// Threads take disjoint slices of C and run gemm_slice independently, each
// packing its own panels: no shared buffer, so no barrier at all (with
// OMP_WAIT_POLICY=passive every barrier is a futex sleep and wake, and a
// mid-sized GEMM with k = 4320 had 68 of them). The slices split the side
// whose duplicated packing costs less: rows (each thread packs all of B)
// when B is the smaller operand, columns (each packs all of A) otherwise.
template <class C, typename T = typename C::T>
void run_cfg(const Problem<T>& P, T* work, int nthreads) {
  constexpr int64_t MR = C::MR, VL = C::VL;
  const int64_t m = P.m, n = P.n, k = P.k;
  // Rows split in whole micro-panels; columns in vectors, not whole panels
  // (micro_kernel_fit runs a partial panel at its cost): n = 196 on 64-wide
  // panels splits 96 / 100 columns, not 128 / 68.
  const int64_t m_units = ceil_div(m, MR), n_units = ceil_div(n, VL);
  int64_t nt = nthreads < 1 ? 1 : nthreads;
  bool split_rows = m_units >= nt && (m >= n || n_units < nt);
  if (!split_rows && n_units < nt) nt = 1;
#ifdef _OPENMP
  if (nt > 1) {
    const int64_t stride = cfg_workspace_elems<C>(m, n, k);
    TeamJoin join(true);  // equal shares: gemm() learns of contention from it
#pragma omp parallel num_threads(nt)
    {
      const int64_t t = omp_get_thread_num(), team = omp_get_num_threads();
      const int64_t units = split_rows ? m_units : n_units;
      const int64_t u0 = units * t / team, u1 = units * (t + 1) / team;
      T* w = work + t * stride;
      if (split_rows)
        gemm_slice<C>(P, u0 * MR, min64(u1 * MR, m) - u0 * MR, 0, n, w);
      else
        gemm_slice<C>(P, 0, m, u0 * VL, min64(u1 * VL, n) - u0 * VL, w);
      join.arrive();
    }
    return;
  }
#endif
  (void)split_rows;
  (void)k;
  gemm_slice<C>(P, 0, m, 0, n, work);
}

// ---- Small products, A never packed ---------------------------------------------
// Below some 1e7 flops (and at any size where A is used once: use_small) the
// packed path's fixed work per call weighs:
// packing all of A (used by n / NR panels: once, for n <= NR) and all of B
// (used by m / MR panels). Here A is read in place by the micro-kernel's
// broadcasts, and B too where its rows are contiguous and the panel is whole
// vectors wide; only a B panel that is transposed or ends mid-vector is
// packed, one at a time, into the thread's scratch. Same loops as gemm_slice
// (pc -> jr -> ir) and the same sums in the same order, on one thread
// (use_small): a product computes the same bits on either path.
template <class C, bool kRowsA, typename T = typename C::T>
void gemm_small(const Problem<T>& P, T* work) {
  constexpr int64_t MR = C::MR, KC = C::KC, NR = C::NR, VL = C::VL;
  const int64_t lda = kRowsA ? P.a.rs : P.a.cs;
  // Rows in equal tiles of <= MR (25 rows: 5 x 5, not 4 x 6 + 1): a one-row
  // tile waits on FMA latency for a sixth of the work.
  const int64_t row_tiles = ceil_div(P.m, MR);
  // B's rows read in place unless their stride is a multiple of 2 KiB: the
  // panel's rows then fall on at most 8 of L1's 64 sets and evict each other
  // between row tiles (64 x 1024 x 27: 0.82x the packed panel's speed).
  const bool direct_b = P.b.cs == 1 && (P.b.rs * int64_t(sizeof(T))) % 2048 != 0;
  for (int64_t pc = 0; pc < P.k; pc += KC) {
    const int64_t kc_cur = min64(KC, P.k - pc);
    const T beta_cur = pc == 0 ? P.beta : T(1);
    const T* bias_cur = pc == 0 ? P.row_bias : nullptr;
    for (int64_t col = 0; col < P.n; col += NR) {
      const int64_t n_cur = min64(NR, P.n - col);
      const T* pb = P.b.data + pc * P.b.rs + col * P.b.cs;
      int64_t ldb = P.b.rs;
      if (!direct_b || n_cur % VL != 0) {
        pack_b_panel<C>(kc_cur, n_cur, pb, P.b.rs, P.b.cs, work);
        pb = work;
        ldb = panel_width<C>(n_cur);
      }
      for (int64_t t = 0; t < row_tiles; ++t) {
        const int64_t ir = P.m * t / row_tiles, m_cur = P.m * (t + 1) / row_tiles - ir;
        micro_kernel_unpacked_fit<C, kRowsA>(
            kc_cur, P.a.data + ir * P.a.rs + pc * P.a.cs, lda, pb, ldb, P.c + ir * P.ldc + col,
            P.ldc, P.alpha, beta_cur, bias_cur != nullptr ? bias_cur + ir : nullptr, m_cur,
            n_cur);
      }
    }
  }
}

// gemm_small instead of the packed path: a plain product (A and B strided
// matrices, A row-major or transposed) run on one thread, at most
// Blocking<T>::kSmallPanels panels wide (A is re-read once per panel; 8 where
// no wider limit was measured: from 12 panels on, 60 x 768 x 64, an older
// Xeon build had the packed path 9% faster in float32), and either
// - of at most kSmallFlops (the packed path's fixed work pays above: at 1.4e7
//   flops the two are level). Measured on the Xeon, interleaved, small /
//   packed speed: 100 x 10 x 100 1.42, 6 x 64 x 128 1.52, 64^3 1.14, 25 x 576
//   x 30 (A^T) 1.09, 1000 x 30 x 25 1.38, 30 x 64 x 2000 1.32; 64 x 1024 x 27,
//   128^3 0.98-1.02 (float64 1.0-1.5); or
// - of any size, one panel wide: its A is used once, so packing it only adds
//   a pass over A; or row-major A used by at most kSmallRowsPanels panels
//   (AVX-512: 128 columns). Zen 4, 1 thread, alternating processes, us, packed
//   / small: float32 57600 x 30 x 25 1437-1492 / 1034-1039 (A^T 1382-1388 /
//   1023-1113), 2000 x 64 x 1000 2624-2670 / 2351-2364 (A^T 2814-3392 /
//   2384-2514), 200 x 64 x 3000 783-787 / 691, 2048 x 128 x 2048 11281-11511 /
//   10335-10593, 300 x 128 x 3000 2209-2244 / 2100-2103, 100 x 100 x 4320
//   927 / 909-914; float64 57600 x 30 x 25 3156-3300 / 1891-2045 (A^T
//   3097-3115 / 2314-2641), 100 x 100 x 4320 1846-1871 / 1629-1649, 500 x 64
//   x 4000 5755-5900 / 4904-4987, 2000 x 128 x 500 5066-5153 / 4839-4860.
//   Level: float32 1000 x 100 x 1000 2070-2080 / 2106-2107 (a 36-column last
//   panel runs whole vectors here, a half one packed). Not further: float32
//   2048 x 576 x 2048 +2-4%; float64 2048 x 256 x 2048 (8 panels) +2-3%; A^T
//   on 2-4 panels (its k steps each touch a new line of A; 4320 x 100 x 100
//   +1-5%).
template <typename T>
constexpr double kSmallFlops = sizeof(T) == 4 ? 2.5e7 : 1.5e7;

template <class C, typename T = typename C::T>
bool use_small(const Problem<T>& P, int nthreads) {
  const bool plain = P.packer == nullptr && P.a_packer == nullptr && P.packed_a == nullptr &&
                     (P.a.cs == 1 || P.a.rs == 1);
  const int64_t panels = ceil_div(P.n, C::NR);
  const bool any_size = panels == 1 || (P.a.cs == 1 && panels <= Blocking<T>::kSmallRowsPanels);
  return plain && nthreads <= 1 && panels <= Blocking<T>::kSmallPanels &&
         (any_size || 2.0 * static_cast<double>(P.m) * static_cast<double>(P.n) *
                              static_cast<double>(P.k) <=
                          kSmallFlops<T>);
}

// slice(u0, u1) for equal contiguous ranges of `units` (rows of tiles,
// blocks of elements), one range per thread of a team of at most nthreads
// and at most units: no barrier, no shared writes (see run_cfg).
template <class F>
void split_units(int64_t units, int nthreads, F&& slice) {
  int64_t nt = nthreads < 1 ? 1 : nthreads;
  if (nt > units) nt = units;
#ifdef _OPENMP
  if (nt > 1) {
    TeamJoin join;
#pragma omp parallel num_threads(nt)
    {
      const int64_t t = omp_get_thread_num(), team = omp_get_num_threads();
      slice(units * t / team, units * (t + 1) / team);
      join.arrive();
    }
    return;
  }
#endif
  slice(0, units);
}

#if defined(PYCONV_ISA_AVX512)
// ---- Small products with B transposed, as dot products ----------------------
// C = alpha * A * B^T + beta * C where A (m x k) and B^T (n x k) are both
// row-major along k: each C element is a dot product of two contiguous rows.
// Neither operand is packed (gemm_small transposes B^T into panels: 20% of
// a 30 x 25 x 576 call) and no column is padded to whole vectors (its 25
// columns ran as 32 there). A block of RB x CB <= 5 x 5 elements keeps one
// vector accumulator per element along k: 25 + 5 vectors of A + 1 of B, 31
// of the 32 registers. Rows and columns go in equal blocks (30 = 6 x 5, 27 =
// 3 x 5 + 3 x 4), so no lane of the sum is wasted on padding; a k that ends
// mid-vector ends with masked loads. At the end of a block lane_sums turns
// each group of L accumulators into one vector of their L sums.
constexpr int kNtMax = 5;

// Lane q of the result = the sum of r[q]'s lanes, for q < N (r[N..L) are
// not read). It is the register transpose of transpose_vectors with each
// pair added as soon as its stage is done: stage b swaps bit b of the row
// with bit b of the lane, and no later stage touches row bit b, so rows r
// and r | b can be summed there instead of after all stages. L/2 + L/4 + ...
// shuffles pairs: 30 shuffles and 15 additions for 16 sums, where the whole
// transpose and its 15 additions took 64 shuffles.
template <typename T, int N, int Bit = 1>
__attribute__((always_inline)) inline typename TransposeVec<T>::V lane_sums(
    typename TransposeVec<T>::V* r) {
  using V = typename TransposeVec<T>::V;
  constexpr int L = TransposeVec<T>::L;
  if constexpr (Bit >= L) {
    return r[0];
  } else {
    constexpr auto lanes = std::make_index_sequence<L>{};
    const typename TransposeVec<T>::M ma = low_mask<T, Bit>(lanes),
                                      mb = high_mask<T, Bit>(lanes);
    // Rows live at multiples of Bit; row j (j < N) pairs with row j + Bit.
#pragma GCC unroll 16
    for (int j = 0; j < N; j += 2 * Bit) {
      const V x = r[j], y = j + Bit < N ? r[j + Bit] : V{};
      r[j] = __builtin_shuffle(x, y, ma) + __builtin_shuffle(x, y, mb);
    }
    return lane_sums<T, N, 2 * Bit>(r);
  }
}

// sum[q] = the sum of acc[q]'s lanes for q < N, by lane_sums on each group of
// L accumulators (acc and sum hold whole groups; sum 64-byte aligned).
template <typename T, int N>
__attribute__((always_inline)) inline void block_sums(typename TransposeVec<T>::V* acc,
                                                      T* sum) {
  using V = typename TransposeVec<T>::V;
  constexpr int L = TransposeVec<T>::L, G = (N + L - 1) / L;
#pragma GCC unroll 32
  for (int g = 0; g < G; ++g) {
    constexpr int last = N - (G - 1) * L;
    *reinterpret_cast<V*>(sum + g * L) =
        g + 1 < G ? lane_sums<T, L>(acc + g * L) : lane_sums<T, last>(acc + g * L);
  }
}

// One step of a dot-product block: acc[r * CB + c] += row(r) * col(c), each of
// its RB row vectors and CB column vectors loaded once (nt_block, wgrad_dot_block).
template <int RB, int CB, typename V, class Row, class Col>
__attribute__((always_inline)) inline void dot_step(V* acc, Row&& row, Col&& col) {
  V rv[RB];
#pragma GCC unroll 32
  for (int r = 0; r < RB; ++r) rv[r] = row(r);
#pragma GCC unroll 32
  for (int c = 0; c < CB; ++c) {
    const V cv = col(c);
#pragma GCC unroll 32
    for (int r = 0; r < RB; ++r) acc[r * CB + c] += rv[r] * cv;
  }
}

// f(integral_constant RB, integral_constant CB) for a block of exactly rb x cb
// elements (1 <= rb, cb <= kNtMax): the dot-product blocks are compiled per shape.
template <int RB = kNtMax, int CB = kNtMax, class F>
inline void with_block_shape(int64_t rb, int64_t cb, F&& f) {
  if constexpr (RB > 1) {
    if (rb < RB) {
      with_block_shape<RB - 1, CB>(rb, cb, f);
      return;
    }
  }
  if constexpr (CB > 1) {
    if (cb < CB) {
      with_block_shape<RB, CB - 1>(rb, cb, f);
      return;
    }
  }
  f(std::integral_constant<int, RB>{}, std::integral_constant<int, CB>{});
}

template <typename T, int RB, int CB>
inline void nt_block(const Problem<T>& P, int64_t i0, int64_t j0) {
  using V = typename TransposeVec<T>::V;
  using Z = Zmm<T>;
  constexpr int L = TransposeVec<T>::L, N = RB * CB, G = (N + L - 1) / L;
  const int64_t k = P.k, kv = k / L * L;
  const T* a[RB];
  const T* b[CB];
#pragma GCC unroll 32
  for (int r = 0; r < RB; ++r) a[r] = P.a.data + (i0 + r) * P.a.rs;
#pragma GCC unroll 32
  for (int c = 0; c < CB; ++c) b[c] = P.b.data + (j0 + c) * P.b.cs;
  V acc[G * L];
#pragma GCC unroll 32
  for (int q = 0; q < N; ++q) acc[q] = V{};
  // One vector of k at offset p, each row's vector read by load(row + p).
  const auto step = [&](int64_t p, auto load) __attribute__((always_inline)) {
    dot_step<RB, CB>(acc, [&](int r) { return load(a[r] + p); },
                     [&](int c) { return load(b[c] + p); });
  };
  for (int64_t p = 0; p < kv; p += L)
    step(p, [](const T* x) { return *reinterpret_cast<const V*>(x); });
  if (kv < k) {  // the k % L tail: masked loads, zeros past the rows' ends
    const typename Z::K km = Z::mask(k - kv);
    step(kv, [km](const T* x) { return reinterpret_cast<V>(Z::load(km, x)); });
  }
  alignas(64) T sum[G * L];
  block_sums<T, N>(acc, sum);
#pragma GCC unroll 32
  for (int r = 0; r < RB; ++r) {
    T* cp = P.c + (i0 + r) * P.ldc + j0;
    if (P.beta == T(0))
#pragma GCC unroll 32
      for (int c = 0; c < CB; ++c) cp[c] = P.alpha * sum[r * CB + c];
    else
#pragma GCC unroll 32
      for (int c = 0; c < CB; ++c) cp[c] = P.alpha * sum[r * CB + c] + P.beta * cp[c];
  }
}

// The dot-product blocks instead of gemm_small where a cost model, in
// vector FMAs, says they are cheaper. The blocks: one FMA per element and
// vector of k, plus ~4 for lane_sums and the scalar store; 1.15x that where
// A's 5 rows (k elements each) outgrow L1 and each column block re-reads
// them from L2. gemm_small: the columns padded to whole vectors (25 -> 32),
// plus ~0.8 per element of B^T for its transposes. Fitted on a Zen 4, 1
// thread, dot / packed speed, float32 (float64): 30 x 25 x 576 1.54 (1.44),
// 64 x 27 x 1024 1.43 (1.31), 200 x 27 x 576 1.18 (1.20), 30 x 16 x 576
// 1.22, 64 x 27 x 256 1.10, 1000 x 10 x 400 1.54, 64 x 1 x 4096 6.2 (2.7);
// the packed path ahead: 64 x 27 x 64 0.82 (0.98), 100 x 100 x 100 0.71
// (0.86), 64 x 64 x 1024 1.00 (0.85), 128 x 64 x 512 0.99. The model picks
// the faster of the two on each but float64 30 x 8 x 576 (dot 7% ahead).
// Serial products of at most 2^22 multiply-adds; the packed path takes
// larger ones and those run on threads.
template <typename T>
bool use_nt_small(const Problem<T>& P, int nthreads) {
  constexpr int64_t L = TransposeVec<T>::L;
  const bool plain = P.packer == nullptr && P.a_packer == nullptr && P.packed_a == nullptr &&
                     P.row_bias == nullptr && P.a.cs == 1 && P.b.rs == 1;
  const double m = static_cast<double>(P.m), n = static_cast<double>(P.n),
               k = static_cast<double>(P.k);
  if (!plain || nthreads > 1 || m * n * k > 4194304.0) return false;
  const bool a_in_l1 = P.n <= kNtMax || P.k * static_cast<int64_t>(sizeof(T)) <= 4096;
  const double dot = m * n * static_cast<double>(ceil_div(P.k, L) + 4) * (a_in_l1 ? 1.0 : 1.15);
  const double packed = m * static_cast<double>(ceil_div(P.n, L) * L) * k / L + 0.8 * n * k;
  return dot < packed;
}

template <typename T>
void gemm_nt_small(const Problem<T>& P) {
  const int64_t row_tiles = ceil_div(P.m, kNtMax), col_tiles = ceil_div(P.n, kNtMax);
  for (int64_t t = 0; t < row_tiles; ++t) {
    const int64_t i0 = P.m * t / row_tiles, rb = P.m * (t + 1) / row_tiles - i0;
    for (int64_t u = 0; u < col_tiles; ++u) {
      const int64_t j0 = P.n * u / col_tiles, cb = P.n * (u + 1) / col_tiles - j0;
      with_block_shape(rb, cb, [&](auto R, auto C) {
        nt_block<T, decltype(R)::value, decltype(C)::value>(P, i0, j0);
      });
    }
  }
}

// ---- Weight gradient as dot products over the pixels ------------------------
// dwt[k * F + f] (+)= sum_q dy[f, q] * xp[taps[k] + base(q)] at stride 1,
// base(q) = oh * WP + ow (wgrad_direct's sum, GemmImpl): each element of dW^T
// is the dot product of a row of dy, contiguous, with a tap's window of the
// padded image, contiguous along each output row. The sum runs over the
// pixels in whole vectors across output rows: a vector of the window is a
// masked load of the end of one output row merged with a masked load of the
// start of the next (two rows at most while OW >= L - 1), so only the last
// vector has lanes to spare (MNIST's 24-pixel rows: 576 pixels in 36 vectors,
// where row by row they take 48). Blocks of up to 5 filters x 5 taps as in
// nt_block: 25 accumulators, 5 vectors of dy, one of the window; lane_sums at
// the end. dy is read as it lies: wgrad_direct's tiles need it transposed
// into panels (pack_direct), and their 6 taps a tile pad 25 taps to 30.
//
// The vectors' offsets and masks are worked out once per image into a table
// (DotVec, in the caller's scratch): kept in the block's loop they took
// registers that its 10 row pointers needed, and GCC spilled those.
struct DotVec {
  std::int32_t o1, o2;  // lane l of a window vector at o1 + l (lanes m1) or o2 + l (m2)
  std::uint32_t m1, m2;
};

template <typename T>
int64_t dot_vecs(const Conv2dShape& s) {
  return ceil_div(s.col_cols(), Zmm<T>::L);
}

template <typename T>
void dot_table(const Conv2dShape& s, DotVec* tab) {
  constexpr int64_t L = Zmm<T>::L;
  const int64_t ow_n = s.out_w(), wp = s.width + 2 * s.pad, pixels = s.col_cols();
  int64_t row = 0, ow = 0;  // the vector's first pixel: row = oh * WP
  for (int64_t q = 0; q < pixels; q += L) {
    const int64_t run = ow_n - ow;  // its pixels left in output row oh
    const std::uint32_t lanes = Zmm<T>::mask(pixels - q), first = Zmm<T>::mask(run) & lanes;
    *tab++ = {static_cast<std::int32_t>(row + ow), static_cast<std::int32_t>(row + wp - run),
              first, lanes & ~first};
    for (ow += L; ow >= ow_n; ow -= ow_n) row += wp;
  }
}

template <typename T, int RB, int CB>
inline void wgrad_dot_block(const T* xp, const Conv2dShape& s, const T* dy,
                            const std::int32_t* taps, const DotVec* tab, bool accumulate,
                            T* dwt, int64_t f0, int64_t k0) {
  using V = typename TransposeVec<T>::V;
  using Z = Zmm<T>;
  using K = typename Z::K;
  constexpr int L = Z::L, N = RB * CB, G = (N + L - 1) / L;
  const int64_t pixels = s.col_cols(), vecs = ceil_div(pixels, L), whole = pixels / L;
  const T* d = dy + f0 * pixels;
  const T* x[CB];
#pragma GCC unroll 32
  for (int c = 0; c < CB; ++c) x[c] = xp + taps[k0 + c];
  V acc[G * L];
#pragma GCC unroll 32
  for (int q = 0; q < N; ++q) acc[q] = V{};
  // Vector v of the pixels: dy's rows by load_d(row's vector v), each tap's
  // window by window(tap's origin in xp, v's DotVec).
  const auto step = [&](int64_t v, auto load_d, auto window) __attribute__((always_inline)) {
    const DotVec e = tab[v];
    dot_step<RB, CB>(acc, [&](int r) { return load_d(d + r * pixels + v * L); },
                     [&](int c) { return window(x[c], e); });
  };
  const auto load = [](const T* p) { return reinterpret_cast<V>(Z::load(p)); };
  const auto in_row = [](const T* t, const DotVec& e) {  // the vector within one output row
    return reinterpret_cast<V>(Z::load(t + e.o1));
  };
  const auto two_rows = [](const T* t, const DotVec& e) {
    return reinterpret_cast<V>(Z::merge(Z::load(static_cast<K>(e.m1), t + e.o1),
                                        static_cast<K>(e.m2), t + e.o2));
  };
  for (int64_t v = 0; v < whole; ++v) {
    if (tab[v].m2 == 0)
      step(v, load, in_row);
    else
      step(v, load, two_rows);
  }
  if (whole < vecs) {  // the last vector: dy's lanes past the end read as zeros
    const K lanes = Z::mask(pixels - whole * L);
    step(whole, [lanes](const T* p) { return reinterpret_cast<V>(Z::load(lanes, p)); },
         two_rows);
  }
  alignas(64) T sum[G * L];
  block_sums<T, N>(acc, sum);
#pragma GCC unroll 32
  for (int c = 0; c < CB; ++c) {
    T* o = dwt + (k0 + c) * s.filters + f0;
#pragma GCC unroll 32
    for (int r = 0; r < RB; ++r) o[r] = accumulate ? o[r] + sum[r * CB + c] : sum[r * CB + c];
  }
}

// The scratch elements of T wgrad_dot needs for s (its DotVec table), or 0
// where the plan keeps wgrad_direct: not stride 1, output rows under L - 1
// pixels (a vector would span three), or costlier by a model in vector FMAs.
// Direct: its tiles of MR taps x whole vectors of filters over every pixel,
// plus ~1.2 per element of dy for pack_direct's transposes. Dot: one FMA per
// element of dW and vector of pixels, plus ~4 for lane_sums and the store
// (nt_block's), at 1.2 the cost of direct's: 10 loads a 25 FMAs (a window
// vector across two rows takes two), where direct's tile broadcasts 6 and
// loads 4 for 24, and a block's 5 rows of dy outgrow L1 on larger images
// (32 KiB: 1640 float32 pixels).
// Fitted on a Zen 4, backward of the layer, float32, 1 thread, ms, direct /
// dot (the model's choice in bold): a 2.47-2.51 / **2.30**, b 6.53-6.60 /
// **5.90** (float64 a 5.24 / **4.56**, b 12.2 / **11.6**); 144 taps, F = 64,
// 32 x 32 (32,16,32,32,64,3,1,1) **11.97** / 12.31-12.33; 288 taps
// (32,32,28,28,64,3,1,1) **17.5** / 19.3; c **135.7** / 141.6; level on
// (8,16,64,64,32,3,1,1): **6.11-6.16** / 6.10-6.12.
template <typename T>
int64_t wgrad_dot_elems(const Conv2dShape& s) {
  using C = typename Blocking<T>::Direct;
  constexpr int64_t L = C::VL, MR = C::MR;
  if (s.stride != 1 || s.out_w() < L - 1) return 0;
  const double f = static_cast<double>(s.filters), k = static_cast<double>(s.col_rows()),
               p = static_cast<double>(s.col_cols());
  const int64_t vecs = dot_vecs<T>(s);
  const double dot = 1.2 * f * k * static_cast<double>(vecs + 4);
  const double direct =
      static_cast<double>(ceil_div(s.col_rows(), MR) * MR * ceil_div(s.filters, L)) * p +
      1.2 * f * p;
  if (dot >= direct) return 0;
  return ceil_div(vecs * static_cast<int64_t>(sizeof(DotVec)),
                  static_cast<int64_t>(sizeof(T)));
}

// dwt (C*KH*KW x F) = or += col(xp) * dy^T by wgrad_dot_block, with
// `nthreads` threads taking disjoint ranges of blocks (elements of dwt): the
// bits do not depend on the thread count. work: wgrad_dot_elems(s) elements.
template <typename T>
void wgrad_dot(const T* xp, const Conv2dShape& s, const T* dy, const std::int32_t* taps,
               bool accumulate, T* dwt, T* work, int nthreads) {
  const int64_t f = s.filters, k = s.col_rows();
  const int64_t fb = ceil_div(f, kNtMax), kb = ceil_div(k, kNtMax), blocks = fb * kb;
  DotVec* tab = reinterpret_cast<DotVec*>(work);
  dot_table<T>(s, tab);
  auto slice = [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {  // filters outer: a block's dy rows stay in L1
      const int64_t u = b / kb, v = b % kb;
      const int64_t f0 = f * u / fb, k0 = k * v / kb;
      with_block_shape(f * (u + 1) / fb - f0, k * (v + 1) / kb - k0, [&](auto R, auto C) {
        wgrad_dot_block<T, decltype(R)::value, decltype(C)::value>(xp, s, dy, taps, tab,
                                                                    accumulate, dwt, f0, k0);
      });
    }
  };
  split_units(blocks, nthreads, slice);
}
#endif

#if defined(PYCONV_ISA_AVX512) || defined(PYCONV_ISA_AVX2)
// ---- Direct convolution: vectors along the output channels ------------------
// A convolution's products read straight from the image's zero-padded copy xp
// (pad_image), with no column matrix and no packed image panels. Entry (k, q)
// of the column matrix is xp[taps[k] + bases[q]]: tap k = (c, kh, kw) at
// taps[k] = (c * HP + kh) * WP + kw, output pixel q = (oh, ow) at bases[q] =
// oh * stride * WP + ow * stride. A tile keeps MR x NU vectors of
// accumulators, its MR rows being pixels (the forward) or taps (the weight
// gradient) and its vectors the filters; each step of the sum loads NU vectors
// of filters and broadcasts each row's input:
//   forward  y[f, q]   = sum_k w[f, k] * xp[bases[q] + taps[k]]   (rows q, sum k)
//   gradient dW[f, k] += sum_q dy[f, q] * xp[taps[k] + bases[q]]  (rows k, sum q)
// The filters' operand (w, or one image's dy) is packed once as panels of NR
// filters, sum-length rows of panel_width each (pack_direct). This is
// oneDNN's choice of vectors along channels, kept in the NCHW layout: the GEMM
// path packs every image's im2col panels (15% of c's forward) and pads F = 64
// rows to 6-row panels. Rows are tiled through the flattened pixels or taps,
// so a tile may span two output rows: each row has its own offset.
template <typename T>
struct DirectJob {
  const T* xp;
  const std::int32_t* rows;  // offsets of the tile rows (bases, or taps)
  int64_t n_rows;
  const std::int32_t* idx;   // offsets summed over (taps, or bases)
  int64_t n_idx;
  const T* panels;  // pack_direct of the filters' operand (F x n_idx)
  int64_t filters;
  const T* bias;    // forward: added to y's rows, or null
  bool transposed;  // forward: out[f * ldo + row]; gradient: out[row * ldo + f]
  bool accumulate;  // add to out instead of overwriting it
  T* out;
  int64_t ldo;
  // GemmImpl::conv_direct's or wgrad_direct's plan (rows: pixels or taps), or null
  const std::int32_t* plan = nullptr;
};

// direct_tile's transposed store for a tile whose pixels are not consecutive
// in out (a plan's tile across a row's end, or down a column): pixel pix[i]
// of each filter's row, element by element. Its own function, so that the
// consecutive case keeps its loop (with this one inside it, GCC kept every
// vector on the stack: c's forward 4% slower).
template <class C, int NU, typename T, typename V>
void direct_store_scattered(const V (&acc)[C::MR][NU], const T* bias, bool accumulate, T* out,
                            int64_t ldo, int64_t m_cur, int64_t f_cur,
                            const std::int32_t* pix) {
  constexpr int MR = C::MR, L = C::VL;
  for (int j = 0; j < NU; ++j) {
    alignas(64) T lane[MR][L];
    for (int i = 0; i < MR; ++i) *reinterpret_cast<V*>(lane[i]) = acc[i][j];
    const int64_t rows = min64(L, f_cur - j * L);
    for (int64_t l = 0; l < rows; ++l) {
      T* o = out + (j * L + l) * ldo;
      const T add = bias != nullptr ? bias[j * L + l] : T(0);
      for (int64_t i = 0; i < m_cur; ++i) {
        const T v = bias != nullptr ? lane[i][l] + add : lane[i][l];
        o[pix[i]] = accumulate ? o[pix[i]] + v : v;
      }
    }
  }
}

// One tile over sum steps [0, kc) of its panel block w, and its store: rows
// [0, m_cur) of the tile, filters [0, f_cur) of the panel (out, bias at the
// panel's first filter and the tile's first row). A sum split into blocks
// carries the tile's accumulators from block to block: they start from
// carry_in (zero if null) and, with carry_out, go there as they are instead
// of to out, so each element is one FMA chain in k order whatever the blocks.
// With kRows, step k's filters are row wrow[k] of the panel block w instead
// of its row k (a plan's box: the taps, or the pixels, that do not fall on
// the padding). With pix, row i of the tile is row pix[i] of out (a pixel,
// transposed; a tap, not transposed) instead of row i.
template <class C, int NU, bool kRows = false, typename T = typename C::T>
inline void direct_tile(int64_t kc, const std::int32_t* __restrict idx, const T* __restrict w,
                        const T* const* px, const T* carry_in, T* carry_out, const T* bias,
                        bool accumulate, bool transposed, T* out, int64_t ldo, int64_t m_cur,
                        int64_t f_cur, const std::int32_t* __restrict wrow = nullptr,
                        const std::int32_t* pix = nullptr) {
  using V = typename TransposeVec<T>::V;
  using Z = MaskedVec<T>;
  constexpr int MR = C::MR, L = Z::L;
  static_assert(C::VL == L && MR <= L, "a tile's rows fit one vector's lanes");
  // The k loop of micro_kernel with the broadcasts read through px. Not a
  // shared helper: passing the A side as a callable changed GCC's inlining of
  // the GEMM's 6x64 kernel (inlined twice into gemm_slice, +27% code) and the
  // GEMM measured 1-3% slower.
  V acc[MR][NU];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NU; ++j)
      acc[i][j] = carry_in != nullptr ? reinterpret_cast<const V*>(carry_in)[i * NU + j] : V{};
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const int64_t d = idx[k];
    // Registers: MR * NU accumulators, the MR broadcasts and one filter
    // vector (AVX2's 3 x 4 tile: 12 + 3 + 1 of 16; AVX-512's 6 x 4: 24 + 6 +
    // 1 of 32, no spills). AVX-512 loaded its 4 filter vectors first and
    // broadcast one pixel at a time until 2026-12-06: on a Zen 4 this order
    // ran level with it (c, d, e, 1 thread, alternating: 0.999-1.014 of its
    // time); not yet timed on a Xeon.
    V xv[MR];
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) xv[i] = splat<V>(px[i][d]);
    const T* wk = kRows ? w + int64_t(wrow[k]) * (NU * L) : w;
#pragma GCC unroll 8
    for (int j = 0; j < NU; ++j) {
      const V wv = *reinterpret_cast<const V*>(wk + j * L);
#pragma GCC unroll 32
      for (int i = 0; i < MR; ++i) acc[i][j] += xv[i] * wv;
    }
    if (!kRows) w += NU * L;
  }
  if (carry_out != nullptr) {
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NU; ++j) reinterpret_cast<V*>(carry_out)[i * NU + j] = acc[i][j];
    return;
  }
  if (!transposed) {  // row i of the tile is row i (pix[i]) of out, filters along it
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      if (i >= m_cur) break;
      T* row = out + (pix != nullptr ? int64_t(pix[i]) : i) * ldo;
#pragma GCC unroll 8
      for (int j = 0; j < NU; ++j) {
        T* o = row + j * L;
        typename Z::V v = reinterpret_cast<typename Z::V>(acc[i][j]);
        if (accumulate) v = Z::add(v, Z::load_n(o, f_cur - j * L));
        Z::store_n(o, v, f_cur - j * L);
      }
    }
    return;
  }
  // Vector j holds filters j*L.. of row (pixel) i in acc[i][j]; after the
  // transpose, r[l] holds filter j*L + l's pixels in its lanes 0..MR-1.
  if (pix != nullptr) {
    bool scattered = false;
    for (int64_t i = 1; i < m_cur; ++i) scattered |= pix[i] != pix[0] + i;
    if (scattered) {
      direct_store_scattered<C, NU>(acc, bias, accumulate, out, ldo, m_cur, f_cur, pix);
      return;
    }
    out += pix[0];
  }
  const typename Z::K lanes = Z::mask(m_cur);
#pragma GCC unroll 8
  for (int j = 0; j < NU; ++j) {
    const int64_t rows = min64(L, f_cur - j * L);
    if (rows <= 0) break;
    V r[L];
    for (int i = 0; i < L; ++i) r[i] = i < MR ? acc[i][j] : V{};
    transpose_vectors<T>(r);
    for (int64_t l = 0; l < rows; ++l) {
      T* o = out + (j * L + l) * ldo;
      V v = r[l];
      if (bias != nullptr) v += splat<V>(bias[j * L + l]);
      typename Z::V ov = reinterpret_cast<typename Z::V>(v);
      if (accumulate) ov = Z::add(ov, Z::load(lanes, o));
      Z::store(o, lanes, ov);
    }
  }
}

// Elements of pack_direct's panels of an f x k operand.
template <typename T>
int64_t direct_panels_elems(int64_t f, int64_t k) {
  using C = typename Blocking<T>::Direct;
  return k * ceil_div(f, C::VL) * C::VL;
}

// a (f x k, row-major) -> panels of NR rows of a, each k x panel_width,
// k-major: a^T's B panels of the GEMM (pack_b_panel, register transposes).
template <typename T>
void pack_direct(const T* a, int64_t f, int64_t k, T* dst) {
  using C = typename Blocking<T>::Direct;
  for (int64_t f0 = 0; f0 < f; f0 += C::NR) {
    const int64_t f_cur = min64(C::NR, f - f0);
    pack_b_panel<C>(k, f_cur, a + f0 * k, 1, k, dst);
    dst += k * panel_width<C>(f_cur);
  }
}

// Tiles [t0, t1) of one panel of filters [f0, f0 + f_cur), NU vectors wide.
// The sum runs in equal blocks of <= KC steps, so that the panel's block
// stays in cache while a group of kDirectGroup tiles passes; the group's
// accumulators wait in `carry` (on the stack) between blocks, and only the
// last block stores to out.
template <class C, int NU, typename T = typename C::T>
void direct_tiles(const DirectJob<T>& J, const T* panel, int64_t f0, int64_t f_cur, int64_t t0,
                  int64_t t1) {
  constexpr int64_t MR = C::MR, KC = C::KC, kGroup = kDirectGroup;
  const int64_t nr = panel_width<C>(f_cur);
  const int64_t kb = ceil_div(J.n_idx, ceil_div(J.n_idx, KC));
  const T* bias = J.bias != nullptr ? J.bias + f0 : nullptr;
  // A plan (conv_direct's: the forward, and dx as a convolution) orders the
  // pixels and gives each tile a box: the entries (tap offset, tap index) of
  // the taps not on the padding for some pixel of the tile, in tap order, so
  // a KC block's are a contiguous run of them. wgrad_direct's orders the taps
  // and gives each tile the entries (pixel offset, pixel index) of the pixels
  // where some tap of the tile is not on the padding, in pixel order.
  // (A plan for other tiles or rows than these is not ours: none.)
  const std::int32_t* plan =
      J.plan != nullptr && J.plan[0] == MR && J.plan[1] == J.n_rows ? J.plan : nullptr;
  const int64_t n_boxes = plan != nullptr ? plan[2] : 0;
  const std::int32_t* tile_box = plan != nullptr ? plan + 3 : nullptr;
  const std::int32_t* box_off = plan != nullptr ? tile_box + ceil_div(J.n_rows, MR) : nullptr;
  const std::int32_t* order = plan != nullptr ? box_off + n_boxes + 1 : nullptr;
  const std::int32_t* ent_tap = plan != nullptr ? order + J.n_rows : nullptr;
  const std::int32_t* ent_k = plan != nullptr ? ent_tap + box_off[n_boxes] : nullptr;
  alignas(64) T carry[kGroup][MR * NU * C::VL];
  for (int64_t g0 = t0; g0 < t1; g0 += kGroup) {
    const int64_t g1 = min64(t1, g0 + kGroup);
    for (int64_t k0 = 0; k0 < J.n_idx; k0 += kb) {
      const int64_t kc = min64(kb, J.n_idx - k0);
      const bool last = k0 + kc == J.n_idx;
      for (int64_t t = g0; t < g1; ++t) {
        const int64_t r0 = t * MR, m_cur = min64(MR, J.n_rows - r0);
        const std::int32_t* pix = order != nullptr ? order + r0 : nullptr;
        const T* px[MR];
        for (int64_t i = 0; i < MR; ++i) {  // rows past the end repeat the first
          const int64_t r = i < m_cur ? i : 0;
          px[i] = J.xp + J.rows[pix != nullptr ? pix[r] : r0 + r];
        }
        T* out = J.transposed ? J.out + f0 * J.ldo + (pix != nullptr ? 0 : r0)
                              : J.out + (pix != nullptr ? 0 : r0 * J.ldo) + f0;
        T* slot = carry[t - g0];
        const int64_t box = tile_box != nullptr ? tile_box[t] : -1;
        if (box < 0) {
          direct_tile<C, NU>(kc, J.idx + k0, panel + k0 * nr, px, k0 > 0 ? slot : nullptr,
                             last ? nullptr : slot, bias, J.accumulate, J.transposed, out,
                             J.ldo, m_cur, f_cur, nullptr, pix);
          continue;
        }
        // The box's entries in this block; none: the carry waits (the last
        // block stores all the same).
        const std::int32_t* b0 = ent_k + box_off[box];
        const std::int32_t* b1 = ent_k + box_off[box + 1];
        const std::int32_t* e0 = std::lower_bound(b0, b1, static_cast<std::int32_t>(k0));
        const std::int32_t* e1 = std::lower_bound(e0, b1, static_cast<std::int32_t>(k0 + kc));
        if (e0 == e1 && !last) continue;
        direct_tile<C, NU, true>(e1 - e0, ent_tap + (e0 - ent_k), panel, px,
                                 e0 > b0 ? slot : nullptr, last ? nullptr : slot, bias,
                                 J.accumulate, J.transposed, out, J.ldo, m_cur, f_cur, e0, pix);
      }
    }
  }
}

// Tiles of a panel of f_cur filters, NU = ceil(f_cur / VL) vectors wide.
template <class C, int NU, typename T = typename C::T>
void direct_tiles_fit(const DirectJob<T>& J, const T* panel, int64_t f0, int64_t f_cur,
                      int64_t t0, int64_t t1) {
  if constexpr (NU > 1) {
    if (f_cur <= (NU - 1) * C::VL) {
      direct_tiles_fit<C, NU - 1>(J, panel, f0, f_cur, t0, t1);
      return;
    }
  }
  direct_tiles<C, NU>(J, panel, f0, f_cur, t0, t1);
}

// The whole job with `nthreads` threads, which take disjoint ranges of tiles
// (rows of out): no barrier, no shared writes (see run_cfg).
template <typename T>
void direct_run(const DirectJob<T>& J, int nthreads) {
  using C = typename Blocking<T>::Direct;
  const int64_t tiles = ceil_div(J.n_rows, C::MR);
  auto slice = [&](int64_t t0, int64_t t1) {
    const T* panel = J.panels;
    for (int64_t f0 = 0; f0 < J.filters; f0 += C::NR) {
      const int64_t f_cur = min64(C::NR, J.filters - f0);
      direct_tiles_fit<C, C::NV>(J, panel, f0, f_cur, t0, t1);
      panel += J.n_idx * panel_width<C>(f_cur);
    }
  };
  split_units(tiles, nthreads, slice);
}

template <typename T>
void conv_direct(const T* xp, const Conv2dShape& s, const T* pw, const std::int32_t* taps,
                 const std::int32_t* bases, const std::int32_t* plan, const T* bias, T* y,
                 int nthreads) {
  const int64_t cols = s.col_cols();
  direct_run(DirectJob<T>{xp, bases, cols, taps, s.col_rows(), pw, s.filters, bias, true, false,
                          y, cols, plan},
             nthreads);
}

template <typename T>
void wgrad_direct(const T* xp, const Conv2dShape& s, const T* pdy, const std::int32_t* taps,
                  const std::int32_t* bases, const std::int32_t* plan, bool accumulate, T* dwt,
                  int nthreads) {
  direct_run(DirectJob<T>{xp, taps, s.col_rows(), bases, s.col_cols(), pdy, s.filters, nullptr,
                          false, accumulate, dwt, s.filters, plan},
             nthreads);
}
#endif

// The wide configuration unless the narrow one saves over a fifth of the
// padded columns. Not for n <= one vector: both kernels then run a single
// vector column (micro_kernel_fit) at the same cost per row, and the wide
// one's A panels pack by vector shuffles (affine2's 100 x 10 x 100: the
// narrow kernel spent 36% of the call packing A element by element).
template <typename T>
bool use_narrow(int64_t n) {
  using W = typename Blocking<T>::Wide;
  using N = typename Blocking<T>::Narrow;
  return N::NR < W::NR && n > W::VL &&
         ceil_div(n, N::NR) * N::NR * 5 < ceil_div(n, W::NR) * W::NR * 4;
}

// f(C{}) for the configuration C that a product with n columns runs on: the
// one place that choice is made, for the scratch, the packed A and the run.
template <typename T, class F>
inline auto with_config(int64_t n, F&& f) {
  if (use_narrow<T>(n)) return f(typename Blocking<T>::Narrow{});
  return f(typename Blocking<T>::Wide{});
}

template <typename T>
int64_t workspace_elems(int64_t m, int64_t n, int64_t k) {
  return with_config<T>(n, [&](auto cfg) { return cfg_workspace_elems<decltype(cfg)>(m, n, k); });
}

template <typename T>
void run(int64_t m, int64_t n, int64_t k, T alpha, MatRef<T> a, MatRef<T> b, T beta, T* c,
         int64_t ldc, T* work, int nthreads, const PackB<T>* packer,
         const PackA<T>* a_packer, const T* packed_a, const T* row_bias) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0 || alpha == T(0)) {  // C = beta * C (+ bias), A and B not read
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        T v = beta == T(0) ? T(0) : beta * c[i * ldc + j];
        if (row_bias != nullptr) v += row_bias[i];
        c[i * ldc + j] = v;
      }
    return;
  }
  const Problem<T> P{m, n, k, alpha, a, b, beta, c, ldc, packer, a_packer, packed_a, row_bias};
#if defined(PYCONV_ISA_AVX512)
  if (use_nt_small(P, nthreads)) {
    gemm_nt_small(P);
    return;
  }
#endif
  with_config<T>(n, [&](auto cfg) {
    using C = decltype(cfg);
    if (!use_small<C>(P, nthreads))
      run_cfg<C>(P, work, nthreads);
    else if (P.a.cs == 1)
      gemm_small<C, true>(P, work);
    else
      gemm_small<C, false>(P, work);
  });
}

// pack_a_whole for the configuration run() picks for this n.
template <typename T>
int64_t packed_a_elems(int64_t m, int64_t n, int64_t k) {
  return with_config<T>(n, [&](auto cfg) { return cfg_packed_a_elems<decltype(cfg)>(m, k); });
}

template <typename T>
void pack_a_whole(int64_t m, int64_t n, int64_t k, MatRef<T> a, T* dst) {
  with_config<T>(n, [&](auto cfg) { cfg_pack_a_whole<decltype(cfg)>(m, k, a, dst); });
}

// ---- FMA peak probe ----------------------------------------------------------
// `iters` rounds of kFmaChains independent multiply-adds on full vectors of
// this ISA: with enough chains to cover FMA latency x pipes, the loop runs at
// the core's FMA throughput, the ceiling the micro-kernels are measured
// against (benchmarks report their GFLOP/s as a fraction of it). Returns the
// flops done; the sum of the lanes goes to *sink so that no chain is dead.
// 16 chains fill 4-cycle x 2-pipe AVX-512 cores twice over with 18 of 32
// registers; 12 leave AVX2's and the baseline's 16 registers room for m and a.
constexpr int kFmaChains = kVecBytes == 64 ? 16 : 12;

template <typename T>
double fma_probe(int64_t iters, T* sink) {
  using V = typename VecOf<T>::V;
  // Opaque to the optimiser: with constants GCC folded the chain that starts
  // at m, since m * m + a == m exactly in float (one chain fewer, a "peak"
  // 6% above the hardware's).
  volatile T m_in = static_cast<T>(0.999999), a_in = static_cast<T>(1e-6);
  const V m = splat<V>(static_cast<T>(m_in)), a = splat<V>(static_cast<T>(a_in));
  V acc[kFmaChains];
  for (int c = 0; c < kFmaChains; ++c) acc[c] = m * static_cast<T>(c + 1);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kFmaChains; ++c) acc[c] = acc[c] * m + a;
  }
  V total = acc[0];
  for (int c = 1; c < kFmaChains; ++c) total += acc[c];
  T s = 0;
  for (std::size_t j = 0; j < sizeof(V) / sizeof(T); ++j) s += total[j];
  *sink += s;
  return 2.0 * kFmaChains * static_cast<double>(sizeof(V) / sizeof(T)) *
         static_cast<double>(iters);
}

template <typename T>
BlockSizes block_sizes() {  // the wide configuration's (reported by config())
  using W = typename Blocking<T>::Wide;
  return {W::MR, W::NR, W::KC, W::MC, W::NC, Blocking<T>::kSmallPanels};
}

}  // namespace

GemmImpl<float> make_gemm_float() {
  return {PYCONV_ISA_NAME, block_sizes<float>(), &workspace_elems<float>, &run<float>,
          &packed_a_elems<float>, &pack_a_whole<float>,
          &pack_im2col<float>, &pack_im2col_a<float>, &col2im<float>,
#if defined(PYCONV_ISA_AVX512) || defined(PYCONV_ISA_AVX2)
          &direct_panels_elems<float>, &pack_direct<float>, Blocking<float>::Direct::MR,
          &conv_direct<float>, &wgrad_direct<float>,
#else
          nullptr, nullptr, 0, nullptr, nullptr,
#endif
#if defined(PYCONV_ISA_AVX512)
          &wgrad_dot_elems<float>, &wgrad_dot<float>,
#else
          nullptr, nullptr,
#endif
          &fma_probe<float>};
}
GemmImpl<double> make_gemm_double() {
  return {PYCONV_ISA_NAME, block_sizes<double>(), &workspace_elems<double>, &run<double>,
          &packed_a_elems<double>, &pack_a_whole<double>,
          &pack_im2col<double>, &pack_im2col_a<double>, &col2im<double>,
#if defined(PYCONV_ISA_AVX512)
          &direct_panels_elems<double>, &pack_direct<double>, Blocking<double>::Direct::MR,
          &conv_direct<double>, &wgrad_direct<double>, &wgrad_dot_elems<double>,
          &wgrad_dot<double>,
#else  // on AVX2 a 4 x 8 float64 tile (8 accumulators) lost to the GEMM: see Blocking
          nullptr, nullptr, 0, nullptr, nullptr, nullptr, nullptr,
#endif
          &fma_probe<double>};
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
