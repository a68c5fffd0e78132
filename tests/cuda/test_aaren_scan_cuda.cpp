// CUDA Aaren scan (layers/aaren/aaren_scan_cuda.cu) against the CPU reference, on fresh random
// inputs with every output poisoned (NaN) beforehand. Each comparison also runs the CPU scan in
// f64 on the same values (bf16 and f32 inputs widen exactly) as the reference, and holds the GPU
// to the CPU's own error:
//   f32 outputs (o, lse, final state, dscores, dinitial.num/den, and dv for f32 v): the
//     norm-relative error against f64 within 2x the CPU f32 scan's + 1e-5 (the f32 convention).
//     Both sum the same terms in f32 but in another order (segment summaries, warp scans), so
//     neither is exact. Infinite entries (lse = -inf before the first finite score) must match
//     exactly.
//   dinitial.m [B, H] = <dnum0, num0> + dden0 den0 (+ gm), a sum of a few large terms that cancel:
//     its error is measured per element against the size of those terms (|dm0 - ref| / sum of
//     |terms|), the error an f32 sum of them can be held to; same rule (2x the CPU's + 1e-5).
//     Relative to |dm0| itself both backends lose digits by chance (SEQTRAIN_TEST_SEED=15: wide
//     scores, CPU 5.3e-4, GPU 1.9e-3).
//   bf16 outputs (o, dv): max |gpu - ref| <= 2 max |cpu - ref| + 1e-6 max |ref|. The CPU rounds
//     once from f32, which is tighter than a naive bf16 composition (the rule of
//     test_attention_cuda.cpp): the GPU must be a single-rounding implementation too.
// The backward of both backends is fed the same forward results (the CPU's), so it is compared
// alone. Sizes do not divide the 64-step segments (T = 1, 63, 65, 100, 1000, 5000), head dims
// 64, 24 and 33 (pairs and single elements per lane), H not a power of two; scores uniform,
// rising (the running max switches often), wide (+-60), with -1e4 entries, with a leading -inf
// run longer than a segment, and below the initial state's max (the final m's gradient then goes
// to the initial m); with and without initial state and final-state gradients. The backward (and
// the forward) must be bitwise reproducible. The Aaren mixer runs on CUDA against the CPU, and
// its step() in pieces against its forward.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "layers/aaren/aaren.h"
#include "layers/aaren/aaren_scan.h"
#include "test_util.h"

namespace seqtrain {
namespace {

using testing::random_tensor;
using testing::rel_error;
using Vec = std::vector<double>;

class AarenScanCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
    set_poison_allocations(true);  // an output element a kernel forgot to write reads as NaN
  }
  void TearDown() override { set_poison_allocations(false); }
};

enum class Scores { Uniform, Rising, Wide, MinusTenThousand, LeadingMinusInf, BelowInitial };
enum class Dfinal { None, All, OnlyNum };

struct Case {
  int64_t B, T, H, d;
  Scores scores = Scores::Uniform;
  bool initial = false;
  Dfinal dfinal = Dfinal::None;
};

const char* scores_name(Scores s) {
  switch (s) {
    case Scores::Uniform: return "uniform";
    case Scores::Rising: return "rising";
    case Scores::Wide: return "wide";
    case Scores::MinusTenThousand: return "-1e4";
    case Scores::LeadingMinusInf: return "leading-inf";
    case Scores::BelowInitial: return "below-initial";
  }
  return "?";
}

std::string describe(const Case& c) {
  return str_cat("B=", c.B, " T=", c.T, " H=", c.H, " d=", c.d, " scores=", scores_name(c.scores),
                 c.initial ? " initial" : "",
                 c.dfinal == Dfinal::All ? " dfinal" : c.dfinal == Dfinal::OnlyNum ? " dfinal.num" : "");
}

// Inputs on the CPU: scores and states f32, v and dout in the tested dtype.
struct Inputs {
  Tensor scores, v, dout;
  AarenState initial, dfinal;  // members undefined where absent
};

Tensor make_scores(const Case& c, uint64_t salt) {
  const Vec u = random_tensor({c.B, c.T, c.H}, DType::F64, Device::cpu(), salt, -4.0, 4.0).to_vector();
  Vec s(u.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const int64_t t = int64_t(i) / c.H % c.T;
    switch (c.scores) {
      case Scores::Uniform: s[i] = u[i]; break;
      case Scores::Rising: s[i] = 0.75 * u[i] + 0.02 * double(t); break;
      case Scores::Wide: s[i] = 15.0 * u[i]; break;
      case Scores::MinusTenThousand: s[i] = t < 10 || i % 3 == 0 ? -1e4 + u[i] : u[i]; break;
      case Scores::LeadingMinusInf: s[i] = t < 70 ? -INFINITY : u[i]; break;
      case Scores::BelowInitial: s[i] = u[i] - 10.0; break;
    }
  }
  return Tensor::from_vector(s, {c.B, c.T, c.H}, DType::F32);
}

Inputs make_inputs(const Case& c, DType dt) {
  static uint64_t salt = 0;
  salt += 10;
  Inputs x;
  x.scores = make_scores(c, salt);
  x.v = random_tensor({c.B, c.T, c.H, c.d}, dt, Device::cpu(), salt + 1);
  x.dout = random_tensor({c.B, c.T, c.H, c.d}, dt, Device::cpu(), salt + 2);
  if (c.initial)
    x.initial = {random_tensor({c.B, c.H}, DType::F32, Device::cpu(), salt + 3, -2.0, 2.0),
                 random_tensor({c.B, c.H, c.d}, DType::F32, Device::cpu(), salt + 4),
                 random_tensor({c.B, c.H}, DType::F32, Device::cpu(), salt + 5, 0.5, 2.0)};
  if (c.dfinal != Dfinal::None) x.dfinal.num = random_tensor({c.B, c.H, c.d}, DType::F32, Device::cpu(), salt + 6);
  if (c.dfinal == Dfinal::All) {
    x.dfinal.m = random_tensor({c.B, c.H}, DType::F32, Device::cpu(), salt + 7);
    x.dfinal.den = random_tensor({c.B, c.H}, DType::F32, Device::cpu(), salt + 8);
  }
  return x;
}

Tensor moved(const Tensor& t, DType dt, Device dev) { return t.defined() ? t.to(dt).to(dev) : t; }
AarenState moved(const AarenState& s, DType sd, Device dev) {
  return {moved(s.m, sd, dev), moved(s.num, sd, dev), moved(s.den, sd, dev)};
}
DType state_dtype(DType dt) { return dt == DType::F64 ? DType::F64 : DType::F32; }

// The forward on `dev` with v in `dt` (f64: the reference).
AarenScanOut forward(const Case& c, const Inputs& x, DType dt, Device dev) {
  const AarenState init = moved(x.initial, state_dtype(dt), dev);
  return aaren_scan_forward(moved(x.scores, state_dtype(dt), dev), moved(x.v, dt, dev), c.initial ? &init : nullptr);
}

// The backward on `dev` with v in `dt`, from the forward results `f` (any device and dtype).
AarenScanGrads backward(const Case& c, const Inputs& x, const AarenScanOut& f, DType dt, Device dev) {
  const DType sd = state_dtype(dt);
  const AarenState init = moved(x.initial, sd, dev), fin = moved(f.final_state, sd, dev);
  const AarenState dfin = moved(x.dfinal, sd, dev);
  const bool with_final = c.dfinal != Dfinal::None;
  return aaren_scan_backward(moved(x.scores, sd, dev), moved(x.v, dt, dev), c.initial ? &init : nullptr,
                             moved(f.o, dt, dev), moved(f.lse, sd, dev), moved(x.dout, dt, dev),
                             with_final ? &fin : nullptr, with_final ? &dfin : nullptr);
}

// Errors against the reference over its finite entries; an infinite reference entry must be
// matched exactly (else the error is infinite); NaN anywhere gives NaN.
double norm_rel_error(const Vec& a, const Vec& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(ref[i])) return NAN;
    if (std::isinf(ref[i]) || std::isinf(a[i])) {
      if (a[i] != ref[i]) return INFINITY;
      continue;
    }
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}
double max_error(const Vec& a, const Vec& ref) {
  double m = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(ref[i])) return NAN;
    if (std::isinf(ref[i]) || std::isinf(a[i])) {
      if (a[i] != ref[i]) return INFINITY;
      continue;
    }
    m = std::max(m, std::abs(a[i] - ref[i]));
  }
  return m;
}

Vec host(const Tensor& t) { return t.to(Device::cpu()).to_vector(); }

// The GPU's error against the f64 reference within 2x the CPU's (see the header comment).
void expect_within_cpu_error(const Case& c, const std::string& what, const Tensor& gpu, const Tensor& cpu,
                             const Tensor& ref) {
  ASSERT_TRUE(gpu.defined() && cpu.defined() && ref.defined()) << what << " " << describe(c);
  ASSERT_EQ(shape_str(gpu.shape()), shape_str(ref.shape())) << what;
  const Vec g = host(gpu), p = host(cpu), r = host(ref);
  if (gpu.dtype() == DType::BF16) {
    double scale = 0;
    for (double x : r) scale = std::isinf(x) ? scale : std::max(scale, std::abs(x));
    const double err_gpu = max_error(g, r), err_cpu = max_error(p, r);
    EXPECT_LE(err_gpu, 2 * err_cpu + 1e-6 * scale)
        << what << " " << describe(c) << ": gpu max error " << err_gpu << ", cpu max error " << err_cpu;
  } else {
    const double err_gpu = norm_rel_error(g, r), err_cpu = norm_rel_error(p, r);
    EXPECT_LE(err_gpu, 2 * err_cpu + 1e-5) << what << " " << describe(c) << ": gpu rel error " << err_gpu
                                           << ", cpu rel error " << err_cpu << ", gpu vs cpu "
                                           << norm_rel_error(g, p);
  }
}

// dinitial.m against the reference, per (b, h) relative to the terms it sums (see the header):
//   dm0 = <dnum0, num0> + dden0 den0 (+ gm = dm_final - <dnum_final, num_final> - dden_final den_final
//   when m0 is the first maximum among (m0, s_0, ...)). The terms are taken from the reference.
void expect_dm0_within_cpu_error(const Case& c, const Inputs& x, const AarenScanOut& ref_fwd, const Tensor& gpu,
                                 const Tensor& cpu, const AarenScanGrads& ref) {
  const Vec g = host(gpu), p = host(cpu), r = host(ref.dinitial.m);
  const Vec m0 = host(x.initial.m), num0 = host(x.initial.num), den0 = host(x.initial.den);
  const Vec dnum0 = host(ref.dinitial.num), dden0 = host(ref.dinitial.den), s = host(x.scores);
  const bool dfinal = c.dfinal != Dfinal::None;
  const Vec numT = dfinal ? host(ref_fwd.final_state.num) : Vec(), denT = dfinal ? host(ref_fwd.final_state.den) : Vec();
  const Vec dnumT = dfinal ? host(x.dfinal.num) : Vec();
  const Vec dmT = c.dfinal == Dfinal::All ? host(x.dfinal.m) : Vec(r.size(), 0.0);
  const Vec ddenT = c.dfinal == Dfinal::All ? host(x.dfinal.den) : Vec(r.size(), 0.0);
  double err_gpu = 0, err_cpu = 0;
  for (int64_t bh = 0; bh < c.B * c.H; ++bh) {
    const int64_t b = bh / c.H, h = bh % c.H;
    const size_t i = size_t(bh);
    double scale = std::abs(dden0[i] * den0[i]);
    for (int64_t e = 0; e < c.d; ++e) scale += std::abs(dnum0[size_t(bh * c.d + e)] * num0[size_t(bh * c.d + e)]);
    bool m0_first_max = true;
    for (int64_t t = 0; t < c.T; ++t) m0_first_max = m0_first_max && !(s[size_t((b * c.T + t) * c.H + h)] > m0[i]);
    if (dfinal && m0_first_max) {
      scale += std::abs(dmT[i]) + std::abs(ddenT[i] * denT[i]);
      for (int64_t e = 0; e < c.d; ++e) scale += std::abs(dnumT[size_t(bh * c.d + e)] * numT[size_t(bh * c.d + e)]);
    }
    scale = std::max(scale, 1e-30);
    const double eg = std::abs(g[i] - r[i]) / scale, ec = std::abs(p[i] - r[i]) / scale;
    err_gpu = std::isnan(eg) || std::isnan(err_gpu) ? NAN : std::max(err_gpu, eg);  // NaN never passes
    err_cpu = std::isnan(ec) || std::isnan(err_cpu) ? NAN : std::max(err_cpu, ec);
  }
  EXPECT_LE(err_gpu, 2 * err_cpu + 1e-5) << "dinitial.m " << describe(c) << ": gpu error " << err_gpu
                                         << ", cpu error " << err_cpu << " (of the terms' size)";
}

void check(const Case& c, DType dt) {
  const Inputs x = make_inputs(c, dt);
  const AarenScanOut gpu = forward(c, x, dt, Device::cuda());
  const AarenScanOut cpu = forward(c, x, dt, Device::cpu());
  const AarenScanOut ref = forward(c, x, DType::F64, Device::cpu());
  expect_within_cpu_error(c, "o", gpu.o, cpu.o, ref.o);
  expect_within_cpu_error(c, "lse", gpu.lse, cpu.lse, ref.lse);
  expect_within_cpu_error(c, "final m", gpu.final_state.m, cpu.final_state.m, ref.final_state.m);
  expect_within_cpu_error(c, "final num", gpu.final_state.num, cpu.final_state.num, ref.final_state.num);
  expect_within_cpu_error(c, "final den", gpu.final_state.den, cpu.final_state.den, ref.final_state.den);

  // Both backends (and the f64 reference) differentiate at the CPU forward's results.
  const AarenScanGrads gg = backward(c, x, cpu, dt, Device::cuda());
  const AarenScanGrads gc = backward(c, x, cpu, dt, Device::cpu());
  const AarenScanGrads gr = backward(c, x, cpu, DType::F64, Device::cpu());
  expect_within_cpu_error(c, "dscores", gg.dscores, gc.dscores, gr.dscores);
  expect_within_cpu_error(c, "dv", gg.dv, gc.dv, gr.dv);
  if (c.initial) {
    expect_dm0_within_cpu_error(c, x, ref, gg.dinitial.m, gc.dinitial.m, gr);
    expect_within_cpu_error(c, "dinitial.num", gg.dinitial.num, gc.dinitial.num, gr.dinitial.num);
    expect_within_cpu_error(c, "dinitial.den", gg.dinitial.den, gc.dinitial.den, gr.dinitial.den);
  } else {
    EXPECT_FALSE(gg.dinitial.m.defined() || gg.dinitial.num.defined() || gg.dinitial.den.defined());
  }
}

std::vector<Case> size_cases() {
  std::vector<Case> cases;
  for (int64_t T : {1, 63, 65, 100, 1000, 5000})
    for (int64_t d : {64, 24, 33}) cases.push_back({2, T, 3, d});
  cases.push_back({1, 129, 12, 64});
  cases.push_back({3, 200, 5, 128});
  cases.push_back({1, 130, 2, 256});
  cases.push_back({2, 70, 3, 200});
  return cases;
}

std::vector<Case> state_and_score_cases() {
  std::vector<Case> cases;
  for (Scores s : {Scores::Uniform, Scores::Rising, Scores::Wide, Scores::MinusTenThousand, Scores::LeadingMinusInf,
                   Scores::BelowInitial})
    for (int64_t d : {64, 33})
      for (bool initial : {false, true})
        for (Dfinal f : {Dfinal::None, Dfinal::All, Dfinal::OnlyNum}) {
          if (s == Scores::BelowInitial && !initial) continue;
          cases.push_back({2, s == Scores::Rising ? 1000 : 300, 3, d, s, initial, f});
        }
  cases.push_back({1, 5000, 5, 64, Scores::Rising, true, Dfinal::All});
  cases.push_back({1, 1, 3, 24, Scores::Uniform, true, Dfinal::All});
  cases.push_back({1, 65, 3, 24, Scores::LeadingMinusInf, true, Dfinal::All});
  return cases;
}

TEST_F(AarenScanCuda, F32Sizes) {
  for (const Case& c : size_cases()) check(c, DType::F32);
}

TEST_F(AarenScanCuda, Bf16Sizes) {
  for (const Case& c : size_cases()) check(c, DType::BF16);
}

TEST_F(AarenScanCuda, F32StatesAndScores) {
  for (const Case& c : state_and_score_cases()) check(c, DType::F32);
}

TEST_F(AarenScanCuda, Bf16StatesAndScores) {
  for (const Case& c : state_and_score_cases()) check(c, DType::BF16);
}

// A leading -inf run: o = 0 and lse = -inf exactly there, and no NaN anywhere.
TEST_F(AarenScanCuda, StepsBeforeAnyFiniteScore) {
  const Case c{2, 100, 3, 64, Scores::LeadingMinusInf};
  const Inputs x = make_inputs(c, DType::BF16);
  const AarenScanOut f = forward(c, x, DType::BF16, Device::cuda());
  const Vec o = host(f.o), lse = host(f.lse);
  for (int64_t row = 0; row < c.B * c.T * c.H; ++row) {
    const bool empty = row / c.H % c.T < 70;
    EXPECT_EQ(std::isinf(lse[size_t(row)]) && lse[size_t(row)] < 0, empty) << "row " << row;
    for (int64_t e = 0; e < c.d; ++e) {
      const double v = o[size_t(row * c.d + e)];
      EXPECT_FALSE(std::isnan(v));
      if (empty) {
        EXPECT_EQ(v, 0.0) << "row " << row;
      }
    }
  }
}

TEST_F(AarenScanCuda, BackwardAndForwardAreBitwiseReproducible) {
  for (DType dt : {DType::BF16, DType::F32})
    for (const Case& c : {Case{2, 5000, 3, 64, Scores::Rising, true, Dfinal::All}, Case{1, 1000, 5, 33}}) {
      const Inputs x = make_inputs(c, dt);
      const AarenScanOut f1 = forward(c, x, dt, Device::cuda()), f2 = forward(c, x, dt, Device::cuda());
      EXPECT_EQ(host(f1.o), host(f2.o)) << describe(c);
      EXPECT_EQ(host(f1.lse), host(f2.lse)) << describe(c);
      EXPECT_EQ(host(f1.final_state.num), host(f2.final_state.num)) << describe(c);
      const AarenScanGrads a = backward(c, x, f1, dt, Device::cuda()), b = backward(c, x, f1, dt, Device::cuda());
      EXPECT_EQ(host(a.dscores), host(b.dscores)) << describe(c);
      EXPECT_EQ(host(a.dv), host(b.dv)) << describe(c);
      if (c.initial) {
        EXPECT_EQ(host(a.dinitial.m), host(b.dinitial.m)) << describe(c);
        EXPECT_EQ(host(a.dinitial.num), host(b.dinitial.num)) << describe(c);
      }
    }
}

TEST_F(AarenScanCuda, F64IsRejectedWithAClearError) {
  Tensor s = random_tensor({1, 4, 2}, DType::F64, Device::cuda());
  Tensor v = random_tensor({1, 4, 2, 8}, DType::F64, Device::cuda());
  EXPECT_ERROR_MENTIONS(aaren_scan_forward(s, v, nullptr), "aaren_scan", "f64", "CPU");
}

TEST_F(AarenScanCuda, HeadDimAbove256IsRejected) {
  Tensor s = random_tensor({1, 4, 1}, DType::F32, Device::cuda());
  Tensor v = random_tensor({1, 4, 1, 300}, DType::F32, Device::cuda());
  EXPECT_ERROR_MENTIONS(aaren_scan_forward(s, v, nullptr), "aaren_scan", "300", "256");
}

// ||a - b|| over all elements, in f64 on the host.
double distance(const Tensor& a, const Tensor& b) {
  const Vec x = a.to_vector(), y = b.to_vector();
  EXPECT_EQ(x.size(), y.size());
  double sum = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) sum += (x[i] - y[i]) * (x[i] - y[i]);
  return std::sqrt(sum);
}

double norm(const Tensor& t) { return distance(t, Tensor::zeros(t.shape(), DType::F64)); }

// The whole mixer (projections, scores, scan) on CUDA against the CPU, forward and backward, in
// f32 (1e-5) and bf16 compute (against the f32 result: within 2x the CPU's bf16 error + 2e-3,
// a bf16 ulp, since the GPU's GEMMs and reductions round at other points than the CPU's).
// Errors are relative to the norm of the f32 CPU result, except k_proj.bias's gradient: a key
// bias shifts all of a head's scores by the same <q_h, b_h> / sqrt(d), which the softmax ignores,
// so that gradient is exactly zero and both backends return rounding noise (~1e-8 of the weight
// gradient's norm in f32); its error is relative to the norm of k_proj.weight's gradient.
TEST_F(AarenScanCuda, MixerMatchesCpu) {
  const int64_t D = 96, H = 3, B = 2, T = 150;
  auto make = [&] {
    auto m = std::make_shared<AarenMixer>(D, H, true, 0.3, 0.2);
    m->init_parameters(7);
    return m;
  };
  auto run = [&](AarenMixer& mixer, const Tensor& x, const Tensor& dy) {
    Tensor xi = x.detach().set_requires_grad(true);
    mixer.zero_grad();
    Tensor y = mixer.forward(xi);
    y.backward(dy);
    std::vector<Tensor> out{y.detach(), xi.grad()};
    for (auto& [name, p] : mixer.named_parameters()) out.push_back(p->value.grad());
    return out;
  };
  const Tensor x = random_tensor({B, T, D}, DType::F32, Device::cpu(), 90);
  const Tensor dy = random_tensor({B, T, D}, DType::F32, Device::cpu(), 91);
  auto cpu_mixer = make(), gpu_mixer = make();
  gpu_mixer->to(Device::cuda());
  // What run() returns, by name.
  std::vector<std::string> names{"y", "x.grad"};
  for (auto& [name, p] : cpu_mixer->named_parameters()) names.push_back(name + ".grad");
  const std::vector<Tensor> ref = run(*cpu_mixer, x, dy);
  ASSERT_EQ(ref.size(), names.size());
  auto index_of = [&](const std::string& name) {
    return size_t(std::find(names.begin(), names.end(), name) - names.begin());
  };
  ASSERT_LT(index_of("k_proj.bias.grad"), names.size());
  ASSERT_LT(index_of("k_proj.weight.grad"), names.size());
  std::vector<double> scale;
  for (size_t i = 0; i < ref.size(); ++i)
    scale.push_back(norm(ref[names[i] == "k_proj.bias.grad" ? index_of("k_proj.weight.grad") : i]));
  auto error = [&](const Tensor& t, size_t i) { return distance(t, ref[i]) / scale[i]; };

  const std::vector<Tensor> gpu = run(*gpu_mixer, x.to(Device::cuda()), dy.to(Device::cuda()));
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_LE(error(gpu[i], i), 1e-5) << "f32 " << names[i];
  const Tensor xb = x.to(DType::BF16), dyb = dy.to(DType::BF16);
  const std::vector<Tensor> cpu_bf16 = run(*cpu_mixer, xb, dyb);
  const std::vector<Tensor> gpu_bf16 = run(*gpu_mixer, xb.to(Device::cuda()), dyb.to(Device::cuda()));
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err_gpu = error(gpu_bf16[i], i), err_cpu = error(cpu_bf16[i], i);
    EXPECT_LE(err_gpu, 2 * err_cpu + 2e-3) << "bf16 " << names[i] << ": gpu " << err_gpu << ", cpu " << err_cpu;
  }
}

// step() on CUDA continues the scan from a state that starts as the identity (m = -inf): pieces
// give what forward gives on the whole sequence.
TEST_F(AarenScanCuda, MixerStepInPiecesEqualsForward) {
  auto mixer = std::make_shared<AarenMixer>(96, 3, true, 0.3, 0.2);
  mixer->init_parameters(8);
  mixer->to(Device::cuda());
  const int64_t B = 2, T = 150;
  const Tensor x = random_tensor({B, T, 96}, DType::F32, Device::cuda(), 92);
  autograd::NoGradGuard no_grad;
  const Tensor y = mixer->forward(x);
  std::unique_ptr<MixerState> state = mixer->make_state(B, T, DType::F32, Device::cuda());
  std::vector<Tensor> ys;
  int64_t start = 0;
  for (int64_t n : {1, 63, 70, 16}) {
    ys.push_back(mixer->step(*state, x.slice(1, start, start + n)));
    start += n;
  }
  EXPECT_LE(rel_error(concat(ys, 1).to(Device::cpu()), y.to(Device::cpu())), 1e-5);
}

}  // namespace
}  // namespace seqtrain
