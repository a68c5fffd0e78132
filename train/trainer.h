// The training loop (DESIGN.md §6): builds the model and optimizer from a Config, resumes from the
// newest complete checkpoint, accumulates micro-batches to batch_tokens per step, clips, steps
// AdamW on the schedule, evaluates, logs (console, logs/rank-0.log, metrics.jsonl) and writes
// HDF5 checkpoints. SIGTERM/SIGINT finish the current step, write a checkpoint and return.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "models/language_model.h"
#include "train/adamw.h"
#include "train/config.h"

namespace seqtrain::train {

struct TrainResult {
  int64_t step = 0;          // steps completed in total (including before a resume)
  double last_loss = 0;      // train loss of the last step
  double last_val_bpb = -1;  // bits per byte of the last evaluation (-1: none ran)
  bool interrupted = false;  // stopped by a signal (a checkpoint was written)
};

// Picks the device a config asks for ("auto": the first GPU if there is one).
Device resolve_device(const std::string& name);
// The activation dtype: bf16 when the config asks for it and runs on a GPU, else f32 (the CPU
// backend computes bf16 through f32 anyway, so f32 is both faster and more accurate there).
DType compute_dtype(const Config& cfg, Device device);

// Model + optimizer on one device, and the step they take together.
class TrainState {
 public:
  TrainState(const Config& cfg, Device device);
  LanguageModel& model() { return *model_; }
  AdamW& optimizer() { return *optimizer_; }
  std::vector<NamedParameter>& params() { return params_; }
  // One optimizer step over `micro_batches` micro-batches pulled from `next_batch`
  // (ids, targets on the CPU). Returns {mean loss, grad norm before clipping}.
  struct StepStats {
    double loss, grad_norm, lr;
  };
  template <typename NextBatch>
  StepStats step(int64_t step_index, int64_t micro_batches, NextBatch&& next_batch);

  Device device() const { return device_; }
  DType compute() const { return compute_; }
  const Config& config() const { return cfg_; }

 private:
  void backward_micro(const Tensor& ids, const Tensor& targets, double scale_by, Tensor& loss_sum);
  StepStats finish_step(int64_t step_index, const Tensor& loss_sum);

  Config cfg_;
  Device device_;
  DType compute_;
  std::unique_ptr<LanguageModel> model_;
  std::vector<NamedParameter> params_;
  std::unique_ptr<AdamW> optimizer_;
};

template <typename NextBatch>
TrainState::StepStats TrainState::step(int64_t step_index, int64_t micro_batches, NextBatch&& next_batch) {
  Tensor loss_sum;
  for (int64_t i = 0; i < micro_batches; ++i) {
    auto [ids, targets] = next_batch();
    backward_micro(ids, targets, 1.0 / double(micro_batches), loss_sum);
  }
  return finish_step(step_index, loss_sum);
}

TrainResult train(const Config& cfg);

// Bytes in use on the device (the GPU pool's reserved memory, or the process's resident set).
double memory_in_use_gib(Device device);

}  // namespace seqtrain::train
