// Shape aggregates for convolution and pooling; all tensors NCHW, C-contiguous.
// No logic beyond the output-size formula (floor((H + 2*pad - K) / stride) + 1).
#pragma once

#include <cstdint>

namespace pyconv {

struct Conv2dShape {
  std::int64_t batch, channels, height, width;  // input x (N, C, H, W)
  std::int64_t filters, kernel_h, kernel_w;     // weight w (F, C, KH, KW)
  std::int64_t stride, pad;

  std::int64_t out_h() const { return (height + 2 * pad - kernel_h) / stride + 1; }
  std::int64_t out_w() const { return (width + 2 * pad - kernel_w) / stride + 1; }
  std::int64_t col_rows() const { return channels * kernel_h * kernel_w; }  // C*KH*KW
  std::int64_t col_cols() const { return out_h() * out_w(); }               // OH*OW
};

struct Pool2dShape {
  std::int64_t batch, channels, height, width;
  std::int64_t kernel_h, kernel_w, stride, pad;

  std::int64_t out_h() const { return (height + 2 * pad - kernel_h) / stride + 1; }
  std::int64_t out_w() const { return (width + 2 * pad - kernel_w) / stride + 1; }
};

}  // namespace pyconv
