#include "data/token_loader.h"

#include <limits>

#include "core/error.h"
#include "core/philox.h"

namespace seqtrain::data {

namespace {

// Philox stream id of the sampler ("data" in ASCII), so that a seed shared with parameter init or
// dropout does not give correlated draws: counter = (sample index, this id), key = seed.
constexpr uint64_t kSamplerStream = 0x64617461;

// inputs[b] = tokens [s, s + T), targets[b] = tokens [s + 1, s + T + 1) with s = start_of(b).
template <typename StartOf>
Batch gather(const TokenShard& shard, int64_t seq_len, int64_t count, StartOf start_of) {
  Batch batch{Tensor::empty({count, seq_len}, DType::I32), Tensor::empty({count, seq_len}, DType::I32)};
  int32_t* inputs = batch.inputs.data<int32_t>();    // (count, T)
  int32_t* targets = batch.targets.data<int32_t>();  // (count, T)
  for (int64_t b = 0; b < count; ++b) {
    const int64_t start = start_of(b);
    shard.copy(start, seq_len, inputs + b * seq_len);
    shard.copy(start + 1, seq_len, targets + b * seq_len);
  }
  return batch;
}

}  // namespace

TokenLoader::TokenLoader(const std::string& shard_path, int64_t seq_len, int64_t vocab_size, uint64_t seed)
    : shard_(shard_path), seq_len_(seq_len), seed_(seed) {
  ST_CHECK(seq_len >= 1, "token loader for ", shard_path, ": seq_len must be >= 1, got ", seq_len);
  // Batches hold int32 ids, so the largest id must fit int32.
  ST_CHECK(vocab_size >= 1 && vocab_size <= int64_t(std::numeric_limits<int32_t>::max()) + 1,
           "token loader for ", shard_path, ": vocab_size ", vocab_size, " is outside [1, 2^31]");
  ST_CHECK(shard_.size() >= seq_len + 1, "token shard ", shard_path, ": too short: it has ", shard_.size(),
           " tokens but one sample needs seq_len + 1 = ", seq_len + 1,
           " (use a shorter seq_len or more text; for val.bin, a larger --val-fraction)");
  const int64_t bad = shard_.find_token_at_least(uint64_t(vocab_size));
  ST_CHECK(bad < 0, "token shard ", shard_path, ": token ", bad < 0 ? 0 : shard_[bad], " at position ", bad,
           " is not below vocab_size ", vocab_size, " (was the shard made for another tokenizer?)");
}

int64_t TokenLoader::sample_start(int64_t sample) const {
  ST_CHECK(sample >= 0, "token loader for ", path(), ": sample index ", sample, " is negative");
  const philox::U32x4 r = philox::philox4x32_10(uint64_t(sample), kSamplerStream, seed_);
  const uint64_t bits = (uint64_t(r.v[0]) << 32) | r.v[1];
  // Uniform integer in [0, starts) by the multiply-high method (Lemire); its bias, at most
  // starts / 2^64, is far below anything a training run could detect.
  const uint64_t starts = uint64_t(shard_.size() - seq_len_);
  return int64_t((static_cast<unsigned __int128>(bits) * starts) >> 64);
}

Batch TokenLoader::get_batch(int64_t first_sample, int64_t count) const {
  ST_CHECK(first_sample >= 0 && count >= 1, "token loader for ", path(), ": get_batch(first_sample=",
           first_sample, ", count=", count, ") needs first_sample >= 0 and count >= 1");
  return gather(shard_, seq_len_, count, [&](int64_t b) { return sample_start(first_sample + b); });
}

Batch TokenLoader::get_eval_batch(int64_t first_window, int64_t count) const {
  ST_CHECK(first_window >= 0 && count >= 1, "token loader for ", path(), ": get_eval_batch(first_window=",
           first_window, ", count=", count, ") needs first_window >= 0 and count >= 1");
  const int64_t windows = num_eval_windows();
  return gather(shard_, seq_len_, count, [&](int64_t b) { return ((first_window + b) % windows) * seq_len_; });
}

}  // namespace seqtrain::data
