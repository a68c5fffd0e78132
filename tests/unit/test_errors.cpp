// Bad input to the public ops raises seqtrain::Error whose message names the op, the offending
// shapes/dtypes/devices and what was expected (DESIGN.md §2: no silent fallbacks; STYLE: the user
// should not need a debugger).
#include "core/ops.h"
#include "test_util.h"

namespace seqtrain {
namespace {

using testing::random_tensor;

Tensor f32(const Shape& s) { return random_tensor(s, DType::F32); }

// ---------------------------------------------------------------------------- shape mismatches

TEST(OpErrors, BinaryBroadcastFailureNamesBothShapes) {
  EXPECT_ERROR_MENTIONS(ops::add(f32({7, 5}), f32({7, 4})), "add", "[7, 5]", "[7, 4]", "cannot be broadcast",
                        "dimension 1: 5 vs 4");
  EXPECT_ERROR_MENTIONS(ops::mul(f32({2, 3, 5}), f32({4, 1})), "mul", "[2, 3, 5]", "[4, 1]", "cannot be broadcast");
}

TEST(OpErrors, MatmulInnerDimensionsNameBothShapes) {
  EXPECT_ERROR_MENTIONS(ops::matmul(f32({7, 5}), f32({4, 3})), "matmul", "[7, 5]", "[4, 3]", "inner dimensions",
                        "K=5", "K=4");
  EXPECT_ERROR_MENTIONS(ops::matmul(f32({5, 7}), f32({4, 3}), true, false), "matmul", "[5, 7] (transposed)",
                        "K=5", "K=4");
  Tensor out = Tensor::empty({7, 4}, DType::F32);
  EXPECT_ERROR_MENTIONS(ops::matmul_out(f32({7, 5}), f32({5, 3}), out, false, false, 1.0, 0.0), "matmul", "out",
                        "[7, 4]", "expected [7, 3]");
}

TEST(OpErrors, LayerNormWeightShape) {
  EXPECT_ERROR_MENTIONS(ops::layernorm(f32({3, 5}), f32({6}), f32({5}), 1e-5), "layernorm", "weight", "[6]",
                        "expected [5]");
  EXPECT_ERROR_MENTIONS(ops::layernorm(f32({3, 5}), f32({5}), f32({4}), 1e-5), "layernorm", "bias", "[4]",
                        "expected [5]");
  EXPECT_ERROR_MENTIONS(ops::rmsnorm(f32({3, 5}), f32({5, 1}), 1e-5), "rmsnorm", "weight", "[5, 1]", "expected [5]");
}

TEST(OpErrors, CrossEntropyTargetsShape) {
  Tensor targets = Tensor::from_ints({0, 1, 2, 3}, {4}, DType::I64);
  EXPECT_ERROR_MENTIONS(ops::cross_entropy(f32({5, 7}), targets), "cross_entropy", "targets", "[4]", "expected [5]");
  EXPECT_ERROR_MENTIONS(ops::cross_entropy(f32({5, 7, 1}), targets), "cross_entropy", "2-d [N, V]", "f32[5, 7, 1]");
}

// ---------------------------------------------------------------------------- dtype mismatches

TEST(OpErrors, AddF32AndF64) {
  EXPECT_ERROR_MENTIONS(ops::add(f32({3}), random_tensor({3}, DType::F64)), "add", "dtype mismatch", "f32[3]",
                        "f64[3]", "expected the same dtype");
  Tensor a = f32({3});
  EXPECT_ERROR_MENTIONS(ops::add_(a, random_tensor({3}, DType::BF16)), "add_", "f32[3]", "bf16[3]",
                        "expected the same dtype");
}

TEST(OpErrors, MatmulF32TimesBf16) {
  EXPECT_ERROR_MENTIONS(ops::matmul(f32({7, 5}), random_tensor({5, 3}, DType::BF16)), "matmul", "dtype mismatch",
                        "f32[7, 5]", "bf16[5, 3]", "expected the same dtype");
}

TEST(OpErrors, EmbeddingWithFloatIds) {
  EXPECT_ERROR_MENTIONS(ops::embedding(f32({4}), f32({7, 3})), "embedding", "ids", "f32[4]", "must be i32 or i64");
  EXPECT_ERROR_MENTIONS(ops::embedding_backward(f32({4}), f32({4, 3}), 7), "embedding backward", "ids", "f32[4]",
                        "must be i32 or i64");
}

TEST(OpErrors, IntegerTensorInAFloatingOp) {
  EXPECT_ERROR_MENTIONS(ops::unary(UnaryOp::Exp, Tensor::arange(5, DType::I64)), "exp", "i64[5]",
                        "must be f32, bf16 or f64");
}

// ---------------------------------------------------------------------------- devices

TEST(OpErrors, CpuPlusCudaOperands) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device: a cpu + cuda mismatch needs a GPU";
  Tensor gpu = f32({3}).to(Device::cuda(0));
  EXPECT_ERROR_MENTIONS(ops::add(f32({3}), gpu), "add", "device mismatch", "f32[3] cpu", "f32[3] cuda:0",
                        "expected the same device");
  EXPECT_ERROR_MENTIONS(ops::embedding(Tensor::from_ints({1, 2}, {2}, DType::I64), gpu.view({3, 1})), "embedding",
                        "device mismatch", "i64[2] cpu", "cuda:0");
}

TEST(OpErrors, AllocationOnAMissingCudaDevice) {
  // cuda:0 on a CPU-only machine (or build); one past the last device where there are GPUs.
  const Device missing = Device::cuda(cuda_device_count());
  const std::string name = missing.str();  // "cuda:N"
  EXPECT_ERROR_MENTIONS(Tensor::empty({3}, DType::F32, missing), "cuda", name.c_str());
}

// ---------------------------------------------------------------------------- views

TEST(OpErrors, ViewOfNonContiguousTensor) {
  Tensor t = f32({7, 5}).transpose(0, 1);
  EXPECT_ERROR_MENTIONS(t.view({35}), "view", "f32[5, 7]", "strides [1, 5]", "not contiguous", "contiguous()");
}

TEST(OpErrors, SliceOutOfRange) {
  Tensor t = f32({3, 7});
  EXPECT_ERROR_MENTIONS(t.slice(1, 2, 9), "slice", "[2, 9)", "dimension 1", "size 7", "f32[3, 7]");
  EXPECT_ERROR_MENTIONS(t.slice(0, -1, 2), "slice", "[-1, 2)", "size 3");
  EXPECT_ERROR_MENTIONS(t.slice(2, 0, 1), "slice", "dimension 2", "out of range", "2-d");
}

// ---------------------------------------------------------------------------- index ranges (CPU)

TEST(OpErrors, EmbeddingIdOutOfRange) {
  Tensor table = f32({7, 3});
  EXPECT_ERROR_MENTIONS(ops::embedding(Tensor::from_ints({1, 7, 2}, {3}, DType::I64), table), "embedding",
                        "ids[1] = 7", "[0, 7)");
  EXPECT_ERROR_MENTIONS(ops::embedding(Tensor::from_ints({-2}, {1}, DType::I32), table), "embedding", "ids[0] = -2",
                        "[0, 7)");
}

TEST(OpErrors, CrossEntropyTargetOutOfRange) {
  Tensor targets = Tensor::from_ints({2, -1, 7}, {3}, DType::I32);
  EXPECT_ERROR_MENTIONS(ops::cross_entropy(f32({3, 7}), targets), "cross_entropy", "targets[2] = 7",
                        "vocabulary size 7");
}

}  // namespace
}  // namespace seqtrain
