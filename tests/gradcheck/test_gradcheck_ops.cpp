// f64 finite-difference gradient checks for every differentiable op (autograd/functions.h),
// one table row per case: broadcasting, non-contiguous views and odd sizes (1, 7, 33, 257).
#include <functional>

#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "autograd/node.h"
#include "test_util.h"

namespace seqtrain {
namespace {

using autograd::gradcheck;
using testing::random_tensor;
using Inputs = std::vector<Tensor>;

struct Case {
  std::string name;
  std::function<Inputs()> make_inputs;  // leaves; those to check have requires_grad
  autograd::GradcheckFn fn;
  autograd::GradcheckOptions options = {};
};

Tensor leaf(const Shape& s, double lo = -1.0, double hi = 1.0) {
  return random_tensor(s, DType::F64, Device::cpu(), 0, lo, hi).set_requires_grad(true);
}
// A non-contiguous leaf: the transpose of a fresh [s1, s0] tensor.
Tensor transposed_leaf(int64_t rows, int64_t cols) {
  Tensor t = random_tensor({cols, rows}).transpose(0, 1);
  t.set_requires_grad(true);
  return t;
}
// A non-contiguous leaf: every other column of a wider tensor.
Tensor strided_leaf(int64_t rows, int64_t cols) {
  Tensor base = random_tensor({rows, 2 * cols});
  Tensor t = base.as_strided({rows, cols}, {2 * cols, 2}, 0);
  t.set_requires_grad(true);
  return t;
}

// A leaf whose values are multiples of 1/64 in [-1, 1]: exact in bf16 (and f32), as are x +- 1/64,
// so a finite difference taken with eps = 1/64 sees no rounding from a cast.
Tensor grid_leaf(const Shape& s) {
  Tensor k = random_tensor(s, DType::F64, Device::cpu(), 0, -64, 64).to(DType::I64);  // truncates
  Tensor t = ops::scale(k.to(DType::F64), 1.0 / 64);
  t.set_requires_grad(true);
  return t;
}

auto unary_case(const std::string& name, Tensor (*f)(const Tensor&), const Shape& shape, double lo = -2,
                double hi = 2) {
  return Case{name + shape_str(shape), [=] { return Inputs{leaf(shape, lo, hi)}; },
              [f](const Inputs& in) { return Inputs{f(in[0])}; }};
}

auto binary_case(const std::string& name, Tensor (*f)(const Tensor&, const Tensor&), const Shape& a,
                 const Shape& b, double blo = -1, double bhi = 1) {
  return Case{name + shape_str(a) + "x" + shape_str(b), [=] { return Inputs{leaf(a), leaf(b, blo, bhi)}; },
              [f](const Inputs& in) { return Inputs{f(in[0], in[1])}; }};
}

std::vector<Case> all_cases() {
  std::vector<Case> c;
  // ---- elementwise, odd sizes ----
  for (Shape s : {Shape{1}, Shape{7}, Shape{33}, Shape{257}}) {
    c.push_back(unary_case("exp", exp, s));
    c.push_back(unary_case("tanh", tanh, s));
    c.push_back(unary_case("gelu", gelu, s));
  }
  c.push_back(unary_case("log", log, {7, 3}, 0.2, 3));
  c.push_back(unary_case("sqrt", sqrt, {7, 3}, 0.2, 3));
  c.push_back(unary_case("sigmoid", sigmoid, {33}));
  c.push_back(unary_case("silu", silu, {33}));
  c.push_back(unary_case("softplus", softplus, {33}, -25, 25));  // crosses the linear tail at 20
  c.push_back(unary_case("relu", relu, {33}));
  c.push_back(unary_case("square", square, {7}));
  c.push_back(unary_case("neg", neg, {7}));
  c.push_back({"scale", [] { return Inputs{leaf({7, 3})}; }, [](const Inputs& in) { return Inputs{scale(in[0], -2.5)}; }});
  c.push_back({"add_scalar", [] { return Inputs{leaf({7})}; }, [](const Inputs& in) { return Inputs{add_scalar(in[0], 3.0)}; }});
  c.push_back({"gelu(transposed view)", [] { return Inputs{transposed_leaf(7, 5)}; },
               [](const Inputs& in) { return Inputs{gelu(in[0])}; }});
  // ---- binary with broadcasting ----
  c.push_back(binary_case("add", add, {7, 5}, {7, 5}));
  c.push_back(binary_case("add", add, {7, 5}, {5}));
  c.push_back(binary_case("sub", sub, {7, 1}, {1, 5}));
  c.push_back(binary_case("mul", mul, {2, 7, 5}, {7, 1}));
  c.push_back(binary_case("mul", mul, {1}, {33}));
  c.push_back(binary_case("div", div, {7, 5}, {5}, 0.5, 2.0));
  c.push_back(binary_case("div", div, {3, 1, 4}, {2, 1}, 0.5, 2.0));
  c.push_back({"mul(strided, transposed)", [] { return Inputs{strided_leaf(5, 7), transposed_leaf(5, 7)}; },
               [](const Inputs& in) { return Inputs{mul(in[0], in[1])}; }});
  // ---- reductions ----
  for (int64_t dim : {0, 1, 2, -1}) {
    c.push_back({"sum dim " + std::to_string(dim), [] { return Inputs{leaf({3, 7, 5})}; },
                 [dim](const Inputs& in) { return Inputs{sum(in[0], dim)}; }});
    c.push_back({"mean keepdim dim " + std::to_string(dim), [] { return Inputs{leaf({3, 7, 5})}; },
                 [dim](const Inputs& in) { return Inputs{mean(in[0], dim, true)}; }});
    c.push_back({"max dim " + std::to_string(dim), [] { return Inputs{leaf({3, 7, 5})}; },
                 [dim](const Inputs& in) { return Inputs{max(in[0], dim)}; }});
  }
  for (int64_t dim : {0, 1, 2, -1})
    for (bool reverse : {false, true})
      c.push_back({"cumsum dim " + std::to_string(dim) + (reverse ? " reverse" : ""), [] { return Inputs{leaf({3, 7, 5})}; },
                   [dim, reverse](const Inputs& in) { return Inputs{cumsum(in[0], dim, reverse)}; }});
  c.push_back({"cumsum(transposed)", [] { return Inputs{transposed_leaf(7, 5)}; },
               [](const Inputs& in) { return Inputs{cumsum(in[0], 0)}; }});
  c.push_back({"sum(transposed)", [] { return Inputs{transposed_leaf(7, 5)}; },
               [](const Inputs& in) { return Inputs{sum(in[0], 1)}; }});
  c.push_back({"sum_all", [] { return Inputs{leaf({257})}; }, [](const Inputs& in) { return Inputs{sum_all(in[0])}; }});
  c.push_back({"mean_all", [] { return Inputs{leaf({7, 33})}; }, [](const Inputs& in) { return Inputs{mean_all(in[0])}; }});
  // ---- matmul: every transpose combination, batches, broadcast weights, views ----
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      std::string n = std::string("matmul ta=") + (ta ? "1" : "0") + " tb=" + (tb ? "1" : "0");
      c.push_back({n, [=] { return Inputs{leaf(ta ? Shape{5, 7} : Shape{7, 5}), leaf(tb ? Shape{3, 5} : Shape{5, 3})}; },
                   [=](const Inputs& in) { return Inputs{matmul(in[0], in[1], ta, tb)}; }});
      c.push_back({"batched " + n,
                   [=] { return Inputs{leaf(ta ? Shape{2, 5, 7} : Shape{2, 7, 5}), leaf(tb ? Shape{2, 3, 5} : Shape{2, 5, 3})}; },
                   [=](const Inputs& in) { return Inputs{matmul(in[0], in[1], ta, tb)}; }});
      c.push_back({"shared-b " + n, [=] { return Inputs{leaf(ta ? Shape{2, 5, 7} : Shape{2, 7, 5}), leaf(tb ? Shape{3, 5} : Shape{5, 3})}; },
                   [=](const Inputs& in) { return Inputs{matmul(in[0], in[1], ta, tb)}; }});
      c.push_back({"shared-a " + n, [=] { return Inputs{leaf(ta ? Shape{5, 7} : Shape{7, 5}), leaf(tb ? Shape{2, 3, 5} : Shape{2, 5, 3})}; },
                   [=](const Inputs& in) { return Inputs{matmul(in[0], in[1], ta, tb)}; }});
    }
  c.push_back({"matmul odd [257,1]@[1,7]", [] { return Inputs{leaf({257, 1}), leaf({1, 7})}; },
               [](const Inputs& in) { return Inputs{matmul(in[0], in[1])}; }});
  c.push_back({"matmul(transposed view, strided view)", [] { return Inputs{transposed_leaf(7, 5), strided_leaf(5, 3)}; },
               [](const Inputs& in) { return Inputs{matmul(in[0], in[1])}; }});
  c.push_back({"linear with bias", [] { return Inputs{leaf({2, 7, 5}), leaf({3, 5}), leaf({3})}; },
               [](const Inputs& in) { return Inputs{linear(in[0], in[1], in[2])}; }});
  // ---- softmax family ----
  for (Shape s : {Shape{1, 1}, Shape{3, 7}, Shape{2, 33}, Shape{1, 257}}) {
    c.push_back({"softmax" + shape_str(s), [s] { return Inputs{leaf(s, -3, 3)}; },
                 [](const Inputs& in) { return Inputs{softmax(in[0])}; }});
    c.push_back({"log_softmax" + shape_str(s), [s] { return Inputs{leaf(s, -3, 3)}; },
                 [](const Inputs& in) { return Inputs{log_softmax(in[0])}; }});
  }
  c.push_back({"softmax(transposed)", [] { return Inputs{transposed_leaf(5, 7)}; },
               [](const Inputs& in) { return Inputs{softmax(in[0])}; }});
  // ---- normalisation ----
  for (int64_t d : {1, 7, 33}) {
    c.push_back({"layernorm D=" + std::to_string(d), [d] { return Inputs{leaf({3, d}, -2, 2), leaf({d}), leaf({d})}; },
                 [](const Inputs& in) { return Inputs{layernorm(in[0], in[1], in[2], 1e-5)}; }});
    c.push_back({"rmsnorm D=" + std::to_string(d), [d] { return Inputs{leaf({3, d}, -2, 2), leaf({d})}; },
                 [](const Inputs& in) { return Inputs{rmsnorm(in[0], in[1], 1e-6)}; }});
  }
  c.push_back({"layernorm no bias [2,3,257]", [] { return Inputs{leaf({2, 3, 257}, -2, 2), leaf({257})}; },
               [](const Inputs& in) { return Inputs{layernorm(in[0], in[1], Tensor(), 1e-5)}; }});
  c.push_back({"layernorm(transposed)", [] { return Inputs{transposed_leaf(5, 7), leaf({7}), leaf({7})}; },
               [](const Inputs& in) { return Inputs{layernorm(in[0], in[1], in[2], 1e-5)}; }});
  // ---- embedding, cross-entropy, conv1d ----
  c.push_back({"embedding (repeated ids)",
               [] { return Inputs{Tensor::from_ints({3, 1, 3, 0, 6, 3}, {2, 3}, DType::I64), leaf({7, 5})}; },
               [](const Inputs& in) { return Inputs{embedding(in[0], in[1])}; }});
  c.push_back({"cross_entropy (with ignored row)",
               [] { return Inputs{leaf({5, 7}, -3, 3), Tensor::from_ints({2, -1, 6, 0, 2}, {5}, DType::I32)}; },
               [](const Inputs& in) { return Inputs{cross_entropy(in[0], in[1])}; }});
  c.push_back({"cross_entropy V=257", [] { return Inputs{leaf({3, 257}, -3, 3), Tensor::from_ints({256, 0, 100}, {3}, DType::I64)}; },
               [](const Inputs& in) { return Inputs{cross_entropy(in[0], in[1])}; }});
  c.push_back({"cross_entropy_mean", [] { return Inputs{leaf({5, 7}, -3, 3), Tensor::from_ints({2, -1, 6, 0, 2}, {5}, DType::I64)}; },
               [](const Inputs& in) { return Inputs{cross_entropy_mean(in[0], in[1])}; }});
  for (int64_t k : {1, 4}) {
    c.push_back({"causal_conv1d K=" + std::to_string(k), [k] { return Inputs{leaf({2, 7, 3}), leaf({3, k}), leaf({3})}; },
                 [](const Inputs& in) { return Inputs{causal_conv1d(in[0], in[1], in[2])}; }});
  }
  c.push_back({"causal_conv1d no bias, T<K", [] { return Inputs{leaf({1, 2, 5}), leaf({5, 4})}; },
               [](const Inputs& in) { return Inputs{causal_conv1d(in[0], in[1])}; }});
  // ---- shape ops ----
  c.push_back({"reshape", [] { return Inputs{leaf({3, 4, 5})}; },
               [](const Inputs& in) { return Inputs{mul(reshape(in[0], {12, 5}), reshape(in[0], {12, 5}))}; }});
  c.push_back({"reshape(transposed)", [] { return Inputs{transposed_leaf(3, 4)}; },
               [](const Inputs& in) { return Inputs{reshape(in[0], {-1})}; }});
  c.push_back({"transpose+contiguous", [] { return Inputs{leaf({3, 4, 5})}; },
               [](const Inputs& in) { return Inputs{square(contiguous(transpose(in[0], 0, 2)))}; }});
  c.push_back({"permute", [] { return Inputs{leaf({2, 3, 4})}; },
               [](const Inputs& in) { return Inputs{exp(permute(in[0], {2, 0, 1}))}; }});
  c.push_back({"slice", [] { return Inputs{leaf({7, 5})}; },
               [](const Inputs& in) { return Inputs{square(slice(in[0], 0, 2, 6)), slice(in[0], 1, 4, 5)}; }});
  c.push_back({"expand", [] { return Inputs{leaf({1, 5})}; },
               [](const Inputs& in) { return Inputs{square(expand(in[0], {3, 5}))}; }});
  c.push_back({"concat", [] { return Inputs{leaf({2, 3}), leaf({2, 5}), leaf({2, 1})}; },
               [](const Inputs& in) { return Inputs{square(concat({in[0], in[1], in[2]}, 1))}; }});
  c.push_back({"split", [] { return Inputs{leaf({7, 3})}; },
               [](const Inputs& in) {
                 auto parts = split(in[0], {2, 4, 1}, 0);
                 return Inputs{exp(parts[0]), square(parts[1]), parts[2]};
               }});
  // ---- dtype casts: f64 -> f32 / bf16 -> f64 on the exact grid. x^2 is exact in f32 there, so the
  // f32 case keeps the default tolerance; the bf16 case's gradient is the cotangent rounded to bf16
  // (8 bits) on the way back, as the cast's backward must do, hence rtol 1/128.
  c.push_back({"cast f32 round trip", [] { return Inputs{grid_leaf({7, 33})}; },
               [](const Inputs& in) { return Inputs{cast(square(cast(in[0], DType::F32)), DType::F64)}; },
               {1.0 / 64}});
  c.push_back({"cast bf16 round trip", [] { return Inputs{grid_leaf({257})}; },
               [](const Inputs& in) { return Inputs{mul(cast(cast(in[0], DType::BF16), DType::F64), in[0])}; },
               {1.0 / 64, 1e-7, 1.0 / 128}});
  // ---- composition and recompute ----
  c.push_back({"mlp block", [] { return Inputs{leaf({2, 3, 4}), leaf({8, 4}), leaf({8}), leaf({4, 8})}; },
               [](const Inputs& in) { return Inputs{add(in[0], linear(gelu(linear(in[0], in[1], in[2])), in[3]))}; }});
  c.push_back({"checkpointed block", [] { return Inputs{leaf({2, 3, 4}), leaf({4, 4}), leaf({4})}; },
               [](const Inputs& in) {
                 Tensor w = in[1], g = in[2];
                 auto block = [w, g](const Inputs& x) { return Inputs{tanh(linear(rmsnorm(x[0], g), w))}; };
                 return Inputs{square(autograd::checkpoint(block, {in[0]})[0])};
               }});
  return c;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class GradcheckOps : public ::testing::TestWithParam<Case> {};

TEST_P(GradcheckOps, MatchesFiniteDifferences) {
  const Case& c = GetParam();
  Inputs inputs = c.make_inputs();
  autograd::GradcheckResult r = gradcheck(c.fn, inputs, c.options);
  EXPECT_TRUE(r.ok) << c.name << ": max abs error " << r.max_abs_error << "\n" << r.report;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string s = std::to_string(info.index) + "_" + info.param.name;
  for (char& ch : s)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(AllOps, GradcheckOps, ::testing::ValuesIn(all_cases()), case_name);

// The checker itself must be able to fail: a deliberately wrong backward is caught.
TEST(Gradcheck, DetectsWrongGradient) {
  Tensor x = leaf({5});
  auto wrong = [](const Inputs& in) {
    Tensor y = ops::unary(UnaryOp::Square, in[0]);
    autograd::record("wrong_square", {in[0]}, {y}, [](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{ops::scale(g[0], 1.0)};  // should be 2x * g
    });
    return Inputs{y};
  };
  EXPECT_FALSE(gradcheck(wrong, {x}).ok);
}

}  // namespace
}  // namespace seqtrain
