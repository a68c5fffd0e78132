// Batched GEMM on OpenBLAS: c[i] = alpha * op(a[i]) @ op(b[i]) + beta * c[i].
// FLOPs: 2 * batch * M * N * K; compute bound for all but the smallest shapes.
// f32 and f64 call sgemm/dgemm on the views in place (leading dim = stride(1)); bf16 operands
// are widened into f32 scratch, multiplied with sgemm (f32 accumulation, as on the GPU), and
// rounded to bf16 once.
#include <cblas.h>

#include <climits>

#include "core/backend.h"
#include "core/cpu/dtype_dispatch.h"

namespace seqtrain::cpu {
namespace {

void blas_gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
               const float* b, int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void blas_gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* a, int lda,
               const double* b, int ldb, double beta, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// A [batch, rows, cols] operand as BLAS reads it: matrix i starts at data + i * batch_stride and
// row r of it at + r * ld.
template <typename C>
struct BlasMatrix {
  const C* data;
  int64_t ld;
  int64_t batch_stride;
};

// t [batch, rows, cols] (stride(2) == 1) as a BLAS operand of element type C. Used in place when
// the storage type is C and rows are at least `cols` apart; otherwise (bf16 storage, or rows
// that overlap, as in a stride-0 expanded view) copied densely into scratch, once per distinct
// matrix (a batch stride of 0 means one shared matrix).
template <typename S, typename C>
BlasMatrix<C> blas_matrix(const Tensor& t, std::vector<C>& scratch) {
  const int64_t batch = t.size(0), rows = t.size(1), cols = t.size(2);
  const int64_t min_ld = std::max<int64_t>(1, cols);
  const int64_t ld = rows <= 1 ? std::max(t.stride(1), min_ld) : t.stride(1);
  const S* src = t.data<S>();
  if constexpr (std::is_same_v<S, C>) {
    if (ld >= min_ld) return {src, ld, t.stride(0)};
  }
  const int64_t distinct = t.stride(0) == 0 ? 1 : batch;
  scratch.resize(size_t(distinct * rows * cols));
#pragma omp parallel for schedule(static) if (distinct * rows * cols >= kParallelGrain)
  for (int64_t br = 0; br < distinct * rows; ++br) {
    const int64_t i = br / rows, r = br % rows;
    const S* row = src + i * t.stride(0) + r * t.stride(1);
    C* dst = scratch.data() + br * cols;
    for (int64_t j = 0; j < cols; ++j) dst[j] = convert<C>(row[j]);
  }
  return {scratch.data(), cols, t.stride(0) == 0 ? 0 : rows * cols};
}

template <typename T>
void gemm_typed(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
                double alpha, double beta) {
  using C = compute_t<T>;  // float for f32 and bf16, double for f64
  const int64_t batch = c.size(0), m = c.size(1), n = c.size(2);
  const int64_t k = trans_a ? a.size(1) : a.size(2);
  std::vector<C> a_scratch, b_scratch;
  const BlasMatrix<C> am = blas_matrix<T, C>(a, a_scratch);
  const BlasMatrix<C> bm = blas_matrix<T, C>(b, b_scratch);

  // c as a BLAS output: in place for f32/f64, an f32 scratch for bf16 (filled from c only when
  // beta != 0, since beta == 0 must not read c: it may hold NaN garbage).
  std::vector<C> c_scratch;
  C* cp;
  int64_t ldc, c_batch_stride;
  if constexpr (std::is_same_v<T, C>) {
    cp = c.data<C>();
    ldc = m <= 1 ? std::max<int64_t>({c.stride(1), n, 1}) : c.stride(1);
    c_batch_stride = c.stride(0);
  } else {
    c_scratch.assign(size_t(batch * m * n), C(0));
    cp = c_scratch.data();
    ldc = n;
    c_batch_stride = m * n;
    if (beta != 0.0) {
      const T* src = c.data<T>();
#pragma omp parallel for schedule(static) if (batch * m * n >= kParallelGrain)
      for (int64_t br = 0; br < batch * m; ++br) {
        const T* row = src + (br / m) * c.stride(0) + (br % m) * c.stride(1);
        for (int64_t j = 0; j < n; ++j) cp[br * n + j] = convert<C>(row[j]);
      }
    }
  }
  ST_CHECK(am.ld <= INT_MAX && bm.ld <= INT_MAX && ldc <= INT_MAX,
           "gemm: a leading dim exceeds BLAS's 32-bit int: a ", a.desc(), ", b ", b.desc(), ", c ",
           c.desc());

  // OpenBLAS's own threading makes results depend on the thread count, so c is cut into fixed
  // tiles (per batch), each one single-threaded sgemm/dgemm call, spread over our threads. The
  // region is always entered: OpenBLAS runs single-threaded inside an active parallel region
  // (and when only one OpenMP thread is allowed), so no call ever splits its work. Each tile's
  // bits are a function of the shapes alone. 256 x 256 tiles keep the per-call packing of the
  // A and B panels (256 * K elements each) small against the 2 * 256 * 256 * K FLOPs.
  constexpr int64_t kTile = 256;
  const int64_t tiles_m = (m + kTile - 1) / kTile, tiles_n = (n + kTile - 1) / kTile;
  const int64_t ntasks = batch * tiles_m * tiles_n;
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < ntasks; ++task) {
    const int64_t i = task / (tiles_m * tiles_n);
    const int64_t m0 = (task / tiles_n) % tiles_m * kTile, n0 = task % tiles_n * kTile;
    const int64_t mt = std::min(kTile, m - m0), nt = std::min(kTile, n - n0);
    // Rows m0.. of op(a) and columns n0.. of op(b), as offsets into the stored matrices.
    const C* a_tile = am.data + i * am.batch_stride + (trans_a ? m0 : m0 * am.ld);
    const C* b_tile = bm.data + i * bm.batch_stride + (trans_b ? n0 * bm.ld : n0);
    C* c_tile = cp + i * c_batch_stride + m0 * ldc + n0;
    blas_gemm(trans_a, trans_b, int(mt), int(nt), int(k), C(alpha), a_tile, int(am.ld), b_tile,
              int(bm.ld), C(beta), c_tile, int(ldc));
  }

  if constexpr (!std::is_same_v<T, C>) {
    T* dst = c.data<T>();
#pragma omp parallel for schedule(static) if (batch * m * n >= kParallelGrain)
    for (int64_t br = 0; br < batch * m; ++br) {
      T* row = dst + (br / m) * c.stride(0) + (br % m) * c.stride(1);
      for (int64_t j = 0; j < n; ++j) row[j] = convert<T>(cp[br * n + j]);
    }
  }
}

// K == 0: the product is empty, so c = beta * c (and 0 when beta == 0, without reading c).
template <typename T>
void scale_output(Tensor& c, double beta) {
  using C = compute_t<T>;
  T* cp = c.data<T>();
  for (int64_t i = 0; i < c.size(0); ++i)
    for (int64_t r = 0; r < c.size(1); ++r)
      for (int64_t j = 0; j < c.size(2); ++j) {
        T& e = cp[i * c.stride(0) + r * c.stride(1) + j];
        e = beta == 0.0 ? convert<T>(C(0)) : convert<T>(C(beta) * convert<C>(e));
      }
}

}  // namespace

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, double alpha,
          double beta) {
  ST_CHECK(a.dim() == 3 && b.dim() == 3 && c.dim() == 3, "gemm: expected 3-D views, got a ",
           a.desc(), ", b ", b.desc(), ", c ", c.desc());
  ST_CHECK(a.dtype() == c.dtype() && b.dtype() == c.dtype(), "gemm: dtypes differ: a ", a.desc(),
           ", b ", b.desc(), ", c ", c.desc());
  const int64_t m = c.size(1), n = c.size(2);
  const int64_t k = trans_a ? a.size(1) : a.size(2);
  ST_CHECK((trans_a ? a.size(2) : a.size(1)) == m && (trans_b ? b.size(1) : b.size(2)) == n &&
               (trans_b ? b.size(2) : b.size(1)) == k,
           "gemm: shapes do not multiply: a ", a.desc(), (trans_a ? " (T)" : ""), ", b ", b.desc(),
           (trans_b ? " (T)" : ""), ", c ", c.desc());
  ST_CHECK(a.stride(2) == 1 || a.size(2) <= 1, "gemm: a must have unit column stride, got ",
           a.desc());
  ST_CHECK(b.stride(2) == 1 || b.size(2) <= 1, "gemm: b must have unit column stride, got ",
           b.desc());
  ST_CHECK(c.stride(2) == 1 || n <= 1, "gemm: c must have unit column stride, got ", c.desc());
  ST_CHECK(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX,
           "gemm: a matrix dimension exceeds BLAS's 32-bit int: a ", a.desc(), ", b ", b.desc(),
           ", c ", c.desc());
  if (c.numel() == 0) return;
  dispatch_floating(c.dtype(), "gemm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (k == 0) {
      scale_output<T>(c, beta);
    } else {
      gemm_typed<T>(a, trans_a, b, trans_b, c, alpha, beta);
    }
  });
}

}  // namespace seqtrain::cpu
