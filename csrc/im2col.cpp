// im2col / col2im kernels; see im2col.h for the layouts.
#include "im2col.h"

#include <algorithm>
#include <cstring>

#include "runtime.h"

namespace pyconv {

template <typename T>
void im2col_rows(const T* x, const Conv2dShape& s, T* col) {
  const std::int64_t oh_n = s.out_h(), ow_n = s.out_w();
  const std::int64_t ckk = s.col_rows();
  const std::int64_t image = s.channels * s.height * s.width;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (s.batch > 1)
  for (std::int64_t n = 0; n < s.batch; ++n) {
    for (std::int64_t oh = 0; oh < oh_n; ++oh)
      for (std::int64_t ow = 0; ow < ow_n; ++ow) {
        T* dst = col + ((n * oh_n + oh) * ow_n + ow) * ckk;
        for (std::int64_t c = 0; c < s.channels; ++c) {
          const T* plane = x + n * image + c * s.height * s.width;
          for (std::int64_t kh = 0; kh < s.kernel_h; ++kh) {
            const std::int64_t ih = oh * s.stride - s.pad + kh;
            for (std::int64_t kw = 0; kw < s.kernel_w; ++kw, ++dst) {
              const std::int64_t iw = ow * s.stride - s.pad + kw;
              *dst = (ih >= 0 && ih < s.height && iw >= 0 && iw < s.width)
                         ? plane[ih * s.width + iw]
                         : T(0);
            }
          }
        }
      }
  }
}

template <typename T>
void col2im_rows(const T* col, const Conv2dShape& s, T* x) {
  const std::int64_t oh_n = s.out_h(), ow_n = s.out_w();
  const std::int64_t ckk = s.col_rows();
  const std::int64_t image = s.channels * s.height * s.width;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (s.batch > 1)
  for (std::int64_t n = 0; n < s.batch; ++n) {
    T* xn = x + n * image;
    std::fill(xn, xn + image, T(0));
    for (std::int64_t oh = 0; oh < oh_n; ++oh)
      for (std::int64_t ow = 0; ow < ow_n; ++ow) {
        const T* src = col + ((n * oh_n + oh) * ow_n + ow) * ckk;
        for (std::int64_t c = 0; c < s.channels; ++c) {
          T* plane = xn + c * s.height * s.width;
          for (std::int64_t kh = 0; kh < s.kernel_h; ++kh) {
            const std::int64_t ih = oh * s.stride - s.pad + kh;
            for (std::int64_t kw = 0; kw < s.kernel_w; ++kw, ++src) {
              const std::int64_t iw = ow * s.stride - s.pad + kw;
              if (ih >= 0 && ih < s.height && iw >= 0 && iw < s.width)
                plane[ih * s.width + iw] += *src;
            }
          }
        }
      }
  }
}

template <typename T>
void pad_image(const T* x, const Conv2dShape& s, T* xp) {
  const std::int64_t wp = s.width + 2 * s.pad;
  const std::int64_t border = s.pad * wp + s.pad;  // top rows + left pad of row 0
  for (std::int64_t c = 0; c < s.channels; ++c) {
    const T* src = x + c * s.height * s.width;
    std::fill(xp, xp + border, T(0));
    xp += border;
    for (std::int64_t h = 0; h < s.height; ++h, src += s.width) {
      std::copy(src, src + s.width, xp);
      xp += s.width;
      // this row's right pad, then the next row's left pad (or the bottom)
      const std::int64_t gap = h + 1 < s.height ? 2 * s.pad : border;
      std::fill(xp, xp + gap, T(0));
      xp += gap;
    }
  }
  std::fill(xp, xp + kPadSlack, T(0));
}

template void im2col_rows<float>(const float*, const Conv2dShape&, float*);
template void im2col_rows<double>(const double*, const Conv2dShape&, double*);
template void col2im_rows<float>(const float*, const Conv2dShape&, float*);
template void col2im_rows<double>(const double*, const Conv2dShape&, double*);
template void pad_image<float>(const float*, const Conv2dShape&, float*);
template void pad_image<double>(const double*, const Conv2dShape&, double*);

}  // namespace pyconv
