/* FMA peak probe: GFLOP/s of independent fused multiply-add chains.
 * Usage: fma_peak <f32|f64> <threads> [seconds]. Compile with
 * cc -O2 -march=native -fopenmp fma_peak.c; vector width follows the ISA the
 * compiler targets (AVX-512: 64 bytes, AVX: 32, otherwise 16). */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__AVX512F__)
#define VBYTES 64
#elif defined(__AVX__)
#define VBYTES 32
#else
#define VBYTES 16
#endif
/* 16 chains: enough to cover FMA latency x pipes (4 x 2 on Zen 5). */
#define CHAINS 16
#define INNER 1024

typedef float vf __attribute__((vector_size(VBYTES)));
typedef double vd __attribute__((vector_size(VBYTES)));

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

#define PROBE(NAME, V, T)                                                   \
  static double NAME(long iters, double* sink) {                            \
    V acc[CHAINS], m, a;                                                    \
    for (int j = 0; j < (int)(VBYTES / sizeof(T)); ++j) {                  \
      m[j] = (T)0.999999;                                                   \
      a[j] = (T)1e-6;                                                       \
    }                                                                       \
    for (int c = 0; c < CHAINS; ++c) acc[c] = m * (T)(c + 1);              \
    for (long i = 0; i < iters; ++i) {                                      \
      _Pragma("GCC unroll 16") for (int c = 0; c < CHAINS; ++c)             \
        acc[c] = acc[c] * m + a;                                            \
    }                                                                       \
    T s = 0;                                                                \
    for (int c = 0; c < CHAINS; ++c)                                        \
      for (int j = 0; j < (int)(VBYTES / sizeof(T)); ++j) s += acc[c][j];  \
    *sink += s;                                                             \
    return 2.0 * CHAINS * (VBYTES / sizeof(T)) * (double)iters;            \
  }

PROBE(probe_f32, vf, float)
PROBE(probe_f64, vd, double)

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s f32|f64 threads [seconds]\n", argv[0]);
    return 2;
  }
  const int f64 = strcmp(argv[1], "f64") == 0;
  const int threads = atoi(argv[2]);
  const double seconds = argc > 3 ? atof(argv[3]) : 0.5;
  /* calibrate iterations on one thread */
  double sink = 0, flops;
  long iters = 1 << 16;
  for (;;) {
    double t0 = now();
    f64 ? probe_f64(iters, &sink) : probe_f32(iters, &sink);
    if (now() - t0 > seconds / 4 || iters > (1L << 40)) break;
    iters *= 2;
  }
  iters *= 4;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    double total = 0, t0 = now();
#pragma omp parallel num_threads(threads) reduction(+ : total, sink)
    total += f64 ? probe_f64(iters, &sink) : probe_f32(iters, &sink);
    flops = total / (now() - t0);
    if (flops > best) best = flops;
  }
  printf("%.3f %d %d %g\n", best / 1e9, VBYTES * 8, threads, sink);
  return 0;
}
