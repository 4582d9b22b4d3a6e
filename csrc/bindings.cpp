// The only file that knows Python: per op, check the arguments (ValueError
// naming the argument and the shapes), allocate the outputs, release the GIL
// and call the kernel. float32 and float64 overloads; arrays are taken
// C-contiguous with noconvert(), so nothing is silently cast or copied.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "conv2d.h"
#include "gemm.h"
#include "im2col.h"
#include "pointwise.h"
#include "pool2d.h"
#include "runtime.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using namespace pybind11::literals;
using std::int64_t;

namespace pyconv {
namespace {

template <typename T>
using Arr = py::array_t<T, py::array::c_style>;

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

std::string shape_str(const py::array& a) {
  std::ostringstream os;
  os << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) os << (i ? ", " : "") << a.shape(i);
  os << (a.ndim() == 1 ? ",)" : ")");
  return os.str();
}

void check_ndim(const char* op, const char* name, const py::array& a, int ndim,
                const char* layout) {
  if (a.ndim() != ndim) {
    std::ostringstream os;
    os << op << ": expected " << name << " to be " << ndim << "-D " << layout
       << ", but got shape " << shape_str(a);
    fail(os.str());
  }
}

void check_min(const char* op, const char* name, int64_t v, int64_t lo) {
  if (v < lo) {
    std::ostringstream os;
    os << op << ": expected " << name << " >= " << lo << ", but got " << v;
    fail(os.str());
  }
}

// Product of sizes, or ValueError if it does not fit in int64.
int64_t checked_mul(const char* op, const char* what, std::initializer_list<int64_t> dims) {
  int64_t out = 1;
  for (int64_t d : dims)
    if (__builtin_mul_overflow(out, d, &out)) {
      std::ostringstream os;
      os << op << ": the size of " << what << " overflows int64";
      fail(os.str());
    }
  return out;
}

int64_t checked_add(const char* op, const char* what, int64_t a, int64_t b) {
  int64_t out;
  if (__builtin_add_overflow(a, b, &out)) {
    std::ostringstream os;
    os << op << ": " << what << " overflows int64";
    fail(os.str());
  }
  return out;
}

// Spatial checks shared by conv and pooling: the (padded) input holds one
// window, and the index arithmetic of the kernels (sums of a few multiples of
// H + 2*pad, W + 2*pad and the stride) stays far inside int64. Returns the
// stride the kernels get: any stride past H + 2*pad already yields one output
// row and column, so it is clamped there (a stride near 2**63 would otherwise
// overflow o*stride - pad + k).
int64_t check_window(const char* op, const char* x_name, int64_t h, int64_t w, int64_t kh,
                     int64_t kw, int64_t stride, int64_t pad, const char* k_name) {
  check_min(op, "stride", stride, 1);
  check_min(op, "pad", pad, 0);
  const int64_t two_pad = checked_mul(op, "2 * pad", {2, pad});
  const int64_t ph = checked_add(op, "H + 2 * pad", h, two_pad);
  const int64_t pw = checked_add(op, "W + 2 * pad", w, two_pad);
  checked_mul(op, "8 * (H + 2 * pad)", {8, ph});
  checked_mul(op, "8 * (W + 2 * pad)", {8, pw});
  if (kh > ph || kw > pw) {
    std::ostringstream os;
    os << op << ": " << k_name << " (" << kh << ", " << kw << ") is larger than the padded "
       << x_name << " (" << ph << ", " << pw << ") = (H + 2*pad, W + 2*pad) with (H, W) = ("
       << h << ", " << w << "), pad = " << pad;
    fail(os.str());
  }
  const int64_t limit = ph > pw ? ph : pw;
  return stride < limit ? stride : limit;
}

// Upper bound on threads (set_num_threads); also bounds per-thread scratch.
constexpr int kMaxThreads = 1024;

Conv2dShape conv_shape(const char* op, int64_t n, int64_t c, int64_t h, int64_t w, int64_t f,
                       int64_t kh, int64_t kw, int64_t stride, int64_t pad) {
  check_min(op, "x.shape[0] (batch)", n, 0);
  check_min(op, "H", h, 1);
  check_min(op, "W", w, 1);
  check_min(op, "channels", c, 1);
  check_min(op, "filter_h", kh, 1);
  check_min(op, "filter_w", kw, 1);
  stride = check_window(op, "input", h, w, kh, kw, stride, pad, "the kernel");
  Conv2dShape s{n, c, h, w, f, kh, kw, stride, pad};
  checked_mul(op, "x", {n, c, h, w});
  checked_mul(op, "w", {f, c, kh, kw});
  checked_mul(op, "y", {n, f, s.out_h(), s.out_w()});
  checked_mul(op, "col", {n, c, kh, kw, s.out_h(), s.out_w()});
  // Scratch: one image's column matrix and a dW partial per thread, in bytes.
  checked_mul(op, "the per-thread column matrices (bytes)",
              {c, kh, kw, s.out_h(), s.out_w(), 8, kMaxThreads});
  checked_mul(op, "the per-thread dW partial sums (bytes)",
              {checked_add(op, "filters + 1", f, 1), c, kh, kw, 8, kMaxThreads});
  return s;
}

Conv2dShape check_conv2d(const char* op, const py::array& x, const py::array& w,
                         int64_t stride, int64_t pad) {
  check_ndim(op, "x", x, 4, "(N, C, H, W)");
  check_ndim(op, "w", w, 4, "(F, C, KH, KW)");
  for (int i = 0; i < 4; ++i)
    if (w.shape(i) < 1) fail(std::string(op) + ": expected every dimension of w to be >= 1, but got shape " + shape_str(w));
  if (x.shape(1) != w.shape(1)) {
    std::ostringstream os;
    os << op << ": expected x.shape[1] == w.shape[1] (" << w.shape(1)
       << " input channels), but got x.shape " << shape_str(x) << " and w.shape "
       << shape_str(w);
    fail(os.str());
  }
  return conv_shape(op, x.shape(0), x.shape(1), x.shape(2), x.shape(3), w.shape(0), w.shape(2),
                    w.shape(3), stride, pad);
}

template <typename T>
Arr<T> new_array(std::initializer_list<int64_t> shape) {
  // NumPy's own rule: the size in bytes (zero dimensions aside) fits int64;
  // an empty array (a zero dimension) holds nothing, whatever the others.
  int64_t bytes = sizeof(T);
  bool empty = false;
  for (int64_t d : shape) {
    empty |= d == 0;
    if (d != 0 && __builtin_mul_overflow(bytes, d, &bytes))
      fail("the output array is too large (its size in bytes overflows int64)");
  }
  if (empty) bytes = 0;
  std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  // 64-byte aligned (NumPy's allocator gives 16): the next kernel that reads
  // this output loads whole cache lines, and vector loads never split one.
  // Large blocks are recycled through the output cache (runtime.h).
  void* data = output_alloc(static_cast<std::size_t>(bytes));
  py::capsule owner;
  try {
    owner = py::capsule(data, [](void* p) { output_free(p); });
  } catch (...) {
    output_free(data);
    throw;
  }
  return Arr<T>(dims, static_cast<T*>(data), owner);
}

// The kernels load elements (and vectors) through typed pointers: an array
// that is C-contiguous but not aligned to its element type (a view at an odd
// byte offset) is rejected; pyconv.functional copies such arrays first.
void check_aligned(const char* op, const char* name, const py::array& a) {
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    fail(std::string(op) + ": expected " + name +
         " to be aligned to its element size, but it is not (a view at an odd byte offset?)");
}

// ---- im2col / col2im ---------------------------------------------------------
template <typename T>
Arr<T> im2col_py(const Arr<T>& x, int64_t kh, int64_t kw, int64_t stride, int64_t pad) {
  const char* op = "im2col";
  check_aligned(op, "input_data", x);
  check_ndim(op, "input_data", x, 4, "(N, C, H, W)");
  const Conv2dShape s =
      conv_shape(op, x.shape(0), x.shape(1), x.shape(2), x.shape(3), 1, kh, kw, stride, pad);
  Arr<T> col = new_array<T>({s.batch * s.out_h() * s.out_w(), s.col_rows()});
  const T* xp = x.data();
  T* cp = col.mutable_data();
  {
    py::gil_scoped_release release;
    im2col_rows(xp, s, cp);
  }
  return col;
}

template <typename T>
Arr<T> col2im_py(const Arr<T>& col, int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh,
                 int64_t kw, int64_t stride, int64_t pad) {
  const char* op = "col2im";
  check_aligned(op, "col", col);
  check_ndim(op, "col", col, 2, "(N*OH*OW, C*KH*KW)");
  const Conv2dShape s = conv_shape(op, n, c, h, w, 1, kh, kw, stride, pad);
  const int64_t rows = s.batch * s.out_h() * s.out_w(), cols = s.col_rows();
  if (col.shape(0) != rows || col.shape(1) != cols) {
    std::ostringstream os;
    os << op << ": expected col of shape (" << rows << ", " << cols
       << ") = (N*OH*OW, C*KH*KW) for input_shape (" << n << ", " << c << ", " << h << ", " << w
       << "), but got " << shape_str(col);
    fail(os.str());
  }
  Arr<T> x = new_array<T>({n, c, h, w});
  const T* cp = col.data();
  T* xp = x.mutable_data();
  {
    py::gil_scoped_release release;
    col2im_rows(cp, s, xp);
  }
  return x;
}

// ---- gemm ------------------------------------------------------------------
bool overlaps(const py::array& a, const py::array& b) {
  const char* a0 = static_cast<const char*>(a.data());
  const char* b0 = static_cast<const char*>(b.data());
  const char* a1 = a0 + a.nbytes();
  const char* b1 = b0 + b.nbytes();
  return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b1 && b0 < a1;
}

template <typename T>
Arr<T> gemm_py(const Arr<T>& a, const Arr<T>& b, bool trans_a, bool trans_b, double alpha,
               double beta, std::optional<Arr<T>> out) {
  const char* op = "gemm";
  check_aligned(op, "a", a);
  check_aligned(op, "b", b);
  if (out.has_value()) check_aligned(op, "out", *out);
  check_ndim(op, "a", a, 2, "matrix");
  check_ndim(op, "b", b, 2, "matrix");
  const int64_t m = trans_a ? a.shape(1) : a.shape(0), k = trans_a ? a.shape(0) : a.shape(1);
  const int64_t kb = trans_b ? b.shape(1) : b.shape(0), n = trans_b ? b.shape(0) : b.shape(1);
  if (k != kb) {
    std::ostringstream os;
    os << op << ": expected op(a).shape[1] == op(b).shape[0], but got op(a) of shape (" << m
       << ", " << k << ") and op(b) of shape (" << kb << ", " << n << ") (a.shape "
       << shape_str(a) << ", trans_a=" << trans_a << "; b.shape " << shape_str(b)
       << ", trans_b=" << trans_b << ")";
    fail(os.str());
  }
  checked_mul(op, "out (m * n)", {m, n});
  Arr<T> c;
  if (out.has_value()) {
    c = *out;
    if (c.ndim() != 2 || c.shape(0) != m || c.shape(1) != n) {
      std::ostringstream os;
      os << op << ": expected out of shape (" << m << ", " << n << "), but got "
         << shape_str(c);
      fail(os.str());
    }
    if (!c.writeable()) fail("gemm: out is read-only");
    if (overlaps(c, a) || overlaps(c, b)) fail("gemm: out must not overlap a or b");
  } else {
    c = new_array<T>({m, n});
    beta = 0.0;  // a fresh C holds no values to scale
  }
  const MatRef<T> A = trans_a ? MatRef<T>{a.data(), k, m, a.shape(1), 1}.t()
                              : MatRef<T>{a.data(), m, k, a.shape(1), 1};
  const MatRef<T> B = trans_b ? MatRef<T>{b.data(), n, k, b.shape(1), 1}.t()
                              : MatRef<T>{b.data(), k, n, b.shape(1), 1};
  T* cp = c.mutable_data();
  const int nt = num_threads();
  {
    py::gil_scoped_release release;
    gemm<T>(m, n, k, static_cast<T>(alpha), A, B, static_cast<T>(beta), cp, n, nt);
  }
  return c;
}

// One entry for both dtypes, dispatched here rather than by pybind11's
// overloads of gemm_py: those convert each array argument by array_t::ensure
// (a PyArray_FromAny call even when nothing changes), and a float64 call first
// failed the float32 overload. The call from Python on 1 x 1 x 1 went from
// 0.74 (float32) / 0.98 (float64) us to 0.40 / 0.43; numpy.matmul's is 0.55.
// Only gemm is dispatched here: it is the one kernel called on products of a
// few microseconds, where a third of a microsecond shows.
py::array gemm_any(const py::array& a, const py::array& b, bool trans_a, bool trans_b,
                   double alpha, double beta, const std::optional<py::array>& out) {
  const auto as = [&](auto tag) -> std::optional<py::array> {
    using A = Arr<decltype(tag)>;
    if (!py::isinstance<A>(a) || !py::isinstance<A>(b) ||
        (out.has_value() && !py::isinstance<A>(*out)))
      return std::nullopt;
    return gemm_py(py::reinterpret_borrow<A>(a), py::reinterpret_borrow<A>(b), trans_a,
                   trans_b, alpha, beta,
                   out.has_value() ? std::optional<A>(py::reinterpret_borrow<A>(*out))
                                   : std::nullopt);
  };
  if (auto c = as(float{})) return *c;
  if (auto c = as(double{})) return *c;
  throw py::type_error("gemm: expected a, b (and out) to be C-contiguous arrays of one dtype, "
                       "float32 or float64, but got " +
                       std::string(py::str(a.dtype())) + " and " +
                       std::string(py::str(b.dtype())) +
                       (out.has_value() ? " and " + std::string(py::str(out->dtype())) : ""));
}

// ---- conv2d ------------------------------------------------------------------
template <typename T>
Arr<T> conv2d_forward_py(const Arr<T>& x, const Arr<T>& w, const Arr<T>& b, int64_t stride,
                         int64_t pad) {
  const char* op = "conv2d_forward";
  check_aligned(op, "x", x);
  check_aligned(op, "w", w);
  check_aligned(op, "b", b);
  const Conv2dShape s = check_conv2d(op, x, w, stride, pad);
  if (b.ndim() != 1 || b.shape(0) != s.filters) {
    std::ostringstream os;
    os << op << ": expected b of shape (" << s.filters << ",) to match w.shape[0] (w.shape "
       << shape_str(w) << "), but got " << shape_str(b);
    fail(os.str());
  }
  Arr<T> y = new_array<T>({s.batch, s.filters, s.out_h(), s.out_w()});
  const T *xp = x.data(), *wp = w.data(), *bp = b.data();
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release release;
    conv2d_forward(xp, wp, bp, s, yp);
  }
  return y;
}

template <typename T>
py::tuple conv2d_backward_py(const Arr<T>& x, const Arr<T>& w, const Arr<T>& dy, int64_t stride,
                             int64_t pad, bool need_dx) {
  const char* op = "conv2d_backward";
  check_aligned(op, "x", x);
  check_aligned(op, "w", w);
  check_aligned(op, "dout", dy);
  const Conv2dShape s = check_conv2d(op, x, w, stride, pad);
  if (dy.ndim() != 4 || dy.shape(0) != s.batch || dy.shape(1) != s.filters ||
      dy.shape(2) != s.out_h() || dy.shape(3) != s.out_w()) {
    std::ostringstream os;
    os << op << ": expected dout of shape (" << s.batch << ", " << s.filters << ", "
       << s.out_h() << ", " << s.out_w() << ") = (N, F, OH, OW), but got " << shape_str(dy);
    fail(os.str());
  }
  Arr<T> dw = new_array<T>({w.shape(0), w.shape(1), w.shape(2), w.shape(3)});
  Arr<T> db = new_array<T>({s.filters});
  py::object dx_obj = py::none();
  T* dxp = nullptr;
  if (need_dx) {
    Arr<T> dx = new_array<T>({s.batch, s.channels, s.height, s.width});
    dxp = dx.mutable_data();
    dx_obj = dx;
  }
  const T *xp = x.data(), *wp = w.data(), *dyp = dy.data();
  T *dwp = dw.mutable_data(), *dbp = db.mutable_data();
  {
    py::gil_scoped_release release;
    conv2d_backward(xp, wp, dyp, s, dxp, dwp, dbp);
  }
  return py::make_tuple(dx_obj, dw, db);
}

// ---- max pooling -------------------------------------------------------------
// The pooling of a 4-D input of shape (n, c, h, w), checked.
Pool2dShape pool_shape(const char* op, int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh,
                       int64_t kw, int64_t stride, int64_t pad) {
  check_min(op, "pool_h", kh, 1);
  check_min(op, "pool_w", kw, 1);
  check_min(op, "pad", pad, 0);
  if (pad > kh / 2 || pad > kw / 2) {
    std::ostringstream os;
    os << op << ": expected pad <= min(pool_h, pool_w) // 2 (" << (kh < kw ? kh : kw) / 2
       << ") for pool (" << kh << ", " << kw << "), but got pad=" << pad;
    fail(os.str());
  }
  check_min(op, "H", h, 1);
  check_min(op, "W", w, 1);
  stride = check_window(op, "input", h, w, kh, kw, stride, pad, "the pool window");
  return {n, c, h, w, kh, kw, stride, pad};
}

// Index is int64_t (flat plane indices, the public form) or uint8_t (window
// offsets, the Pooling layer's; windows of at most kMaxWindowArgmax).
template <typename T, typename Index>
py::tuple max_pool2d_forward_py(const Arr<T>& x, int64_t kh, int64_t kw, int64_t stride,
                                int64_t pad) {
  const char* op = std::is_same_v<Index, uint8_t> ? "max_pool2d_forward_window"
                                                   : "max_pool2d_forward";
  check_aligned(op, "x", x);
  check_ndim(op, "x", x, 4, "(N, C, H, W)");
  const Pool2dShape s =
      pool_shape(op, x.shape(0), x.shape(1), x.shape(2), x.shape(3), kh, kw, stride, pad);
  if (std::is_same_v<Index, uint8_t> && kh * kw > kMaxWindowArgmax) {
    std::ostringstream os;
    os << op << ": expected a window of at most " << kMaxWindowArgmax
       << " elements, but got pool (" << kh << ", " << kw << ")";
    fail(os.str());
  }
  Arr<T> y = new_array<T>({s.batch, s.channels, s.out_h(), s.out_w()});
  py::array_t<Index, py::array::c_style> am =
      new_array<Index>({s.batch, s.channels, s.out_h(), s.out_w()});
  const T* xp = x.data();
  T* yp = y.mutable_data();
  Index* ap = am.mutable_data();
  {
    py::gil_scoped_release release;
    max_pool2d_forward(xp, s, yp, ap);
  }
  return py::make_tuple(y, am);
}

template <typename T>
Arr<T> max_pool2d_backward_py(const Arr<T>& dy, const Arr<int64_t>& argmax, int64_t h,
                              int64_t w) {
  const char* op = "max_pool2d_backward";
  check_aligned(op, "dout", dy);
  check_aligned(op, "argmax", argmax);
  check_ndim(op, "dout", dy, 4, "(N, C, OH, OW)");
  check_min(op, "H", h, 1);
  check_min(op, "W", w, 1);
  if (argmax.ndim() != 4 || argmax.shape(0) != dy.shape(0) || argmax.shape(1) != dy.shape(1) ||
      argmax.shape(2) != dy.shape(2) || argmax.shape(3) != dy.shape(3)) {
    std::ostringstream os;
    os << op << ": expected argmax of the shape of dout " << shape_str(dy) << ", but got "
       << shape_str(argmax);
    fail(os.str());
  }
  const int64_t n = dy.shape(0), c = dy.shape(1);
  const int64_t in_plane = checked_mul(op, "H * W", {h, w});
  checked_mul(op, "dx", {n, c, h, w});
  const int64_t* ap = argmax.data();
  const int64_t count = static_cast<int64_t>(argmax.size());
  // One branch-free pass of 64-bit ORs and subtractions, which vectorize even
  // on the baseline ISA (an early exit or a 64-bit compare does not: the
  // scalar loop was a quarter of the backward), then the first bad index if
  // any. a in [0, lim] leaves the top bit of both a and lim - a clear; a < 0
  // sets it in a, a > lim in lim - a (mod 2^64).
  const uint64_t lim = static_cast<uint64_t>(in_plane - 1);
  uint64_t bits = 0;
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t u = static_cast<uint64_t>(ap[i]);
    bits |= u | (lim - u);
  }
  for (int64_t i = 0; (bits >> 63) != 0 && i < count; ++i)
    if (ap[i] < 0 || ap[i] >= in_plane) {
      std::ostringstream os;
      os << op << ": argmax[" << i << "] = " << ap[i] << " is outside [0, H*W) = [0, "
         << in_plane << ")";
      fail(os.str());
    }
  Arr<T> dx = new_array<T>({n, c, h, w});
  const T* dyp = dy.data();
  T* dxp = dx.mutable_data();
  const int64_t out_plane = dy.shape(2) * dy.shape(3);
  {
    py::gil_scoped_release release;
    max_pool2d_backward(dyp, ap, n * c, in_plane, out_plane, dxp);
  }
  return dx;
}

template <typename T>
Arr<T> max_pool2d_backward_window_py(const Arr<T>& dy,
                                     const py::array_t<uint8_t, py::array::c_style>& offsets,
                                     int64_t h, int64_t w, int64_t kh, int64_t kw,
                                     int64_t stride, int64_t pad) {
  const char* op = "max_pool2d_backward_window";
  check_aligned(op, "dout", dy);
  check_ndim(op, "dout", dy, 4, "(N, C, OH, OW)");
  const Pool2dShape s = pool_shape(op, dy.shape(0), dy.shape(1), h, w, kh, kw, stride, pad);
  if (dy.shape(2) != s.out_h() || dy.shape(3) != s.out_w()) {
    std::ostringstream os;
    os << op << ": expected dout of shape (" << s.batch << ", " << s.channels << ", "
       << s.out_h() << ", " << s.out_w() << ") for input (" << h << ", " << w
       << "), but got " << shape_str(dy);
    fail(os.str());
  }
  if (offsets.ndim() != 4 || !std::equal(dy.shape(), dy.shape() + 4, offsets.shape())) {
    fail(std::string(op) + ": expected argmax of the shape of dout " + shape_str(dy) +
         ", but got " + shape_str(offsets));
  }
  checked_mul(op, "dx", {s.batch, s.channels, h, w});
  const uint8_t* ap = offsets.data();
  const int64_t count = static_cast<int64_t>(offsets.size()), kk = kh * kw;
  uint8_t top = 0;  // a max that vectorizes, then the first bad offset if any
  for (int64_t i = 0; i < count; ++i) top = ap[i] > top ? ap[i] : top;
  for (int64_t i = 0; top >= kk && i < count; ++i)
    if (ap[i] >= kk) {
      std::ostringstream os;
      os << op << ": argmax[" << i << "] = " << int(ap[i]) << " is outside the window of "
         << kk << " elements";
      fail(os.str());
    }
  Arr<T> dx = new_array<T>({s.batch, s.channels, h, w});
  const T* dyp = dy.data();
  T* dxp = dx.mutable_data();
  {
    py::gil_scoped_release release;
    max_pool2d_backward(dyp, ap, s, dxp);
  }
  return dx;
}

// ---- ReLU ----------------------------------------------------------------------
std::vector<py::ssize_t> dims_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

template <typename T>
py::tuple relu_forward_py(const Arr<T>& x) {
  check_aligned("relu_forward", "x", x);
  Arr<T> y(dims_of(x));
  py::array_t<bool, py::array::c_style> mask(dims_of(x));
  const T* xp = x.data();
  T* yp = y.mutable_data();
  bool* mp = mask.mutable_data();
  const int64_t n = static_cast<int64_t>(x.size());
  {
    py::gil_scoped_release release;
    relu_forward(xp, n, yp, mp);
  }
  return py::make_tuple(y, mask);
}

template <typename T>
Arr<T> relu_backward_py(const Arr<T>& dout, const py::array_t<bool, py::array::c_style>& mask) {
  check_aligned("relu_backward", "dout", dout);
  if (dout.ndim() != mask.ndim() ||
      !std::equal(dout.shape(), dout.shape() + dout.ndim(), mask.shape())) {
    fail("relu_backward: expected dout of the shape of the forward input " + shape_str(mask) +
         ", but got " + shape_str(dout));
  }
  Arr<T> dx(dims_of(dout));
  const T* dp = dout.data();
  const bool* mp = mask.data();
  T* xp = dx.mutable_data();
  const int64_t n = static_cast<int64_t>(dout.size());
  {
    py::gil_scoped_release release;
    relu_backward(dp, mp, n, xp);
  }
  return dx;
}

// ---- Adam ----------------------------------------------------------------------
template <typename T>
void adam_update_py(Arr<T> w, const Arr<T>& g, Arr<T> m, Arr<T> v, double lr_t, double c1,
                    double c2, double eps) {
  const char* op = "adam_update";
  const std::pair<const char*, const py::array*> arrays[] = {{"w", &w}, {"g", &g}, {"m", &m},
                                                             {"v", &v}};
  for (const auto& [name, a] : arrays) {
    check_aligned(op, name, *a);
    if (a->size() != w.size()) {
      std::ostringstream os;
      os << op << ": expected " << name << " of " << w.size() << " elements (as w), but got "
         << a->size();
      fail(os.str());
    }
  }
  for (const auto& [name, a] : {arrays[0], arrays[2], arrays[3]})
    if (!a->writeable()) fail(std::string(op) + ": " + name + " is read-only");
  for (int i = 0; i < 4; ++i)
    for (int j = i + 1; j < 4; ++j)
      if (overlaps(*arrays[i].second, *arrays[j].second))
        fail(std::string(op) + ": " + arrays[i].first + " and " + arrays[j].first +
             " must not overlap");
  T* wp = w.mutable_data();
  const T* gp = g.data();
  T* mp = m.mutable_data();
  T* vp = v.mutable_data();
  const int64_t n = static_cast<int64_t>(w.size());
  {
    py::gil_scoped_release release;
    adam_update(wp, gp, mp, vp, n, static_cast<T>(lr_t), static_cast<T>(c1),
                static_cast<T>(c2), static_cast<T>(eps));
  }
}

template <typename T>
void def_ops(py::module_& m) {
  m.def("im2col", &im2col_py<T>, "x"_a.noconvert(), "kernel_h"_a, "kernel_w"_a, "stride"_a,
        "pad"_a, "Book layout: (N*OH*OW, C*KH*KW).");
  m.def("col2im", &col2im_py<T>, "col"_a.noconvert(), "batch"_a, "channels"_a, "height"_a,
        "width"_a, "kernel_h"_a, "kernel_w"_a, "stride"_a, "pad"_a, "Adjoint of im2col.");
  m.def("conv2d_forward", &conv2d_forward_py<T>, "x"_a.noconvert(), "w"_a.noconvert(),
        "b"_a.noconvert(), "stride"_a, "pad"_a);
  m.def("conv2d_backward", &conv2d_backward_py<T>, "x"_a.noconvert(), "w"_a.noconvert(),
        "dout"_a.noconvert(), "stride"_a, "pad"_a, "need_dx"_a = true,
        "Returns (dx or None, dw, db).");
  m.def("max_pool2d_forward", &max_pool2d_forward_py<T, int64_t>, "x"_a.noconvert(),
        "kernel_h"_a, "kernel_w"_a, "stride"_a, "pad"_a, "Returns (y, argmax).");
  m.def("max_pool2d_forward_window", &max_pool2d_forward_py<T, uint8_t>, "x"_a.noconvert(),
        "kernel_h"_a, "kernel_w"_a, "stride"_a, "pad"_a,
        "Returns (y, argmax as uint8 offsets kh*KW + kw inside each window).");
  m.def("max_pool2d_backward_window", &max_pool2d_backward_window_py<T>, "dout"_a.noconvert(),
        "argmax"_a.noconvert(), "height"_a, "width"_a, "kernel_h"_a, "kernel_w"_a, "stride"_a,
        "pad"_a);
  m.def("max_pool2d_backward", &max_pool2d_backward_py<T>, "dout"_a.noconvert(),
        "argmax"_a.noconvert(), "height"_a, "width"_a);
  m.def("relu_forward", &relu_forward_py<T>, "x"_a.noconvert(), "Returns (y, mask).");
  m.def("relu_backward", &relu_backward_py<T>, "dout"_a.noconvert(), "mask"_a.noconvert());
  m.def("adam_update", &adam_update_py<T>, "w"_a.noconvert(), "g"_a.noconvert(),
        "m"_a.noconvert(), "v"_a.noconvert(), "lr_t"_a, "c1"_a, "c2"_a, "eps"_a,
        "One Adam step in place: m += c1*(g - m); v += c2*(g*g - v); "
        "w -= lr_t * m / (sqrt(v) + eps).");
}

py::dict blocking_dict(const BlockSizes& b) {
  return py::dict("mr"_a = b.mr, "nr"_a = b.nr, "kc"_a = b.kc, "mc"_a = b.mc, "nc"_a = b.nc,
                  "small_panels"_a = b.small_panels);
}

py::dict config() {
  py::dict d;
  d["version"] = PYCONV_VERSION;
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = "unknown";
#endif
#ifdef _OPENMP
  d["openmp"] = std::string("yes (") + std::to_string(_OPENMP) + ")";
#else
  d["openmp"] = "no (serial build)";
#endif
  d["threads"] = num_threads();
  d["simd"] = current_isa();
  d["available_simd"] = available_isas();
  d["gemm_blocking_float32"] = blocking_dict(gemm_impl<float>().bs);
  d["gemm_blocking_float64"] = blocking_dict(gemm_impl<double>().bs);
  d["gemm_parallel_flops_float32"] = parallel_flops<float>();
  d["gemm_parallel_flops_float64"] = parallel_flops<double>();
  d["gemm_contended_parallel_flops_float32"] = contended_parallel_flops<float>();
  d["gemm_contended_parallel_flops_float64"] = contended_parallel_flops<double>();
  d["parallel_region_us"] = parallel_region_ns() * 1e-3;
  d["contended_holds"] = contended_holds();
  d["contended"] = team_contended();
  d["output_cache_bytes"] = output_cache_bytes();
  d["output_cache_limit_bytes"] = kOutputCacheBytes;
  return d;
}

py::dict conv2d_plan_py(const std::string& dtype, int64_t n, int64_t c, int64_t h, int64_t w,
                        int64_t f, int64_t kh, int64_t kw, int64_t stride, int64_t pad,
                        bool backward, int nthreads) {
  const char* op = "conv2d_plan";
  check_min(op, "filters", f, 1);
  const Conv2dShape s = conv_shape(op, n, c, h, w, f, kh, kw, stride, pad);
  if (nthreads < 0 || nthreads > kMaxThreads)
    fail("conv2d_plan: expected 0 <= nthreads <= " + std::to_string(kMaxThreads) +
         " (0: the current setting), but got " + std::to_string(nthreads));
  const int nt = nthreads > 0 ? nthreads : num_threads();
  ConvPlan p;
  if (dtype == "float32")
    p = conv2d_plan<float>(s, gemm_impl<float>(), nt, backward);
  else if (dtype == "float64")
    p = conv2d_plan<double>(s, gemm_impl<double>(), nt, backward);
  else
    throw py::type_error("conv2d_plan: expected dtype 'float32' or 'float64', but got '" +
                         dtype + "'");
  return py::dict("team"_a = p.team, "gemm_threads"_a = p.gemm_threads, "direct"_a = p.direct,
                  "padded"_a = p.padded, "dx_conv"_a = p.dx_conv, "fwd_direct"_a = p.fwd_direct,
                  "dx_direct"_a = p.dx_direct, "dw_direct"_a = p.dw_direct, "dw_dot"_a = p.dw_dot,
                  "workspace_bytes"_a = p.bytes);
}

double fma_peak_py(const std::string& dtype, int nthreads, double seconds) {
  if (nthreads < 1 || nthreads > kMaxThreads)
    fail("fma_peak: expected 1 <= nthreads <= " + std::to_string(kMaxThreads) + ", but got " +
         std::to_string(nthreads));
  if (!(seconds > 0.0 && seconds <= 60.0))
    fail("fma_peak: expected 0 < seconds <= 60, but got " + std::to_string(seconds));
  const bool f32 = dtype == "float32";
  if (!f32 && dtype != "float64")
    throw py::type_error("fma_peak: expected dtype 'float32' or 'float64', but got '" + dtype +
                         "'");
  py::gil_scoped_release release;
  return f32 ? fma_peak_gflops<float>(nthreads, seconds)
             : fma_peak_gflops<double>(nthreads, seconds);
}

}  // namespace
}  // namespace pyconv

PYBIND11_MODULE(_core, m) {
  using namespace pyconv;
  m.doc() = "pyconv compiled core: im2col, GEMM, convolution and max pooling kernels";
  m.attr("__version__") = PYCONV_VERSION;
  // Windows up to this many elements have one-byte argmax offsets (the
  // *_window pooling kernels); the Pooling layer reads it from here.
  m.attr("MAX_WINDOW_ARGMAX") = kMaxWindowArgmax;
  def_ops<float>(m);
  def_ops<double>(m);
  m.def("gemm", &gemm_any, "a"_a.noconvert(), "b"_a.noconvert(), "trans_a"_a, "trans_b"_a,
        "alpha"_a, "beta"_a, "out"_a.noconvert() = py::none(),
        "out = alpha * op(a) @ op(b) + beta * out (float32 or float64, C-contiguous).");
  m.def("set_num_threads", [](long long n) {
    if (n < 1 || n > kMaxThreads)
      throw std::invalid_argument("set_num_threads: expected 1 <= n <= " +
                                  std::to_string(kMaxThreads) + ", but got " + std::to_string(n));
    pyconv::set_num_threads(static_cast<int>(n));
  }, "n"_a);
  m.def("get_num_threads", &pyconv::num_threads);
  m.def("config", &config);
  m.def("empty_cache", &output_cache_clear,
        "Free the cached blocks of released output arrays (see runtime.h).");
  m.def("available_isas", &available_isas);
  m.def("current_isa", &current_isa);
  m.def("set_isa", [](const std::string& name) {
    if (!select_isa(name)) {
      std::string avail;
      for (const auto& s : available_isas()) avail += (avail.empty() ? "" : ", ") + s;
      throw std::invalid_argument("set_isa: '" + name + "' is not available on this CPU/build (available: " + avail + ")");
    }
  }, "name"_a);
  m.def("fma_peak", &fma_peak_py, "dtype"_a, "nthreads"_a, "seconds"_a = 0.3,
        "FMA throughput of the selected code path in GFLOP/s: independent vector\n"
        "multiply-add chains on `nthreads` threads for about `seconds` (benchmarks\n"
        "report GEMM rates as a fraction of it).");
  m.def("conv2d_plan", &conv2d_plan_py, "dtype"_a, "batch"_a, "channels"_a, "height"_a,
        "width"_a, "filters"_a, "kernel_h"_a, "kernel_w"_a, "stride"_a, "pad"_a,
        "backward"_a = true, "nthreads"_a = 0,
        "How conv2d would run this shape: thread split and scratch bytes.");
}
