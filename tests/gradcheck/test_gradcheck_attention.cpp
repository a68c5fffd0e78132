// f64 finite-difference gradient checks of the differentiable attention (layers/attention) for the
// mask variants, grouped kv heads, T != S, the KV-cache step and strided views of a fused qkv.
#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "layers/attention/attention_op.h"
#include "test_util.h"

namespace seqtrain {
namespace {

using autograd::gradcheck;
using testing::random_tensor;
using Inputs = std::vector<Tensor>;

struct Case {
  std::string name;
  int64_t B, T, S, H, Hkv, d;
  AttentionConfig cfg;
  bool fused = false;
};

std::vector<Case> cases() {
  AttentionConfig causal, full, window2, scaled;
  full.causal = false;
  window2.window = 2;
  scaled.scale = 0.7;
  return {
      {"causal", 1, 5, 5, 2, 2, 4, causal},
      {"noncausal", 1, 5, 5, 1, 1, 4, full},
      {"window2", 1, 7, 7, 1, 1, 4, window2},
      {"gqa_H4_Hkv2", 1, 5, 5, 4, 2, 3, causal},
      {"bottom_right_T3_S7", 2, 3, 7, 2, 1, 4, causal},
      {"kv_cache_T1_S6", 1, 1, 6, 2, 1, 4, causal},
      {"T1_S1", 1, 1, 1, 1, 1, 4, causal},
      {"scale0.7_d8", 1, 4, 4, 1, 1, 8, scaled},
      {"fused_qkv", 2, 5, 5, 2, 2, 4, causal, true},
  };
}

Inputs make_inputs(const Case& c) {
  if (c.fused) {
    Tensor qkv = random_tensor({c.B, c.T, 3, c.H, c.d}).set_requires_grad(true);
    return {qkv};
  }
  return {random_tensor({c.B, c.T, c.H, c.d}).set_requires_grad(true),
          random_tensor({c.B, c.S, c.Hkv, c.d}).set_requires_grad(true),
          random_tensor({c.B, c.S, c.Hkv, c.d}).set_requires_grad(true)};
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class GradcheckAttention : public ::testing::TestWithParam<Case> {};

TEST_P(GradcheckAttention, MatchesFiniteDifferences) {
  const Case c = GetParam();
  autograd::GradcheckFn fn = [c](const Inputs& in) {
    if (c.fused) {
      // [B, T, 3, H, d] viewed as [B, T, 3H, d]: q, k, v are strided slices of dim 2 (no copies);
      // their gradients flow back into the fused leaf through slice().
      Tensor qkv = reshape(in[0], {c.B, c.T, 3 * c.H, c.d});
      Tensor q = slice(qkv, 2, 0, c.H), k = slice(qkv, 2, c.H, 2 * c.H), v = slice(qkv, 2, 2 * c.H, 3 * c.H);
      EXPECT_FALSE(q.is_contiguous());
      return Inputs{attention(q, k, v, c.cfg)};
    }
    return Inputs{attention(in[0], in[1], in[2], c.cfg)};
  };
  autograd::GradcheckResult r = gradcheck(fn, make_inputs(c));
  EXPECT_TRUE(r.ok) << c.name << ": max abs error " << r.max_abs_error << "\n" << r.report;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string s = info.param.name;
  for (char& ch : s)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Variants, GradcheckAttention, ::testing::ValuesIn(cases()), case_name);

}  // namespace
}  // namespace seqtrain
