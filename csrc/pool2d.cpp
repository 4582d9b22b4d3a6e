// Max pooling, parallel over the N*C planes (so the backward scatter of one
// plane never meets another thread's).
#include "pool2d.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "runtime.h"

namespace pyconv {

namespace {

// Unsigned integers of N bytes.
template <int N>
using UInt = std::conditional_t<
    N == 1, std::uint8_t,
    std::conditional_t<N == 2, std::uint16_t,
                       std::conditional_t<N == 4, std::uint32_t, std::uint64_t>>>;

template <typename T>
inline bool is_nan(T v) {
  return v != v;
}

// How a window's maximum at pixel (h, w) is recorded, for the window whose
// first (unclipped) pixel is (h0, w0): its flat index in the input plane (the
// public argmax), or its row-major offset inside the window (the Pooling
// layer's one-byte form, for windows of at most 256 elements: an eighth of
// the memory traffic of the int64 index, in a kernel that is memory-bound).
// in_window(k, K, ...): the same for offset k of a whole K x K window.
struct PlaneIndex {
  using Type = std::int64_t;
  static Type at(std::int64_t h, std::int64_t w, std::int64_t, std::int64_t, std::int64_t width,
                 std::int64_t) {
    return h * width + w;
  }
  template <int K>
  static Type in_window(int k, std::int64_t h0, std::int64_t w0, std::int64_t width) {
    return (h0 + k / K) * width + (w0 + k % K);
  }
};
struct WindowOffset {
  using Type = std::uint8_t;
  static Type at(std::int64_t h, std::int64_t w, std::int64_t h0, std::int64_t w0,
                 std::int64_t, std::int64_t kernel_w) {
    return static_cast<Type>((h - h0) * kernel_w + (w - w0));
  }
  template <int K>
  static Type in_window(int k, std::int64_t, std::int64_t, std::int64_t) {
    return static_cast<Type>(k);
  }
};

// One window, rows [h_lo, h_hi) x cols [w_lo, w_hi) of the plane (the part
// of the window at (h0, w0) inside it): the first maximum in row-major order,
// or the first NaN.
template <class Enc, typename T>
inline void window_max(const T* xp, std::int64_t width, std::int64_t kernel_w, std::int64_t h0,
                       std::int64_t w0, std::int64_t h_lo, std::int64_t h_hi, std::int64_t w_lo,
                       std::int64_t w_hi, T* out, typename Enc::Type* arg) {
  std::int64_t best_h = h_lo, best_w = w_lo;
  T best = xp[h_lo * width + w_lo];
  for (std::int64_t h = h_lo; h < h_hi && !is_nan(best); ++h) {
    const T* row = xp + h * width;
    for (std::int64_t w = w_lo; w < w_hi; ++w) {
      const T v = row[w];
      if (v > best || is_nan(v)) {
        best = v;
        best_h = h;
        best_w = w;
        if (is_nan(v)) break;
      }
    }
  }
  *out = best;
  *arg = Enc::at(best_h, best_w, h0, w0, width, kernel_w);
}

// Outputs [0, count) of one output row whose K x K windows lie wholly inside
// the plane; window o starts at base + o*stride. Branch-free: the running
// maximum and its window offset are selects, so random data costs no branch
// mispredictions. NaN is only noted on the way and, if seen, the row is redone
// by window_max (rare), which returns the first NaN.
template <class Enc, typename T, int K, int S>
void pool_row_k(const T* xp, std::int64_t width, std::int64_t stride_rt, std::int64_t h0,
                std::int64_t w0, std::int64_t count, T* yo, typename Enc::Type* ao) {
  const std::int64_t st = S > 0 ? S : stride_rt;
  const T* base = xp + h0 * width + w0;
  bool nan_seen = false;
  for (std::int64_t o = 0; o < count; ++o) {
    const T* b = base + o * st;
    T best = b[0];
    int best_k = 0;  // h*K + w inside the window
    bool nan_here = best != best;
#pragma GCC unroll 9
    for (int h = 0; h < K; ++h)
#pragma GCC unroll 9
      for (int w = 0; w < K; ++w) {
        if (h == 0 && w == 0) continue;
        const T v = b[h * width + w];
        nan_here |= v != v;
        // Integer masks, not ?:, so GCC emits no branch on the comparison.
        const int take = -static_cast<int>(v > best);
        best = best < v ? v : best;  // maxss
        best_k = ((h * K + w) & take) | (best_k & ~take);
      }
    nan_seen |= nan_here;
    yo[o] = best;
    ao[o] = Enc::template in_window<K>(best_k, h0, w0 + o * st, width);
  }
  if (nan_seen)
    for (std::int64_t o = 0; o < count; ++o)
      window_max<Enc>(xp, width, K, h0, w0 + o * st, h0, h0 + K, w0 + o * st, w0 + o * st + K,
                      yo + o, ao + o);
}

// out[l] = the low byte of k's lane l, for its L lanes of 4 or 8 bytes: the
// bytes gathered into the low lane by shifts of the whole vector (SSE2
// psrldq, NEON ext; GCC stores lane by lane for a narrowing
// __builtin_convertvector).
template <typename VI>
inline void store_low_bytes(VI k, std::uint8_t* out) {
  typedef std::uint8_t B __attribute__((vector_size(16)));
  constexpr int w = sizeof(k[0]), L = 16 / w;
  // Bytes [s, 16) of v moved to [0, 16 - s), zeros after.
  const auto down = [](B v, auto shift) {
    constexpr int sh = decltype(shift)::value;
    B idx;
    for (int i = 0; i < 16; ++i) idx[i] = static_cast<std::uint8_t>(i + sh);
    return __builtin_shuffle(v, B{}, idx);
  };
  B b = reinterpret_cast<B>(k);
  if constexpr (w == 4) {  // bytes 0, 4, 8, 12 -> 0, 1, 4, 5 -> 0, 1, 2, 3
    b |= down(b, std::integral_constant<int, 3>{});
    b |= down(b, std::integral_constant<int, 6>{});
  } else {  // bytes 0, 8 -> 0, 1
    b |= down(b, std::integral_constant<int, 7>{});
  }
  UInt<L> low;
  std::memcpy(&low, &b, L);
  std::memcpy(out, &low, L);
}

// K x K windows (K = 2 or 3) at stride 2, `count` outputs of one row
// starting at input column w0: 16-byte vectors of outputs at a time. Each
// window row's taps are the even and odd columns of two loaded vectors, split
// by shuffles, and for K = 3 the even ones moved on by one (taking the first
// element of a third vector); then K*K - 1 compare-and-selects in window
// order. A vector whose window holds a NaN, the tail, and (K = 3) a vector
// whose third load would pass the row's end go to pool_row_k.
template <class Enc, typename T, int K>
void pool_row_s2(const T* xp, std::int64_t width, std::int64_t h0, std::int64_t w0,
                 std::int64_t count, T* yo, typename Enc::Type* ao) {
  static_assert(K == 2 || K == 3, "2x2 or 3x3 windows");
  typedef T V __attribute__((vector_size(16), aligned(sizeof(T))));
  typedef std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t> I;
  typedef I VI __attribute__((vector_size(16)));
  constexpr int L = 16 / sizeof(T);
  const VI even = [] {
    VI v;
    for (int l = 0; l < L; ++l) v[l] = 2 * l;
    return v;
  }();
  const VI odd = even + 1, next = even / 2 + 1;  // next: lanes 1..L of concat(e, a2)
  const T* r0 = xp + h0 * width + w0;
  // The last vector start whose loads stay inside the row (K = 3 reads
  // columns up to 2o + 3L - 1; K = 2 only its windows' columns).
  const std::int64_t spare = width - w0 - 3 * L;
  const std::int64_t last_o = K == 2 ? count : spare >= 0 ? spare / 2 : -1;
  // Lanes that met a NaN, in 32-bit lanes: GCC would OR float64 compare masks
  // into 64-bit integer lanes through general registers (SSE2 has no 64-bit
  // compare), a loop-carried round trip.
  typedef std::int32_t VM __attribute__((vector_size(16)));
  VM nan{};
  std::int64_t o = 0;
  for (; o + L <= count && o <= last_o; o += L) {
    V v[K * K];
#pragma GCC unroll 3
    for (int r = 0; r < K; ++r) {
      const T* row = r0 + r * width + 2 * o;
      const V a0 = *reinterpret_cast<const V*>(row);
      const V a1 = *reinterpret_cast<const V*>(row + L);
      v[r * K] = __builtin_shuffle(a0, a1, even);
      v[r * K + 1] = __builtin_shuffle(a0, a1, odd);
      if constexpr (K == 3)
        v[r * K + 2] = __builtin_shuffle(v[r * K], *reinterpret_cast<const V*>(row + 2 * L), next);
    }
#pragma GCC unroll 9
    for (int q = 0; q < K * K; ++q) nan |= reinterpret_cast<VM>(v[q] != v[q]);
    V best = v[0];
    VI k = VI{} + 0;
#pragma GCC unroll 9
    for (int q = 1; q < K * K; ++q) {  // row-major window order: the first maximum wins
      const VI gt = v[q] > best;
      best = gt ? v[q] : best;
      k = gt ? VI{} + q : k;
    }
    *reinterpret_cast<V*>(yo + o) = best;
    if constexpr (std::is_same_v<Enc, WindowOffset>)
      store_low_bytes(k, ao + o);
    else
      for (int l = 0; l < L; ++l)
        ao[o + l] =
            Enc::template in_window<K>(static_cast<int>(k[l]), h0, w0 + 2 * (o + l), width);
  }
  // Windows with a NaN (rare): the vectors redone by pool_row_k, which finds it.
  typedef std::uint64_t VU __attribute__((vector_size(16)));
  const VU any = reinterpret_cast<VU>(nan);
  if ((any[0] | any[1]) != 0) pool_row_k<Enc, T, K, 2>(xp, width, 2, h0, w0, o, yo, ao);
  if (o < count)
    pool_row_k<Enc, T, K, 2>(xp, width, 2, h0, w0 + 2 * o, count - o, yo + o, ao + o);
}

template <class Enc, typename T, int K>
void pool_plane(const T* xp, const Pool2dShape& s, std::int64_t oh_n, std::int64_t ow_n, T* yp,
                typename Enc::Type* ap) {
  // Output columns whose windows are inside the plane horizontally.
  std::int64_t ow_lo = 0, ow_hi = 0;
  if (K > 0) {
    ow_lo = (s.pad + s.stride - 1) / s.stride;
    ow_hi = s.width - K + s.pad >= 0 ? (s.width - K + s.pad) / s.stride + 1 : 0;
    ow_hi = std::min(ow_hi, ow_n);
    if (ow_lo > ow_hi) ow_lo = ow_hi;
  }
  for (std::int64_t oh = 0; oh < oh_n; ++oh) {
    const std::int64_t h0 = oh * s.stride - s.pad;
    const std::int64_t h_lo = std::max<std::int64_t>(h0, 0);
    const std::int64_t h_hi = std::min(h0 + s.kernel_h, s.height);
    const bool rows_inside = K > 0 && h0 >= 0 && h0 + K <= s.height;
    T* yo = yp + oh * ow_n;
    typename Enc::Type* ao = ap + oh * ow_n;
    auto edge = [&](std::int64_t ow) {
      const std::int64_t w0 = ow * s.stride - s.pad;
      window_max<Enc>(xp, s.width, s.kernel_w, h0, w0, h_lo, h_hi, std::max<std::int64_t>(w0, 0),
                      std::min(w0 + s.kernel_w, s.width), yo + ow, ao + ow);
    };
    if (!rows_inside) {
      for (std::int64_t ow = 0; ow < ow_n; ++ow) edge(ow);
      continue;
    }
    for (std::int64_t ow = 0; ow < ow_lo; ++ow) edge(ow);
    constexpr int KK = K > 0 ? K : 1;
    const std::int64_t w0 = ow_lo * s.stride - s.pad;
    if constexpr (K == 2 || K == 3) {
      if (s.stride == 2) {
        pool_row_s2<Enc, T, K>(xp, s.width, h0, w0, ow_hi - ow_lo, yo + ow_lo, ao + ow_lo);
        for (std::int64_t ow = ow_hi; ow < ow_n; ++ow) edge(ow);
        continue;
      }
    }
    if (s.stride == 2)
      pool_row_k<Enc, T, KK, 2>(xp, s.width, 2, h0, w0, ow_hi - ow_lo, yo + ow_lo, ao + ow_lo);
    else
      pool_row_k<Enc, T, KK, 0>(xp, s.width, s.stride, h0, w0, ow_hi - ow_lo, yo + ow_lo,
                                ao + ow_lo);
    for (std::int64_t ow = ow_hi; ow < ow_n; ++ow) edge(ow);
  }
}

template <class Enc, typename T>
void pool_forward(const T* x, const Pool2dShape& s, T* y, typename Enc::Type* argmax) {
  const std::int64_t oh_n = s.out_h(), ow_n = s.out_w();
  const std::int64_t planes = s.batch * s.channels;
  const std::int64_t in_plane = s.height * s.width, out_plane = oh_n * ow_n;
  // Unrolled interiors for the common square windows (2x2 and 3x3, any
  // stride); K = 0 is the general loop.
  const int k = s.kernel_h == s.kernel_w && (s.kernel_h == 2 || s.kernel_h == 3)
                    ? static_cast<int>(s.kernel_h)
                    : 0;
  TeamJoin join;
#pragma omp parallel num_threads(num_threads()) if (planes > 1)
  {
#pragma omp for schedule(static) nowait
    for (std::int64_t pl = 0; pl < planes; ++pl) {
      const T* xp = x + pl * in_plane;
      T* yp = y + pl * out_plane;
      typename Enc::Type* ap = argmax + pl * out_plane;
      if (k == 2)
        pool_plane<Enc, T, 2>(xp, s, oh_n, ow_n, yp, ap);
      else if (k == 3)
        pool_plane<Enc, T, 3>(xp, s, oh_n, ow_n, yp, ap);
      else
        pool_plane<Enc, T, 0>(xp, s, oh_n, ow_n, yp, ap);
    }
    join.arrive();
  }
}

// ---- Backward from window offsets ------------------------------------------------
// Each offset is read once and nothing is written outside the plane: the
// binding validated the offsets, but they are caller memory that another
// thread could rewrite while the GIL is released. Offsets >= KH*KW or
// pointing off the image add nothing.

// Overlapping windows (stride < a kernel side): dx <- 0, then each window's
// gradient added at its argmax.
template <typename T>
void unpool_plane_scatter(const T* dyp, const std::uint8_t* ap, const Pool2dShape& s,
                          std::int64_t oh_n, std::int64_t ow_n, const std::int64_t* dh,
                          const std::int64_t* dw, T* dxp) {
  const std::int64_t kk = s.kernel_h * s.kernel_w;
  std::fill(dxp, dxp + s.height * s.width, T(0));
  for (std::int64_t oh = 0; oh < oh_n; ++oh) {
    const std::int64_t h0 = oh * s.stride - s.pad;
    for (std::int64_t ow = 0; ow < ow_n; ++ow) {
      const std::int64_t k = ap[oh * ow_n + ow];
      if (k >= kk) continue;
      const std::int64_t ih = h0 + dh[k], iw = ow * s.stride - s.pad + dw[k];
      if (ih >= 0 && ih < s.height && iw >= 0 && iw < s.width)
        dxp[ih * s.width + iw] += dyp[oh * ow_n + ow];
    }
  }
}

// v's lanes of W bytes, the low half of them interleaved with zeros into lanes
// of 2W bytes until they are as wide as VI's (widen_bytes).
template <typename VI, int W, typename V>
inline VI widen_lanes(V v) {
  if constexpr (W == static_cast<int>(sizeof(VI{}[0]))) {
    return reinterpret_cast<VI>(v);
  } else {
    typedef UInt<W> H;
    typedef H VH __attribute__((vector_size(16)));
    constexpr int n = 16 / W;
    const VH idx = [] {
      VH m{};
      for (int l = 0; l < n; ++l) m[l] = static_cast<H>(l / 2 + (l % 2) * n);
      return m;
    }();
    return widen_lanes<VI, 2 * W>(__builtin_shuffle(reinterpret_cast<VH>(v), VH{}, idx));
  }
}

// The 16-byte vector of integer lanes whose lanes l < N are a[l], zero-
// extended (the rest 0): the N bytes in one scalar load, then interleaved
// with zeros until they are as wide as a lane (SSE2 punpckl*, NEON zip1; GCC
// scalarizes __builtin_convertvector here).
template <typename VI, int N>
inline VI widen_bytes(const std::uint8_t* a) {
  typedef UInt<N> S;
  typedef S VS __attribute__((vector_size(16)));
  S u;
  std::memcpy(&u, a, sizeof(S));
  VS v{};
  v[0] = u;
  return widen_lanes<VI, 1>(v);
}

// Window rows dh0 + r (r < R) of 2-wide windows at stride 2, outputs [0,
// count), window o covering columns 2o and 2o + 1 of dx row r (at dx + r *
// width): 16-byte vectors of outputs, each window's gradient or 0 by its
// offset, interleaved into two vectors of each row. The offsets are compared
// in 32-bit lanes (SSE2 has no 64-bit compare), a float64 lane's offset in
// both its halves.
template <typename T, int R>
std::int64_t unpool_rows_2s2(const T* dy, const std::uint8_t* a, std::int64_t count, int dh0,
                             std::int64_t width, T* dx) {
  typedef T V __attribute__((vector_size(16), aligned(sizeof(T))));
  typedef std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t> I;
  typedef I VI __attribute__((vector_size(16)));
  typedef std::int32_t VM __attribute__((vector_size(16)));
  constexpr int L = 16 / sizeof(T);
  const VI lo = [] {
    VI v;
    for (int l = 0; l < L; ++l) v[l] = l / 2 + (l % 2) * L;  // a0 b0 a1 b1 ...
    return v;
  }();
  const VI hi = lo + L / 2;
  std::int64_t o = 0;
  for (; o + L <= count; o += L) {
    const VI d = reinterpret_cast<VI>(*reinterpret_cast<const V*>(dy + o));
    VM k = widen_bytes<VM, L>(a + o);
    if constexpr (L == 2) k = __builtin_shuffle(k, VM{0, 0, 1, 1});
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) {
      const int first = 2 * (dh0 + r);
      // + 0: a -0 gradient lands as +0, as 0 + dy does in the scatter.
      const V s0 = reinterpret_cast<V>(d & reinterpret_cast<VI>(k == first)) + T(0);
      const V s1 = reinterpret_cast<V>(d & reinterpret_cast<VI>(k == first + 1)) + T(0);
      *reinterpret_cast<V*>(dx + r * width + 2 * o) = __builtin_shuffle(s0, s1, lo);
      *reinterpret_cast<V*>(dx + r * width + 2 * o + L) = __builtin_shuffle(s0, s1, hi);
    }
  }
  return o;
}

// Rows dh0 + r (r < R, each < KH) of the windows of one output row (dy, a),
// written whole: dx row r at dx + r * width. Window o covers columns [o * st
// - pad, (o + 1) * st - pad) (its KW, then zeros), clipped to the row; the
// columns after the last window are zeros.
template <typename T, int R>
void unpool_rows(const T* dy, const std::uint8_t* a, const Pool2dShape& s, std::int64_t ow_n,
                 std::int64_t dh0, T* dx) {
  const std::int64_t st = s.stride, kw = s.kernel_w, width = s.width;
  const auto window = [&](std::int64_t o) {
    const int k = a[o];
    const T d = dy[o] + T(0);
    const std::int64_t w0 = o * st - s.pad;
    for (int r = 0; r < R; ++r) {
      const std::int64_t first = (dh0 + r) * kw;
      for (std::int64_t c = std::max<std::int64_t>(-w0, 0); c < st && w0 + c < width; ++c)
        dx[r * width + w0 + c] = c < kw && k == first + c ? d : T(0);
    }
  };
  std::int64_t o = 0;
  if (s.pad > 0 && ow_n > 0) window(o++);  // starts left of the row
  if (kw == 2 && st == 2) {
    // Windows ending inside the row: 2o + 1 - pad < width.
    const std::int64_t inside = std::min(ow_n, (width + s.pad) / 2);
    if (inside > o)
      o += unpool_rows_2s2<T, R>(dy + o, a + o, inside - o, static_cast<int>(dh0), width,
                                 dx + 2 * o - s.pad);
  }
  for (; o < ow_n; ++o) window(o);
  const std::int64_t end = ow_n * st - s.pad;  // the windows' last column + 1
  if (end < width)
    for (int r = 0; r < R; ++r) std::fill(dx + r * width + end, dx + (r + 1) * width, T(0));
}

// Disjoint windows (stride >= both kernel sides): each pixel lies in at most
// one window, so dx is written once, by gathering: a pixel takes its window's
// gradient if the window's offset is its own, else 0 (pixels in no window:
// 0). The same values as the scatter, without its pass of zeros and its
// dependent loads. 2 x 2 windows at stride 2 write their two rows in one pass.
template <typename T>
void unpool_plane_gather(const T* dyp, const std::uint8_t* ap, const Pool2dShape& s,
                         std::int64_t oh_n, std::int64_t ow_n, T* dxp) {
  const std::int64_t st = s.stride, width = s.width;
  const bool pairs = s.kernel_h == 2 && s.kernel_w == 2 && st == 2;
  // Output row oh's windows cover rows [oh * st - pad, (oh + 1) * st - pad).
  for (std::int64_t oh = 0; oh < oh_n; ++oh) {
    const std::int64_t h0 = oh * st - s.pad;
    const std::int64_t dh_lo = std::max<std::int64_t>(-h0, 0);
    const std::int64_t dh_hi = std::min(st, s.height - h0);
    const T* dy = dyp + oh * ow_n;
    const std::uint8_t* a = ap + oh * ow_n;
    if (pairs && dh_lo == 0 && dh_hi == 2) {
      unpool_rows<T, 2>(dy, a, s, ow_n, 0, dxp + h0 * width);
      continue;
    }
    for (std::int64_t dh = dh_lo; dh < dh_hi; ++dh) {
      T* row = dxp + (h0 + dh) * width;
      if (dh < s.kernel_h)
        unpool_rows<T, 1>(dy, a, s, ow_n, dh, row);
      else
        std::fill(row, row + width, T(0));
    }
  }
  const std::int64_t end = std::max<std::int64_t>(oh_n * st - s.pad, 0);
  if (end < s.height) std::fill(dxp + end * width, dxp + s.height * width, T(0));
}

}  // namespace

template <typename T>
void max_pool2d_forward(const T* x, const Pool2dShape& s, T* y, std::int64_t* argmax) {
  pool_forward<PlaneIndex>(x, s, y, argmax);
}

template <typename T>
void max_pool2d_forward(const T* x, const Pool2dShape& s, T* y, std::uint8_t* window_argmax) {
  pool_forward<WindowOffset>(x, s, y, window_argmax);
}

template <typename T>
void max_pool2d_backward(const T* dy, const std::int64_t* argmax, std::int64_t planes,
                         std::int64_t in_plane, std::int64_t out_plane, T* dx) {
  TeamJoin join;
#pragma omp parallel num_threads(num_threads()) if (planes > 1)
  {
#pragma omp for schedule(static) nowait
    for (std::int64_t pl = 0; pl < planes; ++pl) {
      T* dxp = dx + pl * in_plane;
      std::fill(dxp, dxp + in_plane, T(0));
      const T* dyp = dy + pl * out_plane;
      const std::int64_t* ap = argmax + pl * out_plane;
      // The binding validated argmax, but it is caller memory that another
      // thread could rewrite while the GIL is released: read each index once
      // and never write outside the plane.
      for (std::int64_t i = 0; i < out_plane; ++i) {
        const std::uint64_t a = static_cast<std::uint64_t>(ap[i]);
        if (a < static_cast<std::uint64_t>(in_plane)) dxp[a] += dyp[i];
      }
    }
    join.arrive();
  }
}

template <typename T>
void max_pool2d_backward(const T* dy, const std::uint8_t* window_argmax, const Pool2dShape& s,
                         T* dx) {
  const std::int64_t oh_n = s.out_h(), ow_n = s.out_w();
  const std::int64_t planes = s.batch * s.channels;
  const std::int64_t in_plane = s.height * s.width, out_plane = oh_n * ow_n;
  const bool disjoint = s.stride >= s.kernel_h && s.stride >= s.kernel_w;
  std::int64_t dh[kMaxWindowArgmax], dw[kMaxWindowArgmax];  // offset -> (row, column)
  for (std::int64_t k = 0; k < s.kernel_h * s.kernel_w && k < kMaxWindowArgmax; ++k) {
    dh[k] = k / s.kernel_w;
    dw[k] = k % s.kernel_w;
  }
  TeamJoin join;
#pragma omp parallel num_threads(num_threads()) if (planes > 1)
  {
#pragma omp for schedule(static) nowait
    for (std::int64_t pl = 0; pl < planes; ++pl) {
      if (disjoint)
        unpool_plane_gather(dy + pl * out_plane, window_argmax + pl * out_plane, s, oh_n, ow_n,
                            dx + pl * in_plane);
      else
        unpool_plane_scatter(dy + pl * out_plane, window_argmax + pl * out_plane, s, oh_n,
                             ow_n, dh, dw, dx + pl * in_plane);
    }
    join.arrive();
  }
}

template void max_pool2d_forward<float>(const float*, const Pool2dShape&, float*, std::int64_t*);
template void max_pool2d_forward<double>(const double*, const Pool2dShape&, double*,
                                         std::int64_t*);
template void max_pool2d_forward<float>(const float*, const Pool2dShape&, float*, std::uint8_t*);
template void max_pool2d_forward<double>(const double*, const Pool2dShape&, double*,
                                         std::uint8_t*);
template void max_pool2d_backward<float>(const float*, const std::int64_t*, std::int64_t,
                                         std::int64_t, std::int64_t, float*);
template void max_pool2d_backward<double>(const double*, const std::int64_t*, std::int64_t,
                                          std::int64_t, std::int64_t, double*);
template void max_pool2d_backward<float>(const float*, const std::uint8_t*, const Pool2dShape&,
                                         float*);
template void max_pool2d_backward<double>(const double*, const std::uint8_t*,
                                          const Pool2dShape&, double*);

}  // namespace pyconv
