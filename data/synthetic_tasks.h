// Synthetic capability tasks, generated on the fly (config `data.task`; the exact definitions follow
// layers.md §10 of the design notes). A sample is `inputs` [T] and `targets` [T] with targets[t] the
// token that should follow inputs[..t] at the task's answer positions and -1 (ignored by the loss)
// everywhere else, so the loss and the accuracy see the answers only. V is data.task.vocab_size.
//
//   mqar            Zoology's multiquery_ar: K keys from [1, V/2) and K values from [V/2, V), all
//                   distinct, laid out as k1 v1 k2 v2 ... kK vK; then every key again at position
//                   2K + 2g for gaps g drawn without replacement from [0, (T - 2K) / 2) with
//                   p(g) proportional to (g + 1)^(a - 1); zeros (or random tokens) between them. The
//                   target at each re-inserted key is its value: K answers. Needs T >= 4K.
//   selective_copy  Mamba's selective copying (S4's torch_copying_data, variable): M tokens from
//                   [1, V - 1) at sorted random positions of L + M noise zeros (L = T - 2M), then M
//                   markers V - 1. The target at the i-th marker is the i-th token: M answers.
//   induction       safari's induction head (induction_len 1): T - 1 tokens from [0, V - 1), the
//                   copy prefix V - 1 at a position p in [0, T - 3] and again at T - 1. The target at
//                   T - 1 is the token at p + 1: one answer.
//   assoc_recall    safari's associative recall (one key): per sample, a random map from keys
//                   [0, (V - 1) / 2) to values [(V - 1) / 2, V - 1); (T - 2) / 2 pairs k map(k) with
//                   keys drawn with replacement, then the copy prefix V - 1 and one of the keys seen.
//                   The target at T - 1 is its value: one answer. Needs an even T. With
//                   assoc_recall.train_labels = repeats, training samples (not evaluation ones)
//                   also label every value whose key appeared earlier in the sample (targets[2i] at
//                   pair i), a varying number per sample: the same lookup, with more labels per step.
//   passkey         Mohtashami & Jaggi's passkey retrieval, in bytes: the filler text "The grass is
//                   green. ..." with "The pass key is N. Remember it. N is the pass key. " hidden at
//                   a fraction `depth` of it, ending in "What is the pass key? The pass key is N".
//                   The targets are the D digits of N: D answers.
//
// Every sample of a task at one length has the same number of answers (but for assoc_recall's
// `repeats` training labels), so a micro-batch's mean loss over its answers weighs every answer of
// the global batch equally.
//
// Sample i is a pure function of (seed, stream, T, i): training draws sample i of the training
// stream by its global index, exactly like the token loader (data/token_loader.h), so the data do not
// depend on the batch size, the number of data-parallel ranks or a resume; evaluation draws from a
// separate Philox stream, so the validation set is fixed per (seed, length) and drawn independently
// of the training samples (at small V and T some samples may coincide). Cost: O(T) per sample, plus
// O(V) for MQAR's distinct keys and values and O(K (T - 2K)) for its gap draws, on the CPU.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/token_loader.h"
#include "train/config.h"

namespace seqtrain::data {

// The task names data.task.name accepts (besides none).
const std::vector<std::string>& task_names();
// Why `task` cannot be generated with its vocabulary (e.g. "mqar needs ..."); empty when it can.
std::string task_vocab_problem(const train::TaskConfig& task);
// Why `task` cannot be laid out in `seq_len` tokens; empty when it can.
std::string task_length_problem(const train::TaskConfig& task, int64_t seq_len);

class TaskGenerator {
 public:
  // Throws when the task is none or its settings are inconsistent (load_config has checked them).
  TaskGenerator(const train::TaskConfig& task, uint64_t seed);

  // Training samples first_sample .. first_sample + count - 1 at length seq_len.
  Batch get_batch(int64_t first_sample, int64_t count, int64_t seq_len) const;
  // Validation samples first_sample .. first_sample + count - 1 at length seq_len.
  Batch get_eval_batch(int64_t first_sample, int64_t count, int64_t seq_len) const;
  // Answers (targets >= 0) in every sample, whatever its length.
  int64_t answers_per_sample() const;
  const train::TaskConfig& config() const { return task_; }

 private:
  Batch generate(uint64_t stream, int64_t first_sample, int64_t count, int64_t seq_len) const;

  train::TaskConfig task_;
  uint64_t seed_;
};

}  // namespace seqtrain::data
