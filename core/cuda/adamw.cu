// Fused AdamW step: one pass over param, grad, m, v (and the optional bf16 param copy).
#include <cmath>

#include "core/backend.h"
#include "core/cuda/device_utils.cuh"
#include "core/cuda/runtime.h"

namespace seqtrain::cuda {
namespace {

constexpr unsigned kBlock = 256;
// Elements per thread-iteration: 16-byte f32 accesses, 8-byte bf16 ones.
constexpr int kPack = 4;

// Scalars of one step, computed in double on the host and rounded to f32 exactly as the CPU
// backend (core/cpu/adamw.cpp) does, so both follow torch.optim.AdamW bit for bit.
struct AdamWScalars {
  float decay;                  // 1 - lr * wd
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float step_size;              // lr / (1 - beta1^step)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
  float eps;
};

// One element in f32, in torch's order (decoupled weight decay first):
// m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
// p = p (1 - lr wd) - step_size * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
// Explicitly rounded multiplies and adds keep nvcc from contracting them into FMAs, which would
// make the result differ from the CPU's in the last bit.
__device__ __forceinline__ void adamw_update(float& p, float& m, float& v, float g,
                                             const AdamWScalars& s) {
  m = __fadd_rn(__fmul_rn(s.beta1, m), __fmul_rn(s.one_minus_beta1, g));
  v = __fadd_rn(__fmul_rn(s.beta2, v), __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
  const float denom = __fadd_rn(sqrtf(v) / s.bias_correction2_sqrt, s.eps);
  p = __fsub_rn(__fmul_rn(p, s.decay), __fmul_rn(s.step_size, m / denom));
}

// n parameters: ~15 FLOPs each, 12 + sizeof(G) bytes read and 12 (+2 for the bf16 copy) written
// per element; bound by memory bandwidth. With VEC every pointer is aligned for kPack-element
// accesses; the tail (n mod kPack) is done by the first threads.
template <class G, bool VEC>
__global__ void adamw_kernel(float* __restrict__ param, const G* __restrict__ grad,
                             float* __restrict__ m, float* __restrict__ v,
                             bf16* __restrict__ param_bf16, int64_t n, AdamWScalars s) {
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nthreads = int64_t(gridDim.x) * blockDim.x;
  int64_t scalar_from = 0;
  if constexpr (VEC) {
    const int64_t npack = n / kPack;
    for (int64_t i = tid; i < npack; i += nthreads) {
      const int64_t e = i * kPack;
      Pack<float, kPack> p = load_pack<kPack>(param + e), mm = load_pack<kPack>(m + e),
                         vv = load_pack<kPack>(v + e);
      const Pack<G, kPack> g = load_pack<kPack>(grad + e);
      Pack<bf16, kPack> pb;
#pragma unroll
      for (int j = 0; j < kPack; ++j) {
        adamw_update(p.v[j], mm.v[j], vv.v[j], to_float(g.v[j]), s);
        pb.v[j] = float_to_bf16(p.v[j]);
      }
      store_pack<kPack>(param + e, p);
      store_pack<kPack>(m + e, mm);
      store_pack<kPack>(v + e, vv);
      if (param_bf16) store_pack<kPack>(param_bf16 + e, pb);
    }
    scalar_from = npack * kPack;
  }
  for (int64_t i = scalar_from + tid; i < n; i += nthreads) {
    float p = param[i], mm = m[i], vv = v[i];
    adamw_update(p, mm, vv, to_float(grad[i]), s);
    param[i] = p;
    m[i] = mm;
    v[i] = vv;
    if (param_bf16) param_bf16[i] = float_to_bf16(p);
  }
}

template <class G>
void launch_adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, bf16* param_bf16,
                  const AdamWScalars& s) {
  const int64_t n = param.numel();
  const int device = param.device().index;
  cudaStream_t stream = stream_for(device);
  const bool vec = aligned_to(param.data_ptr(), sizeof(float) * kPack) &&
                   aligned_to(m.data_ptr(), sizeof(float) * kPack) &&
                   aligned_to(v.data_ptr(), sizeof(float) * kPack) &&
                   aligned_to(grad.data_ptr(), sizeof(G) * kPack) &&
                   (!param_bf16 || aligned_to(param_bf16, sizeof(bf16) * kPack));
  const unsigned max_blocks = unsigned(sm_count(device)) * 16u;
  if (vec) {
    adamw_kernel<G, true><<<grid_for(size_t(n) / kPack + 1, kBlock, max_blocks), kBlock, 0,
                            stream>>>(param.data<float>(), grad.data<G>(), m.data<float>(),
                                      v.data<float>(), param_bf16, n, s);
  } else {
    adamw_kernel<G, false><<<grid_for(size_t(n), kBlock, max_blocks), kBlock, 0, stream>>>(
        param.data<float>(), grad.data<G>(), m.data<float>(), v.data<float>(), param_bf16, n, s);
  }
  CUDA_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace

void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                const ops::AdamWConfig& cfg, Tensor* param_bf16) {
  const int64_t n = param.numel();
  ST_CHECK(param.dtype() == DType::F32 && m.dtype() == DType::F32 && v.dtype() == DType::F32 &&
               (grad.dtype() == DType::F32 || grad.dtype() == DType::BF16),
           "cuda::adamw_step: f32 param/m/v and f32 or bf16 grad expected, got ", param.desc(),
           ", ", grad.desc(), ", ", m.desc(), ", ", v.desc());
  ST_CHECK(param.is_contiguous() && grad.is_contiguous() && m.is_contiguous() &&
               v.is_contiguous() && grad.numel() == n && m.numel() == n && v.numel() == n,
           "cuda::adamw_step: contiguous tensors of one size expected, got ", param.desc(), ", ",
           grad.desc(), ", ", m.desc(), ", ", v.desc());
  ST_CHECK(cfg.step >= 1, "cuda::adamw_step: step is 1-based, got ", cfg.step);
  bf16* pb = nullptr;
  if (param_bf16 && param_bf16->defined()) {
    ST_CHECK(param_bf16->dtype() == DType::BF16 && param_bf16->is_contiguous() &&
                 param_bf16->numel() == n,
             "cuda::adamw_step: param_bf16 must be contiguous bf16 of ", n, " elements, got ",
             param_bf16->desc());
    pb = param_bf16->data<bf16>();
  }
  if (n == 0) return;
  const double t = double(cfg.step);
  const AdamWScalars s{float(1.0 - cfg.lr * cfg.weight_decay),
                       float(cfg.beta1),
                       float(1.0 - cfg.beta1),
                       float(cfg.beta2),
                       float(1.0 - cfg.beta2),
                       float(cfg.lr / (1.0 - std::pow(cfg.beta1, t))),
                       float(std::sqrt(1.0 - std::pow(cfg.beta2, t))),
                       float(cfg.eps)};
  if (grad.dtype() == DType::F32)
    launch_adamw<float>(param, grad, m, v, pb, s);
  else
    launch_adamw<bf16>(param, grad, m, v, pb, s);
}

}  // namespace seqtrain::cuda
