// The CUDA backend against the CPU backend (DESIGN.md §8), op by op for every op of core/ops.h, on
// fresh random inputs (never zeros) at sizes that do not divide block sizes (1, 7, 33, 257, 1000,
// 4097, ~1e6).
//
// Tolerances, all on the relative error ||out - ref|| / ||ref|| against an f64 reference that the
// CPU backend computes from the same inputs upcast to f64:
//   f32  <= 1e-5 (1e-4 where one output sums n >= 4097 terms: see f32_tol);
//   bf16 <= 2x the error of the naive bf16 implementation + 1e-6, the naive one being the CPU
//        backend run on the same bf16 tensors (f32 compute, one rounding per output);
//   copies, casts, fills, uniform draws and argmax: bitwise equal to the CPU backend.
// Every allocation is poisoned with NaN (set_poison_allocations), so an element a kernel forgot to
// write makes the error NaN, and NaN never passes. Every test skips on a machine without a GPU.
#include <gtest/gtest-spi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "core/ops.h"
#include "test_util.h"

namespace seqtrain {
// gtest prints parameters through PrintTo found by argument-dependent lookup.
void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }

namespace {

using testing::f32_tol;
using testing::max_abs_diff;
using testing::random_tensor;
using testing::rel_error;
using Tensors = std::vector<Tensor>;
// An op under test: inputs (already on the backend that should run it) -> outputs. Views of the
// inputs are taken inside, so that GPU operands are non-contiguous exactly as the CPU ones are.
using OpFn = std::function<Tensors(const Tensors&)>;

const Device kGpu = Device::cuda(0);
const DType kAllTypes[] = {DType::F32, DType::BF16, DType::F64, DType::I32, DType::I64};

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
    set_poison_allocations(true);
  }
  void TearDown() override { set_poison_allocations(false); }
};

// The GPU compute dtypes; f64 is CPU-only for GEMM, so the suite runs f32 and bf16 throughout.
class CudaOpsByDtype : public CudaOps, public ::testing::WithParamInterface<DType> {};
INSTANTIATE_TEST_SUITE_P(GpuDtypes, CudaOpsByDtype, ::testing::Values(DType::F32, DType::BF16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(dtype_name(info.param));
                         });

Tensor rnd(const Shape& s, DType dt, double lo = -1.0, double hi = 1.0) {
  return random_tensor(s, dt, Device::cpu(), 0, lo, hi);
}

// Integers in [lo, hi) as dtype dt (i32/i64 ids and targets, or cast sources).
std::vector<int64_t> random_ints(int64_t n, int64_t lo, int64_t hi) {
  std::vector<double> u = rnd({n}, DType::F64, 0.0, 1.0).to_vector();
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::min(hi - 1, lo + int64_t(u[i] * double(hi - lo)));
  return v;
}

std::string desc_of(const Shape& s, DType dt) { return std::string(dtype_name(dt)) + shape_str(s); }

// ---------------------------------------------------------------------------- comparisons

void expect_f32_close(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  const double err = rel_error(got, ref);
  // EXPECT_LE is false for NaN, so an unwritten (poisoned) element fails here.
  EXPECT_LE(err, tol) << what << ": f32 relative error " << err << " against the f64 reference";
}

// The GPU's bf16 result `gpu` against the f64 reference `ref` (computed from the bf16 inputs
// upcast), with the naive bf16 implementation `cpu` (the CPU backend on the same bf16 tensors:
// f32 compute, one rounding) setting the bar: no worse than twice its error, plus 1e-6 for outputs
// the naive path gets exactly.
void expect_bf16_close(const Tensor& gpu, const Tensor& cpu, const Tensor& ref, const std::string& what) {
  EXPECT_EQ(gpu.dtype(), DType::BF16) << what;
  EXPECT_EQ(cpu.dtype(), DType::BF16) << what;
  const double err_gpu = rel_error(gpu, ref), err_naive = rel_error(cpu, ref), err_between = rel_error(gpu, cpu);
  std::printf("[bf16] %s: error of gpu %.3g, of naive cpu %.3g, gpu vs cpu %.3g\n", what.c_str(), err_gpu,
              err_naive, err_between);
  EXPECT_LE(err_gpu, 2.0 * err_naive + 1e-6)
      << what << ": bf16 relative error of the GPU " << err_gpu << " vs the naive CPU's " << err_naive
      << " (GPU vs CPU " << err_between << ")";
}

// Bitwise equality of values (shape, dtype and every element; NaN never equals).
void expect_identical(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(shape_str(got.shape()), shape_str(want.shape())) << what;
  EXPECT_EQ(got.dtype(), want.dtype()) << what;
  const std::vector<double> a = got.to_vector(), b = want.to_vector();
  for (size_t i = 0; i < a.size(); ++i) {
    if (!(a[i] == b[i])) {
      ADD_FAILURE() << what << ": element " << i << " is " << a[i] << ", expected " << b[i];
      return;
    }
  }
}

// Runs `fn` three times on `inputs`: on GPU copies (the result under test), on the f64 upcasts of
// the floating inputs on the CPU (the reference), and on the inputs themselves on the CPU (the
// naive implementation; integer inputs pass unchanged). Each output is then judged by its GPU
// dtype: f32 with `tol`, bf16 with expect_bf16_close, integers (argmax) exactly.
void compare_backends(const std::string& what, const Tensors& inputs, const OpFn& fn, double tol = 1e-5) {
  Tensors gpu_in, ref_in;
  for (const Tensor& t : inputs) {
    gpu_in.push_back(t.defined() ? t.to(kGpu) : t);
    ref_in.push_back(t.defined() && is_floating(t.dtype()) ? t.to(DType::F64) : t);
  }
  const Tensors got = fn(gpu_in), ref = fn(ref_in), naive = fn(inputs);
  ASSERT_EQ(got.size(), ref.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    const std::string name = what + " output " + std::to_string(i);
    ASSERT_EQ(got[i].defined(), ref[i].defined()) << name;
    if (!got[i].defined()) continue;
    EXPECT_TRUE(got[i].is_cuda()) << name << " is on " << got[i].device().str();
    EXPECT_EQ(got[i].dtype(), naive[i].dtype()) << name;
    ASSERT_EQ(shape_str(got[i].shape()), shape_str(ref[i].shape())) << name;
    switch (got[i].dtype()) {
      case DType::F32: expect_f32_close(got[i], ref[i], tol, name); break;
      case DType::BF16: expect_bf16_close(got[i], naive[i], ref[i], name); break;
      case DType::F64: ADD_FAILURE() << name << ": unexpected f64 GPU output"; break;
      case DType::I32:
      case DType::I64: EXPECT_EQ(got[i].to_ints(), ref[i].to_ints()) << name; break;
    }
  }
}

// The checks above must fail on NaN (EXPECT_LE(NaN, tol) is false), so a poisoned element that a
// kernel never wrote cannot pass. The statements build their tensors inside, as gtest-spi requires.
void nan_f32_check() {
  expect_f32_close(Tensor::from_vector({1.0, NAN, 3.0}, {3}, DType::F32),
                   Tensor::from_vector({1.0, 2.0, 3.0}, {3}, DType::F64), 1e-5, "nan f32");
}
void nan_bf16_check() {
  expect_bf16_close(Tensor::from_vector({1.0, NAN}, {2}, DType::BF16), Tensor::from_vector({1.0, 2.0}, {2}, DType::BF16),
                    Tensor::from_vector({1.0, 2.0}, {2}, DType::F64), "nan bf16");
}
void nan_identical_check() {
  expect_identical(Tensor::from_vector({NAN}, {1}, DType::F32), Tensor::from_vector({NAN}, {1}, DType::F32), "nan");
}

TEST_F(CudaOps, ChecksFailOnNan) {
  EXPECT_NONFATAL_FAILURE(EXPECT_LE(std::nan(""), 1e-5), "");
  EXPECT_NONFATAL_FAILURE(nan_f32_check(), "nan f32");
  EXPECT_NONFATAL_FAILURE(nan_bf16_check(), "nan bf16");
  EXPECT_NONFATAL_FAILURE(nan_identical_check(), "nan");
}

TEST_F(CudaOps, PoisonMakesFreshGpuTensorsNan) {
  for (DType dt : {DType::F32, DType::BF16}) {
    std::vector<double> v = Tensor::empty({1000}, dt, kGpu).to_vector();
    for (double x : v) ASSERT_TRUE(std::isnan(x)) << dtype_name(dt);
  }
}

// ---------------------------------------------------------------------------- fill, copy, cast, RNG

TEST_F(CudaOps, FillMatchesCpu) {
  for (DType dt : kAllTypes)
    for (Shape s : {Shape{}, Shape{1}, Shape{7}, Shape{33, 257}, Shape{1000003}})
      for (double value : {3.25, -0.1, 70001.0}) {
        const std::string what = "full " + desc_of(s, dt) + " = " + std::to_string(value);
        expect_identical(Tensor::full(s, value, dt, kGpu), Tensor::full(s, value, dt), what);
      }
}

TEST_F(CudaOps, FillOfAViewWritesOnlyTheView) {
  for (DType dt : {DType::F32, DType::BF16, DType::F64}) {
    Tensor base = Tensor::empty({33, 257}, dt, kGpu);  // poisoned: NaN everywhere
    Tensor view = base.slice(1, 5, 200).transpose(0, 1);
    ops::fill_(view, -2.75);
    expect_identical(view, Tensor::full(view.shape(), -2.75, dt), std::string("fill_ view ") + dtype_name(dt));
    // Guard values: what lies outside the view keeps its poison.
    std::vector<double> all = base.to_vector();
    for (int64_t r = 0; r < 33; ++r)
      for (int64_t c : {int64_t(0), int64_t(4), int64_t(200), int64_t(256)})
        EXPECT_TRUE(std::isnan(all[size_t(r * 257 + c)])) << "fill_ wrote outside the view at " << r << ", " << c;
  }
}

// A non-contiguous view of `base` (same recipe on either device).
struct ViewCase {
  std::string name;
  Shape base_shape;
  std::function<Tensor(const Tensor&)> view;
};

std::vector<ViewCase> view_cases() {
  return {
      {"transpose", {7, 33, 65}, [](const Tensor& t) { return t.transpose(0, 2); }},
      {"slice", {7, 33, 65}, [](const Tensor& t) { return t.slice(1, 3, 30); }},
      {"slice of last dim", {7, 33, 65}, [](const Tensor& t) { return t.slice(2, 1, 64); }},
      {"expand (stride 0)", {1, 33, 1}, [](const Tensor& t) { return t.expand({7, 33, 65}); }},
      {"permute", {7, 33, 65}, [](const Tensor& t) { return t.permute({2, 0, 1}); }},
      {"every other element", {7, 66}, [](const Tensor& t) { return t.as_strided({7, 33}, {66, 2}, 1); }},
      {"large transpose", {1001, 1003}, [](const Tensor& t) { return t.transpose(0, 1); }},
  };
}

TEST_F(CudaOps, ContiguousOfNonContiguousViews) {
  for (const ViewCase& c : view_cases())
    for (DType dt : {DType::F32, DType::BF16, DType::F64}) {
      Tensor base = rnd(c.base_shape, dt);
      Tensor got = c.view(base.to(kGpu)).contiguous();
      EXPECT_TRUE(got.is_contiguous() && got.is_cuda());
      expect_identical(got, c.view(base).contiguous(), "contiguous(" + c.name + ") " + dtype_name(dt));
      expect_identical(c.view(base.to(kGpu)).clone(), c.view(base), "clone(" + c.name + ") " + dtype_name(dt));
    }
}

TEST_F(CudaOps, CrossDeviceCopyBothWays) {
  for (const ViewCase& c : view_cases())
    for (DType dt : {DType::F32, DType::BF16}) {
      Tensor base = rnd(c.base_shape, dt);
      // CPU view -> GPU, and GPU view -> CPU.
      expect_identical(c.view(base).to(kGpu), c.view(base), "cpu->gpu " + c.name + " " + dtype_name(dt));
      Tensor back = c.view(base.to(kGpu)).to(Device::cpu());
      EXPECT_TRUE(back.device().is_cpu());
      expect_identical(back, c.view(base), "gpu->cpu " + c.name + " " + dtype_name(dt));
    }
  // copy_ across devices into a strided destination of another dtype; the rest keeps its poison.
  for (DType dt : {DType::F32, DType::BF16, DType::F64}) {
    Tensor src = rnd({65, 33}, DType::F64);
    Tensor dst = Tensor::empty({33, 100}, dt, kGpu);
    Tensor window = dst.slice(1, 7, 72).transpose(0, 1);  // [65, 33]
    window.copy_(src);
    expect_identical(window, src.to(dt), std::string("cpu f64 -> gpu strided ") + dtype_name(dt));
    std::vector<double> all = dst.to_vector();
    for (int64_t r = 0; r < 33; ++r)
      for (int64_t col : {int64_t(6), int64_t(72), int64_t(99)})
        EXPECT_TRUE(std::isnan(all[size_t(r * 100 + col)])) << "copy_ wrote outside the window";

    Tensor gsrc = rnd({33, 65}, dt).to(kGpu);
    Tensor host = Tensor::empty({65, 66}, DType::F64);
    Tensor host_window = host.slice(1, 1, 34);  // [65, 33], row stride 66
    host_window.copy_(gsrc.transpose(0, 1));
    expect_identical(host_window, gsrc.transpose(0, 1).to(Device::cpu()).to(DType::F64),
                     std::string("gpu strided -> cpu strided f64 from ") + dtype_name(dt));
  }
}

TEST_F(CudaOps, CastsBetweenAllDtypePairs) {
  for (DType from : kAllTypes) {
    const Shape s{33, 31};
    // Non-integral floats (truncated towards zero by float -> int casts) and integers large
    // enough that int -> bf16 rounds.
    Tensor src = is_floating(from) ? rnd(s, from, -1000.0, 1000.0)
                                   : Tensor::from_ints(random_ints(33 * 31, -100000, 100000), s, from);
    for (DType to : kAllTypes) {
      const std::string what = std::string("cast ") + dtype_name(from) + " -> " + dtype_name(to);
      Tensor got = ops::cast(src.to(kGpu), to);
      EXPECT_TRUE(got.is_cuda()) << what;
      expect_identical(got, ops::cast(src, to), what);
      expect_identical(ops::cast(src.to(kGpu).transpose(0, 1), to), ops::cast(src.transpose(0, 1), to),
                       what + " (transposed view)");
    }
  }
}

TEST_F(CudaOps, UniformIsBitwiseEqualToCpu) {
  struct Stream {
    uint64_t seed, offset;
  };
  for (DType dt : {DType::F32, DType::F64, DType::BF16})
    for (Shape s : {Shape{1}, Shape{7}, Shape{33, 257}, Shape{1000003}})
      for (Stream st : {Stream{0, 0}, Stream{1234, 7}, Stream{0xdeadbeefcafeULL, uint64_t(1) << 40}}) {
        const std::string what = "uniform " + desc_of(s, dt) + " seed " + std::to_string(st.seed) +
                                 " offset " + std::to_string(st.offset);
        Tensor got = Tensor::uniform(s, -2.0, 3.0, st.seed, st.offset, dt, kGpu);
        expect_identical(got, Tensor::uniform(s, -2.0, 3.0, st.seed, st.offset, dt), what);
        std::vector<double> v = got.to_vector();
        EXPECT_TRUE(std::all_of(v.begin(), v.end(), [](double x) { return x >= -2.0 && x <= 3.0; })) << what;
      }
}

TEST_F(CudaOps, NormalAgreesWithCpu) {
  // Box-Muller's log/cos differ in the last bits between the host and device math libraries.
  for (DType dt : {DType::F32, DType::F64})
    for (Shape s : {Shape{1}, Shape{7}, Shape{33, 257}, Shape{1000003}})
      for (uint64_t seed : {uint64_t(0), uint64_t(987654321)}) {
        const std::string what = "normal " + desc_of(s, dt) + " seed " + std::to_string(seed);
        Tensor got = Tensor::normal(s, 0.5, 2.0, seed, 3, dt, kGpu);
        EXPECT_TRUE(got.is_cuda());
        const double diff = max_abs_diff(got, Tensor::normal(s, 0.5, 2.0, seed, 3, dt));
        EXPECT_LE(diff, 1e-6) << what;
      }
}

// ---------------------------------------------------------------------------- elementwise

struct UnaryCase {
  UnaryOp op;
  double alpha, lo, hi;  // input domain [lo, hi)
};
const UnaryCase kUnaryCases[] = {
    {UnaryOp::Neg, 0, -3, 3},       {UnaryOp::Scale, -2.5, -3, 3},    {UnaryOp::AddScalar, 0.75, -3, 3},
    {UnaryOp::Square, 0, -3, 3},    {UnaryOp::Sqrt, 0, 0.2, 3},       {UnaryOp::Exp, 0, -3, 3},
    {UnaryOp::Log, 0, 0.2, 3},      {UnaryOp::Tanh, 0, -3, 3},        {UnaryOp::Sigmoid, 0, -6, 6},
    {UnaryOp::Silu, 0, -6, 6},      {UnaryOp::Gelu, 0, -6, 6},
    {UnaryOp::Softplus, 0, -25, 25},  // crosses the linear tail at 20
    {UnaryOp::Relu, 0, -3, 3},
};

TEST_P(CudaOpsByDtype, UnaryAndBackward) {
  const DType dt = GetParam();
  for (const UnaryCase& c : kUnaryCases)
    for (Shape s : {Shape{1}, Shape{7}, Shape{33}, Shape{257}, Shape{4097}, Shape{3, 7, 33}, Shape{1000003}}) {
      const std::string what = std::string(unary_op_name(c.op)) + " " + desc_of(s, dt);
      compare_backends(what, {rnd(s, dt, c.lo, c.hi), rnd(s, dt)}, [&](const Tensors& in) {
        Tensor y = ops::unary(c.op, in[0], c.alpha);
        return Tensors{y, ops::unary_backward(c.op, in[0], y, in[1], c.alpha)};
      });
    }
  // A transposed (non-contiguous) input.
  for (const UnaryCase& c : kUnaryCases) {
    const std::string what = std::string(unary_op_name(c.op)) + " of a transposed " + dtype_name(dt) + "[257, 33]";
    compare_backends(what, {rnd({33, 257}, dt, c.lo, c.hi), rnd({33, 257}, dt)}, [&](const Tensors& in) {
      Tensor x = in[0].transpose(0, 1), dy = in[1].transpose(0, 1);
      Tensor y = ops::unary(c.op, x, c.alpha);
      return Tensors{y, ops::unary_backward(c.op, x, y, dy, c.alpha)};
    });
  }
}

struct BinaryCase {
  std::string name;
  Shape a, b;  // shapes of the base tensors
  std::function<Tensor(const Tensor&)> view_a, view_b;
};

std::vector<BinaryCase> binary_cases() {
  auto same = [](const Tensor& t) { return t; };
  return {
      {"same shape", {7, 33}, {7, 33}, same, same},
      {"row vector", {7, 33}, {33}, same, same},
      {"outer", {7, 1}, {1, 33}, same, same},
      {"3-d with 2-d column", {2, 7, 33}, {7, 1}, same, same},
      {"[1] with [4097]", {1}, {4097}, same, same},
      {"0-d with [257]", {}, {257}, same, same},
      {"large row broadcast", {1000, 1001}, {1001}, same, same},
      {"transposed", {33, 257}, {257, 33}, [](const Tensor& t) { return t.transpose(0, 1); }, same},
      {"strided with stride-0", {7, 66}, {1, 33},
       [](const Tensor& t) { return t.as_strided({7, 33}, {66, 2}, 0); },
       [](const Tensor& t) { return t.expand({7, 33}); }},
      {"permuted 3-d with 2-d", {33, 7, 5}, {5, 1}, [](const Tensor& t) { return t.permute({1, 2, 0}); }, same},
      {"both transposed", {257, 7}, {257, 7}, [](const Tensor& t) { return t.transpose(0, 1); },
       [](const Tensor& t) { return t.transpose(0, 1); }},
  };
}

TEST_P(CudaOpsByDtype, BinaryWithBroadcasting) {
  const DType dt = GetParam();
  for (BinaryOp op : {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div})
    for (const BinaryCase& c : binary_cases()) {
      const std::string what = std::string(binary_op_name(op)) + " " + c.name + " " + dtype_name(dt);
      // b in [0.5, 2): a divisor bounded away from zero.
      compare_backends(what, {rnd(c.a, dt), rnd(c.b, dt, 0.5, 2.0)}, [&](const Tensors& in) {
        return Tensors{ops::binary(op, c.view_a(in[0]), c.view_b(in[1]))};
      });
    }
}

TEST_P(CudaOpsByDtype, AddInPlace) {
  const DType dt = GetParam();
  for (Shape s : {Shape{1}, Shape{7, 33}, Shape{1000003}})
    compare_backends("add_ " + desc_of(s, dt), {rnd(s, dt), rnd(s, dt)}, [](const Tensors& in) {
      Tensor a = in[0].clone();
      const void* before = a.data_ptr();
      ops::add_(a, in[1]);
      EXPECT_EQ(a.data_ptr(), before);
      return Tensors{a};
    });
  compare_backends(std::string("add_ of a transposed ") + dtype_name(dt), {rnd({257, 33}, dt), rnd({33, 257}, dt)},
                   [](const Tensors& in) {
                     Tensor a = in[0].clone();
                     ops::add_(a, in[1].transpose(0, 1));
                     return Tensors{a};
                   });
}

// ---------------------------------------------------------------------------- reductions

TEST_P(CudaOpsByDtype, ReduceEachAxis) {
  const DType dt = GetParam();
  const Shape shapes[] = {{3, 7, 5}, {2, 4097, 1}, {4097, 3, 5}, {3, 5, 4097}, {1, 257, 7}, {33, 1, 7}, {1000, 33, 2}};
  for (const Shape& s : shapes)
    for (int64_t dim : {0, 1, 2, -1})
      for (bool keepdim : {false, true})
        for (ops::ReduceOp op : {ops::ReduceOp::Sum, ops::ReduceOp::Mean, ops::ReduceOp::Max}) {
          const char* name = op == ops::ReduceOp::Sum ? "sum" : op == ops::ReduceOp::Mean ? "mean" : "max";
          const int64_t n = s[size_t(dim < 0 ? dim + 3 : dim)];
          const std::string what = std::string(name) + " " + desc_of(s, dt) + " dim " + std::to_string(dim) +
                                   (keepdim ? " keepdim" : "");
          // Max also returns argmax (first occurrence on ties, which bf16 makes common): exact.
          compare_backends(what, {rnd(s, dt)}, [&](const Tensors& in) {
            Tensor argmax;
            Tensor out = ops::reduce(op, in[0], dim, keepdim, op == ops::ReduceOp::Max ? &argmax : nullptr);
            return Tensors{out, argmax};
          }, f32_tol(n));
        }
  compare_backends(std::string("sum of a transposed ") + dtype_name(dt), {rnd({33, 4097}, dt)},
                   [](const Tensors& in) { return Tensors{ops::sum(in[0].transpose(0, 1), 0)}; }, f32_tol(4097));
}

// Prefix sums: f64 accumulation on both backends, one rounding per output, so f32 and bf16 match
// the f64 reference to their rounding whatever the line length; lines along every axis (inner 1:
// strided per thread; inner >= 32: coalesced), lengths that do not divide the block, reverse.
TEST_P(CudaOpsByDtype, CumsumEachAxis) {
  const DType dt = GetParam();
  const Shape shapes[] = {{3, 7, 5}, {2, 4097, 1}, {1, 257, 33}, {1000, 3, 2}, {1, 1, 1}};
  for (const Shape& s : shapes)
    for (int64_t dim : {0, 1, 2, -1})
      for (bool reverse : {false, true}) {
        const std::string what = "cumsum " + desc_of(s, dt) + " dim " + std::to_string(dim) + (reverse ? " reverse" : "");
        compare_backends(what, {rnd(s, dt)}, [&](const Tensors& in) {
          return Tensors{ops::cumsum(in[0], dim, reverse)};
        });
      }
  compare_backends(std::string("cumsum of a transposed ") + dtype_name(dt), {rnd({33, 300}, dt)},
                   [](const Tensors& in) { return Tensors{ops::cumsum(in[0].transpose(0, 1), 1, true)}; });
}

TEST_P(CudaOpsByDtype, SumAllAndNormAll) {
  const DType dt = GetParam();
  for (Shape s : {Shape{1}, Shape{7}, Shape{33}, Shape{257}, Shape{4097}, Shape{3, 7, 33}, Shape{65537},
                  Shape{1000003}}) {
    // Inputs in [-0.5, 1): a positive mean keeps the sum far from zero, where a relative error
    // would measure cancellation rather than the kernel.
    compare_backends("sum_all/norm_all " + desc_of(s, dt), {rnd(s, dt, -0.5, 1.0)}, [](const Tensors& in) {
      Tensor sum = ops::sum_all(in[0]), norm = ops::norm_all(in[0]);
      EXPECT_EQ(sum.dim(), 0);
      EXPECT_EQ(norm.dim(), 0);
      return Tensors{sum, norm};
    }, f32_tol(shape_numel(s)));
  }
  compare_backends(std::string("sum_all/norm_all of a transposed ") + dtype_name(dt), {rnd({257, 33}, dt, -0.5, 1.0)},
                   [](const Tensors& in) {
                     Tensor t = in[0].transpose(0, 1);
                     return Tensors{ops::sum_all(t), ops::norm_all(t)};
                   });
}

TEST_P(CudaOpsByDtype, SumTo) {
  const DType dt = GetParam();
  for (Shape target : {Shape{7, 1}, Shape{33}, Shape{1, 33}, Shape{2, 1, 33}, Shape{}})
    compare_backends("sum_to " + shape_str(target) + " " + dtype_name(dt), {rnd({2, 7, 33}, dt)},
                     [&](const Tensors& in) { return Tensors{ops::sum_to(in[0], target)}; });
}

// ---------------------------------------------------------------------------- matmul

struct Mnk {
  int64_t m, n, k;
};
std::string mnk_str(Mnk d, bool ta, bool tb) {
  return "M=" + std::to_string(d.m) + " N=" + std::to_string(d.n) + " K=" + std::to_string(d.k) + (ta ? " A^T" : "") +
         (tb ? " B^T" : "");
}
// Shapes of the stored operands for op(A) [M, K] and op(B) [K, N].
Shape a_shape(Mnk d, bool ta) { return ta ? Shape{d.k, d.m} : Shape{d.m, d.k}; }
Shape b_shape(Mnk d, bool tb) { return tb ? Shape{d.n, d.k} : Shape{d.k, d.n}; }
Shape batched(int64_t batch, Shape s) {
  s.insert(s.begin(), batch);
  return s;
}

TEST_P(CudaOpsByDtype, MatmulEveryTransposeAndOddSizes) {
  const DType dt = GetParam();
  const Mnk sizes[] = {{1, 1, 1},     {1, 7, 33},    {7, 1, 257},    {33, 257, 7},  {257, 33, 1000},
                       {1000, 7, 33}, {7, 1000, 257}, {1000, 1000, 1}, {1000, 257, 1000}};
  for (Mnk d : sizes)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const std::string what = "matmul " + mnk_str(d, ta, tb) + " " + dtype_name(dt);
        compare_backends(what, {rnd(a_shape(d, ta), dt), rnd(b_shape(d, tb), dt)},
                         [&](const Tensors& in) { return Tensors{ops::matmul(in[0], in[1], ta, tb)}; });
      }
  compare_backends(std::string("matmul alpha=-0.75 ") + dtype_name(dt), {rnd({33, 257}, dt), rnd({257, 7}, dt)},
                   [](const Tensors& in) { return Tensors{ops::matmul(in[0], in[1], false, false, -0.75)}; });
}

TEST_P(CudaOpsByDtype, MatmulBatchedAndSharedOperand) {
  const DType dt = GetParam();
  const Mnk sizes[] = {{7, 33, 257}, {33, 1, 7}, {257, 257, 33}, {1, 1000, 7}};
  for (Mnk d : sizes)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const std::string tail = " " + mnk_str(d, ta, tb) + " " + dtype_name(dt);
        auto mm = [&](const Tensors& in) { return Tensors{ops::matmul(in[0], in[1], ta, tb)}; };
        compare_backends("batched [3]" + tail, {rnd(batched(3, a_shape(d, ta)), dt), rnd(batched(3, b_shape(d, tb)), dt)}, mm);
        compare_backends("batched [2, 3]" + tail,
                         {rnd(batched(2, batched(3, a_shape(d, ta))), dt), rnd(batched(2, batched(3, b_shape(d, tb))), dt)}, mm);
        compare_backends("shared 2-d b" + tail, {rnd(batched(3, a_shape(d, ta)), dt), rnd(b_shape(d, tb), dt)}, mm);
        compare_backends("shared 2-d a" + tail, {rnd(a_shape(d, ta), dt), rnd(batched(3, b_shape(d, tb)), dt)}, mm);
      }
}

TEST_P(CudaOpsByDtype, MatmulOfViews) {
  const DType dt = GetParam();
  // A transposed view (used in place), a column slice (row stride > cols), a stride-0 batch.
  compare_backends(std::string("matmul transposed-view a ") + dtype_name(dt), {rnd({257, 33}, dt), rnd({257, 7}, dt)},
                   [](const Tensors& in) { return Tensors{ops::matmul(in[0].transpose(0, 1), in[1])}; });
  compare_backends(std::string("matmul sliced a, transposed-view b ") + dtype_name(dt), {rnd({33, 262}, dt), rnd({7, 257}, dt)},
                   [](const Tensors& in) { return Tensors{ops::matmul(in[0].slice(1, 5, 262), in[1].transpose(0, 1))}; });
  compare_backends(std::string("matmul expanded batch b ") + dtype_name(dt), {rnd({3, 7, 33}, dt), rnd({1, 33, 257}, dt)},
                   [](const Tensors& in) { return Tensors{ops::matmul(in[0], in[1].expand({3, 33, 257}))}; });
  compare_backends(std::string("matmul permuted batch a ") + dtype_name(dt), {rnd({7, 3, 33}, dt), rnd({3, 33, 257}, dt)},
                   [](const Tensors& in) { return Tensors{ops::matmul(in[0].permute({1, 0, 2}), in[1])}; });
}

TEST_P(CudaOpsByDtype, MatmulOutAlphaBeta) {
  const DType dt = GetParam();
  struct AlphaBeta {
    double alpha, beta;
  };
  const Mnk sizes[] = {{7, 33, 257}, {257, 1, 33}, {1000, 257, 7}};
  for (Mnk d : sizes)
    for (AlphaBeta ab : {AlphaBeta{1.0, 1.0}, AlphaBeta{0.5, -1.25}, AlphaBeta{-2.0, 0.0}})
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          const std::string what = "matmul_out " + mnk_str(d, ta, tb) + " alpha " + std::to_string(ab.alpha) +
                                   " beta " + std::to_string(ab.beta) + " " + dtype_name(dt);
          auto run = [&](const Tensors& in) {
            Tensor c = in[2].clone();
            ops::matmul_out(in[0], in[1], c, ta, tb, ab.alpha, ab.beta);
            return Tensors{c};
          };
          compare_backends(what, {rnd(a_shape(d, ta), dt), rnd(b_shape(d, tb), dt), rnd({d.m, d.n}, dt)}, run);
          compare_backends("batched " + what,
                           {rnd(batched(3, a_shape(d, ta)), dt), rnd(b_shape(d, tb), dt), rnd({3, d.m, d.n}, dt)}, run);
        }
}

// ---------------------------------------------------------------------------- softmax

TEST_P(CudaOpsByDtype, SoftmaxAndLogSoftmax) {
  const DType dt = GetParam();
  struct RowsN {
    int64_t rows, n;
  };
  for (RowsN rn : {RowsN{33, 1}, RowsN{33, 7}, RowsN{1, 1000}, RowsN{33, 1000}, RowsN{5, 50304}})
    for (bool log : {false, true}) {
      const std::string what = std::string(log ? "log_softmax " : "softmax ") + desc_of({rn.rows, rn.n}, dt);
      compare_backends(what, {rnd({rn.rows, rn.n}, dt, -5, 5), rnd({rn.rows, rn.n}, dt)}, [&](const Tensors& in) {
        Tensor y = ops::softmax(in[0], log);
        return Tensors{y, ops::softmax_backward(y, in[1], log)};
      }, f32_tol(rn.n));
    }
  for (bool log : {false, true})
    compare_backends(std::string(log ? "log_softmax" : "softmax") + " of transposed 3-d " + dtype_name(dt),
                     {rnd({2, 257, 7}, dt, -5, 5), rnd({2, 7, 257}, dt)}, [&](const Tensors& in) {
                       Tensor y = ops::softmax(in[0].transpose(1, 2), log);
                       return Tensors{y, ops::softmax_backward(y, in[1], log)};
                     });
}

// ---------------------------------------------------------------------------- normalisation

// D = 1 is degenerate: layernorm's dx is exactly 0 and rmsnorm's dx is w*dy*rstd*eps/(x^2+eps), a
// cancellation of two nearly equal f32 terms when eps << x^2. eps = 1 there keeps the comparison a
// test of the kernel rather than of f32 cancellation.
double norm_eps(int64_t d) { return d == 1 ? 1.0 : 1e-5; }

TEST_P(CudaOpsByDtype, LayerNormForwardBackward) {
  const DType dt = GetParam();
  for (int64_t d : {1, 7, 33, 256, 512, 768, 1000, 2048, 4096, 4097})
    for (bool has_bias : {true, false}) {
      const std::string what = "layernorm D=" + std::to_string(d) + (has_bias ? " bias " : " no bias ") + dtype_name(dt);
      const double eps = norm_eps(d);
      auto run = [&](const Tensors& in) {
        ops::NormOut o = ops::layernorm(in[0], in[1], in[2], eps);
        ops::NormGrads g = ops::layernorm_backward(in[0], in[1], o.mean, o.rstd, in[3], has_bias);
        return Tensors{o.y, o.mean, o.rstd, g.dx, g.dweight, g.dbias};
      };
      // Outputs: y, mean, rstd, dx, dweight, dbias. dweight/dbias sum over the 10 rows only.
      compare_backends(what, {rnd({2, 5, d}, dt, -2, 2), rnd({d}, dt, 0.5, 1.5), has_bias ? rnd({d}, dt) : Tensor(),
                              rnd({2, 5, d}, dt)},
                       run, f32_tol(d));
      // One row's mean is a single number: centred data would make its relative error a measure
      // of cancellation (|mean| ~ 2 / sqrt(d)), not of the kernel, so this row is offset by 1.
      compare_backends("single row " + what,
                       {rnd({d}, dt, -1, 3), rnd({d}, dt, 0.5, 1.5), has_bias ? rnd({d}, dt) : Tensor(), rnd({d}, dt)},
                       run, f32_tol(d));
    }
  // Many rows (odd counts, so the kernels' two-row groups end in a single row; 16411 rows of 256
  // and 1031 of 3072 are over four rows per row group of the persistent grid (H100), so every
  // group cycles through its three pipeline stages), and a large mean (x in [10, 12)) that a
  // one-pass E[x^2] - E[x]^2 variance in f32 would get wrong.
  for (double lo : {-2.0, 10.0})
    for (int64_t d : {256, 768, 3072}) {
      const int64_t rows = d == 256 ? 16411 : d == 768 ? 4099 : 1031;
      const std::string what = "layernorm [" + std::to_string(rows) + ", " + std::to_string(d) + "] x in [" +
                               std::to_string(lo) + ", +2) " + dtype_name(dt);
      compare_backends(what, {rnd({rows, d}, dt, lo, lo + 2), rnd({d}, dt, 0.5, 1.5), rnd({d}, dt), rnd({rows, d}, dt)},
                       [](const Tensors& in) {
                         ops::NormOut o = ops::layernorm(in[0], in[1], in[2], 1e-5);
                         ops::NormGrads g = ops::layernorm_backward(in[0], in[1], o.mean, o.rstd, in[3], true);
                         return Tensors{o.y, o.mean, o.rstd, g.dx, g.dweight, g.dbias};
                       },
                       f32_tol(rows));
    }
}

TEST_P(CudaOpsByDtype, RmsNormForwardBackward) {
  const DType dt = GetParam();
  for (int64_t d : {1, 7, 33, 768, 1000, 4096, 4097}) {
    const std::string what = "rmsnorm D=" + std::to_string(d) + " " + dtype_name(dt);
    const double eps = norm_eps(d);
    auto run = [&](const Tensors& in) {
      ops::NormOut o = ops::rmsnorm(in[0], in[1], eps);
      EXPECT_FALSE(o.mean.defined());
      ops::NormGrads g = ops::rmsnorm_backward(in[0], in[1], o.rstd, in[2]);
      EXPECT_FALSE(g.dbias.defined());
      return Tensors{o.y, o.rstd, g.dx, g.dweight};
    };
    compare_backends(what, {rnd({2, 5, d}, dt, -2, 2), rnd({d}, dt, 0.5, 1.5), rnd({2, 5, d}, dt)}, run, f32_tol(d));
    compare_backends("single row " + what, {rnd({d}, dt, -2, 2), rnd({d}, dt, 0.5, 1.5), rnd({d}, dt)}, run, f32_tol(d));
  }
  compare_backends(std::string("rmsnorm [4100, 768] ") + dtype_name(dt),
                   {rnd({4100, 768}, dt, -2, 2), rnd({768}, dt, 0.5, 1.5), rnd({4100, 768}, dt)},
                   [](const Tensors& in) {
                     ops::NormOut o = ops::rmsnorm(in[0], in[1], 1e-6);
                     ops::NormGrads g = ops::rmsnorm_backward(in[0], in[1], o.rstd, in[2]);
                     return Tensors{o.y, o.rstd, g.dx, g.dweight};
                   },
                   f32_tol(4100));
}

// ---------------------------------------------------------------------------- embedding

// n ids in [0, vocab), about half of them from {0, 1, 2} so rows repeat many times, and vocab - 1.
Tensor repeated_ids(const Shape& s, int64_t vocab, DType id_dtype) {
  const int64_t n = shape_numel(s);
  std::vector<int64_t> ids = random_ints(n, 0, vocab), pick = random_ints(n, 0, 2);
  std::vector<int64_t> hot = random_ints(n, 0, std::min<int64_t>(vocab, 3));
  for (int64_t i = 0; i < n; ++i)
    if (pick[size_t(i)]) ids[size_t(i)] = hot[size_t(i)];
  ids[size_t(n - 1)] = vocab - 1;
  return Tensor::from_ints(ids, s, id_dtype);
}

TEST_P(CudaOpsByDtype, EmbeddingForwardBackward) {
  const DType dt = GetParam();
  struct VocabDim {
    int64_t vocab, d;
  };
  // The largest vocabulary only with narrow rows: a [50304, 768] f64 reference table is ~300 MB.
  for (VocabDim vd : {VocabDim{7, 1}, VocabDim{7, 33}, VocabDim{7, 768}, VocabDim{1000, 1}, VocabDim{1000, 33},
                      VocabDim{1000, 768}, VocabDim{50304, 1}, VocabDim{50304, 33}})
    for (DType id_dtype : {DType::I32, DType::I64}) {
      const int64_t vocab = vd.vocab, d = vd.d;
      const std::string what = "embedding V=" + std::to_string(vocab) + " D=" + std::to_string(d) + " ids " +
                               dtype_name(id_dtype) + " " + dtype_name(dt);
      const Shape ids_shape{4, 257};
      compare_backends(what, {repeated_ids(ids_shape, vocab, id_dtype), rnd({vocab, d}, dt), rnd({4, 257, d}, dt)},
                       [&](const Tensors& in) {
                         return Tensors{ops::embedding(in[0], in[1]), ops::embedding_backward(in[0], in[2], vocab)};
                       });
    }
}

TEST_P(CudaOpsByDtype, EmbeddingBackwardIsDeterministic) {
  const DType dt = GetParam();
  // 32768 ids, half of them on three rows: heavy contention wherever a kernel would use atomics.
  const int64_t vocab = 1000, d = 257;
  Tensor ids = repeated_ids({8, 4096}, vocab, DType::I64).to(kGpu);
  Tensor dout = rnd({8, 4096, d}, dt).to(kGpu);
  Tensor first = ops::embedding_backward(ids, dout, vocab);
  Tensor second = ops::embedding_backward(ids, dout, vocab);
  expect_identical(first, second, std::string("embedding_backward run twice ") + dtype_name(dt));
  compare_backends(std::string("embedding_backward [8, 4096] ") + dtype_name(dt),
                   {ids.to(Device::cpu()), dout.to(Device::cpu())},
                   [&](const Tensors& in) { return Tensors{ops::embedding_backward(in[0], in[1], vocab)}; },
                   f32_tol(4096));
}

// ---------------------------------------------------------------------------- cross-entropy

TEST_P(CudaOpsByDtype, CrossEntropyForwardBackward) {
  const DType dt = GetParam();
  const DType stats = DType::F32;  // losses, lse and dlosses are f32 for f32 and bf16 logits
  for (int64_t vocab : {7, 257, 50304})
    for (DType target_dtype : {DType::I32, DType::I64}) {
      const int64_t n = vocab == 50304 ? 9 : 33;
      std::vector<int64_t> targets = random_ints(n, 0, vocab);
      for (int64_t i = 0; i < n; i += 4) targets[size_t(i)] = -1;  // ignored rows: 0, 4, 8, ...
      targets[1] = 0;
      targets[2] = vocab - 1;
      const std::string what = "cross_entropy V=" + std::to_string(vocab) + " targets " + dtype_name(target_dtype) +
                               " logits " + dtype_name(dt);
      auto run = [](const Tensors& in) {
        ops::CrossEntropyOut o = ops::cross_entropy(in[0], in[1]);
        return Tensors{o.losses, o.lse, ops::cross_entropy_backward(in[0], in[1], o.lse, in[2])};
      };
      const Tensors inputs{rnd({n, vocab}, dt, -4, 4), Tensor::from_ints(targets, {n}, target_dtype),
                           rnd({n}, stats, 0.5, 1.5)};
      compare_backends(what, inputs, run, f32_tol(vocab));
      // Ignored rows: loss and gradient exactly 0.
      Tensors gpu_in;
      for (const Tensor& t : inputs) gpu_in.push_back(t.to(kGpu));
      const Tensors out = run(gpu_in);
      const std::vector<double> losses = out[0].to_vector(), dlogits = out[2].to_vector();
      for (int64_t i = 0; i < n; i += 4) {
        EXPECT_EQ(losses[size_t(i)], 0.0) << what << ": loss of ignored row " << i;
        for (int64_t v = 0; v < vocab; ++v)
          ASSERT_EQ(dlogits[size_t(i * vocab + v)], 0.0) << what << ": dlogits of ignored row " << i;
      }
    }
}

// ---------------------------------------------------------------------------- causal conv1d

TEST_P(CudaOpsByDtype, CausalConv1dForwardBackward) {
  const DType dt = GetParam();
  struct Btc {
    int64_t b, t, c;
  };
  // T smaller than K (1, 3), channels that are not a multiple of 32 (1, 7, 100), and one large
  // case whose dw/dbias sum B*T = 8000 terms.
  for (Btc s : {Btc{2, 1, 7}, Btc{2, 3, 100}, Btc{2, 33, 7}, Btc{2, 257, 100}, Btc{3, 33, 1}, Btc{8, 1000, 768}})
    for (int64_t k : {1, 4, 7})
      for (bool has_bias : {true, false}) {
        const std::string what = "causal_conv1d " + desc_of({s.b, s.t, s.c}, dt) + " K=" + std::to_string(k) +
                                 (has_bias ? " bias" : " no bias");
        compare_backends(what, {rnd({s.b, s.t, s.c}, dt), rnd({s.c, k}, dt), has_bias ? rnd({s.c}, dt) : Tensor(),
                                rnd({s.b, s.t, s.c}, dt)},
                         [&](const Tensors& in) {
                           Tensor y = ops::causal_conv1d(in[0], in[1], in[2]);
                           ops::Conv1dGrads g = ops::causal_conv1d_backward(in[0], in[1], in[3], has_bias);
                           return Tensors{y, g.dx, g.dw, g.dbias};
                         },
                         f32_tol(s.b * s.t));
      }
}

// ---------------------------------------------------------------------------- AdamW

// ops.h's AdamW in f64 on host vectors: the reference for both backends.
void adamw_reference(std::vector<double>& p, const std::vector<double>& g, std::vector<double>& m,
                     std::vector<double>& v, const ops::AdamWConfig& c) {
  const double bc1 = 1.0 - std::pow(c.beta1, double(c.step)), bc2 = 1.0 - std::pow(c.beta2, double(c.step));
  for (size_t i = 0; i < p.size(); ++i) {
    m[i] = c.beta1 * m[i] + (1 - c.beta1) * g[i];
    v[i] = c.beta2 * v[i] + (1 - c.beta2) * g[i] * g[i];
    p[i] -= c.lr * ((m[i] / bc1) / (std::sqrt(v[i] / bc2) + c.eps) + c.weight_decay * p[i]);
  }
}

TEST_P(CudaOpsByDtype, AdamWSeveralSteps) {
  const DType grad_dtype = GetParam();  // param, m, v are f32 master state; grads f32 or bf16
  for (Shape s : {Shape{1}, Shape{7}, Shape{33, 257}, Shape{1000003}})
    for (bool with_bf16_copy : {false, true}) {
      const std::string what = "adamw " + shape_str(s) + " grad " + dtype_name(grad_dtype) +
                               (with_bf16_copy ? " with param_bf16" : "");
      // Mid-training state: m of either sign, v > 0, steps 5..7 (bias corrections not yet 1).
      Tensor p_cpu = rnd(s, DType::F32), m_cpu = rnd(s, DType::F32, -0.1, 0.1), v_cpu = rnd(s, DType::F32, 1e-4, 1e-2);
      Tensor p_gpu = p_cpu.to(kGpu), m_gpu = m_cpu.to(kGpu), v_gpu = v_cpu.to(kGpu);
      std::vector<double> p_ref = p_cpu.to_vector(), m_ref = m_cpu.to_vector(), v_ref = v_cpu.to_vector();
      Tensor pb_cpu = Tensor::empty(s, DType::BF16), pb_gpu = Tensor::empty(s, DType::BF16, kGpu);
      for (int64_t step = 5; step <= 7; ++step) {
        const ops::AdamWConfig cfg{3e-3, 0.9, 0.95, 1e-8, 0.1, step};
        Tensor grad = rnd(s, grad_dtype);
        ops::adamw_step(p_cpu, grad, m_cpu, v_cpu, cfg, with_bf16_copy ? &pb_cpu : nullptr);
        ops::adamw_step(p_gpu, grad.to(kGpu), m_gpu, v_gpu, cfg, with_bf16_copy ? &pb_gpu : nullptr);
        adamw_reference(p_ref, grad.to_vector(), m_ref, v_ref, cfg);
      }
      const Tensor p_want = Tensor::from_vector(p_ref, s, DType::F64), m_want = Tensor::from_vector(m_ref, s, DType::F64),
                   v_want = Tensor::from_vector(v_ref, s, DType::F64);
      EXPECT_TRUE(p_gpu.is_cuda() && p_gpu.dtype() == DType::F32);
      expect_f32_close(p_gpu, p_want, 1e-5, what + " param (gpu)");
      expect_f32_close(m_gpu, m_want, 1e-5, what + " m (gpu)");
      expect_f32_close(v_gpu, v_want, 1e-5, what + " v (gpu)");
      // The oracle itself, so that a disagreement points at the right backend.
      expect_f32_close(p_cpu, p_want, 1e-5, what + " param (cpu)");
      expect_f32_close(m_cpu, m_want, 1e-5, what + " m (cpu)");
      expect_f32_close(v_cpu, v_want, 1e-5, what + " v (cpu)");
      // The bf16 copy is the new f32 param rounded once.
      if (with_bf16_copy) expect_identical(pb_gpu, ops::cast(p_gpu, DType::BF16), what + " param_bf16");
    }
}

// ---------------------------------------------------------------------------- concat

TEST_F(CudaOps, ConcatMatchesCpu) {
  for (DType dt : {DType::F32, DType::BF16, DType::I64})
    for (int64_t dim : {0, 1, 2, -1}) {
      const int64_t axis = dim < 0 ? dim + 3 : dim;
      // Pieces of sizes 1, 7 and 33 along `axis`; the middle one is a transposed view.
      Tensors pieces_cpu;
      std::vector<bool> transposed;
      for (int64_t len : {1, 7, 33}) {
        Shape s{3, 5, 257};
        s[size_t(axis)] = len;
        Shape stored = s;
        std::swap(stored[0], stored[2]);
        Tensor base = is_floating(dt) ? rnd(len == 7 ? stored : s, dt)
                                      : Tensor::from_ints(random_ints(shape_numel(s), -1000, 1000), len == 7 ? stored : s, dt);
        pieces_cpu.push_back(base);
        transposed.push_back(len == 7);
      }
      auto views = [&](const Tensors& ts) {
        Tensors out;
        for (size_t i = 0; i < ts.size(); ++i) out.push_back(transposed[i] ? ts[i].transpose(0, 2) : ts[i]);
        return out;
      };
      Tensors pieces_gpu;
      for (const Tensor& t : pieces_cpu) pieces_gpu.push_back(t.to(kGpu));
      Tensor got = ops::concat(views(pieces_gpu), dim);
      EXPECT_TRUE(got.is_cuda());
      expect_identical(got, ops::concat(views(pieces_cpu), dim),
                       std::string("concat dim ") + std::to_string(dim) + " " + dtype_name(dt));
    }
}

// ---------------------------------------------------------------------------- autograd across devices

// to_device and cast carry the gradient back to the leaf's own device and dtype: a CPU f32 leaf used
// on the GPU in bf16 gets a CPU f32 gradient equal to the CPU-only computation's. (gradcheck, CPU
// only, covers cast; this is to_device's test.)
TEST_F(CudaOps, ToDeviceAndCastCarryGradientsBack) {
  Tensor x = rnd({7, 257}, DType::F32);
  x.set_requires_grad(true);
  Tensor w = rnd({7, 257}, DType::F32);
  // loss = sum(w * x^2), the square taken on the GPU in bf16
  Tensor xb = cast(to_device(x, kGpu), DType::BF16);
  Tensor y = to_device(cast(square(xb), DType::F32), Device::cpu());
  sum_all(mul(w, y)).backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_FALSE(x.grad().is_cuda());
  EXPECT_EQ(x.grad().dtype(), DType::F32);
  // The same computed on the CPU, and 2 x w (x rounded to bf16): within bf16 rounding (2^-8).
  Tensor x_cpu = x.detach().to(DType::BF16).to(DType::F32);
  x_cpu.set_requires_grad(true);
  Tensor y_cpu = cast(square(cast(x_cpu, DType::BF16)), DType::F32);
  sum_all(mul(w, y_cpu)).backward();
  EXPECT_LE(rel_error(x.grad(), x_cpu.grad()), 1e-2) << "x.grad against the CPU computation";
  Tensor want = ops::mul(ops::scale(x_cpu.detach(), 2.0), w);
  EXPECT_LE(rel_error(x.grad(), want), 1e-2) << "x.grad against 2 x w";
}

}  // namespace
}  // namespace seqtrain
