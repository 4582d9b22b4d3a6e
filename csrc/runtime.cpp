// Thread count and aligned scratch allocation shared by all kernels.
#include "runtime.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <new>
#include <thread>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pyconv {

namespace {
int initial_threads() {
#ifdef _OPENMP
  const int n = omp_get_max_threads();
  return n > 0 ? n : 1;
#else
  return 1;
#endif
}
std::atomic<int> g_threads{initial_threads()};
}  // namespace

int num_threads() { return g_threads.load(std::memory_order_relaxed); }
void set_num_threads(int n) { g_threads.store(n > 0 ? n : 1, std::memory_order_relaxed); }

bool in_parallel() {
#ifdef _OPENMP
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}

namespace {
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}
}  // namespace

void TeamJoin::arrive() {
  int thread = 0, team = 1;
#ifdef _OPENMP
  thread = omp_get_thread_num();
  team = omp_get_num_threads();
#endif
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == team || thread != 0) return;
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  for (unsigned i = 1; arrived_.load(std::memory_order_acquire) < team; ++i) {
    cpu_relax();
    if (i % 64 == 0) {  // ~2 us of pauses: check the clock, let a co-runner in
      if (Clock::now() - start > std::chrono::nanoseconds(kSpinNs)) return;
      std::this_thread::yield();
    }
  }
}

void* aligned_alloc_bytes(std::size_t bytes) {
  const std::size_t size = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, size ? size : 64);
  if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // As NumPy does for its large arrays: ask for transparent huge pages (where
  // the kernel's THP mode is "madvise"), 512x fewer page faults on first touch.
  constexpr std::size_t kHuge = std::size_t(4) << 20, kPage = 4096;
  if (size >= kHuge) {
    const std::uintptr_t lo = (reinterpret_cast<std::uintptr_t>(p) + kPage - 1) / kPage * kPage;
    const std::uintptr_t hi = (reinterpret_cast<std::uintptr_t>(p) + size) / kPage * kPage;
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // a hint
  }
#endif
  return p;
}

namespace {
struct ThreadSlab {
  void* data = nullptr;
  std::size_t capacity = 0;
  bool in_use = false;
  ~ThreadSlab() { std::free(data); }
};
thread_local ThreadSlab t_slab;
}  // namespace

Workspace::Workspace(std::size_t bytes) {
  if (bytes <= kWorkspaceCacheBytes && !t_slab.in_use) {
    if (t_slab.capacity < bytes) {
      std::free(t_slab.data);
      t_slab.data = nullptr;
      t_slab.capacity = 0;
      t_slab.data = aligned_alloc_bytes(bytes);
      t_slab.capacity = bytes;
    }
    t_slab.in_use = true;
    cached_ = true;
    data_ = t_slab.data;
  } else {
    data_ = aligned_alloc_bytes(bytes);
  }
}

Workspace::~Workspace() {
  if (cached_)
    t_slab.in_use = false;
  else
    std::free(data_);
}

}  // namespace pyconv
