// Batches of token windows from one memory-mapped shard.
//
// A sample is a window of seq_len + 1 consecutive tokens: inputs are its first seq_len tokens and
// targets its last seq_len (the inputs shifted by one). Training sample i starts at a Philox-drawn
// integer in [0, n - seq_len - 1] that depends on (seed, i) only, so the stream of samples is the
// same whatever the batch size, the number of data-parallel ranks, or where a run was resumed. The
// training position is one global sample counter kept by the caller (and stored in checkpoints);
// the loader holds no position of its own. For example, with a global batch of B samples, rank r of
// dp ranks at step s reads get_batch(s * B + r * (B / dp), B / dp).
//
// Evaluation uses get_eval_batch: non-overlapping windows in file order, so a pass over the
// validation shard is the same every time.
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "data/token_shard.h"

namespace seqtrain::data {

struct Batch {
  Tensor inputs;   // i32 [count, seq_len], CPU
  Tensor targets;  // i32 [count, seq_len], CPU: targets[b][t] is the token after inputs[b][t]
};

class TokenLoader {
 public:
  // Opens the shard and checks that it holds at least seq_len + 1 tokens and that every token is
  // below vocab_size (one pass over the shard; the first offending position is reported).
  TokenLoader(const std::string& shard_path, int64_t seq_len, int64_t vocab_size, uint64_t seed);

  // Samples first_sample .. first_sample + count - 1 of the training stream.
  Batch get_batch(int64_t first_sample, int64_t count) const;
  // Windows first_window .. first_window + count - 1 in file order: window w starts at token
  // (w mod num_eval_windows()) * seq_len.
  Batch get_eval_batch(int64_t first_window, int64_t count) const;

  // First token of training sample `sample`: a pure function of (seed, sample).
  int64_t sample_start(int64_t sample) const;
  // Number of whole non-overlapping windows, (n - 1) / seq_len: one evaluation pass.
  int64_t num_eval_windows() const { return (shard_.size() - 1) / seq_len_; }
  int64_t num_tokens() const { return shard_.size(); }
  int64_t seq_len() const { return seq_len_; }
  uint64_t seed() const { return seed_; }
  const std::string& path() const { return shard_.path(); }

 private:
  TokenShard shard_;
  int64_t seq_len_;
  uint64_t seed_;
};

}  // namespace seqtrain::data
