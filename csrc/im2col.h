// im2col / col2im. Per image (the kernels' layout, as Caffe and ATen):
// col is (C*KH*KW) x (OH*OW), row (c, kh, kw), column (oh, ow). Whole batch
// in the book's layout: col is (N*OH*OW) x (C*KH*KW), row (n, oh, ow).
// Zero padding; all arrays C-contiguous.
#pragma once

#include <cstdint>

#include "shape.h"

namespace pyconv {

// col (C*KH*KW x OH*OW) <- patches of one image x (C x H x W). Overwrites col.
template <typename T>
void im2col_image(const T* x, const Conv2dShape& s, T* col);

// x (C x H x W) <- adjoint of im2col_image: zeroes x, then accumulates every
// column entry into the pixel it came from (padding entries are dropped).
template <typename T>
void col2im_image(const T* col, const Conv2dShape& s, T* x);

// One image whose im2col_image matrix GEMM packs straight into its B panels
// (GemmImpl::pack_im2col, compiled per ISA in gemm_kernels.h).
template <typename T>
struct Im2colPanels {
  const T* x;  // one image, C x H x W
  Conv2dShape s;
};

// Book layout, whole batch, parallel over images. Overwrites col.
template <typename T>
void im2col_rows(const T* x, const Conv2dShape& s, T* col);

// Adjoint of im2col_rows; overwrites x (N x C x H x W).
template <typename T>
void col2im_rows(const T* col, const Conv2dShape& s, T* x);

}  // namespace pyconv
