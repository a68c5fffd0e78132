// f64 finite-difference gradient checks of Titans (layers/titans): the neural-memory op, whose outer
// gradient runs through the inner-loop gradients (a gradient of a gradient), for memory depth 1, 2
// and 3, with and without the per-token gradient clamp, chunk sizes that do and do not divide T, w.r.t.
// every input (q, k, v, lr, gate logits, gamma, the initial weights and momentum) with a cotangent on
// the final state too; then every Titans mixer w.r.t. its input and all of its parameters.
#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "gradcheck/gradcheck_util.h"
#include "layers/titans/chunk_grads.h"
#include "layers/titans/titans.h"
#include "test_util.h"
#include "train/config.h"

namespace seqtrain {
namespace {

using autograd::gradcheck;
using testing::f64_leaf;
using testing::random_tensor;
using Inputs = std::vector<Tensor>;

struct Case {
  int64_t depth, chunk;
  double clamp;
};

// The fused chunk gradients of the depth-2 memory (chunk_grads.h) w.r.t. W0, W1, k, r and u, with k,
// r, u strided slices as neural_memory passes them.
TEST(TitansChunkGradsGradcheck, MatchesFiniteDifferences) {
  const int64_t B = 2, H = 2, C = 3, d = 3, h = 5;
  Inputs in{f64_leaf({B, H, d, h}, 1, -0.8, 0.8), f64_leaf({B, H, h, d}, 2, -0.8, 0.8),
            f64_leaf({B, H, C + 1, d}, 3), f64_leaf({B, H, C + 1, d}, 4), f64_leaf({B, H, C + 1, d}, 5, 0.1, 1.0)};
  auto fn = [&](const Inputs& x) {
    auto chunk = [&](const Tensor& t) { return slice(t, 2, 1, C + 1); };
    return memory_chunk_grads(x[0], x[1], chunk(x[2]), chunk(x[3]), chunk(x[4]), 1e-5);
  };
  auto r = gradcheck(fn, in);
  EXPECT_TRUE(r.ok) << r.report;
}

// With the clamp, also w.r.t. the per-token weights w; m = 1 puts the tokens' 2 h_t / m around 1
// (tanh's nonlinear range: the clamp's own derivative terms matter).
TEST(TitansChunkGradsGradcheck, WithClampMatchesFiniteDifferences) {
  const int64_t B = 2, H = 2, C = 3, d = 3, h = 5;
  Inputs in{f64_leaf({B, H, d, h}, 1, -0.8, 0.8), f64_leaf({B, H, h, d}, 2, -0.8, 0.8),
            f64_leaf({B, H, C + 1, d}, 3),        f64_leaf({B, H, C + 1, d}, 4),
            f64_leaf({B, H, C + 1, d}, 5, 0.1, 1.0), f64_leaf({B, H, C + 1, 1}, 6, 0.1, 0.8)};
  auto fn = [&](const Inputs& x) {
    auto chunk = [&](const Tensor& t) { return slice(t, 2, 1, C + 1); };
    return memory_chunk_grads(x[0], x[1], chunk(x[2]), chunk(x[3]), chunk(x[4]), 1e-5, chunk(x[5]), 1.0);
  };
  auto r = gradcheck(fn, in);
  EXPECT_TRUE(r.ok) << r.report;
}

class NeuralMemoryGradcheck : public ::testing::TestWithParam<Case> {};

TEST_P(NeuralMemoryGradcheck, MatchesFiniteDifferences) {
  const Case c = GetParam();
  const int64_t B = 1, H = 2, T = 5, d = 3, hidden = 4;
  const auto shapes = memory_layer_shapes(c.depth, d, hidden);
  const size_t L = shapes.size();
  // q, k, v, lr, alpha, eta, gamma, then W0 and S0 per layer.
  Inputs in{f64_leaf({B, H, T, d}, 1, -0.6, 0.6), f64_leaf({B, H, T, d}, 2, -0.6, 0.6), f64_leaf({B, H, T, d}, 3),
            f64_leaf({B, H, T}, 4, 0.1, 0.5),     f64_leaf({B, H, T}, 5, -2.0, 0.0),
            f64_leaf({B, H, T}, 6, -1.0, 1.0),    f64_leaf({1, H, 1, d}, 7, -0.5, 0.5)};
  uint64_t salt = 10;
  for (auto [i, o] : shapes) in.push_back(f64_leaf({B, H, i, o}, ++salt, -0.6, 0.6));
  for (auto [i, o] : shapes) in.push_back(f64_leaf({B, H, i, o}, ++salt, -0.2, 0.2));
  NeuralMemoryConfig cfg;
  cfg.depth = c.depth;
  cfg.chunk = c.chunk;
  cfg.max_grad_norm = c.clamp;
  auto fn = [&](const Inputs& x) {
    NeuralMemoryState s;
    s.weights.assign(x.begin() + 7, x.begin() + 7 + long(L));
    s.momentum.assign(x.begin() + 7 + long(L), x.end());
    Tensor y = neural_memory(x[0], x[1], x[2], x[3], x[4], x[5], c.depth >= 2 ? x[6] : Tensor(), cfg, s);
    Inputs out{y};
    for (size_t l = 0; l < L; ++l) {
      out.push_back(s.weights[l]);
      out.push_back(s.momentum[l]);
    }
    return out;
  };
  if (c.depth == 1) in[6].set_requires_grad(false);  // gamma is unused by a linear memory
  auto r = gradcheck(fn, in);
  EXPECT_TRUE(r.ok) << r.report;
}

INSTANTIATE_TEST_SUITE_P(Variants, NeuralMemoryGradcheck,
                         ::testing::Values(Case{1, 1, 0}, Case{1, 2, 0}, Case{1, 3, 0.3}, Case{2, 1, 0},
                                           Case{2, 2, 0}, Case{2, 3, 0.3}, Case{3, 2, 0.3}),
                         [](const auto& info) {
                           return "depth" + std::to_string(info.param.depth) + "_C" +
                                  std::to_string(info.param.chunk) + (info.param.clamp > 0 ? "_clamp" : "");
                         });

class TitansMixerGradcheck : public ::testing::TestWithParam<std::string> {};

TEST_P(TitansMixerGradcheck, InputAndEveryParameter) {
  train::ModelConfig m;
  m.d_model = 4;
  m.attn.n_heads = 2;
  m.attn.n_kv_heads = 2;
  m.swa.window = 3;
  m.titans.n_heads = 2;
  m.titans.chunk = 2;
  m.titans.memory_depth = 2;
  m.titans.memory_expand = 2;
  m.titans.d_conv = 2;
  m.titans.max_lr = 0.5;
  m.titans.max_grad_norm = 0.5;
  m.titans.segment = 3;
  m.titans.persistent_tokens = 1;
  auto mixer = make_mixer(GetParam(), MixerArgs{m, 0, 0.02});
  const Tensor x = f64_leaf({2, 5, 4}, 1);
  auto r = testing::gradcheck_mixer_forward(
      *mixer, x, testing::make_f64_parameter_leaves(*mixer, [](const std::string&) { return true; }, -0.5, 0.5));
  EXPECT_TRUE(r.ok) << r.report;
}

INSTANTIATE_TEST_SUITE_P(Mixers, TitansMixerGradcheck,
                         ::testing::Values("titans", "titans_mac", "titans_mag", "titans_mal"));

}  // namespace
}  // namespace seqtrain
