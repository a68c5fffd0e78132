// Batched GEMM through cuBLASLt: bf16 in / f32 accumulate / bf16 out, or f32 throughout (true f32
// compute, not TF32, so results match the CPU backend to ~1e-6 relative).
//
// cuBLASLt is column-major. A row-major [R, C] matrix with row stride ld is, read column-major, its
// transpose [C, R] with the same ld, so row-major C = op(A) op(B) is computed as the column-major
// product C^T = op(B)^T op(A)^T with B's memory as Lt's first operand and A's as the second,
// each keeping its own transpose flag.
#include <cublasLt.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "core/backend.h"
#include "core/cuda/runtime.h"

// CUBLAS_CHECK(cublasLtMatmul(...)) throws naming the call, the status and file:line.
#define CUBLAS_CHECK(call)                                                                  \
  do {                                                                                      \
    cublasStatus_t st_ = (call);                                                            \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                       \
      ST_THROW("cuBLAS error ", cublasLtGetStatusName(st_), " (", cublasLtGetStatusString(st_), \
               ") in ", #call);                                                             \
  } while (0)

namespace seqtrain::cuda {
namespace {

// cuBLASLt's recommended workspace for Hopper; lets it pick split-K and stream-K kernels.
constexpr size_t kWorkspaceBytes = size_t(32) << 20;
constexpr int kMaxDevices = 64;

// One cuBLASLt handle and workspace per device, created on first use and kept for the process.
struct DeviceGemm {
  std::once_flag once;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};
DeviceGemm g_device_gemm[kMaxDevices];

DeviceGemm& device_gemm(int device) {
  ST_CHECK(device >= 0 && device < kMaxDevices, "gemm: CUDA device index ", device,
           " out of range");
  DeviceGemm& d = g_device_gemm[device];
  std::call_once(d.once, [&] {
    CUDA_CHECK(cudaSetDevice(device));
    CUBLAS_CHECK(cublasLtCreate(&d.handle));
    CUDA_CHECK(cudaMalloc(&d.workspace, kWorkspaceBytes));
  });
  return d;
}

// Column-major operand as cuBLASLt sees it: rows x cols, leading dimension ld, batch stride.
struct Layout {
  int64_t rows, cols, ld, batch_stride;
  auto tie() const { return std::tie(rows, cols, ld, batch_stride); }
};

// A row-major [batch, R, C] view (stride(2) == 1) read column-major: [C, R] with ld = stride(1).
Layout col_major(const Tensor& t) {
  Layout l{t.size(2), t.size(1), t.stride(1), t.stride(0)};
  // With a single row the row stride is never stepped, but cuBLASLt still requires ld >= rows.
  if (t.size(1) <= 1 || l.ld < l.rows) l.ld = l.rows > 0 ? l.rows : 1;
  return l;
}

// Largest power of two (<= 256) dividing the address: cuBLASLt's heuristic must only return
// kernels that tolerate the actual alignment of views at arbitrary offsets.
uint32_t alignment(const void* p) {
  uint32_t a = 256;
  while (a > 1 && (reinterpret_cast<uintptr_t>(p) & (a - 1)) != 0) a >>= 1;
  return a;
}

// Everything the heuristic's choice depends on; plans are cached under it.
struct PlanKey {
  int device;
  DType dtype;
  bool trans_x, trans_y;  // Lt's first operand (B's memory) and second (A's memory)
  int64_t m, n, k, batch;
  Layout x, y, d;
  uint32_t align_x, align_y, align_d;
  bool operator<(const PlanKey& o) const {
    auto t = [](const PlanKey& p) {
      return std::make_tuple(p.device, p.dtype, p.trans_x, p.trans_y, p.m, p.n, p.k, p.batch,
                             p.x.tie(), p.y.tie(), p.d.tie(), p.align_x, p.align_y, p.align_d);
    };
    return t(*this) < t(o);
  }
};

// Descriptors plus the heuristic's algorithm for one PlanKey (owned by the cache for the
// process lifetime). `ok` is false when cuBLASLt has no algorithm for the problem.
struct Plan {
  bool ok = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t x = nullptr, y = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

cublasLtMatrixLayout_t make_layout(cudaDataType_t type, const Layout& l, int64_t batch) {
  cublasLtMatrixLayout_t h;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&h, type, uint64_t(l.rows), uint64_t(l.cols), l.ld));
  if (batch > 1) {
    const int32_t count = int32_t(batch);
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(h, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                  sizeof(count)));
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(h, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                  &l.batch_stride, sizeof(l.batch_stride)));
  }
  return h;
}

Plan build_plan(const PlanKey& key, cublasLtHandle_t handle) {
  Plan p;
  const cudaDataType_t type = key.dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t tx = key.trans_x ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t ty = key.trans_y ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &tx, sizeof(tx)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &ty, sizeof(ty)));
  p.x = make_layout(type, key.x, key.batch);
  p.y = make_layout(type, key.y, key.batch);
  p.d = make_layout(type, key.d, key.batch);

  cublasLtMatmulPreference_t pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspaceBytes;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &ws, sizeof(ws)));
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_x},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_y},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d}};
  for (const auto& [attr, value] : aligns)
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.x, p.y, p.d, p.d,
                                                           pref, 1, &result, &found);
  CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
  // NOT_SUPPORTED means no kernel fits (e.g. a zero batch stride); the caller falls back.
  if (st != CUBLAS_STATUS_NOT_SUPPORTED) CUBLAS_CHECK(st);
  p.ok = st == CUBLAS_STATUS_SUCCESS && found > 0;
  if (p.ok) p.algo = result.algo;
  return p;
}

std::mutex g_plans_mutex;
std::map<PlanKey, Plan> g_plans;

const Plan& get_plan(const PlanKey& key, cublasLtHandle_t handle) {
  std::lock_guard<std::mutex> lock(g_plans_mutex);
  auto it = g_plans.find(key);
  if (it == g_plans.end()) it = g_plans.emplace(key, build_plan(key, handle)).first;
  return it->second;
}

}  // namespace

// One cublasLtMatmul per call (per batch only when Lt rejects a zero batch stride). FLOPs:
// 2 * batch * M * N * K; bytes: (MK + KN + MN [+ MN when beta != 0]) per batch times the element
// size. Compute-bound for M, N, K >= a few hundred (tensor cores, ~990 TFLOP/s bf16 dense on
// H100 SXM), memory-bound for skinny products.
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, double alpha,
          double beta) {
  ST_CHECK(a.dtype() != DType::F64, "gemm: f64 is CPU-only");
  ST_CHECK(a.dtype() == DType::F32 || a.dtype() == DType::BF16,
           "gemm: f32 or bf16 expected on GPU, got ", a.desc());
  ST_CHECK(a.dim() == 3 && b.dim() == 3 && c.dim() == 3 && a.stride(2) == 1 && b.stride(2) == 1 &&
               c.stride(2) == 1 && a.dtype() == b.dtype() && a.dtype() == c.dtype(),
           "gemm: 3-D views with unit inner stride and one dtype expected, got ", a.desc(), ", ",
           b.desc(), ", ", c.desc());
  const int64_t batch = c.size(0), M = c.size(1), N = c.size(2);
  const int64_t K = trans_a ? a.size(1) : a.size(2);
  ST_CHECK((trans_a ? a.size(2) : a.size(1)) == M && (trans_b ? b.size(2) : b.size(1)) == K &&
               (trans_b ? b.size(1) : b.size(2)) == N,
           "gemm: shapes do not multiply: ", a.desc(), (trans_a ? "^T" : ""), " @ ", b.desc(),
           (trans_b ? "^T" : ""), " -> ", c.desc());
  if (batch == 0 || M == 0 || N == 0) return;
  if (K == 0) {  // empty sum: C = beta * C
    ST_CHECK(c.is_contiguous(), "gemm: K == 0 needs a contiguous c, got ", c.desc());
    if (beta == 0.0)
      fill(c, 0.0);
    else
      unary(UnaryOp::Scale, c, c, beta);
    return;
  }
  const int device = c.device().index;
  DeviceGemm& dg = device_gemm(device);
  cudaStream_t stream = stream_for(device);

  PlanKey key{};
  key.device = device;
  key.dtype = a.dtype();
  key.trans_x = trans_b;
  key.trans_y = trans_a;
  key.m = N;
  key.n = M;
  key.k = K;
  key.batch = batch;
  key.x = col_major(b);
  key.y = col_major(a);
  key.d = col_major(c);
  const size_t esize = dtype_size(a.dtype());
  const char* pb = static_cast<const char*>(b.data_ptr());
  const char* pa = static_cast<const char*>(a.data_ptr());
  char* pc = static_cast<char*>(c.data_ptr());

  // B shared by every batch and A's batches stacked row after row: the batch folds into M, one
  // larger (better-utilised) GEMM instead of a batched one.
  if (batch > 1 && key.x.batch_stride == 0 && !trans_a && key.y.batch_stride == M * key.y.ld &&
      key.d.batch_stride == M * key.d.ld) {
    key.n = batch * M;
    key.y.cols = batch * M;
    key.d.cols = batch * M;
    key.batch = 1;
  }
  if (key.batch == 1) key.x.batch_stride = key.y.batch_stride = key.d.batch_stride = 0;
  key.align_x = alignment(pb);
  key.align_y = alignment(pa);
  key.align_d = alignment(pc);

  const float alpha_f = float(alpha), beta_f = float(beta);
  auto matmul = [&](const Plan& p, const void* x, const void* y, void* d) {
    CUBLAS_CHECK(cublasLtMatmul(dg.handle, p.desc, &alpha_f, x, p.x, y, p.y, &beta_f, d, p.d, d,
                                p.d, &p.algo, dg.workspace, kWorkspaceBytes, stream));
  };
  const Plan& plan = get_plan(key, dg.handle);
  if (plan.ok) {
    matmul(plan, pb, pa, pc);
    return;
  }
  ST_CHECK(key.batch > 1, "gemm: cuBLASLt found no algorithm for ", a.desc(),
           (trans_a ? "^T" : ""), " @ ", b.desc(), (trans_b ? "^T" : ""), " -> ", c.desc());
  // No batched kernel for these strides (a zero batch stride is not accepted everywhere): one
  // call per batch. Per-batch pointers change the alignment only when the batch stride is not a
  // multiple of 256 bytes, so the plan's alignment keys are the minimum over all batches.
  PlanKey single = key;
  single.batch = 1;
  single.x.batch_stride = single.y.batch_stride = single.d.batch_stride = 0;
  single.align_x = std::min(key.align_x, alignment(pb + key.x.batch_stride * esize));
  single.align_y = std::min(key.align_y, alignment(pa + key.y.batch_stride * esize));
  single.align_d = std::min(key.align_d, alignment(pc + key.d.batch_stride * esize));
  const Plan& one = get_plan(single, dg.handle);
  ST_CHECK(one.ok, "gemm: cuBLASLt found no algorithm for ", a.desc(), (trans_a ? "^T" : ""),
           " @ ", b.desc(), (trans_b ? "^T" : ""), " -> ", c.desc());
  for (int64_t i = 0; i < key.batch; ++i)
    matmul(one, pb + i * key.x.batch_stride * esize, pa + i * key.y.batch_stride * esize,
           pc + i * key.d.batch_stride * esize);
}

}  // namespace seqtrain::cuda
