// Fused AdamW step on f32 param/m/v with f32 or bf16 grad. Memory bound: per element reads
// param, grad, m, v and writes param, m, v (and the bf16 copy): ~28-30 bytes, ~15 flops.
#include <cmath>

#include "core/backend.h"
#include "core/cpu/dtype_dispatch.h"

namespace seqtrain::cpu {

// torch.optim.AdamW (single-tensor path), in its order and in f32 with constants computed in
// double and cast to f32 as torch casts Python scalars:
//   p *= 1 - lr * wd                             (decoupled weight decay, before the update)
//   m = b1 * m + (1 - b1) * g
//   v = b2 * v + (1 - b2) * g * g
//   p -= (lr / (1 - b1^step)) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                const ops::AdamWConfig& cfg, Tensor* param_bf16) {
  ST_CHECK(cfg.step >= 1, "adamw_step: step is 1-based, got ", cfg.step);
  const int64_t n = param.numel();
  const double step = double(cfg.step);
  const float decay = float(1.0 - cfg.lr * cfg.weight_decay);
  const float b1 = float(cfg.beta1), one_minus_b1 = float(1.0 - cfg.beta1);
  const float b2 = float(cfg.beta2), one_minus_b2 = float(1.0 - cfg.beta2);
  const float step_size = float(cfg.lr / (1.0 - std::pow(cfg.beta1, step)));
  const float bias_correction2_sqrt = float(std::sqrt(1.0 - std::pow(cfg.beta2, step)));
  const float eps = float(cfg.eps);
  float* p = param.data<float>();
  float* mp = m.data<float>();
  float* vp = v.data<float>();
  bf16* pb = param_bf16 != nullptr ? param_bf16->data<bf16>() : nullptr;
  dispatch_floating(grad.dtype(), "adamw_step", [&](auto tag) {
    using G = typename decltype(tag)::type;
    const G* gp = grad.data<G>();
#pragma omp parallel for schedule(static) if (n >= kParallelGrain)
    for (int64_t i = 0; i < n; ++i) {
      const float g = convert<float>(gp[i]);
      const float mi = b1 * mp[i] + one_minus_b1 * g;
      const float vi = b2 * vp[i] + one_minus_b2 * g * g;
      const float denom = std::sqrt(vi) / bias_correction2_sqrt + eps;
      const float pi = p[i] * decay - step_size * (mi / denom);
      mp[i] = mi;
      vp[i] = vi;
      p[i] = pi;
      if (pb != nullptr) pb[i] = float_to_bf16(pi);
    }
  });
}

}  // namespace seqtrain::cpu
