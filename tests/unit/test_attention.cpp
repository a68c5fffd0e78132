// CPU attention (layers/attention) against a naive f64 composition of differentiable ops:
// scores = scale * q k^T + mask, softmax, @ v, for causal / non-causal / windowed masks, grouped
// kv heads, T != S (bottom-right alignment), strided views of a fused qkv tensor and odd sizes.
// The composition's autograd gradients check the backward as well.
#include <cmath>
#include <limits>

#include "autograd/functions.h"
#include "layers/attention/attention_op.h"
#include "test_util.h"

namespace seqtrain {
namespace {

using testing::random_tensor;
using testing::rel_error;

struct Case {
  std::string name;
  int64_t B, T, S, H, Hkv, d;
  AttentionConfig cfg;
  bool fused = false;  // q, k, v are slices of one [B, T, 3, H, d] tensor (needs T == S, H == Hkv)
};

std::vector<Case> cases() {
  AttentionConfig causal, full, window3, scaled;
  full.causal = false;
  window3.window = 3;
  scaled.scale = 0.3;
  return {
      {"causal_T7", 2, 7, 7, 2, 2, 8, causal},
      {"noncausal_T7", 2, 7, 7, 2, 2, 8, full},
      {"window3_T33", 1, 33, 33, 2, 2, 8, window3},
      {"gqa_H4_Hkv2", 2, 33, 33, 4, 2, 8, causal},
      {"mqa_H4_Hkv1", 1, 33, 33, 4, 1, 8, causal},
      {"bottom_right_T7_S33", 2, 7, 33, 2, 2, 8, causal},
      {"noncausal_T7_S20", 1, 7, 20, 2, 1, 8, full},
      {"kv_cache_T1_S33", 2, 1, 33, 4, 2, 8, causal},
      {"window_kv_cache_T1_S33", 1, 1, 33, 2, 2, 8, window3},
      {"T1_S1", 1, 1, 1, 1, 1, 8, causal},
      {"T257_d8", 1, 257, 257, 1, 1, 8, causal},
      {"d64_T33", 1, 33, 33, 2, 2, 64, causal},
      {"scale0.3", 1, 7, 7, 2, 2, 8, scaled},
      {"fused_qkv_T33", 2, 33, 33, 3, 3, 8, causal, true},
      {"fused_qkv_window", 1, 33, 33, 2, 2, 64, window3, true},
  };
}

struct Inputs {
  Tensor q, k, v;
};

Inputs make_inputs(const Case& c, DType dtype = DType::F64) {
  if (c.fused) {
    Tensor qkv = random_tensor({c.B, c.T, 3, c.H, c.d}, dtype, Device::cpu(), 1);
    auto part = [&](int64_t i) {
      Shape st = qkv.strides();
      return qkv.as_strided({c.B, c.T, c.H, c.d}, {st[0], st[1], st[3], st[4]}, qkv.offset() + i * st[2]);
    };
    return {part(0), part(1), part(2)};
  }
  return {random_tensor({c.B, c.T, c.H, c.d}, dtype, Device::cpu(), 2),
          random_tensor({c.B, c.S, c.Hkv, c.d}, dtype, Device::cpu(), 3),
          random_tensor({c.B, c.S, c.Hkv, c.d}, dtype, Device::cpu(), 4)};
}

// Additive mask [T, S]: 0 where key j is visible to query i, -inf elsewhere.
Tensor mask_for(const Case& c) {
  std::vector<double> m(size_t(c.T * c.S));
  for (int64_t i = 0; i < c.T; ++i)
    for (int64_t j = 0; j < c.S; ++j) {
      const int64_t pos = i + c.S - c.T;
      bool visible = (!c.cfg.causal || j <= pos) && (c.cfg.window == 0 || j > pos - c.cfg.window);
      m[size_t(i * c.S + j)] = visible ? 0.0 : -std::numeric_limits<double>::infinity();
    }
  return Tensor::from_vector(m, {c.T, c.S}, DType::F64);
}

// kv [B, S, Hkv, d] -> [B, H, S, d], each query head reading its group's kv head.
Tensor repeat_heads(const Tensor& kv, int64_t H) {
  Tensor p = permute(kv, {0, 2, 1, 3});
  const int64_t group = H / kv.size(2);
  std::vector<Tensor> heads;
  for (int64_t h = 0; h < H; ++h) heads.push_back(slice(p, 1, h / group, h / group + 1));
  return concat(heads, 1);
}

struct Naive {
  Tensor o;                 // [B, T, H, d]
  std::vector<double> lse;  // [B, H, T]
};

Naive naive_attention(const Case& c, const Tensor& q, const Tensor& k, const Tensor& v) {
  const double scale = c.cfg.scale == 0 ? 1.0 / std::sqrt(double(c.d)) : c.cfg.scale;
  Tensor qp = contiguous(permute(q, {0, 2, 1, 3}));                     // [B, H, T, d]
  Tensor kr = contiguous(repeat_heads(k, c.H)), vr = contiguous(repeat_heads(v, c.H));  // [B, H, S, d]
  Tensor scores = add(seqtrain::scale(matmul(qp, kr, false, true), scale), mask_for(c));  // [B, H, T, S]
  Tensor o = permute(matmul(softmax(scores), vr), {0, 2, 1, 3});        // [B, T, H, d]
  std::vector<double> s = scores.to_vector(), lse;
  for (size_t r = 0; r < s.size() / size_t(c.S); ++r) {
    double m = -INFINITY, l = 0;
    for (int64_t j = 0; j < c.S; ++j) m = std::max(m, s[r * c.S + j]);
    for (int64_t j = 0; j < c.S; ++j) l += std::exp(s[r * c.S + j] - m);
    lse.push_back(m + std::log(l));
  }
  return {o, lse};
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class AttentionCpu : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionCpu, ForwardMatchesNaiveComposition) {
  const Case& c = GetParam();
  Inputs in = make_inputs(c);
  AttentionOut out = attention_forward(in.q, in.k, in.v, c.cfg);
  Naive ref = naive_attention(c, in.q, in.k, in.v);
  EXPECT_EQ(out.o.shape(), Shape({c.B, c.T, c.H, c.d}));
  EXPECT_TRUE(out.o.is_contiguous());
  EXPECT_EQ(out.lse.shape(), Shape({c.B, c.H, c.T}));
  EXPECT_LT(rel_error(out.o, ref.o), 1e-12);
  EXPECT_LT(rel_error(out.lse.to_vector(), ref.lse), 1e-12);
}

TEST_P(AttentionCpu, BackwardMatchesAutogradOfComposition) {
  const Case& c = GetParam();
  Inputs in = make_inputs(c);
  Tensor dout = random_tensor({c.B, c.T, c.H, c.d}, DType::F64, Device::cpu(), 5);
  AttentionOut out = attention_forward(in.q, in.k, in.v, c.cfg);
  AttentionGrads g = attention_backward(in.q, in.k, in.v, out.o, out.lse, dout, c.cfg);

  Tensor q = in.q.contiguous().clone().set_requires_grad(true);
  Tensor k = in.k.contiguous().clone().set_requires_grad(true);
  Tensor v = in.v.contiguous().clone().set_requires_grad(true);
  naive_attention(c, q, k, v).o.backward(dout);
  EXPECT_LT(rel_error(g.dq, q.grad()), 1e-11);
  EXPECT_LT(rel_error(g.dk, k.grad()), 1e-11);
  EXPECT_LT(rel_error(g.dv, v.grad()), 1e-11);
  EXPECT_TRUE(g.dq.is_contiguous() && g.dk.is_contiguous() && g.dv.is_contiguous());
}

// f32 and bf16 (computed in f32) stay close to the f64 result on the same values.
TEST_P(AttentionCpu, LowPrecisionDtypesTrackF64) {
  const Case& c = GetParam();
  for (DType dt : {DType::F32, DType::BF16}) {
    Inputs lo = make_inputs(c, dt);
    Tensor q = lo.q.to(DType::F64), k = lo.k.to(DType::F64), v = lo.v.to(DType::F64);
    AttentionOut ref = attention_forward(q, k, v, c.cfg);
    AttentionOut out = attention_forward(lo.q, lo.k, lo.v, c.cfg);
    EXPECT_EQ(out.o.dtype(), dt);
    EXPECT_EQ(out.lse.dtype(), DType::F32);
    EXPECT_LT(rel_error(out.o, ref.o), dt == DType::F32 ? 1e-5 : 1e-2) << dtype_name(dt);
    EXPECT_LT(rel_error(out.lse, ref.lse), 1e-5) << dtype_name(dt);
  }
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string s = info.param.name;
  for (char& ch : s)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Variants, AttentionCpu, ::testing::ValuesIn(cases()), case_name);

// T > S with causal alignment leaves the first T - S queries without keys: o = 0, lse = -inf and
// zero gradients, never NaN.
TEST(AttentionCpuEdge, RowsWithoutVisibleKeys) {
  const int64_t B = 1, T = 5, S = 3, H = 2, d = 8;
  Tensor q = random_tensor({B, T, H, d}), k = random_tensor({B, S, H, d}), v = random_tensor({B, S, H, d});
  AttentionOut out = attention_forward(q, k, v, {});
  std::vector<double> o = out.o.to_vector(), lse = out.lse.to_vector();
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < T; ++i) {
      const bool empty = i < T - S;
      EXPECT_EQ(std::isinf(lse[h * T + i]) && lse[h * T + i] < 0, empty) << "h " << h << " i " << i;
      for (int64_t e = 0; e < d; ++e) {
        if (empty) {
          EXPECT_EQ(o[(i * H + h) * d + e], 0.0);
        }
      }
    }
  AttentionGrads g = attention_backward(q, k, v, out.o, out.lse, random_tensor({B, T, H, d}), {});
  std::vector<double> dq = g.dq.to_vector();
  for (double x : dq) EXPECT_FALSE(std::isnan(x));
  for (int64_t e = 0; e < 2 * H * d; ++e) EXPECT_EQ(dq[e], 0.0);
  for (double x : g.dk.to_vector()) EXPECT_FALSE(std::isnan(x));
}

TEST(AttentionCpuEdge, ValidationNamesTheProblem) {
  Tensor q = random_tensor({1, 4, 4, 8}), k = random_tensor({1, 4, 3, 8}), v = random_tensor({1, 4, 3, 8});
  EXPECT_ERROR_MENTIONS(attention_forward(q, k, v, {}), "attention", "heads", "divides");
  Tensor kf = random_tensor({1, 4, 2, 8}, DType::F32);
  EXPECT_ERROR_MENTIONS(attention_forward(q, kf, kf, {}), "attention", "dtype", "k");
  Tensor k2 = random_tensor({1, 4, 2, 8});
  EXPECT_ERROR_MENTIONS(attention_forward(q, k2, random_tensor({1, 5, 2, 8}), {}), "attention", "same shape");
  Tensor wide = random_tensor({1, 4, 2, 16});
  Tensor strided = wide.as_strided({1, 4, 2, 8}, {64, 16, 8, 2}, 0);
  EXPECT_ERROR_MENTIONS(attention_forward(q, strided, k2, {}), "attention", "stride", "k");
  EXPECT_ERROR_MENTIONS(attention_forward(random_tensor({1, 4, 2, 4}), k2, k2, {}), "head dim");
}

}  // namespace
}  // namespace seqtrain
