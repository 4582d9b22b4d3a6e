// Elementwise kernels over flat C-contiguous arrays, parallel over chunks.
#pragma once

#include <cstdint>

namespace pyconv {

// y = x where x > 0 or x is NaN, else 0; mask = (x > 0). Overwrites y, mask.
template <typename T>
void relu_forward(const T* x, std::int64_t n, T* y, bool* mask);

// dx = dout where mask, else 0. Overwrites dx.
template <typename T>
void relu_backward(const T* dout, const bool* mask, std::int64_t n, T* dx);

}  // namespace pyconv
