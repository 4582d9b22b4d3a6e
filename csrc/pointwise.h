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

// One Adam step over n elements in place, in one pass (NumPy needs twelve),
// with the operations and roundings of pyconv.optimizers.Adam's NumPy path:
// m += c1 * (g - m); v += c2 * (g * g - v); w -= lr_t * (m / (sqrt(v) + eps)),
// each operation rounded to T (c1 = 1 - beta1, c2 = 1 - beta2), except that
// subnormal inputs and results count as zero (they made the step 30x slower).
// g must not overlap w, m or v.
template <typename T>
void adam_update(T* w, const T* g, T* m, T* v, std::int64_t n, T lr_t, T c1, T c2, T eps);

}  // namespace pyconv
