// Run-time choice of the GEMM code path, and the allocating gemm() entry
// point. The kernels themselves live in gemm_kernels.h (one TU per ISA).
#include "gemm.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "runtime.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pyconv {

namespace isa_generic {
GemmImpl<float> make_gemm_float();
GemmImpl<double> make_gemm_double();
}  // namespace isa_generic
#ifdef PYCONV_HAVE_X86_KERNELS
namespace isa_avx2 {
GemmImpl<float> make_gemm_float();
GemmImpl<double> make_gemm_double();
}  // namespace isa_avx2
namespace isa_avx512 {
GemmImpl<float> make_gemm_float();
GemmImpl<double> make_gemm_double();
}  // namespace isa_avx512
#endif

namespace {

struct IsaEntry {
  const char* name;
  bool (*supported)();
  GemmImpl<float> (*f32)();
  GemmImpl<double> (*f64)();
};

bool always() { return true; }
#ifdef PYCONV_HAVE_X86_KERNELS
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
bool has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && has_avx2();
}
#endif

// Best first.
const IsaEntry kIsas[] = {
#ifdef PYCONV_HAVE_X86_KERNELS
    {"avx512", &has_avx512, &isa_avx512::make_gemm_float, &isa_avx512::make_gemm_double},
    {"avx2", &has_avx2, &isa_avx2::make_gemm_float, &isa_avx2::make_gemm_double},
#endif
    {"generic", &always, &isa_generic::make_gemm_float, &isa_generic::make_gemm_double},
};

struct Selected {
  GemmImpl<float> f32;
  GemmImpl<double> f64;
};

constexpr std::size_t kNumIsas = sizeof(kIsas) / sizeof(kIsas[0]);

// One immutable table per ISA, built once; the selection is an atomic pointer
// to one of them. A caller takes gemm_impl<T>() once per operation and keeps
// that reference, so a concurrent set_isa() can neither tear the table nor
// change block sizes between sizing the scratch and running the kernels.
// Only the CPU's supported ISAs are built: make_gemm_* is compiled with its
// TU's flags, and GCC assembles the AVX-512 table in zmm registers (SIGILL on
// an AVX2-only CPU). Unsupported entries stay empty and are never selected.
const Selected* tables() {
  static const struct Tables {
    Selected t[kNumIsas] = {};
    Tables() {
      for (std::size_t i = 0; i < kNumIsas; ++i)
        if (kIsas[i].supported()) t[i] = {kIsas[i].f32(), kIsas[i].f64()};
    }
  } all;
  return all.t;
}

// PYCONV_ISA=generic|avx2|avx512 forces a path (ignored if unsupported here).
const Selected* initial() {
  const char* forced = std::getenv("PYCONV_ISA");
  if (forced != nullptr)
    for (std::size_t i = 0; i < kNumIsas; ++i)
      if (std::strcmp(kIsas[i].name, forced) == 0 && kIsas[i].supported()) return &tables()[i];
  for (std::size_t i = 0; i < kNumIsas; ++i)
    if (kIsas[i].supported()) return &tables()[i];
  return &tables()[kNumIsas - 1];
}

std::atomic<const Selected*>& selected() {
  static std::atomic<const Selected*> s{initial()};
  return s;
}

}  // namespace

template <>
const GemmImpl<float>& gemm_impl<float>() {
  return selected().load(std::memory_order_acquire)->f32;
}
template <>
const GemmImpl<double>& gemm_impl<double>() {
  return selected().load(std::memory_order_acquire)->f64;
}

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const IsaEntry& e : kIsas)
    if (e.supported()) out.emplace_back(e.name);
  return out;
}

std::string current_isa() { return selected().load(std::memory_order_acquire)->f32.isa; }

bool select_isa(const std::string& name) {
  for (std::size_t i = 0; i < kNumIsas; ++i)
    if (name == kIsas[i].name && kIsas[i].supported()) {
      selected().store(&tables()[i], std::memory_order_release);
      return true;
    }
  return false;
}

// When a GEMM may use threads. A second thread costs a parallel region
// (waking a sleeping thread, OMP_WAIT_POLICY=passive, which pyconv sets, and
// joining it), and each thread packs its own panels; next to a busy core it
// can cost much more: the worker waits for that core.
//
// On a quiet machine the crossover follows the region's cost: 2 threads win
// once one thread's time at the FMA peak exceeds about 2.3 regions
// (parallel_flops). Fitted on the Xeon VM, where an empty 2-thread region
// costs 40-55 us and float32 crosses over at 2-3e7 flops; on the Zen 1 VM
// (8-21 us) this comes to ~1e6 and 2 threads win from ~1.5e6 (64 x 1024 x 27:
// 121 -> 78-99 us). Next to a busy core such products took 1.2-2.1x their
// 1-thread time (the bound is 1.3x); only from ~1e7 flops did they
// stay within it. So the lower threshold holds only while the contention
// monitor (runtime.h) sees threads paying in GEMM's own regions; otherwise
// the fixed contended_parallel_flops applies (RESULTS.md, "GEMM against
// NumPy"). With it, the 2-thread/1-thread-quiet ratios next to a busy core
// stayed at 0.99-1.11 for every GEMM the benchmark times.
//
// PYCONV_PARALLEL_FLOPS=<flops> sets one fixed threshold instead (0: any size
// may use threads). Which path runs never changes the result: every element
// of C is summed by one thread in the same order (gemm_kernels.h).
namespace {
double env_parallel_flops() {  // < 0: not set
  static const double flops = [] {  // once; thread-safe
    if (const char* set = std::getenv("PYCONV_PARALLEL_FLOPS")) {
      char* end = nullptr;
      const double v = std::strtod(set, &end);
      if (end != set && *end == '\0' && v >= 0 && std::isfinite(v)) return v;
    }
    return -1.0;
  }();
  return flops;
}

// One thread's run of the FMA probe, `iters` rounds of it (a few ns each)
// growing 4x until a run lasts `seconds`: its rounds, time and flops.
struct ProbeRun {
  std::int64_t iters;
  double seconds, flops;
};
template <typename T>
ProbeRun probe_for(const GemmImpl<T>& impl, double seconds, T* sink) {
  for (std::int64_t iters = 1024;; iters *= 4) {
    const std::int64_t t0 = now_ns();
    const double flops = impl.fma_probe(iters, sink);
    const double elapsed = static_cast<double>(now_ns() - t0) * 1e-9;
    if (elapsed >= seconds || iters >= (std::int64_t{1} << 40))
      return {iters, elapsed > 0 ? elapsed : 1e-9, flops};
  }
}
}  // namespace

template <typename T>
double contended_parallel_flops() {
  const double set = env_parallel_flops();
  return set >= 0 ? set : sizeof(T) == 4 ? 2.5e7 : 1.5e7;
}

template <typename T>
double parallel_flops() {
  static const double flops = [] {  // once; thread-safe; 1-3 ms
    const double set = env_parallel_flops();
    if (set >= 0) return set;
    const double cap = contended_parallel_flops<T>();
    const double region_ns = parallel_region_ns();
    if (region_ns <= 0) return cap;  // serial build
    T sink = 0;
    const ProbeRun run = probe_for(gemm_impl<T>(), 5e-4, &sink);  // a coarse figure suffices
    volatile T keep = sink;
    (void)keep;
    const double quiet = 2.3 * region_ns * (run.flops / run.seconds * 1e-9);
    return quiet < cap ? quiet : cap;
  }();
  return flops;
}

template double contended_parallel_flops<float>();
template double contended_parallel_flops<double>();
template double parallel_flops<float>();
template double parallel_flops<double>();

template <typename T>
void gemm(std::int64_t m, std::int64_t n, std::int64_t k, T alpha, MatRef<T> a, MatRef<T> b,
          T beta, T* c, std::int64_t ldc, int nthreads) {
  const GemmImpl<T>& impl = gemm_impl<T>();  // once: see tables()
  const double flops =
      2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  if (nthreads > 1 &&
      (in_parallel() || (flops < contended_parallel_flops<T>() &&
                         (flops < parallel_flops<T>() || team_contended()))))
    nthreads = 1;  // one level of parallelism per call; see parallel_flops
  const std::int64_t per_thread = impl.workspace(m, n, k);
  Workspace slab(static_cast<std::size_t>(per_thread * nthreads) * sizeof(T));
  impl.run(m, n, k, alpha, a, b, beta, c, ldc, static_cast<T*>(slab.data()), nthreads, nullptr,
           nullptr, nullptr, nullptr);
}

// A round of the probe takes a few nanoseconds: calibrate on one thread until
// a run lasts >= 5 ms, then give every thread a run of `seconds`. The rate is
// all threads' flops over the region's wall time, so a thread that starts
// late lowers it, and a build without OpenMP reports what its one thread does.
template <typename T>
double fma_peak_gflops(int nthreads, double seconds) {
  const GemmImpl<T>& impl = gemm_impl<T>();
  T sink = 0;
  const ProbeRun calibration = probe_for(impl, 5e-3, &sink);
  const double scaled = static_cast<double>(calibration.iters) * seconds / calibration.seconds;
  const std::int64_t iters = scaled < 1.0    ? 1
                             : scaled > 1e12 ? std::int64_t{1000000000000}
                                             : static_cast<std::int64_t>(scaled);
  double flops = 0, checksum = 0;
  const std::int64_t t0 = now_ns();
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) reduction(+ : flops, checksum)
#else
  (void)nthreads;
#endif
  {
    T own = 0;
    flops += impl.fma_probe(iters, &own);
    checksum += static_cast<double>(own);
  }
  const double wall = static_cast<double>(now_ns() - t0) * 1e-9;
  volatile double keep = static_cast<double>(sink) + checksum;  // every chain's result is used
  (void)keep;
  return flops / wall * 1e-9;
}

template double fma_peak_gflops<float>(int, double);
template double fma_peak_gflops<double>(int, double);

template void gemm<float>(std::int64_t, std::int64_t, std::int64_t, float, MatRef<float>,
                          MatRef<float>, float, float*, std::int64_t, int);
template void gemm<double>(std::int64_t, std::int64_t, std::int64_t, double, MatRef<double>,
                           MatRef<double>, double, double*, std::int64_t, int);

}  // namespace pyconv
