// Helpers of the Titans memory tests. A random neural_memory case shared by them (CPU fused vs composed, GPU vs CPU):
// q, k, v [B, H, T, d], the lr, alpha and eta logits [B, H, T], gamma [1, H, 1, d], W0 [B, H, d, h],
// W1 [B, H, h, d] and an output gradient, run as two calls cut at `split` (a partial first chunk,
// complete chunks, a partial tail).
#pragma once
#include <cmath>
#include <vector>

#include "autograd/functions.h"
#include "autograd/node.h"
#include "layers/titans/neural_memory.h"
#include "test_util.h"

namespace seqtrain::testing {

// Row t of x [B, H, T, d] scaled by 10^(lo + (hi - lo) t / (T - 1)): tokens whose gradient norms span
// several decades (the clamp's linear, nonlinear and saturated ranges).
inline Tensor spread_rows(const Tensor& x, double lo, double hi) {
  const int64_t T = x.size(2);
  std::vector<double> f(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) f[size_t(t)] = std::pow(10.0, lo + (hi - lo) * double(t) / double(T - 1));
  return mul(x, Tensor::from_vector(f, {1, 1, T, 1}, x.dtype()));
}

struct NeuralMemoryCase {
  std::vector<Tensor> inputs;  // q, k, v, lr, alpha_logit, eta_logit, gamma, W0, W1 (on the CPU)
  Tensor dy;

  // qk: the range of q and k; w: the range of the initial weights.
  NeuralMemoryCase(int64_t B, int64_t H, int64_t T, int64_t d, int64_t h, DType dt, double qk, double w) {
    const Device cpu = Device::cpu();
    inputs = {random_tensor({B, H, T, d}, dt, cpu, 11, -qk, qk), random_tensor({B, H, T, d}, dt, cpu, 12, -qk, qk),
              random_tensor({B, H, T, d}, dt, cpu, 13),          random_tensor({B, H, T}, dt, cpu, 14, 0.05, 0.4),
              random_tensor({B, H, T}, dt, cpu, 15, -3.0, 0.0),  random_tensor({B, H, T}, dt, cpu, 16, -1.0, 2.0),
              random_tensor({1, H, 1, d}, dt, cpu, 17, -0.5, 0.5), random_tensor({B, H, d, h}, dt, cpu, 18, -w, w),
              random_tensor({B, H, h, d}, dt, cpu, 19, -w, w)};
    dy = random_tensor({B, H, T, d}, dt, cpu, 20);
  }

  // y and the gradients of the nine inputs, in f64 on the CPU, computed on `device` in two calls.
  std::vector<Tensor> run(Device device, const NeuralMemoryConfig& cfg, int64_t split) const {
    std::vector<Tensor> x;
    for (const Tensor& t : inputs) x.push_back(t.to(device).detach().clone().set_requires_grad(true));
    NeuralMemoryState st;
    st.weights = {x[7], x[8]};
    const int64_t T = x[0].size(2);
    auto piece = [&](int64_t a, int64_t e) {
      return neural_memory(slice(x[0], 2, a, e), slice(x[1], 2, a, e), slice(x[2], 2, a, e), slice(x[3], 2, a, e),
                           slice(x[4], 2, a, e), slice(x[5], 2, a, e), x[6], cfg, st);
    };
    Tensor y = concat({piece(0, split), piece(split, T)}, 2);
    autograd::run_backward({y}, {dy.to(device)});
    std::vector<Tensor> out{y.detach().to(Device::cpu()).to(DType::F64)};
    for (const Tensor& l : x) out.push_back(l.grad().to(Device::cpu()).to(DType::F64));
    return out;
  }
};

}  // namespace seqtrain::testing
