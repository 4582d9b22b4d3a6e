// Process-wide run-time settings of the kernels: thread count and the GEMM
// code path (ISA level). Kernels read these; only bindings.cpp writes them.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace pyconv {

// Threads the kernels use for their parallel regions (>= 1). Defaults to
// omp_get_max_threads() at load, i.e. OMP_NUM_THREADS or the CPU count.
int num_threads();
void set_num_threads(int n);

// True when called from inside an OpenMP parallel region.
bool in_parallel();

// The end of a parallel region without a sleeping caller. Each team thread
// calls arrive() when its share is done (outside a region: returns at once);
// the master (thread 0, the caller's own thread) then spins in arrive() until
// the whole team has arrived, for at most kSpinNs. Without it, under
// OMP_WAIT_POLICY=passive a master that finishes first falls asleep in
// libgomp's closing barrier and is woken by the last thread: 20-40 us on the
// VM we measure on, a third of a 256^3 GEMM at 2 threads. The bound matters
// under contention: a worker preempted by another process on its core is
// only moved to the master's core once that core goes idle, so a master that
// spun (or yielded) for 200 us left 10% of small GEMMs 7x slower next to a
// busy core; 100 us keeps the quiet gain without that tail (RESULTS.md).
// Workers do not wait here: they sleep in libgomp as before.
class TeamJoin {
 public:
  static constexpr std::int64_t kSpinNs = 100000;
  void arrive();  // by every thread of the team, last thing in the region

 private:
  std::atomic<int> arrived_{0};
};

// Memory of the arrays the core returns: 64-byte aligned; release with
// output_free. Blocks of kOutputCacheMinBytes or more are not returned to the
// system when freed but kept (at most kOutputCacheBytes in all, oldest
// dropped first) and handed out again for a request of about their size: a
// training loop or a benchmark allocates the same outputs every step, and on
// the machines we measure on, fresh pages from the OS cost 1-2 ms per MiB to
// fault in and zero (20% of a 56x56x64 convolution forward+backward).
// Thread-safe. output_cache_clear() frees every cached block.
constexpr std::size_t kOutputCacheMinBytes = std::size_t(256) << 10;
constexpr std::size_t kOutputCacheBytes = std::size_t(256) << 20;
void* output_alloc(std::size_t bytes);  // throws std::bad_alloc
void output_free(void* p);
std::size_t output_cache_bytes();  // bytes held in freed, cached blocks
void output_cache_clear();

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
