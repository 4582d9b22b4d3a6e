// Thread count and aligned scratch allocation shared by all kernels.
#include "runtime.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <new>

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

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

namespace {
std::atomic<std::int64_t> g_contended_until{0};  // now_ns() until which threads do not pay
std::atomic<std::int64_t> g_contended_holds{0};
std::atomic<std::int64_t> g_loss_ns{0};  // the current window's sum
std::atomic<int> g_judged{0};            // regions in the current window
}  // namespace

void note_team(std::int64_t first_ns, std::int64_t wall_ns, std::int64_t end_ns) {
  const std::int64_t loss = wall_ns - first_ns * 18 / 10;
  const std::int64_t sum = g_loss_ns.fetch_add(loss, std::memory_order_relaxed) + loss;
  const bool verdict = sum > kLossBudgetNs;
  if (verdict) {
    g_contended_holds.fetch_add(1, std::memory_order_relaxed);
    g_contended_until.store(end_ns + kContendedHoldNs, std::memory_order_relaxed);
  }
  if (verdict || g_judged.fetch_add(1, std::memory_order_relaxed) + 1 >= kJudgedTeams) {
    g_judged.store(0, std::memory_order_relaxed);  // a new window
    g_loss_ns.store(0, std::memory_order_relaxed);
  }
}

bool team_contended() {
  return now_ns() < g_contended_until.load(std::memory_order_relaxed);
}

std::int64_t contended_holds() { return g_contended_holds.load(std::memory_order_relaxed); }

TeamJoin::TeamJoin(bool watched) : watched_(watched), start_ns_(watched ? now_ns() : 0) {}

TeamJoin::~TeamJoin() {
  if (!watched_ || team_ < 2) return;
  // The region's closing barrier ordered the first arrival's store before this.
  const std::int64_t end = now_ns();
  note_team(first_ns_.load(std::memory_order_relaxed) - start_ns_, end - start_ns_, end);
}

void TeamJoin::arrive() {
  int thread = 0, team = 1;
#ifdef _OPENMP
  thread = omp_get_thread_num();
  team = omp_get_num_threads();
#endif
  if (thread == 0) team_ = team;
  const std::int64_t now = watched_ || thread == 0 ? now_ns() : 0;
  const int before = arrived_.fetch_add(1, std::memory_order_acq_rel);
  if (watched_ && before == 0) first_ns_.store(now, std::memory_order_relaxed);
  if (before + 1 == team || thread != 0) return;
  for (unsigned i = 1; arrived_.load(std::memory_order_acquire) < team; ++i) {
    cpu_relax();
    if (i % 64 == 0 && now_ns() - now > kSpinNs) return;
  }
}

double parallel_region_ns() {
#ifdef _OPENMP
  static const double median = [] {  // once; thread-safe
    // Ended as a kernel's region is (unwatched: not the monitor's business).
    auto region = [] {
      const std::int64_t t0 = now_ns();
      {
        TeamJoin join;
#pragma omp parallel num_threads(2)
        join.arrive();
      }
      return now_ns() - t0;
    };
    region();  // the first region may create the worker thread
    constexpr int kRounds = 19;
    std::int64_t t[kRounds];
    for (std::int64_t& v : t) v = region();
    std::nth_element(t, t + kRounds / 2, t + kRounds);
    return static_cast<double>(t[kRounds / 2]);
  }();
  return median;
#else
  return 0;
#endif
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

// ---- Output blocks -------------------------------------------------------------
// Every output block carries a 64-byte header holding its capacity, so that
// output_free knows whether it is a cacheable size. Free cached blocks are
// kept in release order (oldest first) for eviction.
namespace {
constexpr std::size_t kHeader = 64;

struct OutputCache {
  std::mutex mu;
  std::deque<std::pair<void*, std::size_t>> free_blocks;  // (block, capacity)
  std::size_t cached = 0;
};
OutputCache& output_cache() {
  static OutputCache* c = new OutputCache;  // never destroyed: frees may come at exit
  return *c;
}
std::size_t& header_capacity(void* block) { return *static_cast<std::size_t*>(block); }
}  // namespace

void* output_alloc(std::size_t bytes) {
  // Sizes round up to 64 KiB, so that a slightly smaller request reuses a block.
  const std::size_t granule = bytes >= kOutputCacheMinBytes ? std::size_t(64) << 10 : 64;
  const std::size_t capacity = (bytes + granule - 1) / granule * granule;
  if (capacity >= kOutputCacheMinBytes) {
    OutputCache& c = output_cache();
    std::lock_guard<std::mutex> lock(c.mu);
    // The smallest cached block that fits and is at most 1/8 larger.
    auto best = c.free_blocks.end();
    for (auto it = c.free_blocks.begin(); it != c.free_blocks.end(); ++it)
      if (it->second >= capacity && it->second - capacity <= capacity / 8 &&
          (best == c.free_blocks.end() || it->second < best->second))
        best = it;
    if (best != c.free_blocks.end()) {
      void* block = best->first;
      c.cached -= best->second;
      c.free_blocks.erase(best);
      return static_cast<char*>(block) + kHeader;
    }
  }
  void* block = aligned_alloc_bytes(capacity + kHeader);
  header_capacity(block) = capacity;
  return static_cast<char*>(block) + kHeader;
}

void output_free(void* p) {
  if (p == nullptr) return;
  void* block = static_cast<char*>(p) - kHeader;
  const std::size_t capacity = header_capacity(block);
  if (capacity < kOutputCacheMinBytes || capacity > kOutputCacheBytes) {
    std::free(block);
    return;
  }
  std::deque<void*> evicted;
  {
    OutputCache& c = output_cache();
    std::lock_guard<std::mutex> lock(c.mu);
    while (c.cached + capacity > kOutputCacheBytes && !c.free_blocks.empty()) {
      evicted.push_back(c.free_blocks.front().first);
      c.cached -= c.free_blocks.front().second;
      c.free_blocks.pop_front();
    }
    c.free_blocks.emplace_back(block, capacity);
    c.cached += capacity;
  }
  for (void* b : evicted) std::free(b);
}

std::size_t output_cache_bytes() {
  OutputCache& c = output_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.cached;
}

void output_cache_clear() {
  std::deque<std::pair<void*, std::size_t>> blocks;
  {
    OutputCache& c = output_cache();
    std::lock_guard<std::mutex> lock(c.mu);
    blocks.swap(c.free_blocks);
    c.cached = 0;
  }
  for (auto& b : blocks) std::free(b.first);
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
