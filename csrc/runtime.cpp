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

void AlignedFree::operator()(void* p) const { std::free(p); }

void* aligned_alloc_bytes(std::size_t bytes) {
  const std::size_t size = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, size ? size : 64);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace pyconv
