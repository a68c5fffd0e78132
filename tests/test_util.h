// Helpers shared by the test suites: random inputs, relative error against a reference, skips.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "core/tensor.h"
#include "layers/mixer.h"
#include "layers/module.h"

namespace seqtrain::testing {

// The seed of every random_tensor: SEQTRAIN_TEST_SEED when set, to run the suites on other inputs
// (`SEQTRAIN_TEST_SEED=7 ctest -L gradcheck`; a failure reproduces with the same value), else a
// fixed default so that CI sees the same inputs every run.
inline uint64_t test_seed() {
  static const uint64_t seed = [] {
    const char* text = std::getenv("SEQTRAIN_TEST_SEED");
    if (!text || !*text) return uint64_t(0x5eed5eed);
    char* end = nullptr;
    const unsigned long long value = std::strtoull(text, &end, 0);
    if (*end != '\0') {
      std::fprintf(stderr, "SEQTRAIN_TEST_SEED=%s: expected an unsigned integer\n", text);
      std::exit(2);
    }
    return uint64_t(value);
  }();
  return seed;
}

// Fresh random values in [lo, hi) (never zeros); `salt` varies the stream between calls.
inline Tensor random_tensor(const Shape& shape, DType dtype = DType::F64, Device device = Device::cpu(),
                            uint64_t salt = 0, double lo = -1.0, double hi = 1.0) {
  static uint64_t counter = 0;
  return Tensor::uniform(shape, lo, hi, test_seed() + salt, ++counter, dtype, device);
}

// ||a - b|| / ||b|| over all elements (NaN if either holds a NaN).
inline double rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return NAN;
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}
inline double rel_error(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(shape_str(a.shape()), shape_str(b.shape()));
  return rel_error(a.to_vector(), b.to_vector());
}

// The f32 tolerance on rel_error for an output whose elements each sum `n` terms (DESIGN.md §8:
// 1e-5..1e-4). Up to 4096 terms an f32 result stays within 1e-5 of the f64 reference; beyond, the
// summation order (a tree of warp/block partials on the GPU, blocked loops on the CPU) leaves errors
// that grow like sqrt(n) ulps of the partial sums, and where the terms cancel (Mamba-2's dA, one
// number per head from B*T*P*N terms: 1.3e-5 on the CPU itself at SEQTRAIN_TEST_SEED=15) relative to
// a smaller result; those get 1e-4.
inline double f32_tol(int64_t n) { return n >= 4097 ? 1e-4 : 1e-5; }

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector(), y = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::isnan(x[i] - y[i]) ? INFINITY : std::abs(x[i] - y[i]));
  return m;
}

// Makes every parameter of `module` an f64 leaf that requires grad, redrawing U(lo, hi) for the
// ones `redraw` selects (constant-initialised ones, e.g. zero biases, whose values would hide
// gradient terms), and returns them in declaration order. The module reads them in place, so
// gradcheck's perturbations of the returned tensors reach it.
inline std::vector<Tensor> make_f64_parameter_leaves(Module& module,
                                                     const std::function<bool(const std::string&)>& redraw,
                                                     double lo, double hi, uint64_t salt = 100) {
  std::vector<Tensor> leaves;
  for (auto& [name, p] : module.named_parameters()) {
    Tensor v = redraw(name) ? random_tensor(p->value.shape(), DType::F64, Device::cpu(), ++salt, lo, hi)
                            : p->value.to(DType::F64).clone();
    v.set_requires_grad(true);
    p->value = v;
    leaves.push_back(v);
  }
  return leaves;
}

// Feeds x [B, T, D] to a fresh recurrent state of `mixer` in consecutive pieces of the given lengths
// (cycled, the last one cut at T) and returns the step outputs joined along time: what forward(x)
// must equal.
inline Tensor step_in_pieces(Mixer& mixer, const Tensor& x, const std::vector<int64_t>& pieces) {
  const int64_t T = x.size(1);
  std::unique_ptr<MixerState> state = mixer.make_state(x.size(0), T, x.dtype(), x.device());
  std::vector<Tensor> outs;
  for (int64_t t = 0, i = 0; t < T; ++i) {
    const int64_t len = std::min(pieces[static_cast<size_t>(i) % pieces.size()], T - t);
    outs.push_back(mixer.step(*state, x.slice(1, t, t + len)));
    t += len;
  }
  return concat(outs, 1);
}


// x [2, T, d_model] with the seed and range the mixer step tests share.
inline Tensor step_test_input(int64_t T, int64_t d_model, DType dtype) {
  return random_tensor({2, T, d_model}, dtype, Device::cpu(), 9, -2, 2);
}

// step over x fed in each set of pieces equals forward on the whole of x: max |difference| within
// 1e-12 (f64) or 2e-5 (f32) times max(1, sqrt(T)); forward's output is not trivially zero.
inline void expect_step_equals_forward(Mixer& mixer, DType dtype, int64_t T, int64_t d_model,
                                       const std::vector<std::vector<int64_t>>& piece_sets) {
  autograd::NoGradGuard no_grad;
  const Tensor x = step_test_input(T, d_model, dtype);
  const Tensor full = mixer.forward(x);
  const double tol = dtype == DType::F64 ? 1e-12 : 2e-5;
  for (const std::vector<int64_t>& pieces : piece_sets) {
    const Tensor stepped = step_in_pieces(mixer, x, pieces);
    EXPECT_LE(max_abs_diff(stepped, full), tol * std::max(1.0, std::sqrt(double(T))))
        << "T " << T << " pieces of " << pieces.size();
  }
  EXPECT_GT(max_abs_diff(full, Tensor::zeros(full.shape(), full.dtype())), 1e-3);  // not trivially zero
}

// The step comparison is sensitive: after 4 steps of history, the 5th step matches forward to 1e-12,
// and a history perturbed by 1e-6 in one element (the state is opaque, so it is perturbed through
// its input) moves that step beyond 1e-12.
inline void expect_perturbed_history_detected(Mixer& mixer, int64_t d_model) {
  autograd::NoGradGuard no_grad;
  const Tensor x = step_test_input(5, d_model, DType::F64);
  const Tensor full = mixer.forward(x);
  auto state = mixer.make_state(2, 5, DType::F64, Device::cpu());
  mixer.step(*state, x.slice(1, 0, 4));
  EXPECT_LE(max_abs_diff(mixer.step(*state, x.slice(1, 4, 5)), full.slice(1, 4, 5)), 1e-12);
  Tensor x2 = x.clone();
  x2.data<double>()[0] += 1e-6;
  auto perturbed = mixer.make_state(2, 5, DType::F64, Device::cpu());
  mixer.step(*perturbed, x2.slice(1, 0, 4));
  EXPECT_GT(max_abs_diff(mixer.step(*perturbed, x.slice(1, 4, 5)), full.slice(1, 4, 5)), 1e-12);
}

// A sequence length and dtype of the parameterised step tests.
struct StepCase {
  int64_t T;
  DType dtype;
};
inline void PrintTo(const StepCase& c, std::ostream* os) { *os << "T" << c.T << " " << dtype_name(c.dtype); }
inline std::string step_case_name(const ::testing::TestParamInfo<StepCase>& info) {
  return str_cat("T", info.param.T, "_", dtype_name(info.param.dtype));
}
// T = 1, 63, 100 in f64 and 100 in f32.
inline auto step_cases() {
  return ::testing::Values(StepCase{1, DType::F64}, StepCase{63, DType::F64}, StepCase{100, DType::F64},
                           StepCase{100, DType::F32});
}

}  // namespace seqtrain::testing

// Expects `statement` to throw seqtrain::Error whose message contains every given fragment.
#define EXPECT_ERROR_MENTIONS(statement, ...)                                              \
  do {                                                                                     \
    try {                                                                                  \
      statement;                                                                           \
      ADD_FAILURE() << "expected seqtrain::Error from " #statement;                        \
    } catch (const ::seqtrain::Error& e) {                                                 \
      for (const char* fragment : {__VA_ARGS__})                                           \
        EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)                 \
            << "message '" << e.what() << "' lacks '" << fragment << "'";                  \
    }                                                                                      \
  } while (0)
