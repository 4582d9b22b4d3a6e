// im2col / col2im. Per image (the kernels' layout, as Caffe and ATen):
// col is (C*KH*KW) x (OH*OW), row (c, kh, kw), column (oh, ow). Whole batch
// in the book's layout: col is (N*OH*OW) x (C*KH*KW), row (n, oh, ow).
// Zero padding; all arrays C-contiguous.
#pragma once

#include <cstdint>

#include "shape.h"

namespace pyconv {

// Output columns [*lo, *hi) whose kernel tap at offset k reads inside
// [0, size): o*stride - pad + k in [0, size), o in [0, out). Static (internal
// linkage, no std:: templates) because the per-ISA GEMM translation units use
// it too, and a shared out-of-line copy compiled with AVX-512 could be picked
// by the linker for every caller.
static inline void tap_range(std::int64_t k, std::int64_t pad, std::int64_t stride,
                             std::int64_t size, std::int64_t out, std::int64_t* lo,
                             std::int64_t* hi) {
  const std::int64_t off = k - pad;  // input index = o*stride + off
  std::int64_t l = off >= 0 ? 0 : (-off + stride - 1) / stride;
  std::int64_t h = size - off <= 0 ? 0 : (size - off - 1) / stride + 1;
  l = l < out ? l : out;
  h = h < out ? h : out;
  *lo = l;
  *hi = h < l ? l : h;
}

// One image whose column matrix GemmImpl::pack_im2col (compiled per ISA in
// gemm_kernels.h) writes: straight into GEMM B panels in the forward, or as
// the whole matrix (nr = OH*OW) for the backward.
//
// With xp set, the packer reads a zero-padded copy of the image instead
// (pad_image): every element of a column-matrix row is then a plain load, so
// a row segment is one unbounded vector copy with no per-segment bounds, zero
// fills or masks (c's forward: the bounded packer was 30% of the time, most of
// it that bookkeeping, measured by removing its loads).
template <typename T>
struct Im2colPanels {
  const T* x;  // one image, C x H x W
  Conv2dShape s;
  const T* xp = nullptr;  // null, or pad_image(x): C x (H + 2 pad) x (W + 2 pad)
};

// Elements readable (zeros) after a padded image: the packer's whole-vector
// copies read up to two 64-byte vectors past a row segment's last tap.
constexpr std::int64_t kPadSlack = 32;

// C * (H + 2 pad) * (W + 2 pad) + kPadSlack. Static: see tap_range.
static inline std::int64_t padded_image_elems(const Conv2dShape& s) {
  return s.channels * (s.height + 2 * s.pad) * (s.width + 2 * s.pad) + kPadSlack;
}

// xp <- x (one image) inside a zero border of `pad`, then kPadSlack zeros.
template <typename T>
void pad_image(const T* x, const Conv2dShape& s, T* xp);

// Book layout, whole batch, parallel over images. Overwrites col.
template <typename T>
void im2col_rows(const T* x, const Conv2dShape& s, T* col);

// Adjoint of im2col_rows; overwrites x (N x C x H x W).
template <typename T>
void col2im_rows(const T* col, const Conv2dShape& s, T* x);

}  // namespace pyconv
