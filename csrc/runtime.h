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

// Monotonic time in nanoseconds (std::chrono::steady_clock).
std::int64_t now_ns();

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
//
// Construct it just before the region. A watched join (a region whose
// threads have equal shares, give or take one unit) also times the region
// and, in its destructor on the caller's thread after the region, reports it
// to the contention monitor below.
class TeamJoin {
 public:
  static constexpr std::int64_t kSpinNs = 100000;
  explicit TeamJoin(bool watched = false);
  ~TeamJoin();
  TeamJoin(const TeamJoin&) = delete;
  TeamJoin& operator=(const TeamJoin&) = delete;
  void arrive();  // by every thread of the team, last thing in the region

 private:
  std::atomic<int> arrived_{0};
  const bool watched_;
  int team_ = 1;                              // written by the master in arrive()
  std::int64_t start_ns_ = 0;                 // construction (watched only)
  std::atomic<std::int64_t> first_ns_{0};     // the first arrival (watched only)
};

// ---- Contention seen at run time ------------------------------------------------
// Whether threads pay, judged from the regions themselves. For a watched
// region of wall time `wall` whose first thread finished its share `first`
// after the start, one thread would have taken about 2 * first; the monitor
// sums wall - 0.9 * 2 * first (what the team lost against 1.1x faster than
// one thread) over the current window of up to kJudgedTeams regions. When the
// sum exceeds kLossBudgetNs, threads are not paying: the process counts as
// contended for kContendedHoldNs, during which gemm() runs mid-sized
// products on one thread (gemm.cpp), and a new window starts.
//
// Why a sum of time and not a count of slow regions (measured on the Zen 1
// VM, RESULTS.md): next to a busy core, regions of 100 us and more are all
// slow (one thread runs at half speed), but small ones mostly are not: 5-10%
// of them wait 100-150 us for a worker woken behind the busy process, which
// made a 1.6e6-flop product 1.7x slower than one thread while 6 of 8 regions
// looked fine. A quiet machine also has its slow regions, 0.1-0.5% of them
// (the host), and after the worker's core idled for a hold, its first one or
// two (a halted vCPU wakes in 30-130 us); the budget absorbs those. After
// contention the scheduler may leave both threads on one core for 100 ms or
// more; the monitor then keeps products on one thread, which is faster there
// too. A loaded machine pays about the budget per hold.
constexpr int kJudgedTeams = 32;
constexpr std::int64_t kLossBudgetNs = 250000;
constexpr std::int64_t kContendedHoldNs = 50000000;
// The monitor's input (TeamJoin calls it; exposed for tests): one watched
// region ended at end_ns. Thread-safe; windows may mix calls from threads.
void note_team(std::int64_t first_ns, std::int64_t wall_ns, std::int64_t end_ns);
bool team_contended();          // within kContendedHoldNs of the last verdict
std::int64_t contended_holds();  // verdicts so far in this process

// Median wall time of an empty 2-thread region in ns (fork, the worker's
// wake-up, the join), measured at the first call, which must come from
// outside any parallel region (about 20 regions); 0 in a serial build.
double parallel_region_ns();

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
