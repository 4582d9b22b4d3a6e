// Thread count and aligned scratch allocation shared by all kernels.
#include "runtime.h"

#include <atomic>
#include <cstdlib>
#include <new>

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

void* aligned_alloc_bytes(std::size_t bytes) {
  const std::size_t size = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, size ? size : 64);
  if (p == nullptr) throw std::bad_alloc();
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
