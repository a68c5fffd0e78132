// The fused chunk gradients of the depth-2 Titans memory (layers/titans/chunk_grads.h) against the
// composed ops of neural_memory (memory_chunk_gradients with cfg.fused = false), in f64: the outputs
// G0, G1 and the gradients of every input for a random cotangent, within 1e-12 relative (the two
// differ only in rounding). Odd sizes (C = 1, 5, 16; d = 3, 8; h = 4d and others; B, H > 1), with
// k, r, u strided slices of [B, H, T, d] tensors as neural_memory passes them; without the clamp and
// with it (tokens in its linear, nonlinear and saturated ranges, and the gradient of the weights w_t).
// Then neural_memory end to end, fused against composed, with and without the clamp. Every term of
// the backward's derivation is needed to pass.
#include <cmath>

#include "autograd/functions.h"
#include "autograd/node.h"
#include "layers/titans/chunk_grads.h"
#include "layers/titans/neural_memory.h"
#include "neural_memory_case.h"
#include "test_util.h"

namespace seqtrain {
namespace {

using testing::NeuralMemoryCase;
using testing::random_tensor;
using testing::rel_error;

struct Size {
  int64_t B, H, C, d, h;
};

struct PathResult {
  std::vector<Tensor> out, grads;  // G0, G1; dW0, dW1, dk, dr, du (of the leaves)
};

class TitansChunkGrads : public ::testing::TestWithParam<Size> {};

// The clamp's m for the test inputs below: the tokens' r, u rows are scaled by factors from 10^-1.5 to
// 10 (h_t scales with them), so that with this m some tokens are in tanh's linear range (2 h_t / m
// < 0.1, s_t ~ 1), some in its nonlinear range and some saturated (2 h_t / m > 3).
constexpr double kClampM = 20.0;

// The clamp cases scale the tokens' r, u rows by 10^-1.5 .. 10 (testing::spread_rows).
Tensor spread_rows(const Tensor& x) { return testing::spread_rows(x, -1.5, 1.0); }

TEST_P(TitansChunkGrads, FusedMatchesComposedOpsAndTheirGradients) {
  const Size s = GetParam();
  const int64_t T = s.C + 3, t0 = 2;  // the chunk is tokens [t0, t0 + C) of T
  const Tensor w0 = random_tensor({s.B, s.H, s.d, s.h}, DType::F64, Device::cpu(), 1, -0.6, 0.6);
  const Tensor w1 = random_tensor({s.B, s.H, s.h, s.d}, DType::F64, Device::cpu(), 2, -0.6, 0.6);
  const Tensor k = random_tensor({s.B, s.H, T, s.d}, DType::F64, Device::cpu(), 3);
  const Tensor r = random_tensor({s.B, s.H, T, s.d}, DType::F64, Device::cpu(), 4);
  const Tensor u = random_tensor({s.B, s.H, T, s.d}, DType::F64, Device::cpu(), 5, 0.1, 1.0);
  const Tensor weight = random_tensor({s.B, s.H, T, 1}, DType::F64, Device::cpu(), 8, 0.05, 0.8);
  const Tensor dg0 = random_tensor({s.B, s.H, s.d, s.h}, DType::F64, Device::cpu(), 6);
  const Tensor dg1 = random_tensor({s.B, s.H, s.h, s.d}, DType::F64, Device::cpu(), 7);
  auto run = [&](bool fused, double m) {
    const bool clamp = m > 0;
    std::vector<Tensor> leaves;
    for (const Tensor& t : {w0, w1, k, clamp ? spread_rows(r) : r, clamp ? spread_rows(u) : u, weight})
      leaves.push_back(t.clone().set_requires_grad(true));
    auto chunk = [&](const Tensor& x) { return slice(x, 2, t0, t0 + s.C); };
    const Tensor wt = clamp ? chunk(leaves[5]) : Tensor();
    NeuralMemoryConfig cfg;
    cfg.fused = fused;
    cfg.max_grad_norm = m;
    PathResult out;
    out.out = fused ? memory_chunk_grads(leaves[0], leaves[1], chunk(leaves[2]), chunk(leaves[3]),
                                         chunk(leaves[4]), cfg.ln_eps, wt, m)
                    : memory_chunk_gradients({leaves[0], leaves[1]}, chunk(leaves[2]), chunk(leaves[3]),
                                             chunk(leaves[4]), wt, cfg);
    autograd::run_backward(out.out, {dg0, dg1});
    for (const Tensor& l : leaves) out.grads.push_back(l.grad());
    return out;
  };
  for (double m : {0.0, kClampM}) {
    SCOPED_TRACE(m > 0 ? "clamp" : "no clamp");
    const PathResult fused = run(true, m), composed = run(false, m);
    const char* names[] = {"G0", "G1", "dW0", "dW1", "dk", "dr", "du", "dweight"};
    for (size_t i = 0; i < 2; ++i) EXPECT_LT(rel_error(fused.out[i], composed.out[i]), 1e-12) << names[i];
    for (size_t i = 0; i < (m > 0 ? 6u : 5u); ++i) {
      ASSERT_TRUE(fused.grads[i].defined() && composed.grads[i].defined()) << names[i + 2];
      EXPECT_LT(rel_error(fused.grads[i], composed.grads[i]), 1e-12) << names[i + 2];
    }
    // Rows of k, r, u outside the chunk get no gradient.
    EXPECT_EQ(testing::max_abs_diff(fused.grads[2].slice(2, 0, t0), Tensor::zeros({s.B, s.H, t0, s.d}, DType::F64)),
              0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, TitansChunkGrads,
                         ::testing::Values(Size{2, 3, 1, 3, 12}, Size{2, 2, 5, 3, 12}, Size{3, 2, 16, 3, 7},
                                           Size{2, 2, 1, 8, 32}, Size{2, 3, 5, 8, 32}, Size{2, 2, 16, 8, 32},
                                           Size{2, 2, 16, 8, 13}),
                         [](const ::testing::TestParamInfo<Size>& info) {
                           const Size& s = info.param;
                           return "C" + std::to_string(s.C) + "_d" + std::to_string(s.d) + "_h" +
                                  std::to_string(s.h);
                         });

TEST(TitansChunkGrads, NeuralMemoryFusedMatchesComposed) {
  // T = 11 with chunk 4 after a 1-token call: a partial head, complete chunks and a partial tail.
  const NeuralMemoryCase c(2, 2, 11, 5, 20, DType::F64, 1.0, 0.6);
  auto run = [&](bool fused, double m) {
    NeuralMemoryConfig cfg;
    cfg.chunk = 4;
    cfg.fused = fused;
    cfg.max_grad_norm = m;
    return c.run(Device::cpu(), cfg, 1);
  };
  for (double m : {0.0, kClampM}) {
    SCOPED_TRACE(m > 0 ? "clamp" : "no clamp");
    const std::vector<Tensor> fused = run(true, m), composed = run(false, m);
    for (size_t i = 0; i < fused.size(); ++i) EXPECT_LT(rel_error(fused[i], composed[i]), 1e-12) << "output " << i;
  }
}

}  // namespace
}  // namespace seqtrain
