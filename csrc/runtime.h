// Process-wide run-time settings of the kernels: thread count and the GEMM
// code path (ISA level). Kernels read these; only bindings.cpp writes them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pyconv {

// Threads the kernels use for their parallel regions (>= 1). Defaults to
// omp_get_max_threads() at load, i.e. OMP_NUM_THREADS or the CPU count.
int num_threads();
void set_num_threads(int n);

// True when called from inside an OpenMP parallel region.
bool in_parallel();

// 64-byte aligned scratch buffer, RAII-owned. Allocation is the only thing in
// the kernels that may throw (std::bad_alloc), and it happens before any
// parallel region.
struct AlignedFree {
  void operator()(void* p) const;
};
template <typename T>
using Buffer = std::unique_ptr<T[], AlignedFree>;
void* aligned_alloc_bytes(std::size_t bytes);
template <typename T>
Buffer<T> make_buffer(std::int64_t count) {
  return Buffer<T>(static_cast<T*>(
      aligned_alloc_bytes(static_cast<std::size_t>(count > 0 ? count : 1) * sizeof(T))));
}

}  // namespace pyconv
