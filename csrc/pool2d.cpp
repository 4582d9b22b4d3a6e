// Max pooling, parallel over the N*C planes (so the backward scatter of one
// plane never meets another thread's).
#include "pool2d.h"

#include <algorithm>

#include "runtime.h"

namespace pyconv {

namespace {
template <typename T>
inline bool is_nan(T v) {
  return v != v;
}
}  // namespace

template <typename T>
void max_pool2d_forward(const T* x, const Pool2dShape& s, T* y, std::int64_t* argmax) {
  const std::int64_t oh_n = s.out_h(), ow_n = s.out_w();
  const std::int64_t planes = s.batch * s.channels;
  const std::int64_t in_plane = s.height * s.width, out_plane = oh_n * ow_n;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (planes > 1)
  for (std::int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * in_plane;
    T* yp = y + pl * out_plane;
    std::int64_t* ap = argmax + pl * out_plane;
    for (std::int64_t oh = 0; oh < oh_n; ++oh) {
      const std::int64_t h0 = oh * s.stride - s.pad;
      const std::int64_t h_lo = std::max<std::int64_t>(h0, 0);
      const std::int64_t h_hi = std::min(h0 + s.kernel_h, s.height);
      for (std::int64_t ow = 0; ow < ow_n; ++ow) {
        const std::int64_t w0 = ow * s.stride - s.pad;
        const std::int64_t w_lo = std::max<std::int64_t>(w0, 0);
        const std::int64_t w_hi = std::min(w0 + s.kernel_w, s.width);
        std::int64_t best_i = h_lo * s.width + w_lo;
        T best = xp[best_i];
        if (!is_nan(best)) {
          for (std::int64_t h = h_lo; h < h_hi; ++h) {
            const T* row = xp + h * s.width;
            for (std::int64_t w = w_lo; w < w_hi; ++w) {
              const T v = row[w];
              if (v > best) {
                best = v;
                best_i = h * s.width + w;
              } else if (is_nan(v)) {
                best = v;
                best_i = h * s.width + w;
                goto done;
              }
            }
          }
        }
      done:
        yp[oh * ow_n + ow] = best;
        ap[oh * ow_n + ow] = best_i;
      }
    }
  }
}

template <typename T>
void max_pool2d_backward(const T* dy, const std::int64_t* argmax, std::int64_t planes,
                         std::int64_t in_plane, std::int64_t out_plane, T* dx) {
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (planes > 1)
  for (std::int64_t pl = 0; pl < planes; ++pl) {
    T* dxp = dx + pl * in_plane;
    std::fill(dxp, dxp + in_plane, T(0));
    const T* dyp = dy + pl * out_plane;
    const std::int64_t* ap = argmax + pl * out_plane;
    for (std::int64_t i = 0; i < out_plane; ++i) dxp[ap[i]] += dyp[i];
  }
}

template void max_pool2d_forward<float>(const float*, const Pool2dShape&, float*, std::int64_t*);
template void max_pool2d_forward<double>(const double*, const Pool2dShape&, double*,
                                         std::int64_t*);
template void max_pool2d_backward<float>(const float*, const std::int64_t*, std::int64_t,
                                         std::int64_t, std::int64_t, float*);
template void max_pool2d_backward<double>(const double*, const std::int64_t*, std::int64_t,
                                          std::int64_t, std::int64_t, double*);

}  // namespace pyconv
