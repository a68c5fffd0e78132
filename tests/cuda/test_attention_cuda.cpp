// CUDA attention (layers/attention) against the CPU reference. bf16 follows the rule of
// flash-attention's tests: with ref the f64 CPU result on the same bf16 values and naive the
// textbook composition (matmul, scale, mask, softmax, matmul, and autograd through them) run in
// bf16 on the CPU, every intermediate rounded to bf16 as PyTorch's reference in bf16 does, require
//   max|gpu - ref| <= 2 * max|naive - ref| + atol
// for o, dq, dk and dv; lse (f32 on both sides) is held to the fused CPU kernel's error. f32 must match the CPU f32 result to 1e-5 (relative); the backward must be
// bitwise reproducible.
#include <cstdlib>

#include <cmath>

#include "autograd/functions.h"
#include "layers/attention/attention_op.h"
#include "test_util.h"

namespace seqtrain {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;
using testing::rel_error;

class AttentionCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
    set_poison_allocations(true);  // an output element a kernel forgot to write reads as NaN
  }
  void TearDown() override { set_poison_allocations(false); }
};

struct Case {
  int64_t B, T, S, H, Hkv, d;
  AttentionConfig cfg;
  bool fused = false;  // q, k, v are slices of one [B, T, 3, H, d] tensor
};

std::string describe(const Case& c) {
  return str_cat("B=", c.B, " T=", c.T, " S=", c.S, " H=", c.H, " Hkv=", c.Hkv, " d=", c.d,
                 " causal=", c.cfg.causal, " window=", c.cfg.window, c.fused ? " fused" : "");
}

struct Qkv {
  Tensor q, k, v;
};

Qkv make_inputs(const Case& c, DType dt, Device dev) {
  if (c.fused) {
    Tensor qkv = random_tensor({c.B, c.T, 3 * c.H, c.d}, dt, Device::cpu(), 11).to(dev);
    return {qkv.slice(2, 0, c.H), qkv.slice(2, c.H, 2 * c.H), qkv.slice(2, 2 * c.H, 3 * c.H)};
  }
  return {random_tensor({c.B, c.T, c.H, c.d}, dt, Device::cpu(), 12).to(dev),
          random_tensor({c.B, c.S, c.Hkv, c.d}, dt, Device::cpu(), 13).to(dev),
          random_tensor({c.B, c.S, c.Hkv, c.d}, dt, Device::cpu(), 14).to(dev)};
}

Qkv to_device(const Qkv& x, Device dev) { return {x.q.to(dev), x.k.to(dev), x.v.to(dev)}; }
Qkv to_dtype(const Qkv& x, DType dt) { return {x.q.to(dt), x.k.to(dt), x.v.to(dt)}; }

struct Result {
  Tensor o, lse, dq, dk, dv;
};

Result run(const Qkv& x, const Tensor& dout, const AttentionConfig& cfg) {
  AttentionOut f = attention_forward(x.q, x.k, x.v, cfg);
  AttentionGrads g = attention_backward(x.q, x.k, x.v, f.o, f.lse, dout.to(x.q.device()).to(x.q.dtype()), cfg);
  return {f.o, f.lse, g.dq, g.dk, g.dv};
}

// The textbook attention in bf16 through the differentiable CPU ops: scores [B*Hkv, G*T, S] for
// the G query heads sharing each kv head, a -inf mask for causal/window (bottom-right aligned).
Result naive_composition(const Qkv& x, const Tensor& dout, const AttentionConfig& cfg) {
  const int64_t B = x.q.size(0), T = x.q.size(1), H = x.q.size(2), d = x.q.size(3);
  const int64_t S = x.k.size(1), Hkv = x.k.size(2), G = H / Hkv;
  Tensor q = x.q.contiguous().detach().set_requires_grad(true);
  Tensor k = x.k.contiguous().detach().set_requires_grad(true);
  Tensor v = x.v.contiguous().detach().set_requires_grad(true);
  auto heads_major = [&](const Tensor& t, int64_t g, int64_t len) {  // [B, len, Hkv*g, d] -> [B*Hkv, g*len, d]
    return reshape(permute(reshape(t, {B, len, Hkv, g, d}), {0, 2, 3, 1, 4}), {B * Hkv, g * len, d});
  };
  const double scale_by = cfg.scale > 0 ? cfg.scale : 1.0 / std::sqrt(double(d));
  Tensor scores = scale(matmul(heads_major(q, G, T), heads_major(k, 1, S), false, true), scale_by);
  std::vector<double> mask(size_t(G * T * S), 0.0);
  for (int64_t r = 0; r < G * T; ++r)
    for (int64_t j = 0; j < S; ++j) {
      const int64_t pos = r % T + (S - T);
      bool visible = (!cfg.causal || j <= pos) && (cfg.window <= 0 || j > pos - cfg.window);
      if (!visible) mask[size_t(r * S + j)] = -INFINITY;
    }
  Tensor p = softmax(add(scores, Tensor::from_vector(mask, {G * T, S}, DType::BF16)));
  Tensor o = matmul(p, heads_major(v, 1, S));  // [B*Hkv, G*T, d]
  o = reshape(permute(reshape(o, {B, Hkv, G, T, d}), {0, 3, 1, 2, 4}), {B, T, H, d});
  o.backward(dout.to(DType::BF16));
  return {o.detach(), Tensor(), q.grad(), k.grad(), v.grad()};
}

void expect_within_rule(const Case& c, const char* what, const Tensor& gpu, const Tensor& naive,
                        const Tensor& ref, double atol) {
  const double err_gpu = max_abs_diff(gpu.to(Device::cpu()).to(DType::F64), ref);
  const double err_naive = max_abs_diff(naive.to(DType::F64), ref);
  EXPECT_LE(err_gpu, 2 * err_naive + atol) << what << " " << describe(c) << ": gpu error " << err_gpu
                                           << ", naive bf16 error " << err_naive;
}

void check_bf16(const Case& c) {
  Qkv x = make_inputs(c, DType::BF16, Device::cuda());
  Tensor dout = random_tensor({c.B, c.T, c.H, c.d}, DType::BF16, Device::cpu(), 15);
  Result gpu = run(x, dout, c.cfg);
  Qkv xc = to_device(x, Device::cpu());
  Result fused_cpu = run(xc, dout, c.cfg);
  Result naive = naive_composition(xc, dout, c.cfg);
  Result ref = run(to_dtype(xc, DType::F64), dout.to(DType::F64), c.cfg);
  expect_within_rule(c, "o", gpu.o, naive.o, ref.o, 1e-6);
  // lse is f32 on both sides (no bf16 rounding to compare against): f32-level slack.
  expect_within_rule(c, "lse", gpu.lse, fused_cpu.lse, ref.lse, 1e-5);
  expect_within_rule(c, "dq", gpu.dq, naive.dq, ref.dq, 1e-6);
  expect_within_rule(c, "dk", gpu.dk, naive.dk, ref.dk, 1e-6);
  expect_within_rule(c, "dv", gpu.dv, naive.dv, ref.dv, 1e-6);
}

AttentionConfig causal() { return {}; }
AttentionConfig full() {
  AttentionConfig c;
  c.causal = false;
  return c;
}
AttentionConfig window(int64_t w) {
  AttentionConfig c;
  c.window = w;
  return c;
}

TEST_F(AttentionCuda, Bf16CausalSizes) {
  for (int64_t d : {64, 128})
    for (int64_t T : {1, 7, 64, 129, 1000, 2048}) check_bf16({2, T, T, 4, 4, d, causal()});
}

TEST_F(AttentionCuda, Bf16GroupedKvHeads) {
  check_bf16({2, 129, 129, 12, 3, 64, causal()});
  check_bf16({2, 1000, 1000, 4, 1, 128, causal()});
  check_bf16({2, 64, 64, 12, 12, 64, causal()});
}

TEST_F(AttentionCuda, Bf16NonCausal) {
  check_bf16({2, 129, 129, 4, 4, 64, full()});
  check_bf16({2, 1000, 1000, 4, 1, 128, full()});
  check_bf16({2, 64, 200, 4, 2, 64, full()});  // T != S
}

TEST_F(AttentionCuda, Bf16Window) {
  check_bf16({2, 1000, 1000, 4, 4, 64, window(100)});
  check_bf16({2, 129, 129, 4, 2, 128, window(7)});
}

TEST_F(AttentionCuda, Bf16BottomRightAndKvCache) {
  check_bf16({2, 7, 129, 4, 4, 64, causal()});
  check_bf16({2, 1, 1000, 4, 4, 64, causal()});
  check_bf16({2, 1, 1000, 12, 3, 128, causal()});
  check_bf16({2, 1, 1000, 4, 4, 64, window(50)});
}

TEST_F(AttentionCuda, Bf16FusedQkvViews) {
  check_bf16({2, 129, 129, 4, 4, 64, causal(), true});
  check_bf16({2, 64, 64, 2, 2, 128, window(9), true});
}

// Head dims without a tensor-core kernel take the simple kernel.
TEST_F(AttentionCuda, Bf16OtherHeadDims) {
  check_bf16({2, 129, 129, 4, 2, 32, causal()});
  check_bf16({2, 33, 33, 2, 2, 80, full()});
}

// The simple kernels, forced on the fast path's shapes, pass the same rule (the bisecting switch).
TEST_F(AttentionCuda, Bf16SimpleKernelSwitch) {
  setenv("SEQTRAIN_ATTENTION_KERNEL", "simple", 1);
  check_bf16({2, 129, 129, 4, 2, 64, causal()});
  check_bf16({2, 7, 64, 4, 4, 128, window(20)});
  unsetenv("SEQTRAIN_ATTENTION_KERNEL");
}

TEST_F(AttentionCuda, F32MatchesCpu) {
  for (const Case& c : {Case{2, 129, 129, 4, 2, 64, causal()}, Case{2, 64, 100, 4, 4, 40, window(30)},
                        Case{2, 33, 33, 2, 2, 128, full(), true}}) {
    Qkv x = make_inputs(c, DType::F32, Device::cuda());
    Tensor dout = random_tensor({c.B, c.T, c.H, c.d}, DType::F32, Device::cpu(), 16);
    Result gpu = run(x, dout, c.cfg);
    Result cpu = run(to_device(x, Device::cpu()), dout, c.cfg);
    EXPECT_LE(rel_error(gpu.o.to(Device::cpu()), cpu.o), 1e-5) << describe(c);
    EXPECT_LE(rel_error(gpu.lse.to(Device::cpu()), cpu.lse), 1e-5) << describe(c);
    EXPECT_LE(rel_error(gpu.dq.to(Device::cpu()), cpu.dq), 1e-5) << describe(c);
    EXPECT_LE(rel_error(gpu.dk.to(Device::cpu()), cpu.dk), 1e-5) << describe(c);
    EXPECT_LE(rel_error(gpu.dv.to(Device::cpu()), cpu.dv), 1e-5) << describe(c);
  }
}

TEST_F(AttentionCuda, BackwardIsBitwiseDeterministic) {
  for (const Case& c : {Case{2, 1000, 1000, 12, 3, 64, causal()}, Case{2, 129, 129, 4, 4, 128, full()}}) {
    Qkv x = make_inputs(c, DType::BF16, Device::cuda());
    Tensor dout = random_tensor({c.B, c.T, c.H, c.d}, DType::BF16, Device::cuda(), 17);
    AttentionOut f = attention_forward(x.q, x.k, x.v, c.cfg);
    AttentionGrads a = attention_backward(x.q, x.k, x.v, f.o, f.lse, dout, c.cfg);
    AttentionGrads b = attention_backward(x.q, x.k, x.v, f.o, f.lse, dout, c.cfg);
    EXPECT_EQ(a.dq.to_vector(), b.dq.to_vector()) << describe(c);
    EXPECT_EQ(a.dk.to_vector(), b.dk.to_vector()) << describe(c);
    EXPECT_EQ(a.dv.to_vector(), b.dv.to_vector()) << describe(c);
  }
}

// T > S: the first T - S queries see no key: o = 0, lse = -inf, zero dq, and nothing NaN.
TEST_F(AttentionCuda, RowsWithoutVisibleKeys) {
  for (const char* kernel : {"fast", "simple"}) {
    if (std::string(kernel) == "simple") setenv("SEQTRAIN_ATTENTION_KERNEL", "simple", 1);
    const int64_t B = 1, T = 70, S = 3, H = 2, d = 64;
    Case c{B, T, S, H, H, d, causal()};
    Qkv x = make_inputs(c, DType::BF16, Device::cuda());
    Tensor dout = random_tensor({B, T, H, d}, DType::BF16, Device::cuda(), 18);
    AttentionOut f = attention_forward(x.q, x.k, x.v, c.cfg);
    AttentionGrads g = attention_backward(x.q, x.k, x.v, f.o, f.lse, dout, c.cfg);
    std::vector<double> o = f.o.to_vector(), lse = f.lse.to_vector(), dq = g.dq.to_vector();
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        const bool empty = i < T - S;
        EXPECT_EQ(std::isinf(lse[h * T + i]) && lse[h * T + i] < 0, empty) << kernel << " h " << h << " i " << i;
        for (int64_t e = 0; e < d; ++e) {
          const size_t at = size_t((i * H + h) * d + e);
          EXPECT_FALSE(std::isnan(o[at]) || std::isnan(dq[at])) << kernel;
          if (empty) {
            EXPECT_EQ(o[at], 0.0) << kernel;
            EXPECT_EQ(dq[at], 0.0) << kernel;
          }
        }
      }
    for (double v : g.dk.to_vector()) EXPECT_FALSE(std::isnan(v)) << kernel;
    for (double v : g.dv.to_vector()) EXPECT_FALSE(std::isnan(v)) << kernel;
    unsetenv("SEQTRAIN_ATTENTION_KERNEL");
  }
}

TEST_F(AttentionCuda, F64IsRejectedWithAClearError) {
  Tensor q = random_tensor({1, 4, 2, 64}, DType::F64, Device::cuda());
  EXPECT_ERROR_MENTIONS(attention_forward(q, q, q, {}), "attention", "f64", "CPU");
}

}  // namespace
}  // namespace seqtrain
