// Process-wide run-time settings of the kernels: thread count and the GEMM
// code path (ISA level). Kernels read these; only bindings.cpp writes them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pyconv {

// Threads the kernels use for their parallel regions (>= 1). Defaults to
// omp_get_max_threads() at load, i.e. OMP_NUM_THREADS or the CPU count.
int num_threads();
void set_num_threads(int n);

// True when called from inside an OpenMP parallel region.
bool in_parallel();

// 64-byte aligned allocation (std::free to release); throws std::bad_alloc.
void* aligned_alloc_bytes(std::size_t bytes);

// Scratch for one kernel call. Slabs up to kWorkspaceCacheBytes are kept by
// the calling thread and reused by its next call: a fresh multi-MiB slab is
// mmapped, page-faulted and zeroed by the OS on every call (measured: ~1000
// faults and 11% of a conv backward on 56x56x64 images). The slab belongs to
// the thread (freed at its exit); a nested or larger request gets its own.
// Construction may throw std::bad_alloc, so it happens before any parallel
// region.
class Workspace {
 public:
  static constexpr std::size_t kWorkspaceCacheBytes = std::size_t(64) << 20;
  explicit Workspace(std::size_t bytes);
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  bool cached_ = false;
};

}  // namespace pyconv
