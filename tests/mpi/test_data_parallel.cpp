// Data parallelism equals one process (DESIGN.md §8): one training step of a small language model
// on a global batch of 12 micro-batches, split over the world's dp ranks (12 / dp each), against
// rank 0 running all 12 alone. The loss and every gradient must agree to 1e-6 relative (f32: the
// CPU backend computes in f32; only the summation order of the micro-batch gradients differs),
// and every rank must hold bit-identical gradients after the all-reduce.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "core/ops.h"
#include "core/philox.h"
#include "distributed/communicator.h"
#include "mpi_test.h"
#include "train/trainer.h"

namespace seqtrain {
namespace {

constexpr int64_t kSeqLen = 16, kMicroBatch = 1, kGlobalMicroBatches = 12;

train::Config small_config(int64_t global_micro_batches) {
  const std::string yaml = str_cat(R"(
run: {name: dp-test, dir: unused, seed: 5, device: cpu}
model:
  vocab_size: 256
  d_model: 16
  n_layers: 2
  pattern: [attn]
  norm: rmsnorm
  mlp: {type: swiglu, mult: 4}
  attn: {n_heads: 2, n_kv_heads: 2, pos: rope, window: 0}
  tie_embeddings: true
optimizer: {lr: 1.0e-2, grad_clip: 1.0}
schedule: {warmup_steps: 1}
training: {seq_len: )", kSeqLen, ", micro_batch: ", kMicroBatch, ", batch_tokens: ",
                                   kSeqLen * kMicroBatch * global_micro_batches, R"(, steps: 2, precision: f32}
)");
  return train::parse_config(yaml, "test_data_parallel.cpp");
}

// Micro-batches of the global batch, from `first` on: token (sample, t) is a Philox draw of
// (sample, t) only, so any split over ranks sees the same global batch.
auto batches_from(int64_t first) {
  return [next = first]() mutable {
    std::vector<int64_t> v;
    for (int64_t b = 0; b < kMicroBatch; ++b, ++next)
      for (int64_t t = 0; t <= kSeqLen; ++t)
        v.push_back(int64_t(philox::uniform(11, 3, uint64_t(next * (kSeqLen + 1) + t), 0.0, 256.0)));
    Tensor all = Tensor::from_ints(v, {kMicroBatch, kSeqLen + 1}, DType::I32);
    return std::make_pair(all.slice(1, 0, kSeqLen).contiguous(), all.slice(1, 1, kSeqLen + 1).contiguous());
  };
}

double relative_error(const Tensor& a, const Tensor& ref) {
  return ops::norm_all(ops::sub(a, ref)).item() / std::max(ops::norm_all(ref).item(), 1e-30);
}

TEST(DataParallelTest, OneStepEqualsSingleProcess) {
  const distributed::World& world = test::mpi_world();
  distributed::Mesh mesh(world, -1, 1, 1);
  auto comm = distributed::make_mpi_communicator(mesh.dp_group());
  const train::Config cfg = small_config(kGlobalMicroBatches);
  const int dp = mesh.dp(), dp_rank = mesh.dp_group().rank;
  const int64_t local = train::micro_batches_per_rank(cfg.training, dp);
  ASSERT_EQ(local * dp, kGlobalMicroBatches);

  train::TrainState state(cfg, Device::cpu(), comm.get());
  const double loss = state.accumulate_gradients(local, batches_from(dp_rank * local * kMicroBatch));
  std::vector<Tensor> grads;
  for (auto& np : state.params()) {
    ASSERT_TRUE(np.param->value.grad().defined()) << np.name;
    grads.push_back(np.param->value.grad().clone());
  }

  // Replicas must not drift: every rank's gradient is rank 0's, bit for bit.
  for (size_t i = 0; i < grads.size(); ++i) {
    Tensor from_root = grads[i].clone();
    comm->broadcast(from_root, 0);
    EXPECT_EQ(ops::norm_all(ops::sub(grads[i], from_root)).item(), 0.0) << state.params()[i].name;
  }

  if (world.rank() == 0) {
    train::TrainState reference(cfg, Device::cpu());
    const double ref_loss = reference.accumulate_gradients(kGlobalMicroBatches, batches_from(0));
    EXPECT_LE(std::abs(loss - ref_loss), 1e-6 * std::abs(ref_loss)) << loss << " vs " << ref_loss;
    double worst = 0;
    for (size_t i = 0; i < grads.size(); ++i) {
      const Tensor& ref = reference.params()[i].param->value.grad();
      double err = relative_error(grads[i], ref);
      EXPECT_LE(err, 1e-6) << state.params()[i].name << " at dp=" << dp;
      worst = std::max(worst, err);
    }
    std::printf("dp=%d: loss %.9g vs %.9g, worst gradient relative error %.2e over %zu tensors\n", dp, loss, ref_loss,
                worst, grads.size());
    const double ref_norm = reference.apply_gradients(0, ref_loss).grad_norm;
    const double norm = state.apply_gradients(0, loss).grad_norm;
    EXPECT_LE(std::abs(norm - ref_norm), 1e-6 * ref_norm);
  } else {
    state.apply_gradients(0, loss);
  }
}

// Micro-batches cannot be split unevenly (every rank joins every gradient all-reduce): the split
// is rejected with the sizes named.
TEST(DataParallelTest, UnevenMicroBatchSplitIsRejected) {
  const train::Config cfg = small_config(4);
  EXPECT_EQ(train::micro_batches_per_rank(cfg.training, 2), 2);
  try {
    train::micro_batches_per_rank(cfg.training, 3);
    ADD_FAILURE() << "4 micro-batches over 3 ranks was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not a multiple of micro_batch * seq_len * dp = 1 * 16 * 3 = 48"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace seqtrain
