// Elementwise kernels; see pointwise.h. One pass over memory each (NumPy
// needs two for ReLU forward with its mask, twelve for an Adam step), split
// over threads.
#include "pointwise.h"

#include <cmath>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif
#include <type_traits>

#include "runtime.h"

namespace pyconv {

namespace {
// Below this many elements a second thread costs more than it saves.
constexpr std::int64_t kParallelElems = std::int64_t(1) << 16;

// Subnormal inputs and results read and computed as zero on the calling
// thread while in scope (x86 MXCSR FTZ+DAZ, aarch64 FPCR.FZ); the previous
// mode is restored on exit. Arithmetic on subnormals takes a microcode assist
// per operation: an Adam step whose moments have decayed below FLT_MIN (the
// weights of dead units, whose gradients stay 0, after ~800 steps) ran 30x
// slower, and SimpleConvNet's training fell from 19,000 to 10,700 images/s
// from the eighth epoch of the README's main job on.
class FlushSubnormals {
 public:
#if defined(__x86_64__) || defined(__i386__)
  FlushSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtzDaz); }
  ~FlushSubnormals() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kFtzDaz = 0x8040;  // bit 15 flush to zero, bit 6 denormals are zero
  unsigned saved_;
#elif defined(__aarch64__)
  FlushSubnormals() {
    asm volatile("mrs %0, fpcr" : "=r"(saved_));
    asm volatile("msr fpcr, %0" : : "r"(saved_ | kFz));
  }
  ~FlushSubnormals() { asm volatile("msr fpcr, %0" : : "r"(saved_)); }

 private:
  static constexpr std::uint64_t kFz = std::uint64_t(1) << 24;
  std::uint64_t saved_;
#endif
};
}  // namespace

template <typename T>
void relu_forward(const T* x, std::int64_t n, T* y, bool* mask) {
  TeamJoin join;
#pragma omp parallel num_threads(num_threads()) if (n >= kParallelElems)
  {
#pragma omp for simd schedule(static) nowait
    for (std::int64_t i = 0; i < n; ++i) {
      const T v = x[i];
      const bool pos = v > T(0);
      mask[i] = pos;
      y[i] = (pos || v != v) ? v : T(0);
    }
    join.arrive();
  }
}

template <typename T>
void relu_backward(const T* dout, const bool* mask, std::int64_t n, T* dx) {
  // A bitwise select (bits & -mask), not ?: : the compiler vectorizes it, and
  // a random mask costs no branch mispredictions. The mask is read as bytes:
  // GCC does not vectorize a bool's widening (this loop ran one element at a
  // time, 8.7% of SimpleConvNet's training step), and a byte other than 0
  // or 1 in a NumPy bool array (one made from raw bytes) still counts as set.
  using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  const unsigned char* m = reinterpret_cast<const unsigned char*>(mask);
  TeamJoin join;
#pragma omp parallel num_threads(num_threads()) if (n >= kParallelElems)
  {
#pragma omp for simd schedule(static) nowait
    for (std::int64_t i = 0; i < n; ++i) {
      Bits b;
      std::memcpy(&b, dout + i, sizeof(T));
      b &= Bits(0) - static_cast<Bits>(m[i] != 0);
      std::memcpy(dx + i, &b, sizeof(T));
    }
    join.arrive();
  }
}

template <typename T>
void adam_update(T* w, const T* g, T* m, T* v, std::int64_t n, T lr_t, T c1, T c2, T eps) {
  TeamJoin join;
#pragma omp parallel num_threads(num_threads()) if (n >= kParallelElems)
  {
    const FlushSubnormals flush;  // per thread: the mode is a register of each
#pragma omp for simd schedule(static) nowait
    for (std::int64_t i = 0; i < n; ++i) {
      const T gi = g[i];
      const T mi = m[i] + (gi - m[i]) * c1;
      const T vi = v[i] + (gi * gi - v[i]) * c2;
      m[i] = mi;
      v[i] = vi;
      w[i] -= mi / (std::sqrt(vi) + eps) * lr_t;
    }
    join.arrive();
  }
}

template void relu_forward<float>(const float*, std::int64_t, float*, bool*);
template void relu_forward<double>(const double*, std::int64_t, double*, bool*);
template void relu_backward<float>(const float*, const bool*, std::int64_t, float*);
template void relu_backward<double>(const double*, const bool*, std::int64_t, double*);
template void adam_update<float>(float*, const float*, float*, float*, std::int64_t, float, float,
                                 float, float);
template void adam_update<double>(double*, const double*, double*, double*, std::int64_t, double,
                                  double, double, double);

}  // namespace pyconv
