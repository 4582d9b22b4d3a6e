// 2-D convolution (cross-correlation) forward and backward by im2col + GEMM,
// or by GemmImpl::conv_direct where the plan picks it.
// x (N, C, H, W), w (F, C, KH, KW), b (F), y (N, F, OH, OW); C-contiguous.
// Per image: y_n (F x OH*OW) = w (F x C*KH*KW) * col_n + b.
#pragma once

#include <cstdint>

#include "gemm.h"
#include "shape.h"

namespace pyconv {

// How a call is run and what scratch it needs; one function decides, so the
// kernels and the workspace report cannot disagree.
struct ConvPlan {
  int team;          // threads splitting the batch (1: images in order)
  int gemm_threads;  // threads inside each GEMM (1 when team > 1)
  bool direct;       // 1x1 kernel, stride 1, no padding: col_n is x_n itself
  bool padded;       // im2col reads a zero-padded copy of each image (pad_image)
  bool dx_conv;      // backward: dx as a convolution of dy (dx_shape) with the
                     // flipped kernel, not a column-matrix GEMM and col2im
  bool fwd_direct;   // forward by GemmImpl::conv_direct (no im2col panels)
  bool dx_direct;    // dx_conv's convolution by conv_direct
  bool dw_direct;    // weight gradient by GemmImpl::wgrad_direct
  bool dw_dot;       // weight gradient by GemmImpl::wgrad_dot (then dw_direct is false)
  std::int64_t table_elems;     // once per call: the direct kernels' tables (int32)
  std::int64_t flip_elems;      // once per call: that flipped kernel
  std::int64_t packed_w_elems;  // once per call: the weights' GEMM A panels (w, w^T or flipped)
  std::int64_t pad_elems;       // per team thread: the padded copy (x or dy)
  std::int64_t col_elems;       // per team thread
  std::int64_t dyt_elems;       // per team thread: wgrad_direct's packed dy, or wgrad_dot's table
  std::int64_t gemm_elems;      // per team thread: GEMM scratch of its GEMM threads
  std::int64_t partial_elems;   // per team thread: dW and db partial sums
  std::int64_t bytes;           // total scratch of the call
};

// For stride 1 and pad <= K - 1, dx is the stride-1 convolution of dy (F
// channels, OH x OW) with w flipped in both spatial axes and transposed to (C,
// F, KH, KW), padded by K - 1 - pad: its output is C x H x W.
Conv2dShape dx_shape(const Conv2dShape& s);

// g: the GEMM code path that will run (gemm_impl<T>(), taken once per call).
template <typename T>
ConvPlan conv2d_plan(const Conv2dShape& s, const GemmImpl<T>& g, int nthreads, bool backward);

// y <- w * x + b (overwrites y).
// Preconditions: all sizes >= 1 except batch >= 0; out_h(), out_w() >= 1;
// every product of sizes fits in int64 (checked by the caller).
template <typename T>
void conv2d_forward(const T* x, const T* w, const T* b, const Conv2dShape& s, T* y);

// Gradients of conv2d_forward: dw, db overwritten; dx overwritten unless
// null (then not computed). Summation over the batch is in a fixed order for
// a given thread count, so results repeat exactly.
template <typename T>
void conv2d_backward(const T* x, const T* w, const T* dy, const Conv2dShape& s, T* dx, T* dw,
                     T* db);

}  // namespace pyconv
