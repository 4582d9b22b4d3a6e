// The kernels without Python: every code path this CPU supports, float and
// double, 1 and 2 threads, against float64 loops written here (not the code
// under test). Built by CMake with -DPYCONV_KERNEL_CHECK=ON and the kernels'
// own flags; tests/test_aarch64.py cross-compiles it for aarch64 and runs
// it under qemu-user, where no Python of that architecture is at hand.
// Prints one line per failure and a summary; exit status 0 when all passed.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "conv2d.h"
#include "gemm.h"
#include "pointwise.h"
#include "pool2d.h"
#include "runtime.h"

namespace {

using pyconv::Conv2dShape;
using pyconv::MatRef;
using pyconv::Pool2dShape;

int g_checks = 0, g_failures = 0;
std::mt19937_64 g_rng(12345);

void fail(const std::string& what) {
  if (++g_failures <= 20) std::printf("FAIL %s\n", what.c_str());
}

template <typename T>
std::vector<T> randn(std::int64_t n) {
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (T& e : v) e = static_cast<T>(d(g_rng));
  return v;
}

template <typename T>
double tolerance() {
  return std::is_same<T, float>::value ? 5e-5 : 1e-13;
}

// |got - ref| <= tol * mag elementwise, mag being the sum of the terms'
// magnitudes (a bound that does not depend on the summation order).
template <typename T>
bool close(const T* got, const std::vector<double>& ref, const std::vector<double>& mag,
           const std::string& what) {
  ++g_checks;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - ref[i]);
    if (!(err <= tolerance<T>() * mag[i] + 1e-300)) {
      fail(what + " at " + std::to_string(i) + ": " + std::to_string(double(got[i])) +
           " vs " + std::to_string(ref[i]));
      return false;
    }
  }
  return true;
}

template <typename T>
std::string tag(const char* op, int threads) {
  return std::string(op) + (std::is_same<T, float>::value ? " f32" : " f64") + " isa=" +
         pyconv::current_isa() + " threads=" + std::to_string(threads);
}

// C (m x n, ldc = n + 3) = alpha * op(A) op(B) + beta * C; the 3 columns past
// n must keep their sentinel, and beta == 0 must not read C (NaN there).
template <typename T>
void check_gemm(int threads) {
  const std::int64_t sizes[][3] = {{1, 1, 1},    {7, 19, 33},  {70, 45, 300}, {130, 257, 129},
                                   {5, 300, 600}, {300, 70, 20}, {64, 64, 700}, {33, 1, 17},
                                   {1, 40, 5},    {4, 5, 0},     {97, 131, 257},
                                   // B packed in several groups of panels in one ic block;
                                   // A over 2+ ic blocks with a partial panel, 2 pc blocks
                                   {50, 517, 270}, {301, 37, 259},
                                   // B^T dot-product blocks (AVX-512): 6 x 5 blocks of
                                   // 5 x 5; 5 + 4 rows by 4-5 columns with a k tail
                                   {30, 25, 576}, {9, 23, 250}};
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (const auto& sz : sizes) {
    const std::int64_t m = sz[0], n = sz[1], k = sz[2], ldc = n + 3;
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (int ab = 0; ab < 2; ++ab) {
          const T alpha = ab ? T(0.5) : T(1), beta = ab ? T(-2) : T(0);
          // A stored k x m when transposed (element (i, p) at p * m + i).
          const std::vector<T> a = randn<T>(m * k), b = randn<T>(k * n);
          const MatRef<T> ar = ta ? MatRef<T>{a.data(), k, m, m, 1}.t()
                                  : MatRef<T>{a.data(), m, k, k, 1};
          const MatRef<T> br = tb ? MatRef<T>{b.data(), n, k, k, 1}.t()
                                  : MatRef<T>{b.data(), k, n, n, 1};
          std::vector<T> c = randn<T>(m * ldc);
          std::vector<double> ref(static_cast<std::size_t>(m * n)), mag(ref.size());
          for (std::int64_t i = 0; i < m; ++i)
            for (std::int64_t j = 0; j < n; ++j) {
              double s = 0, sa = 0;
              for (std::int64_t p = 0; p < k; ++p) {
                const double t = double(ar.data[i * ar.rs + p * ar.cs]) *
                                 double(br.data[p * br.rs + j * br.cs]);
                s += t;
                sa += std::fabs(t);
              }
              const double c0 = ab ? double(c[i * ldc + j]) : 0.0;
              ref[i * n + j] = double(alpha) * s + double(beta) * c0;
              mag[i * n + j] = std::fabs(double(alpha)) * sa + std::fabs(double(beta) * c0);
            }
          for (std::int64_t i = 0; i < m; ++i) {
            if (!ab)
              for (std::int64_t j = 0; j < n; ++j) c[i * ldc + j] = nan;
            for (std::int64_t j = n; j < ldc; ++j) c[i * ldc + j] = T(7);
          }
          pyconv::gemm<T>(m, n, k, alpha, ar, br, beta, c.data(), ldc, threads);
          std::vector<T> packed(static_cast<std::size_t>(m * n));
          bool sentinel = true;
          for (std::int64_t i = 0; i < m; ++i) {
            for (std::int64_t j = 0; j < n; ++j) packed[i * n + j] = c[i * ldc + j];
            for (std::int64_t j = n; j < ldc; ++j) sentinel = sentinel && c[i * ldc + j] == T(7);
          }
          const std::string what = tag<T>("gemm", threads) + " m=" + std::to_string(m) +
                                   " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                                   " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) +
                                   " alpha/beta=" + std::to_string(ab);
          close(packed.data(), ref, mag, what);
          ++g_checks;
          if (!sentinel) fail(what + ": wrote past n");
        }
  }
}

// Direct loops over the padded, strided cross-correlation and its gradients.
template <typename T>
void check_conv(int threads) {
  struct Case {
    std::int64_t n, c, h, w, f, kh, kw, stride, pad;
  };
  const Case cases[] = {{2, 1, 9, 9, 3, 3, 3, 1, 0},    {2, 3, 11, 10, 5, 3, 3, 2, 1},
                        {3, 20, 8, 8, 17, 3, 3, 1, 1},  {2, 4, 7, 7, 6, 1, 1, 1, 0},
                        {1, 6, 12, 12, 9, 5, 5, 1, 2},  {2, 3, 13, 11, 4, 4, 2, 3, 1},
                        {2, 32, 10, 10, 20, 3, 3, 1, 1}, {3, 2, 6, 6, 70, 3, 3, 1, 0},
                        {1, 12, 9, 9, 8, 3, 3, 2, 1},   {2, 3, 12, 12, 4, 5, 5, 2, 1},
                        {2, 2, 9, 9, 3, 3, 3, 2, 0},
                        // AVX-512's weight gradient as dot products: rows of
                        // 24, 20 (a partial last vector) and 15 (L - 1) pixels
                        {2, 1, 28, 28, 30, 5, 5, 1, 0}, {2, 3, 17, 20, 7, 3, 3, 1, 1},
                        {1, 2, 9, 17, 6, 3, 3, 1, 0},
                        // the direct forward's plan: border classes around
                        // an interior, stride 2, and no interior at all
                        {2, 16, 9, 11, 12, 5, 5, 1, 2}, {2, 32, 9, 8, 10, 3, 3, 2, 1},
                        {1, 16, 3, 2, 7, 5, 5, 1, 2},
                        // the direct weight gradient's plan: C not a multiple
                        // of a tile's taps (hulls of two taps), 1225 pixels
                        // summed in two blocks
                        {2, 4, 70, 70, 8, 3, 3, 2, 1}};
  for (const Case& q : cases) {
    const Conv2dShape s{q.n, q.c, q.h, q.w, q.f, q.kh, q.kw, q.stride, q.pad};
    const std::int64_t oh = s.out_h(), ow = s.out_w();
    const std::vector<T> x = randn<T>(q.n * q.c * q.h * q.w),
                         w = randn<T>(q.f * q.c * q.kh * q.kw), b = randn<T>(q.f),
                         dy = randn<T>(q.n * q.f * oh * ow);
    const std::size_t ny = static_cast<std::size_t>(q.n * q.f * oh * ow);
    std::vector<double> y(ny), ymag(ny), dx(x.size()), dxmag(x.size()), dw(w.size()),
        dwmag(w.size()), db(b.size()), dbmag(b.size());
    for (std::int64_t i = 0; i < q.n; ++i)
      for (std::int64_t f = 0; f < q.f; ++f)
        for (std::int64_t r = 0; r < oh; ++r)
          for (std::int64_t col = 0; col < ow; ++col) {
            const std::size_t yo = static_cast<std::size_t>(((i * q.f + f) * oh + r) * ow + col);
            double s0 = b[f], sa = std::fabs(double(b[f]));
            const double g = dy[yo];
            db[f] += g;
            dbmag[f] += std::fabs(g);
            for (std::int64_t c = 0; c < q.c; ++c)
              for (std::int64_t u = 0; u < q.kh; ++u)
                for (std::int64_t v = 0; v < q.kw; ++v) {
                  const std::int64_t ih = r * q.stride - q.pad + u, iw = col * q.stride - q.pad + v;
                  if (ih < 0 || ih >= q.h || iw < 0 || iw >= q.w) continue;
                  const std::size_t xo = static_cast<std::size_t>(((i * q.c + c) * q.h + ih) * q.w + iw);
                  const std::size_t wo = static_cast<std::size_t>(((f * q.c + c) * q.kh + u) * q.kw + v);
                  s0 += double(w[wo]) * double(x[xo]);
                  sa += std::fabs(double(w[wo]) * double(x[xo]));
                  dw[wo] += g * double(x[xo]);
                  dwmag[wo] += std::fabs(g * double(x[xo]));
                  dx[xo] += g * double(w[wo]);
                  dxmag[xo] += std::fabs(g * double(w[wo]));
                }
            y[yo] = s0;
            ymag[yo] = sa;
          }
    char buf[128];
    std::snprintf(buf, sizeof buf, " (%lld,%lld,%lld,%lld,%lld,%lldx%lld,s%lld,p%lld)",
                  (long long)q.n, (long long)q.c, (long long)q.h, (long long)q.w, (long long)q.f,
                  (long long)q.kh, (long long)q.kw, (long long)q.stride, (long long)q.pad);
    std::vector<T> got_y(ny, std::numeric_limits<T>::quiet_NaN()), got_dx(x.size()),
        got_dw(w.size()), got_db(b.size());
    pyconv::conv2d_forward<T>(x.data(), w.data(), b.data(), s, got_y.data());
    close(got_y.data(), y, ymag, tag<T>("conv2d_forward", threads) + buf);
    pyconv::conv2d_backward<T>(x.data(), w.data(), dy.data(), s, got_dx.data(), got_dw.data(),
                               got_db.data());
    close(got_dx.data(), dx, dxmag, tag<T>("conv2d_backward dx", threads) + buf);
    close(got_dw.data(), dw, dwmag, tag<T>("conv2d_backward dw", threads) + buf);
    close(got_db.data(), db, dbmag, tag<T>("conv2d_backward db", threads) + buf);
  }
}

// Max pooling: maxima, argmax (first maximum in window order) in both forms,
// and the backward's scatter of dy to the argmax.
template <typename T>
void check_pool(int threads) {
  const Pool2dShape cases[] = {{2, 3, 8, 8, 2, 2, 2, 0},
                               {2, 4, 9, 9, 3, 3, 2, 1},
                               {1, 2, 7, 6, 3, 2, 1, 1},
                               {2, 5, 24, 24, 2, 2, 2, 0}};
  for (const Pool2dShape& s : cases) {
    const std::int64_t oh = s.out_h(), ow = s.out_w(), planes = s.batch * s.channels;
    const std::vector<T> x = randn<T>(planes * s.height * s.width), dy = randn<T>(planes * oh * ow);
    std::vector<double> y(static_cast<std::size_t>(planes * oh * ow)), dx(x.size()),
        dxmag(x.size());
    std::vector<std::int64_t> arg(y.size());
    for (std::int64_t p = 0; p < planes; ++p)
      for (std::int64_t r = 0; r < oh; ++r)
        for (std::int64_t c = 0; c < ow; ++c) {
          double best = -std::numeric_limits<double>::infinity();
          std::int64_t at = -1;
          for (std::int64_t u = 0; u < s.kernel_h; ++u)
            for (std::int64_t v = 0; v < s.kernel_w; ++v) {
              const std::int64_t ih = r * s.stride - s.pad + u, iw = c * s.stride - s.pad + v;
              if (ih < 0 || ih >= s.height || iw < 0 || iw >= s.width) continue;
              const double e = x[(p * s.height + ih) * s.width + iw];
              if (e > best) best = e, at = ih * s.width + iw;
            }
          const std::size_t o = static_cast<std::size_t>((p * oh + r) * ow + c);
          y[o] = best;
          arg[o] = at;
          const std::size_t xo = static_cast<std::size_t>(p * s.height * s.width + at);
          dx[xo] += dy[o];
          dxmag[xo] += std::fabs(double(dy[o]));
        }
    char buf[96];
    std::snprintf(buf, sizeof buf, " (%lld,%lld,%lld,%lld,%lldx%lld,s%lld,p%lld)",
                  (long long)s.batch, (long long)s.channels, (long long)s.height,
                  (long long)s.width, (long long)s.kernel_h, (long long)s.kernel_w,
                  (long long)s.stride, (long long)s.pad);
    std::vector<T> got_y(y.size()), got_dx(x.size()), got_dx8(x.size());
    std::vector<std::int64_t> got_arg(y.size());
    std::vector<std::uint8_t> got_arg8(y.size());
    pyconv::max_pool2d_forward<T>(x.data(), s, got_y.data(), got_arg.data());
    const std::vector<double> zero(y.size(), 0.0);
    close(got_y.data(), y, zero, tag<T>("max_pool2d_forward", threads) + buf);
    ++g_checks;
    if (got_arg != arg) fail(tag<T>("max_pool2d_forward argmax", threads) + buf);
    pyconv::max_pool2d_forward<T>(x.data(), s, got_y.data(), got_arg8.data());
    close(got_y.data(), y, zero, tag<T>("max_pool2d_forward (window argmax)", threads) + buf);
    pyconv::max_pool2d_backward<T>(dy.data(), got_arg.data(), planes, s.height * s.width,
                                   oh * ow, got_dx.data());
    close(got_dx.data(), dx, dxmag, tag<T>("max_pool2d_backward", threads) + buf);
    pyconv::max_pool2d_backward<T>(dy.data(), got_arg8.data(), s, got_dx8.data());
    close(got_dx8.data(), dx, dxmag, tag<T>("max_pool2d_backward (window argmax)", threads) + buf);
  }
}

// ReLU exactly; one Adam step with the operations and roundings the kernel
// documents, each rounded to T here too (this file is compiled without FMA
// contraction), so the results must be equal.
template <typename T>
void check_pointwise(int threads) {
  const std::int64_t n = 10007;
  const std::vector<T> x = randn<T>(n), g = randn<T>(n), dout = randn<T>(n);
  std::vector<T> y(n), dx(n);
  std::vector<char> mask(n);
  pyconv::relu_forward<T>(x.data(), n, y.data(), reinterpret_cast<bool*>(mask.data()));
  pyconv::relu_backward<T>(dout.data(), reinterpret_cast<const bool*>(mask.data()), n, dx.data());
  bool ok = true;
  for (std::int64_t i = 0; i < n; ++i)
    ok = ok && y[i] == (x[i] > 0 ? x[i] : T(0)) && (mask[i] != 0) == (x[i] > 0) &&
         dx[i] == (x[i] > 0 ? dout[i] : T(0));
  ++g_checks;
  if (!ok) fail(tag<T>("relu", threads));

  std::vector<T> w = randn<T>(n), m = randn<T>(n), v(n), w2, m2, v2;
  for (std::int64_t i = 0; i < n; ++i) v[i] = std::fabs(x[i]) + T(0.1);
  w2 = w, m2 = m, v2 = v;
  const T lr_t = T(0.001), c1 = T(0.1), c2 = T(0.001), eps = T(1e-7);
  pyconv::adam_update<T>(w.data(), g.data(), m.data(), v.data(), n, lr_t, c1, c2, eps);
  ok = true;
  for (std::int64_t i = 0; i < n; ++i) {
    const T d = g[i] - m2[i];
    const T md = c1 * d;
    m2[i] = m2[i] + md;
    const T gg = g[i] * g[i];
    const T vd = gg - v2[i];
    const T vv = c2 * vd;
    v2[i] = v2[i] + vv;
    const T den = std::sqrt(v2[i]) + eps;
    const T q = m2[i] / den;
    const T step = lr_t * q;
    w2[i] = w2[i] - step;
    ok = ok && w[i] == w2[i] && m[i] == m2[i] && v[i] == v2[i];
  }
  ++g_checks;
  if (!ok) fail(tag<T>("adam_update", threads));
}

// The contention monitor (runtime.h): real watched regions whose worker
// arrives 20 ms after the master until it gives its verdict, then, in the
// fresh window that starts, its sums on made-up timings.
void check_contention() {
  using pyconv::contended_holds;
  using pyconv::note_team;
  std::int64_t holds = contended_holds();
#ifdef _OPENMP
  int team = 0;
  for (int i = 0; i <= pyconv::kJudgedTeams && contended_holds() == holds; ++i) {
    pyconv::TeamJoin join(true);
#pragma omp parallel num_threads(2)
    {
      if (omp_get_thread_num() == 0) team = omp_get_num_threads();
      if (omp_get_thread_num() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      join.arrive();
    }
  }
  ++g_checks;
  if (team == 2 && !(pyconv::team_contended() && contended_holds() == holds + 1))
    fail("workers 20 ms late were not seen as contention");
  holds = contended_holds();
  if (team != 2) return;  // no verdict, so no fresh window to start from
#else
  note_team(0, 2 * pyconv::kLossBudgetNs, pyconv::now_ns());  // a verdict: a fresh window
  holds = contended_holds();
#endif
  // A 50 us product on two threads: 25 us shares, 35 us in all (-10 us).
  // Then ones whose worker came 125 us late (+105 us each): two are within
  // the budget, the third is not.
  const std::int64_t now = pyconv::now_ns();
  note_team(25000, 35000, now);
  note_team(25000, 150000, now);
  note_team(25000, 150000, now);
  const bool within = contended_holds() == holds;
  note_team(25000, 150000, now);
  const bool beyond = contended_holds() == holds + 1;
  // A window ends after kJudgedTeams regions: gains do not pile up.
  for (int i = 0; i < pyconv::kJudgedTeams; ++i) note_team(1000000, 1100000, now);  // -700 us
  note_team(0, pyconv::kLossBudgetNs + 1, now);
  const bool fresh = contended_holds() == holds + 2;
  ++g_checks;
  if (!(within && beyond && fresh)) fail("note_team's sums");
}

}  // namespace

int main() {
  std::string isas;
  for (const std::string& isa : pyconv::available_isas()) {
    if (!pyconv::select_isa(isa)) {
      fail("select_isa(" + isa + ") refused an available ISA");
      continue;
    }
    isas += (isas.empty() ? "" : ",") + isa;
    for (int threads : {1, 2}) {
      pyconv::set_num_threads(threads);
      check_gemm<float>(threads);
      check_gemm<double>(threads);
      check_conv<float>(threads);
      check_conv<double>(threads);
      check_pool<float>(threads);
      check_pool<double>(threads);
      check_pointwise<float>(threads);
      check_pointwise<double>(threads);
    }
  }
  check_contention();
  std::printf("kernel_check: isas %s: %d checks, %d failed\n", isas.c_str(), g_checks,
              g_failures);
  return g_failures == 0 && g_checks > 0 ? 0 : 1;
}
