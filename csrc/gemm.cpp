// Run-time choice of the GEMM code path, and the allocating gemm() entry
// point. The kernels themselves live in gemm_kernels.h (one TU per ISA).
#include "gemm.h"

#include <atomic>
#include <chrono>
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

// Below parallel_flops<T>() flops a GEMM runs on one thread: a second thread
// costs a parallel region (waking a sleeping thread, OMP_WAIT_POLICY=passive,
// which pyconv sets, and joining it), and each thread packs its own panels.
// Measured 1 vs 2 threads (benchmarks/bench_gemm.py) on the Xeon VM, where an
// empty 2-thread region costs 40-55 us: float32 crosses over at about 2-3e7
// flops, float64 (half the rate) at about 1.5e7. Not lowered where regions
// are cheaper: on the Zen 1 VM (8-21 us) 2 threads already win from ~1.5e6
// flops on a quiet machine (64 x 1024 x 27: 121 -> 78-99 us), but next to a
// busy core those products took 1.2-2.1x their 1-thread time (the worker
// waits for the busy core; the bound is 1.3x), and only products of
// ~1e7 flops and up stayed within it (RESULTS.md). PYCONV_PARALLEL_FLOPS=<flops>
// sets the threshold (0: any size may use threads), e.g. on a machine that
// runs nothing else. Which path runs never changes the result: every element
// of C is summed by one thread in the same order (gemm_kernels.h).
template <typename T>
double parallel_flops() {
  static const double flops = [] {  // once; thread-safe
    if (const char* set = std::getenv("PYCONV_PARALLEL_FLOPS")) {
      char* end = nullptr;
      const double v = std::strtod(set, &end);
      if (end != set && *end == '\0' && v >= 0 && std::isfinite(v)) return v;
    }
    return sizeof(T) == 4 ? 2.5e7 : 1.5e7;
  }();
  return flops;
}

template double parallel_flops<float>();
template double parallel_flops<double>();

template <typename T>
void gemm(std::int64_t m, std::int64_t n, std::int64_t k, T alpha, MatRef<T> a, MatRef<T> b,
          T beta, T* c, std::int64_t ldc, int nthreads) {
  const GemmImpl<T>& impl = gemm_impl<T>();  // once: see tables()
  if (nthreads > 1 &&
      (in_parallel() ||
       2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) <
           parallel_flops<T>()))
    nthreads = 1;  // one level of parallelism per call
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
  using Clock = std::chrono::steady_clock;
  const GemmImpl<T>& impl = gemm_impl<T>();
  T sink = 0;
  std::int64_t iters = 1024;
  double elapsed = 0;
  for (;;) {
    const auto t0 = Clock::now();
    impl.fma_probe(iters, &sink);
    elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    if (elapsed >= 5e-3 || iters >= (std::int64_t{1} << 40)) break;
    iters *= 4;
  }
  const double scaled = static_cast<double>(iters) * seconds / (elapsed > 0 ? elapsed : 1e-9);
  iters = scaled < 1.0    ? 1
          : scaled > 1e12 ? std::int64_t{1000000000000}
                          : static_cast<std::int64_t>(scaled);
  double flops = 0, checksum = 0;
  const auto t0 = Clock::now();
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) reduction(+ : flops, checksum)
#endif
  {
    T own = 0;
    flops += impl.fma_probe(iters, &own);
    checksum += static_cast<double>(own);
  }
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
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
