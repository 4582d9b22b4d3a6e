// Blocked GEMM, C = alpha * A * B + beta * C, in the BLIS five-loop structure.
// A and B are strided views (a transpose is a swap of rs/cs); C is row-major
// with leading dimension ldc. The micro-kernels are compiled once per ISA level
// (gemm_generic.cpp, gemm_avx2.cpp, gemm_avx512.cpp) and the best one the CPU
// supports is chosen at run time (select_isa / PYCONV_ISA).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "shape.h"

namespace pyconv {

template <typename T>
struct MatRef {  // element (i, j) is data[i * rs + j * cs]; t() is free
  const T* data;
  std::int64_t rows, cols, rs, cs;
  MatRef t() const { return {data, cols, rows, cs, rs}; }
};

struct BlockSizes {
  std::int64_t mr, nr;  // register block of the micro-kernel
  std::int64_t kc;      // k depth of a packed panel
  std::int64_t mc;      // rows of the packed A block
  std::int64_t nc;      // columns of the packed B block
  std::int64_t small_panels;  // widest unpacked small product, in NR panels
};

// Packs panels of B on the fly instead of reading a strided matrix (im2col
// fused into the GEMM's packing, so the column matrix is never written):
// fill(ctx, pc, kc, j0, n_cur, nr, dst) writes B[pc:pc+kc, j0:j0+n_cur] as kc
// rows of nr elements (row p at dst + p*nr), zeros in columns n_cur..nr-1.
template <typename T>
struct PackB {
  void (*fill)(const void* ctx, std::int64_t pc, std::int64_t kc, std::int64_t j0,
               std::int64_t n_cur, std::int64_t nr, T* dst);
  const void* ctx;
};

// Packs micro-panels of A on the fly (the im2col matrix as the weight
// gradient's A operand, never written whole): fill(ctx, i0, m_cur, pc, kc, mr,
// dst) writes A[i0:i0+m_cur, pc:pc+kc] k-major as dst[p*mr + i], zeros in
// rows m_cur..mr-1.
template <typename T>
struct PackA {
  void (*fill)(const void* ctx, std::int64_t i0, std::int64_t m_cur, std::int64_t pc,
               std::int64_t kc, std::int64_t mr, T* dst);
  const void* ctx;
};

// One ISA's implementation. workspace(m, n, k) is the scratch one GEMM thread
// needs, in elements of T (a multiple of 64 bytes); run() computes the whole
// product with `nthreads` threads (1: no parallel region at all, safe to call
// from inside one), thread t using work + t * workspace(m, n, k), with work
// 64-byte aligned. With a non-null packer, B's panels come from it and b is
// not read; likewise A's from a non-null a_packer or packed_a. A non-null
// row_bias (m elements) is added to C's rows: C = alpha*A*B + beta*C + bias
// (a convolution's bias, without a pass that fills C with it first).
template <typename T>
struct GemmImpl {
  const char* isa;
  BlockSizes bs;
  std::int64_t (*workspace)(std::int64_t m, std::int64_t n, std::int64_t k);
  void (*run)(std::int64_t m, std::int64_t n, std::int64_t k, T alpha, MatRef<T> a,
              MatRef<T> b, T beta, T* c, std::int64_t ldc, T* work, int nthreads,
              const PackB<T>* packer, const PackA<T>* a_packer, const T* packed_a,
              const T* row_bias);
  // All of an m x k A packed once (pack_a) for later run()s with the same m,
  // n, k, given as packed_a: packed_a_elems(m, n, k) elements, 64-byte aligned.
  std::int64_t (*packed_a_elems)(std::int64_t m, std::int64_t n, std::int64_t k);
  void (*pack_a)(std::int64_t m, std::int64_t n, std::int64_t k, MatRef<T> a, T* dst);
  // PackB<T>::fill for an Im2colPanels<T> context (im2col.h).
  void (*pack_im2col)(const void* ctx, std::int64_t pc, std::int64_t kc, std::int64_t j0,
                      std::int64_t n_cur, std::int64_t nr, T* dst);
  // PackA<T>::fill of the same matrix (rows (c, kh, kw), columns (oh, ow)) for
  // an Im2colPanels<T> context with a padded image (xp set).
  void (*pack_im2col_a)(const void* ctx, std::int64_t i0, std::int64_t m_cur, std::int64_t pc,
                        std::int64_t kc, std::int64_t mr, T* dst);
  // Adjoint of pack_im2col for one whole image: x (C x H x W) <- zeroes, then
  // every entry of col (C*KH*KW x OH*OW) added into the pixel it came from.
  void (*col2im)(const T* col, const Conv2dShape& s, T* x);
  // Direct convolution of one image from its zero-padded copy xp (pad_image),
  // no column matrix or packed image panels (gemm_kernels.h); null where the
  // ISA has none. Tables: taps[k] = (c * (H + 2 pad) + kh) * (W + 2 pad) + kw
  // for tap k = (c, kh, kw); bases[q] = (oh * (W + 2 pad) + ow) * stride for
  // output pixel q = (oh, ow) (direct_tables, conv2d.cpp). The filters'
  // operand, f x k row-major, is packed by pack_direct into
  // direct_panels_elems(f, k) elements (64-byte aligned).
  //   conv_direct: y (F x OH*OW) = w * col(x) (+ bias unless null), with w
  //     packed as pack_direct(w, F, C*KH*KW); overwrites y. With a plan
  //     (pixel_plan, conv2d.cpp; built for tiles of direct_rows pixels),
  //     tiles skip the taps that fall on the padding for all their pixels:
  //     plan[0] = rows a tile, [1] = pixels, [2] = boxes; then each tile's
  //     box (-1: every tap), the boxes' entry offsets (boxes + 1), the pixels
  //     in tile order, and the entries' tap offsets and tap indices (two
  //     arrays, each box's in increasing tap order). Null: every tap.
  //   wgrad_direct: dwt (C*KH*KW x F, dW transposed) = or += col(x) * dy^T,
  //     with dy packed as pack_direct(dy, F, OH*OW). Its plan (tap_plan,
  //     conv2d.cpp; tiles of direct_rows taps) has the same layout with taps
  //     for pixels: tiles skip the pixels where all their taps fall on the
  //     padding; the entries are pixel offsets (bases) and pixel indices.
  std::int64_t (*direct_panels_elems)(std::int64_t f, std::int64_t k);
  void (*pack_direct)(const T* a, std::int64_t f, std::int64_t k, T* dst);
  std::int64_t direct_rows;  // pixels in a conv_direct tile (0 where there is none)
  void (*conv_direct)(const T* xp, const Conv2dShape& s, const T* pw, const std::int32_t* taps,
                      const std::int32_t* bases, const std::int32_t* plan, const T* bias, T* y,
                      int nthreads);
  void (*wgrad_direct)(const T* xp, const Conv2dShape& s, const T* pdy,
                       const std::int32_t* taps, const std::int32_t* bases,
                       const std::int32_t* plan, bool accumulate, T* dwt, int nthreads);
  //   wgrad_dot: the same weight gradient from dy as it lies (F x OH*OW), as
  //     dot products over the pixels, with wgrad_dot_elems(s) elements of
  //     scratch in work (64-byte aligned); wgrad_dot_elems is 0 for the
  //     layers it does not take (not stride 1, narrow output rows, or slower
  //     than wgrad_direct by its cost model). Both null where the ISA has none.
  std::int64_t (*wgrad_dot_elems)(const Conv2dShape& s);
  void (*wgrad_dot)(const T* xp, const Conv2dShape& s, const T* dy, const std::int32_t* taps,
                    bool accumulate, T* dwt, T* work, int nthreads);
  // FMA throughput probe (benchmarks only): `iters` rounds of independent
  // vector multiply-adds; returns the flops done, adds a checksum to *sink.
  double (*fma_probe)(std::int64_t iters, T* sink);
};

// The implementation in use for T (the selected ISA).
template <typename T>
const GemmImpl<T>& gemm_impl();

// Names of the code paths this CPU can run, best first; the selected one.
std::vector<std::string> available_isas();
std::string current_isa();
// Selects a code path by name; returns false if unknown or unsupported here.
bool select_isa(const std::string& name);

// The selected code path's FMA peak in GFLOP/s with `nthreads` threads, each
// running fma_probe for about `seconds` (one calibration round first).
// Preconditions: nthreads >= 1, 0 < seconds <= 60.
template <typename T>
double fma_peak_gflops(int nthreads, double seconds);

// The sizes (2mnk flops) from which gemm() uses more than one thread
// (gemm.cpp says why): parallel_flops while threads pay (team_contended()
// is false, runtime.h), measured at its first call (outside a parallel
// region; 1-3 ms), contended_parallel_flops otherwise. Both are
// PYCONV_PARALLEL_FLOPS if it is set to a number >= 0.
template <typename T>
double parallel_flops();
template <typename T>
double contended_parallel_flops();

// C (m x n, row-major, ldc) = alpha * A (m x k) * B (k x n) + beta * C.
// beta == 0: C is write-only (never read; may hold NaN). Allocates its pack
// buffers, then runs with `nthreads` threads (one inside a parallel region
// or below the thresholds above).
// Preconditions: m, n, k >= 0; a.rows == m, a.cols == k, b.rows == k,
// b.cols == n; ldc >= n.
template <typename T>
void gemm(std::int64_t m, std::int64_t n, std::int64_t k, T alpha, MatRef<T> a, MatRef<T> b,
          T beta, T* c, std::int64_t ldc, int nthreads);

}  // namespace pyconv
