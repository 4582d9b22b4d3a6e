// Max pooling, parallel over the N*C planes (so the backward scatter of one
// plane never meets another thread's).
#include "pool2d.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "runtime.h"

namespace pyconv {

namespace {

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
  std::int64_t o = 0;
  for (; o + L <= count && o <= last_o; o += L) {
    V v[K * K];
    for (int r = 0; r < K; ++r) {
      const T* row = r0 + r * width + 2 * o;
      const V a0 = *reinterpret_cast<const V*>(row);
      const V a1 = *reinterpret_cast<const V*>(row + L);
      v[r * K] = __builtin_shuffle(a0, a1, even);
      v[r * K + 1] = __builtin_shuffle(a0, a1, odd);
      if constexpr (K == 3)
        v[r * K + 2] = __builtin_shuffle(v[r * K], *reinterpret_cast<const V*>(row + 2 * L), next);
    }
    VI nan = v[0] != v[0];
    for (int q = 1; q < K * K; ++q) nan |= v[q] != v[q];
    bool any_nan = false;
    for (int l = 0; l < L; ++l) any_nan |= nan[l] != 0;
    if (any_nan) {
      pool_row_k<Enc, T, K, 2>(xp, width, 2, h0, w0 + 2 * o, L, yo + o, ao + o);
      continue;
    }
    V best = v[0];
    VI k = VI{} + 0;
    for (int q = 1; q < K * K; ++q) {  // row-major window order: the first maximum wins
      const VI gt = v[q] > best;
      best = gt ? v[q] : best;
      k = gt ? VI{} + q : k;
    }
    *reinterpret_cast<V*>(yo + o) = best;
    for (int l = 0; l < L; ++l)
      ao[o + l] = Enc::template in_window<K>(static_cast<int>(k[l]), h0, w0 + 2 * (o + l), width);
  }
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
  const std::int64_t oh_n = s.out_h(), ow_n = s.out_w(), kk = s.kernel_h * s.kernel_w;
  const std::int64_t planes = s.batch * s.channels;
  const std::int64_t in_plane = s.height * s.width, out_plane = oh_n * ow_n;
  std::int64_t dh[kMaxWindowArgmax], dw[kMaxWindowArgmax];  // offset -> (row, column)
  for (std::int64_t k = 0; k < kk && k < kMaxWindowArgmax; ++k) {
    dh[k] = k / s.kernel_w;
    dw[k] = k % s.kernel_w;
  }
  TeamJoin join;
#pragma omp parallel num_threads(num_threads()) if (planes > 1)
  {
#pragma omp for schedule(static) nowait
    for (std::int64_t pl = 0; pl < planes; ++pl) {
      T* dxp = dx + pl * in_plane;
      std::fill(dxp, dxp + in_plane, T(0));
      const T* dyp = dy + pl * out_plane;
      const std::uint8_t* ap = window_argmax + pl * out_plane;
      // As above: each offset read once, nothing written outside the plane.
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
