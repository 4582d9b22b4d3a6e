// Max pooling over NCHW planes; padding counts as -inf (never selected), which
// needs pad <= kernel/2 so that every window holds a real element.
#pragma once

#include <cstdint>

#include "shape.h"

namespace pyconv {

// y (N, C, OH, OW) <- window maxima of x; argmax <- flat index ih*W + iw of
// the first maximum in row-major window order (np.argmax's tie rule); a window
// holding NaN yields NaN with argmax at its first NaN. Overwrites y and argmax.
template <typename T>
void max_pool2d_forward(const T* x, const Pool2dShape& s, T* y, std::int64_t* argmax);

// The same with each argmax as its row-major offset kh*KW + kw inside the
// window (one byte: windows of at most kMaxWindowArgmax elements), the form
// the Pooling layer keeps between forward and backward.
constexpr std::int64_t kMaxWindowArgmax = 256;
template <typename T>
void max_pool2d_forward(const T* x, const Pool2dShape& s, T* y, std::uint8_t* window_argmax);

// dx (planes x in_plane) <- zeros, then per plane dx[argmax[i]] += dy[i] for
// its out_plane windows. Indices outside [0, in_plane) are skipped (the caller
// rejects them up front; this guards against the array changing meanwhile).
template <typename T>
void max_pool2d_backward(const T* dy, const std::int64_t* argmax, std::int64_t planes,
                         std::int64_t in_plane, std::int64_t out_plane, T* dx);

// The same from window offsets (max_pool2d_forward's one-byte form) of the
// pooling s; offsets >= KH*KW or off the image are skipped.
template <typename T>
void max_pool2d_backward(const T* dy, const std::uint8_t* window_argmax, const Pool2dShape& s,
                         T* dx);

}  // namespace pyconv
