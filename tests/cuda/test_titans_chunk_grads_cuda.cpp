// CUDA fused chunk gradients of the depth-2 Titans memory (layers/titans/chunk_grads_cuda.cu) against
// the CPU reference: the forward (G0, G1) and the backward (dW0, dW1, dk, dr, du, and dw with the
// clamp) on fresh random f32 inputs, without the clamp and with it (m = 1, the r, u rows scaled by
// 10^-2 .. 10^2 so that the tokens fall in tanh's linear, nonlinear and saturated ranges), every output allocation poisoned with NaN (an element a kernel forgot to write fails), k, r,
// u strided slices of [B, H, T, d] as neural_memory passes them, sizes that are multiples of no tile
// (and d = 64, h = 256, C = 64, which the kernels run as two token tiles).
// Tolerance, with ref the CPU f64 result on the same f32 values: rel_error(gpu, ref) <= 1e-5 +
// 2 rel_error(cpu_f32, ref) (the project's f32 rule; the second term admits the error of the f32 CPU
// reference itself, whose sums of up to C or h products run in another order). The backward is
// bitwise reproducible. Then neural_memory on CUDA (through the dispatch) against the CPU, with the
// outer gradient, with and without the clamp. Every test skips on a machine without a GPU.
#include <cmath>

#include "autograd/functions.h"
#include "autograd/node.h"
#include "layers/titans/chunk_grads.h"
#include "layers/titans/neural_memory.h"
#include "neural_memory_case.h"
#include "test_util.h"

namespace seqtrain {
namespace {

using testing::max_abs_diff;
using testing::NeuralMemoryCase;
using testing::random_tensor;
using testing::rel_error;

class TitansChunkGradsCuda : public ::testing::TestWithParam<MemoryChunkDims> {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
    set_poison_allocations(true);
  }
  void TearDown() override { set_poison_allocations(false); }
};

struct Operands {
  Tensor w0, w1, k, r, u, dg0, dg1;  // k, r, u: [B, H, C + 2, d], the chunk is rows [1, C + 1)
  Tensor weight;                     // [B, H, C + 2, 1], the clamp's w_t
  double max_norm;                   // 0 = no clamp
  Operands to(DType dt, Device dev) const {
    auto c = [&](const Tensor& t) { return t.to(dt).to(dev); };
    return {c(w0), c(w1), c(k), c(r), c(u), c(dg0), c(dg1), c(weight), max_norm};
  }
  MemoryChunkInputs inputs() const {
    auto chunk = [](const Tensor& t) { return t.slice(2, 1, t.size(2) - 1); };
    return {w0, w1, chunk(k), chunk(r), chunk(u), 1e-5, max_norm > 0 ? chunk(weight) : Tensor(), max_norm};
  }
};

std::vector<Tensor> results(const Operands& o) {
  MemoryChunkGrads g = memory_chunk_grads_forward(o.inputs());
  MemoryChunkGradsVjp v = memory_chunk_grads_backward(o.inputs(), o.dg0, o.dg1);
  std::vector<Tensor> out;
  for (const Tensor& t : {g.g0, g.g1, v.dw0, v.dw1, v.dk, v.dr, v.du, v.dweight})
    if (t.defined()) out.push_back(t.to(Device::cpu()).to(DType::F64));
  return out;
}

// The clamp cases scale the tokens' r, u rows by 10^-2 .. 10^2 (testing::spread_rows).
Tensor spread_rows(const Tensor& x) { return testing::spread_rows(x, -2.0, 2.0); }

TEST_P(TitansChunkGradsCuda, MatchesCpu) {
  const MemoryChunkDims s = GetParam();
  // Scales as in the memory: unit-ish keys, xavier-like weights, r and u of the folded operands.
  const double wa = std::sqrt(6.0 / double(s.d + s.h));
  const Operands base{random_tensor({s.B, s.H, s.d, s.h}, DType::F32, Device::cpu(), 1, -wa, wa),
                      random_tensor({s.B, s.H, s.h, s.d}, DType::F32, Device::cpu(), 2, -wa, wa),
                      random_tensor({s.B, s.H, s.C + 2, s.d}, DType::F32, Device::cpu(), 3, -0.3, 0.3),
                      random_tensor({s.B, s.H, s.C + 2, s.d}, DType::F32, Device::cpu(), 4, -0.5, 0.5),
                      random_tensor({s.B, s.H, s.C + 2, s.d}, DType::F32, Device::cpu(), 5, 0.05, 1.0),
                      random_tensor({s.B, s.H, s.d, s.h}, DType::F32, Device::cpu(), 6),
                      random_tensor({s.B, s.H, s.h, s.d}, DType::F32, Device::cpu(), 7),
                      random_tensor({s.B, s.H, s.C + 2, 1}, DType::F32, Device::cpu(), 8, 0.05, 0.8),
                      0.0};
  for (double m : {0.0, 1.0}) {
    SCOPED_TRACE(m > 0 ? "clamp" : "no clamp");
    Operands f32 = base;
    f32.max_norm = m;
    if (m > 0) {
      f32.r = spread_rows(base.r);
      f32.u = spread_rows(base.u);
    }
    const std::vector<Tensor> gpu = results(f32.to(DType::F32, Device::cuda()));
    const std::vector<Tensor> cpu = results(f32);
    const std::vector<Tensor> ref = results(f32.to(DType::F64, Device::cpu()));
    ASSERT_EQ(gpu.size(), m > 0 ? 8u : 7u);
    const char* names[] = {"G0", "G1", "dW0", "dW1", "dk", "dr", "du", "dweight"};
    for (size_t i = 0; i < gpu.size(); ++i) {
      const double err_gpu = rel_error(gpu[i], ref[i]), err_cpu = rel_error(cpu[i], ref[i]);
      EXPECT_LE(err_gpu, 1e-5 + 2 * err_cpu) << names[i] << ": gpu " << err_gpu << ", cpu f32 " << err_cpu
                                             << ", gpu vs cpu f32 " << rel_error(gpu[i], cpu[i]);
    }
    const std::vector<Tensor> again = results(f32.to(DType::F32, Device::cuda()));
    for (size_t i = 0; i < gpu.size(); ++i)
      EXPECT_EQ(max_abs_diff(gpu[i], again[i]), 0.0) << names[i] << " not reproducible";
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, TitansChunkGradsCuda,
                         ::testing::Values(MemoryChunkDims{2, 3, 1, 3, 12}, MemoryChunkDims{2, 3, 5, 8, 32},
                                           MemoryChunkDims{1, 2, 37, 13, 52}, MemoryChunkDims{3, 2, 70, 24, 97},
                                           MemoryChunkDims{1, 4, 64, 64, 256}, MemoryChunkDims{2, 2, 17, 33, 130}),
                         [](const ::testing::TestParamInfo<MemoryChunkDims>& info) {
                           const MemoryChunkDims& s = info.param;
                           return "B" + std::to_string(s.B) + "_H" + std::to_string(s.H) + "_C" +
                                  std::to_string(s.C) + "_d" + std::to_string(s.d) + "_h" + std::to_string(s.h);
                         });

TEST(TitansChunkGradsCudaMemory, NeuralMemoryMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  // Chunk 16 over T = 53 in two calls (a partial head, complete chunks, a partial tail), d = 16, h = 64.
  const NeuralMemoryCase c(2, 2, 53, 16, 64, DType::F32, 0.3, 0.25);
  auto run = [&](Device dev, double m) {
    NeuralMemoryConfig cfg;
    cfg.max_grad_norm = m;
    return c.run(dev, cfg, 3);
  };
  // neural_memory reaches the kernels only when they are enabled (off by default).
  const bool was_enabled = memory_chunk_grads_cuda_enabled();
  set_memory_chunk_grads_cuda_enabled(true);
  for (double m : {0.0, 1.0}) {
    SCOPED_TRACE(m > 0 ? "clamp" : "no clamp");
    const std::vector<Tensor> gpu = run(Device::cuda(), m), cpu = run(Device::cpu(), m);
    // Looser than a single op (as tests/cuda/test_titans_cuda.cpp explains): the error compounds
    // through the chunk recurrence and the second-order backward.
    for (size_t i = 0; i < gpu.size(); ++i)
      EXPECT_LT(rel_error(gpu[i], cpu[i]), i == 0 ? 2e-5 : 2e-4) << "output " << i << " (y, then the inputs' gradients)";
  }
  set_memory_chunk_grads_cuda_enabled(was_enabled);
}

}  // namespace
}  // namespace seqtrain
