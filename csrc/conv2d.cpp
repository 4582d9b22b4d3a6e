// Convolution by im2col + GEMM or the direct kernel, parallel over images or
// inside each image's kernel.
#include "conv2d.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "gemm.h"
#include "im2col.h"
#include "runtime.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pyconv {

Conv2dShape dx_shape(const Conv2dShape& s) {
  return {s.batch, s.filters, s.out_h(), s.out_w(), s.channels, s.kernel_h, s.kernel_w, 1,
          s.kernel_h - 1 - s.pad};
}

namespace {
struct GemmDims {
  std::int64_t m, n, k;
};

// The GEMM whose A side is dx's weights: the convolution of dy with the
// flipped kernel (C x H*W x F*KH*KW) when dx_conv, else w^T * dy (C*KH*KW x
// OH*OW x F, then col2im). The plan sizes its packed A and scratch from it,
// the backward packs that A.
GemmDims dx_gemm(const Conv2dShape& s, bool dx_conv) {
  if (!dx_conv) return {s.col_rows(), s.col_cols(), s.filters};
  const Conv2dShape sd = dx_shape(s);
  return {s.channels, sd.col_cols(), sd.col_rows()};
}

// The direct kernels' tables of s (GemmImpl::conv_direct): taps (C*KH*KW)
// then bases (OH*OW), the offsets in the padded image of each tap and of each
// output pixel's window. int32: a padded copy is at most kPadBudget bytes
// (conv2d_plan).
struct DirectTables {
  const std::int32_t* taps;
  const std::int32_t* bases;
  const std::int32_t* plan;  // conv_direct's or wgrad_direct's plan, or null
  std::int32_t* end;         // one past the tables: where the next tables go
};

// The kernel offsets [lo, hi) of output row (or column) o whose input row
// lies in the image, not on the padding: o * stride + k in [pad, pad + n).
struct Span {
  std::int64_t lo, hi;
};
Span valid_taps(std::int64_t o, std::int64_t stride, std::int64_t pad, std::int64_t n,
                std::int64_t kernel) {
  const std::int64_t lo = std::max<std::int64_t>(0, pad - o * stride);
  const std::int64_t hi = std::min<std::int64_t>(kernel, pad + n - o * stride);
  return {lo, std::max(lo, hi)};
}

// conv_direct's plan (GemmImpl::conv_direct gives its layout), for tiles of
// `rows` pixels. Where a window meets the padding its taps there multiply
// zeros: 8.7% of the taps of d's (16,96,27,27,256,5,1,2) forward, which
// oneDNN skips (torch was 7% slower on the same input pre-padded, Zen 4).
// The pixels go in classes whose windows meet the padding alike: over the
// interior rows, band by band of `rows` rows, the left border columns one by
// one, the interior, the right border columns; then the border rows above and
// below. A tile of consecutive pixels runs the hull of its pixels' valid
// taps (its box; one table per distinct box, its taps in tap order), so each
// output is the same chain of FMAs as without the plan, minus products with
// padded zeros (an infinity or NaN in w no longer meets them, as in oneDNN).
// Tiles with a box read their filters through the table's tap indices,
// measured 1.5% slower a step than in order (the 6 x 64 loop, d's tables).
struct Box {
  // Rows [y0, y1) and columns [x0, x1): of the kernel in a pixel plan (the
  // taps a tile runs), of the output in a tap plan (the pixels it sums over).
  std::int64_t y0, y1, x0, x1;
  bool operator==(const Box& o) const {
    return y0 == o.y0 && y1 == o.y1 && x0 == o.x0 && x1 == o.x1;
  }
};
struct DirectPlan {
  std::vector<std::int32_t> order, tile_box;  // rows in class order; box per tile (-1: all)
  std::vector<Box> boxes;
  std::int64_t per_cell = 0;  // entries per cell of a box: C (pixel plan) or 1 (tap plan)
  std::int64_t entries = 0;   // over all boxes
  std::int64_t box_entries(const Box& b) const {
    return per_cell * (b.y1 - b.y0) * (b.x1 - b.x0);
  }
  std::int64_t count() const {  // int32s of the plan; 0: none
    if (boxes.empty()) return 0;
    return 3 + static_cast<std::int64_t>(tile_box.size() + boxes.size() + 1 + order.size()) +
           2 * entries;
  }
  // Each tile's box: tiles of `rows` of order's entries, the hull of their
  // spans(e) (rows and columns of the kernel, or of the output, that entry e
  // reaches), within y_n x x_n (the full box: tile_box -1). False past
  // kPlanBudget entries.
  template <class Spans>
  bool put_tiles(std::int64_t rows, std::int64_t y_n, std::int64_t x_n, Spans spans);
};

// A plan of at most this many box entries (8 MiB of tables), else none: only
// a pad of many rows makes that many distinct boxes (d's plan: 8 boxes, 105
// KiB, 7.5% fewer taps a call, of the 8.7% on the padding; c 2.3%, e 4.0%).
constexpr std::int64_t kPlanBudget = std::int64_t(1) << 20;

template <class Spans>
bool DirectPlan::put_tiles(std::int64_t rows, std::int64_t y_n, std::int64_t x_n, Spans spans) {
  const auto n = static_cast<std::int64_t>(order.size());
  tile_box.resize(static_cast<std::size_t>((n + rows - 1) / rows));
  for (std::size_t t = 0; t < tile_box.size(); ++t) {
    Box b{y_n, 0, x_n, 0};
    const std::int64_t i0 = static_cast<std::int64_t>(t) * rows;
    for (std::int64_t i = i0; i < std::min(n, i0 + rows); ++i) {
      const auto [r, c] = spans(order[static_cast<std::size_t>(i)]);
      if (r.lo == r.hi || c.lo == c.hi) continue;  // wholly on the padding
      b = {std::min(b.y0, r.lo), std::max(b.y1, r.hi), std::min(b.x0, c.lo),
           std::max(b.x1, c.hi)};
    }
    if (b.y0 >= b.y1) b = {0, 0, 0, 0};  // nothing at all
    if (b == Box{0, y_n, 0, x_n}) {
      tile_box[t] = -1;
      continue;
    }
    const auto it = std::find(boxes.begin(), boxes.end(), b);
    tile_box[t] = static_cast<std::int32_t>(it - boxes.begin());
    if (it != boxes.end()) continue;
    boxes.push_back(b);
    entries += box_entries(b);
    if (entries > kPlanBudget) return false;
  }
  return true;
}

DirectPlan pixel_plan(const Conv2dShape& s, std::int64_t rows) {
  DirectPlan pl;
  pl.per_cell = s.channels;
  const std::int64_t oh_n = s.out_h(), ow_n = s.out_w(), kh_n = s.kernel_h, kw_n = s.kernel_w;
  if (rows <= 0 || s.pad == 0 || oh_n <= 0 || ow_n <= 0) return pl;
  auto row_span = [&](std::int64_t oh) { return valid_taps(oh, s.stride, s.pad, s.height, kh_n); };
  auto col_span = [&](std::int64_t ow) { return valid_taps(ow, s.stride, s.pad, s.width, kw_n); };
  auto full_row = [&](std::int64_t oh) {
    const Span v = row_span(oh);
    return v.lo == 0 && v.hi == kh_n;
  };
  auto full_col = [&](std::int64_t ow) {
    const Span v = col_span(ow);
    return v.lo == 0 && v.hi == kw_n;
  };
  // Rows [r0, r1) and columns [c0, c1) have all their taps inside (intervals).
  std::int64_t r0 = 0, c0 = 0;
  while (r0 < oh_n && !full_row(r0)) ++r0;
  std::int64_t r1 = r0;
  while (r1 < oh_n && full_row(r1)) ++r1;
  while (c0 < ow_n && !full_col(c0)) ++c0;
  std::int64_t c1 = c0;
  while (c1 < ow_n && full_col(c1)) ++c1;
  if (r0 == 0 && r1 == oh_n && c0 == 0 && c1 == ow_n) return pl;  // no window on the padding
  pl.order.reserve(static_cast<std::size_t>(oh_n * ow_n));
  auto put = [&](std::int64_t oh, std::int64_t ow) {
    pl.order.push_back(static_cast<std::int32_t>(oh * ow_n + ow));
  };
  // The interior rows in bands of `rows` rows: a border column's tile is one
  // band's pixels, and it writes the output lines that its band's interior
  // tiles write next (with each column's pixels all in a row, c's forward
  // was 1% slower, not faster: those lines were evicted in between). A band
  // of `rows` rows is whole tiles, so every class starts a tile; the border
  // rows come last for the same reason.
  for (std::int64_t band = r0; band < r1; band += rows) {
    const std::int64_t end = std::min(r1, band + rows);
    for (std::int64_t ow = 0; ow < c0; ++ow)
      for (std::int64_t oh = band; oh < end; ++oh) put(oh, ow);
    for (std::int64_t oh = band; oh < end; ++oh)
      for (std::int64_t ow = c0; ow < c1; ++ow) put(oh, ow);
    for (std::int64_t ow = c1; ow < ow_n; ++ow)
      for (std::int64_t oh = band; oh < end; ++oh) put(oh, ow);
  }
  for (std::int64_t oh = 0; oh < oh_n; ++oh) {
    if (oh == r0) oh = r1;  // the border rows above, then below
    if (oh >= oh_n) break;
    for (std::int64_t ow = 0; ow < ow_n; ++ow) put(oh, ow);
  }
  // A tile's box: the hull of its pixels' valid taps.
  auto taps_of = [&](std::int32_t q) { return std::pair{row_span(q / ow_n), col_span(q % ow_n)}; };
  if (!pl.put_tiles(rows, kh_n, kw_n, taps_of)) return DirectPlan{};
  return pl;
}

// wgrad_direct's plan, for tiles of `rows` taps (its tiles are taps, its sum
// runs over the output pixels): a tap (c, kh, kw) meets the padding at the
// output rows and columns where kh or kw falls outside the image, 8.7% of the
// products of d's weight gradient. The taps go in (kh, kw, c) order, so that
// a tile's taps (channels, where C is a multiple of `rows`) miss the same
// pixels; each tile runs the hull of its taps' valid pixels (a box of output
// rows [y0, y1) and columns [x0, x1), one table per distinct box: pixel
// offsets and indices in pixel order). Each dW element is then the same chain
// of FMAs as without the plan, minus products with padded zeros. Zen 4, 1
// thread, alternating processes: d's dW float32 133-134 -> 124 ms, float64
// 267-273 -> 254-255; c's (2.4% on the padding, against the table's 1.5% a
// step) level.
DirectPlan tap_plan(const Conv2dShape& s, std::int64_t rows) {
  DirectPlan pl;
  pl.per_cell = 1;
  const std::int64_t oh_n = s.out_h(), ow_n = s.out_w(), kh_n = s.kernel_h, kw_n = s.kernel_w;
  if (rows <= 0 || s.pad == 0 || oh_n <= 0 || ow_n <= 0) return pl;
  // The outputs [lo, hi) whose window's row (column) k lies in the image:
  // o * stride + k in [pad, pad + n).
  // (A bound <= 0 clamps to 0: no output below it.)
  auto up = [&](std::int64_t a) { return a <= 0 ? 0 : (a + s.stride - 1) / s.stride; };
  auto outputs = [&](std::int64_t k, std::int64_t n, std::int64_t out_n) {
    const std::int64_t lo = up(s.pad - k), hi = std::min(out_n, up(s.pad + n - k));
    return Span{lo, std::max(lo, hi)};
  };
  pl.order.reserve(static_cast<std::size_t>(s.channels * kh_n * kw_n));
  for (std::int64_t kh = 0; kh < kh_n; ++kh)
    for (std::int64_t kw = 0; kw < kw_n; ++kw)
      for (std::int64_t c = 0; c < s.channels; ++c)
        pl.order.push_back(static_cast<std::int32_t>((c * kh_n + kh) * kw_n + kw));
  // A tile's box: the hull of its taps' valid pixels.
  auto pixels_of = [&](std::int32_t k) {
    return std::pair{outputs(k / kw_n % kh_n, s.height, oh_n), outputs(k % kw_n, s.width, ow_n)};
  };
  if (!pl.put_tiles(rows, oh_n, ow_n, pixels_of)) return DirectPlan{};
  return pl;
}

// Which plan a table carries: none, conv_direct's (tiles of pixels) or
// wgrad_direct's (tiles of taps).
enum class PlanFor { kNone, kPixels, kTaps };

DirectPlan direct_plan(const Conv2dShape& s, PlanFor kind, std::int64_t rows) {
  if (kind == PlanFor::kPixels) return pixel_plan(s, rows);
  if (kind == PlanFor::kTaps) return tap_plan(s, rows);
  return DirectPlan{};
}

// The plan is computed here for the slab's size and again by direct_tables
// (O(OH*OW) or O(C*KH*KW) each: 2 us for d's 729 pixels, 24 us for c's 3136,
// against 128 and 68 ms of forward).
std::int64_t direct_table_count(const Conv2dShape& s, PlanFor kind, std::int64_t plan_rows) {
  return s.col_rows() + s.col_cols() + direct_plan(s, kind, plan_rows).count();
}

// taps, bases, then the plan of that kind for tiles of plan_rows pixels or
// taps, if it has anything to skip.
DirectTables direct_tables(const Conv2dShape& s, std::int32_t* dst, PlanFor kind,
                           std::int64_t plan_rows) {
  const std::int64_t wp = s.width + 2 * s.pad, hp = s.height + 2 * s.pad;
  DirectTables t{dst, dst + s.col_rows(), nullptr, nullptr};
  for (std::int64_t c = 0; c < s.channels; ++c)
    for (std::int64_t kh = 0; kh < s.kernel_h; ++kh)
      for (std::int64_t kw = 0; kw < s.kernel_w; ++kw)
        *dst++ = static_cast<std::int32_t>((c * hp + kh) * wp + kw);
  for (std::int64_t oh = 0; oh < s.out_h(); ++oh)
    for (std::int64_t ow = 0; ow < s.out_w(); ++ow)
      *dst++ = static_cast<std::int32_t>((oh * wp + ow) * s.stride);
  const DirectPlan pl = direct_plan(s, kind, plan_rows);
  t.end = dst + pl.count();
  if (pl.count() == 0) return t;
  t.plan = dst;
  const auto n_boxes = static_cast<std::int64_t>(pl.boxes.size());
  *dst++ = static_cast<std::int32_t>(plan_rows);
  *dst++ = static_cast<std::int32_t>(pl.order.size());
  *dst++ = static_cast<std::int32_t>(n_boxes);
  dst = std::copy(pl.tile_box.begin(), pl.tile_box.end(), dst);
  std::int64_t off = 0;
  for (const Box& b : pl.boxes) {
    *dst++ = static_cast<std::int32_t>(off);
    off += pl.box_entries(b);
  }
  *dst++ = static_cast<std::int32_t>(off);
  dst = std::copy(pl.order.begin(), pl.order.end(), dst);
  std::int32_t* offset = dst;
  std::int32_t* index = dst + pl.entries;
  auto put = [&](const std::int32_t* table, std::int64_t k) {  // entry k of taps or bases
    *offset++ = table[k];
    *index++ = static_cast<std::int32_t>(k);
  };
  for (const Box& b : pl.boxes) {
    if (kind == PlanFor::kTaps) {  // pixel (oh, ow)'s entry in bases
      for (std::int64_t oh = b.y0; oh < b.y1; ++oh)
        for (std::int64_t ow = b.x0; ow < b.x1; ++ow) put(t.bases, oh * s.out_w() + ow);
      continue;
    }
    for (std::int64_t c = 0; c < s.channels; ++c)  // tap (c, kh, kw)'s entry in taps
      for (std::int64_t kh = b.y0; kh < b.y1; ++kh)
        for (std::int64_t kw = b.x0; kw < b.x1; ++kw)
          put(t.taps, (c * s.kernel_h + kh) * s.kernel_w + kw);
  }
  return t;
}

// Bytes of a zero-padded copy of one image of s, in double: a large pad can
// overflow int64 here.
template <typename T>
double padded_bytes(const Conv2dShape& s) {
  return static_cast<double>(sizeof(T)) * static_cast<double>(s.channels) *
         (static_cast<double>(s.height) + 2.0 * static_cast<double>(s.pad)) *
         (static_cast<double>(s.width) + 2.0 * static_cast<double>(s.pad));
}
}  // namespace

// Strategy. When the batch splits evenly enough, each thread takes whole
// images (its own scratch, a serial GEMM): no synchronisation inside an image,
// every GEMM sees a full core, and small images (MNIST: 30x576x25 GEMMs) are
// far too small to share. "Evenly enough": the batch is a multiple of the
// thread count, or at least 4 images per thread (a leftover image then costs
// at most 1/4 of a thread's work). Otherwise (N = 1 inference, N = 3 on two
// threads) the threads share each image's GEMMs instead.
template <typename T>
ConvPlan conv2d_plan(const Conv2dShape& s, const GemmImpl<T>& g, int nthreads, bool backward) {
  ConvPlan p{};
#ifdef _OPENMP
  const std::int64_t nt = nthreads < 1 ? 1 : nthreads;
#else
  (void)nthreads;  // a serial build: every team is the calling thread alone
  const std::int64_t nt = 1;
#endif
  const bool over_images =
      nt > 1 && s.batch >= nt && (s.batch % nt == 0 || s.batch >= 4 * nt);
  p.team = over_images ? static_cast<int>(nt) : 1;
  p.gemm_threads = over_images ? 1 : static_cast<int>(nt);
  p.direct = s.kernel_h == 1 && s.kernel_w == 1 && s.stride == 1 && s.pad == 0;
  // im2col from a zero-padded copy of the image (im2col.h) unless that copy
  // would be large (a huge image or pad): it costs C*(H+2p)*(W+2p) elements
  // per thread, at most 16 MiB (ImageNet's 64 x 230 x 230 float32 is 13.5).
  constexpr double kPadBudget = 16.0 * 1024 * 1024;
  p.padded = !p.direct && padded_bytes<T>(s) <= kPadBudget;
  const std::int64_t ckk = s.col_rows(), cols = s.col_cols(), f = s.filters;
  // dx by convolving dy (stride 1): no dcol matrix (C*KH*KW x OH*OW) written
  // and read back by col2im, which was 7-8% of c's and d's fwd+bwd (perf).
  // The GEMM is C x H*W x F*KH*KW, so few channels would leave most of the
  // micro-kernel's MR rows as padding (MNIST's C = 1: 1 of 6): those keep
  // the column-matrix path, as do kernels whose two flipped pads differ.
  const Conv2dShape sd = dx_shape(s);
  p.dx_conv = backward && p.padded && s.stride == 1 && s.kernel_h == s.kernel_w &&
              s.pad <= s.kernel_h - 1 && s.channels >= 16 && padded_bytes<T>(sd) <= kPadBudget;
  p.flip_elems = p.dx_conv ? f * ckk : 0;
  // The direct convolution (vectors along filters, GemmImpl::conv_direct)
  // where the ISA has one and the layer has enough taps (C*KH*KW): each tile
  // of 6 pixels x 64 filters ends with register transposes and 64 masked
  // stores, which cost as much as ~40 taps. Forward, float32, 1 thread, ms,
  // GEMM path / direct, on the Xeon: 144 taps (64,16,32,32,64,3,1,1) 8.8 /
  // 9.7; 288 (32,32,32,32,64,3,1,1) 8.6-8.8 / 8.4-8.5; 360 10.7-10.8 /
  // 10.0-10.6; 400 (16,16,27,27,64,5,1,2) 4.5-4.7 / 3.4-3.6; c (576) 51-53 /
  // 44-46. Its AVX2 path (float32 only, then 6 x 16 tiles): 288 taps forward
  // 13.0-13.7 / 10.8-11.2, backward 28.9-31.5 / 23.0-23.7; 400 taps forward
  // 6.5-6.6 / 5.1-5.5, backward 18.1-18.8 / 10.8-11.4. On a Zen 4 (three
  // alternations, benchmarks/results/2026-12-07-zen4-direct-threshold.txt)
  // the crossover is 216-288 taps on AVX-512 (216: 18.9-19.5 / 19.1-19.3,
  // 288: 12.5-12.7 / 12.1-12.2) and 288-400 on AVX2's 3 x 32 tiles (288:
  // 13.5-13.8 / 14.0-14.2, GEMM 3% ahead; 400: 7.0-7.9 / 6.3-6.4); dx with
  // 144 taps (F = 16) keeps GEMM on both. One threshold for both ISAs: at
  // 288 taps, the one measured case the two would place apart, AVX2's GEMM
  // path was 3% ahead here and its direct kernel 17% ahead on the Xeon.
  constexpr std::int64_t kDirectMinTaps = 256;
  auto direct_ok = [&](const Conv2dShape& c) {
    return g.conv_direct != nullptr && c.col_rows() >= kDirectMinTaps;
  };
  p.fwd_direct = !backward && p.padded && direct_ok(s);
  p.dx_direct = p.dx_conv && direct_ok(sd);
  // The weight gradient by wgrad_direct for every padded layer: its tiles
  // (6 taps x 64 filters of dW^T) sum over the pixels and are stored as they
  // are, with no transpose, so few taps cost nothing extra. fwd+bwd, float32,
  // 1 thread, ms, before / after (forward and dx already direct where they
  // apply): a 3.54 / 2.98, b 7.0 / 6.7, c 144-152 / 131, e 43-45 / 41. On
  // AVX-512, layers with few taps (a, b) take wgrad_dot instead, where its
  // cost model says so: dot products over the pixels, dy read as it lies
  // (no pack_direct), the taps not padded to whole tiles.
  const std::int64_t dot_elems =
      backward && p.padded && g.wgrad_dot_elems != nullptr ? g.wgrad_dot_elems(s) : 0;
  p.dw_dot = dot_elems > 0;
  p.dw_direct = backward && p.padded && !p.dw_dot && g.wgrad_direct != nullptr;
  // The tables: of s (forward or dW), then of dx_shape(s); int32 in T's units.
  const bool s_tables = p.fwd_direct || p.dw_direct || p.dw_dot;
  const PlanFor s_plan = p.fwd_direct  ? PlanFor::kPixels
                         : p.dw_direct ? PlanFor::kTaps
                                       : PlanFor::kNone;
  const std::int64_t tables =
      (s_tables ? direct_table_count(s, s_plan, g.direct_rows) : 0) +
      (p.dx_direct ? direct_table_count(sd, PlanFor::kPixels, g.direct_rows) : 0);
  p.table_elems = (tables * 4 + static_cast<std::int64_t>(sizeof(T)) - 1) /
                  static_cast<std::int64_t>(sizeof(T));
  p.dyt_elems = p.dw_dot ? dot_elems : p.dw_direct ? g.direct_panels_elems(f, cols) : 0;
  // The weights' side of a product is the same for every image: it is packed
  // once per call (d's forward spent 3% of its time repacking w per image), as
  // GEMM A panels or the direct kernel's panels: w for the forward; for dx,
  // the flipped kernel or w^T.
  const GemmDims dx = dx_gemm(s, p.dx_conv);
  if (backward)
    p.packed_w_elems = p.dx_direct ? g.direct_panels_elems(dx.m, dx.k)
                                   : g.packed_a_elems(dx.m, dx.n, dx.k);
  else
    p.packed_w_elems = p.fwd_direct ? g.direct_panels_elems(f, ckk)
                                    : g.packed_a_elems(f, cols, ckk);
  p.pad_elems = std::max(p.padded ? padded_image_elems(s) : 0,
                         p.dx_conv ? padded_image_elems(sd) : 0);
  // The forward packs im2col straight into the GEMM's B panels, the weight
  // gradient into its A panels; a column matrix is written only for dx's
  // columns (col2im), or for dW when the image is too large to pad.
  p.col_elems = p.direct || !backward || (p.padded && p.dx_conv) ? 0 : ckk * cols;
  // The largest of the GEMMs a call runs: forward (f, cols, ckk); backward
  // weight, transposed (ckk, f, cols), and dx's.
  std::int64_t ws = 0;
  if (!backward && !p.fwd_direct) ws = g.workspace(f, cols, ckk);
  if (backward && !p.dw_direct && !p.dw_dot) ws = g.workspace(ckk, f, cols);
  if (backward && !p.dx_direct) ws = std::max(ws, g.workspace(dx.m, dx.n, dx.k));
  p.gemm_elems = ws * p.gemm_threads;
  p.partial_elems = backward ? f * ckk + f : 0;
  // Every slice starts on a 64-byte boundary: the micro-kernels load packed
  // panels with aligned vector loads.
  constexpr std::int64_t line = 64 / static_cast<std::int64_t>(sizeof(T));
  for (std::int64_t* e : {&p.table_elems, &p.flip_elems, &p.packed_w_elems, &p.pad_elems,
                          &p.col_elems, &p.dyt_elems, &p.gemm_elems, &p.partial_elems})
    *e = (*e + line - 1) / line * line;
  p.bytes = static_cast<std::int64_t>(sizeof(T)) *
            (p.table_elems + p.flip_elems + p.packed_w_elems +
             p.team * (p.pad_elems + p.col_elems + p.dyt_elems + p.gemm_elems +
                       p.partial_elems));
  return p;
}

namespace {

// One slab: the call's direct-kernel tables and weights (flipped, packed),
// then a slice per team thread.
template <typename T>
struct Scratch {
  std::int64_t stride;
  Workspace slab;
  const ConvPlan& plan;
  explicit Scratch(const ConvPlan& p)
      : stride(p.pad_elems + p.col_elems + p.dyt_elems + p.gemm_elems + p.partial_elems),
        slab(static_cast<std::size_t>(p.table_elems + p.flip_elems + p.packed_w_elems +
                                      p.team * stride) *
             sizeof(T)),
        plan(p) {}
  std::int32_t* tables() const { return static_cast<std::int32_t*>(slab.data()); }
  T* flip() const { return static_cast<T*>(slab.data()) + plan.table_elems; }
  T* packed_w() const { return flip() + plan.flip_elems; }
  T* pad(int t) const { return packed_w() + plan.packed_w_elems + t * stride; }
  T* col(int t) const { return pad(t) + plan.pad_elems; }
  T* dyt(int t) const { return col(t) + plan.col_elems; }
  T* gemm(int t) const { return dyt(t) + plan.dyt_elems; }
  T* partial(int t) const { return gemm(t) + plan.gemm_elems; }
};

// Sum of row[0..n): 16 independent partial sums (which the compiler keeps in
// vector registers) instead of one serial chain of dependent adds; a fixed
// order, so the result repeats exactly.
template <typename T>
T row_sum(const T* row, std::int64_t n) {
  constexpr int kLanes = 16;
  T part[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) part[l] += row[j + l];
  for (; j < n; ++j) part[0] += row[j];
  T sum = T(0);
  for (int l = 0; l < kLanes; ++l) sum += part[l];
  return sum;
}

// First and one-past-last image of team thread t (contiguous blocks, so the
// batch reduction order depends only on the team size).
inline void image_range(std::int64_t batch, int team, int t, std::int64_t* lo,
                        std::int64_t* hi) {
  *lo = batch * t / team;
  *hi = batch * (t + 1) / team;
}

// The im2col source of image x_n: padded into xp if `padded`.
template <typename T>
Im2colPanels<T> im2col_source(const T* x_n, const Conv2dShape& s, bool padded, T* xp) {
  if (!padded) return {x_n, s, nullptr};
  pad_image(x_n, s, xp);
  return {x_n, s, xp};
}

// y_n = w * col(x_n) (+ b broadcast along rows unless b is null), with w
// given as its GEMM A panels pw (GemmImpl::pack_a, once per call), or, with
// tables (the direct convolution), as pack_direct's panels.
template <typename T>
void conv_image(const GemmImpl<T>& g, const T* x_n, const T* pw, const T* b,
                const Conv2dShape& s, bool padded, bool direct, const DirectTables* tables,
                int gemm_threads, T* xp, T* work, T* y_n) {
  if (tables != nullptr) {
    pad_image(x_n, s, xp);
    g.conv_direct(xp, s, pw, tables->taps, tables->bases, tables->plan, b, y_n, gemm_threads);
    return;
  }
  const std::int64_t ckk = s.col_rows(), cols = s.col_cols(), f = s.filters;
  const Im2colPanels<T> panels = im2col_source(x_n, s, padded, xp);
  const PackB<T> packer{g.pack_im2col, &panels};
  g.run(f, cols, ckk, T(1), MatRef<T>{nullptr, f, ckk, ckk, 1}, MatRef<T>{x_n, ckk, cols, cols, 1},
        T(0), y_n, cols, work, gemm_threads, direct ? nullptr : &packer, nullptr, pw, b);
}

template <typename T>
void forward_image(const GemmImpl<T>& g, const T* x_n, const T* pw, const DirectTables& tables,
                   const T* b, const Conv2dShape& s, const ConvPlan& p, T* xp, T* work,
                   T* y_n) {
  conv_image(g, x_n, pw, b, s, p.padded, p.direct, p.fwd_direct ? &tables : nullptr,
             p.gemm_threads, xp, work, y_n);
}

// wf (C x F x KH x KW) <- w (F x C x KH x KW) transposed in (F, C) and
// flipped in both spatial axes: the kernel of dx_shape(s).
template <typename T>
void flip_kernel(const T* w, const Conv2dShape& s, T* wf) {
  const std::int64_t kk = s.kernel_h * s.kernel_w;
  for (std::int64_t c = 0; c < s.channels; ++c)
    for (std::int64_t f = 0; f < s.filters; ++f) {
      const T* src = w + (f * s.channels + c) * kk;
      T* dst = wf + (c * s.filters + f) * kk;
      for (std::int64_t i = 0; i < kk; ++i) dst[i] = src[kk - 1 - i];
    }
}

// dwt (+)= col_n * dy_n^T, i.e. dW transposed (C*KH*KW x F): by wgrad_direct
// from the padded image and dy_n's packed panels (dyt) when p.dw_direct; else
// the column matrix is GEMM's A operand, packed from the padded image panel by
// panel (pack_im2col_a; the whole matrix is written only for an image too
// large to pad), instead of a transposed B gathered across rows. db (+)= row
// sums of dy_n. dx_n when wanted; pwx: the A panels of dx's GEMM, packed once
// per call (the flipped kernel when p.dx_conv, else w^T), or pack_direct's
// panels of the flipped kernel when p.dx_direct. tables: the direct kernels'
// tables of s and of dx_shape(s), as the plan asks for them.
template <typename T>
void backward_image(const GemmImpl<T>& g, const T* x_n, const T* pwx,
                    const DirectTables* tables, const T* dy_n, const Conv2dShape& s,
                    const ConvPlan& p, bool first, T* xp, T* col, T* dyt, T* work, T* dwt,
                    T* db, T* dx_n) {
  const std::int64_t ckk = s.col_rows(), cols = s.col_cols(), f = s.filters;
  const T* src = x_n;
  const Im2colPanels<T> panels = im2col_source(x_n, s, p.padded, xp);
  const PackA<T> a_packer{g.pack_im2col_a, &panels};
  if (p.dw_dot) {
    g.wgrad_dot(xp, s, dy_n, tables[0].taps, !first, dwt, dyt, p.gemm_threads);
  } else if (p.dw_direct) {
    g.pack_direct(dy_n, f, cols, dyt);
    g.wgrad_direct(xp, s, dyt, tables[0].taps, tables[0].bases, tables[0].plan, !first, dwt,
                   p.gemm_threads);
  } else {
    if (!p.direct && !p.padded) {  // the whole column matrix, by the bounded packer
      g.pack_im2col(&panels, 0, ckk, 0, cols, cols, col);
      src = col;
    }
    g.run(ckk, f, cols, T(1), MatRef<T>{src, ckk, cols, cols, 1},
          MatRef<T>{dy_n, f, cols, cols, 1}.t(), first ? T(0) : T(1), dwt, f, work,
          p.gemm_threads, nullptr, p.padded ? &a_packer : nullptr, nullptr, nullptr);
  }
  for (std::int64_t i = 0; i < f; ++i) {
    const T sum = row_sum(dy_n + i * cols, cols);
    db[i] = first ? sum : db[i] + sum;
  }
  if (dx_n == nullptr) return;
  if (p.dx_conv) {  // xp is free again: it holds the padded dy_n
    conv_image(g, dy_n, pwx, static_cast<const T*>(nullptr), dx_shape(s), true, false,
               p.dx_direct ? &tables[1] : nullptr, p.gemm_threads, xp, work, dx_n);
    return;
  }
  // dcol = w^T * dy_n (w^T packed in pwx); col is free again, so it holds dcol.
  T* dcol = p.direct ? dx_n : col;
  g.run(ckk, cols, f, T(1), MatRef<T>{nullptr, f, ckk, ckk, 1}.t(),
        MatRef<T>{dy_n, f, cols, cols, 1}, T(0), dcol, cols, work, p.gemm_threads, nullptr,
        nullptr, pwx, nullptr);
  if (!p.direct) g.col2im(dcol, s, dx_n);
}

}  // namespace

template <typename T>
void conv2d_forward(const T* x, const T* w, const T* b, const Conv2dShape& s, T* y) {
  if (s.batch == 0) return;
  const GemmImpl<T>& g = gemm_impl<T>();  // once per call (see gemm.cpp)
  const ConvPlan p = conv2d_plan<T>(s, g, num_threads(), false);
  Scratch<T> scratch(p);
  const std::int64_t x_img = s.channels * s.height * s.width;
  const std::int64_t y_img = s.filters * s.col_cols();
  const std::int64_t ckk = s.col_rows(), cols = s.col_cols(), f = s.filters;
  T* pw = scratch.packed_w();
  DirectTables tables{};
  if (p.fwd_direct) {
    tables = direct_tables(s, scratch.tables(), PlanFor::kPixels, g.direct_rows);
    g.pack_direct(w, f, ckk, pw);
  } else {
    g.pack_a(f, cols, ckk, MatRef<T>{w, f, ckk, ckk, 1}, pw);
  }
  if (p.team == 1) {
    for (std::int64_t n = 0; n < s.batch; ++n)
      forward_image(g, x + n * x_img, pw, tables, b, s, p, scratch.pad(0), scratch.gemm(0),
                    y + n * y_img);
    return;
  }
  TeamJoin join;
#pragma omp parallel num_threads(p.team)
  {
    int t = 0;
#ifdef _OPENMP
    t = omp_get_thread_num();
#endif
#pragma omp for schedule(dynamic, 1) nowait
    for (std::int64_t n = 0; n < s.batch; ++n)
      forward_image(g, x + n * x_img, pw, tables, b, s, p, scratch.pad(t), scratch.gemm(t),
                    y + n * y_img);
    join.arrive();
  }
}

template <typename T>
void conv2d_backward(const T* x, const T* w, const T* dy, const Conv2dShape& s, T* dx, T* dw,
                     T* db) {
  const std::int64_t ckk = s.col_rows(), f = s.filters;
  if (s.batch == 0) {
    std::fill(dw, dw + f * ckk, T(0));
    std::fill(db, db + f, T(0));
    return;
  }
  const GemmImpl<T>& g = gemm_impl<T>();  // once per call (see gemm.cpp)
  const ConvPlan p = conv2d_plan<T>(s, g, num_threads(), true);
  Scratch<T> scratch(p);
  const std::int64_t x_img = s.channels * s.height * s.width;
  const std::int64_t y_img = s.filters * s.col_cols();
  DirectTables tables[2] = {};  // of s (dW), of dx_shape(s) (dx)
  std::int32_t* tab = scratch.tables();
  if (p.dw_direct || p.dw_dot) {
    const PlanFor kind = p.dw_direct ? PlanFor::kTaps : PlanFor::kNone;
    tables[0] = direct_tables(s, tab, kind, g.direct_rows);
    tab = tables[0].end;
  }
  if (p.dx_direct) tables[1] = direct_tables(dx_shape(s), tab, PlanFor::kPixels, g.direct_rows);
  const T* pwx = nullptr;  // the A panels of dx's GEMM
  if (dx != nullptr) {
    const GemmDims d = dx_gemm(s, p.dx_conv);
    if (p.dx_conv) flip_kernel(w, s, scratch.flip());
    if (p.dx_direct) {
      g.pack_direct(scratch.flip(), d.m, d.k, scratch.packed_w());
    } else {
      const MatRef<T> a = p.dx_conv ? MatRef<T>{scratch.flip(), d.m, d.k, d.k, 1}
                                    : MatRef<T>{w, f, ckk, ckk, 1}.t();
      g.pack_a(d.m, d.n, d.k, a, scratch.packed_w());
    }
    pwx = scratch.packed_w();
  }
  // Team thread t sums its contiguous block of images into its partial
  // (dW transposed, then db); the partials are added in thread order while
  // transposing into dw, so the result depends only on the team size.
  auto partial_sums = [&](int t) {
    std::int64_t lo, hi;
    image_range(s.batch, p.team, t, &lo, &hi);
    T* pw = scratch.partial(t);
    T* pb = pw + f * ckk;
    if (lo == hi) {
      std::fill(pw, pw + f * ckk + f, T(0));
      return;
    }
    for (std::int64_t n = lo; n < hi; ++n)
      backward_image(g, x + n * x_img, pwx, tables, dy + n * y_img, s, p, n == lo,
                     scratch.pad(t), scratch.col(t), scratch.dyt(t), scratch.gemm(t), pw, pb,
                     dx ? dx + n * x_img : nullptr);
  };
  auto reduce = [&](std::int64_t i) {  // element i of [dw, db]
    const std::int64_t src = i < f * ckk ? (i % ckk) * f + i / ckk : i;
    T sum = scratch.partial(0)[src];
    for (int u = 1; u < p.team; ++u) sum += scratch.partial(u)[src];
    if (i < f * ckk)
      dw[i] = sum;
    else
      db[i - f * ckk] = sum;
  };
  if (p.team == 1) {
    partial_sums(0);
    for (std::int64_t i = 0; i < f * ckk + f; ++i) reduce(i);
    return;
  }
  TeamJoin join;
#pragma omp parallel num_threads(p.team)
  {
    int t = 0;
#ifdef _OPENMP
    t = omp_get_thread_num();
#endif
    partial_sums(t);
#ifdef _OPENMP
#pragma omp barrier
#endif
#pragma omp for schedule(static) nowait
    for (std::int64_t i = 0; i < f * ckk + f; ++i) reduce(i);
    join.arrive();
  }
}

template ConvPlan conv2d_plan<float>(const Conv2dShape&, const GemmImpl<float>&, int, bool);
template ConvPlan conv2d_plan<double>(const Conv2dShape&, const GemmImpl<double>&, int, bool);
template void conv2d_forward<float>(const float*, const float*, const float*, const Conv2dShape&,
                                    float*);
template void conv2d_forward<double>(const double*, const double*, const double*,
                                     const Conv2dShape&, double*);
template void conv2d_backward<float>(const float*, const float*, const float*,
                                     const Conv2dShape&, float*, float*, float*);
template void conv2d_backward<double>(const double*, const double*, const double*,
                                      const Conv2dShape&, double*, double*, double*);

}  // namespace pyconv
