#include "data/synthetic_tasks.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/philox.h"

namespace seqtrain::data {

namespace {

// Philox stream ids (8 bits: 't' and 'v') of the training and validation samples.
constexpr uint64_t kTrainStream = 0x74;
constexpr uint64_t kEvalStream = 0x76;
// Lengths fit 24 bits of the counter (see SampleRandom).
constexpr int64_t kMaxLength = int64_t(1) << 24;

const std::string kFiller = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
const std::string kQuestion = "What is the pass key? The pass key is ";

std::string passkey_line(const std::string& number) {
  return "The pass key is " + number + ". Remember it. " + number + " is the pass key. ";
}

// Tokens of a passkey sample besides the filler: the hidden line, the question and the answer.
int64_t passkey_fixed_tokens(int64_t digits) {
  return int64_t(passkey_line(std::string(size_t(digits), '0')).size() + kQuestion.size()) + digits;
}

// The random draws of one sample: Philox blocks with counter (sample, stream | length | block) and
// key seed, so every sample has its own stream of up to 2^32 blocks of four words.
class SampleRandom {
 public:
  SampleRandom(uint64_t seed, uint64_t stream, int64_t seq_len, int64_t sample)
      : seed_(seed), sample_(uint64_t(sample)), high_((stream << 56) | (uint64_t(seq_len) << 32)) {}

  uint64_t bits() {
    if (left_ == 0) {
      block_ = philox::philox4x32_10(sample_, high_ | next_block_++, seed_);
      left_ = 2;
    }
    --left_;
    return (uint64_t(block_.v[2 * left_]) << 32) | block_.v[2 * left_ + 1];
  }
  // Uniform integer in [0, n) by the multiply-high method (bias at most n / 2^64).
  int64_t below(int64_t n) { return int64_t((static_cast<unsigned __int128>(bits()) * uint64_t(n)) >> 64); }
  // Uniform in [0, 1).
  double unit() { return double(bits() >> 11) * 0x1.0p-53; }
  // `count` distinct integers of [lo, hi) in random order (a partial Fisher-Yates shuffle).
  std::vector<int32_t> distinct(int64_t lo, int64_t hi, int64_t count) {
    std::vector<int32_t> pool(static_cast<size_t>(hi - lo));
    std::iota(pool.begin(), pool.end(), int32_t(lo));
    for (int64_t i = 0; i < count; ++i) std::swap(pool[size_t(i)], pool[size_t(i + below(hi - lo - i))]);
    pool.resize(static_cast<size_t>(count));
    return pool;
  }

 private:
  uint64_t seed_, sample_, high_;
  uint64_t next_block_ = 0;
  philox::U32x4 block_{};
  int left_ = 0;
};

// One sample: inputs[t], targets[t] for t < T; targets start at -1 (no answer).
struct Sample {
  int32_t* inputs;
  int32_t* targets;
  int64_t T;
};

void mqar(const train::TaskConfig& task, SampleRandom& rng, Sample s) {
  const int64_t V = task.vocab_size, K = task.mqar.num_kv_pairs, T = s.T;
  const std::vector<int32_t> keys = rng.distinct(1, V / 2, K);
  const std::vector<int32_t> values = rng.distinct(V / 2, V, K);
  for (int64_t i = 0; i < K; ++i) {
    s.inputs[2 * i] = keys[size_t(i)];
    s.inputs[2 * i + 1] = values[size_t(i)];
  }
  // Gaps without replacement from the power law, one draw at a time over the gaps left.
  const int64_t space = (T - 2 * K) / 2;
  std::vector<double> weight(static_cast<size_t>(space));
  for (int64_t g = 0; g < space; ++g) weight[size_t(g)] = std::pow(double(g + 1), task.mqar.power_a - 1);
  std::fill(s.inputs + 2 * K, s.inputs + T, 0);
  for (int64_t i = 0; i < K; ++i) {
    double total = 0;
    for (double w : weight) total += w;
    double u = rng.unit() * total;
    int64_t gap = 0;
    while (gap < space - 1 && (weight[size_t(gap)] == 0 || u >= weight[size_t(gap)])) u -= weight[size_t(gap++)];
    while (weight[size_t(gap)] == 0) --gap;  // rounding ran past the last gap left
    weight[size_t(gap)] = 0;
    const int64_t at = 2 * K + 2 * gap;
    s.inputs[at] = keys[size_t(i)];
    s.targets[at] = values[size_t(i)];
  }
  if (task.mqar.random_non_queries)
    for (int64_t t = 2 * K; t < T; ++t)
      if (s.inputs[t] == 0) s.inputs[t] = int32_t(rng.below(V));
}

void selective_copy(const train::TaskConfig& task, SampleRandom& rng, Sample s) {
  const int64_t V = task.vocab_size, M = task.selective_copy.num_tokens, T = s.T, L = T - 2 * M;
  std::vector<int32_t> positions = rng.distinct(0, L + M, M);
  std::sort(positions.begin(), positions.end());
  std::fill(s.inputs, s.inputs + L + M, 0);
  for (int64_t i = 0; i < M; ++i) {
    const int32_t token = int32_t(1 + rng.below(V - 2));
    s.inputs[positions[size_t(i)]] = token;
    s.inputs[L + M + i] = int32_t(V - 1);
    s.targets[L + M + i] = token;
  }
}

void induction(const train::TaskConfig& task, SampleRandom& rng, Sample s) {
  const int64_t V = task.vocab_size, T = s.T;
  for (int64_t t = 0; t < T - 1; ++t) s.inputs[t] = int32_t(rng.below(V - 1));
  const int64_t trigger = rng.below(T - 2);
  s.inputs[trigger] = int32_t(V - 1);
  s.inputs[T - 1] = int32_t(V - 1);
  s.targets[T - 1] = s.inputs[trigger + 1];
}

void assoc_recall(const train::TaskConfig& task, bool label_repeats, SampleRandom& rng, Sample s) {
  const int64_t V = task.vocab_size, T = s.T, num_keys = (V - 1) / 2, pairs = (T - 2) / 2;
  std::vector<int32_t> value_of(static_cast<size_t>(num_keys), -1);  // drawn when a key first appears
  std::vector<int32_t> seen;
  for (int64_t i = 0; i < pairs; ++i) {
    const int32_t key = int32_t(rng.below(num_keys));
    int32_t& value = value_of[size_t(key)];
    if (value < 0) {
      value = int32_t(num_keys + rng.below(V - 1 - num_keys));
      seen.push_back(key);
    } else if (label_repeats) {
      s.targets[2 * i] = value;
    }
    s.inputs[2 * i] = key;
    s.inputs[2 * i + 1] = value;
  }
  const int32_t query = seen[size_t(rng.below(int64_t(seen.size())))];
  s.inputs[T - 2] = int32_t(V - 1);
  s.inputs[T - 1] = query;
  s.targets[T - 1] = value_of[size_t(query)];
}

void passkey(const train::TaskConfig& task, SampleRandom& rng, Sample s) {
  const int64_t D = task.passkey.digits, T = s.T;
  std::string number;
  for (int64_t i = 0; i < D; ++i) number += char('0' + rng.below(10));
  // The whole example is T + 1 bytes: inputs are its first T, targets its last T.
  const int64_t filler = T + 1 - passkey_fixed_tokens(D);
  const int64_t before = task.passkey.depth < 0 ? rng.below(filler + 1) : std::llround(task.passkey.depth * double(filler));
  std::string text;
  for (int64_t i = 0; i < before; ++i) text += kFiller[size_t(i) % kFiller.size()];
  text += passkey_line(number);
  for (int64_t i = before; i < filler; ++i) text += kFiller[size_t(i) % kFiller.size()];
  text += kQuestion + number;
  for (int64_t t = 0; t < T; ++t) s.inputs[t] = static_cast<unsigned char>(text[size_t(t)]);
  for (int64_t t = T - D; t < T; ++t) s.targets[t] = static_cast<unsigned char>(text[size_t(t + 1)]);
}

}  // namespace

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names = {"none", "mqar", "selective_copy", "induction", "assoc_recall", "passkey"};
  return names;
}

std::string task_vocab_problem(const train::TaskConfig& task) {
  const int64_t V = task.vocab_size;
  const std::string& n = task.name;
  if (n == "mqar" && (V / 2 - 1 < task.mqar.num_kv_pairs))
    return str_cat("mqar draws ", task.mqar.num_kv_pairs, " distinct keys from [1, V/2); expected V >= ",
                   2 * (task.mqar.num_kv_pairs + 1), " for data.task.mqar.num_kv_pairs = ", task.mqar.num_kv_pairs);
  if ((n == "selective_copy" || n == "induction" || n == "assoc_recall") && V < 3)
    return str_cat(n, " needs tokens, and a marker/copy-prefix token V - 1; expected V >= 3, got ", V);
  if (n == "passkey" && V < 128) return str_cat("passkey is ASCII text; expected V >= 128, got ", V);
  return "";
}

std::string task_length_problem(const train::TaskConfig& task, int64_t T) {
  const std::string& n = task.name;
  if (T > kMaxLength) return str_cat("longer than the ", kMaxLength, " tokens the task generator supports");
  if (n == "mqar" && T < 4 * task.mqar.num_kv_pairs)
    return str_cat("too short for mqar: 2K context tokens and K queries spaced 2 apart need T >= 4K = ",
                   4 * task.mqar.num_kv_pairs, " (data.task.mqar.num_kv_pairs = ", task.mqar.num_kv_pairs, ")");
  if (n == "selective_copy" && T < 2 * task.selective_copy.num_tokens + 1)
    return str_cat("too short for selective_copy: M tokens, M markers and some noise need T > 2M = ",
                   2 * task.selective_copy.num_tokens, " (data.task.selective_copy.num_tokens = ",
                   task.selective_copy.num_tokens, ")");
  if (n == "induction" && T < 3) return "too short for induction: expected T >= 3";
  if (n == "assoc_recall" && (T < 4 || T % 2 != 0))
    return "assoc_recall lays out key-value pairs, a copy prefix and the query; expected an even T >= 4";
  if (n == "passkey" && T + 1 < passkey_fixed_tokens(task.passkey.digits))
    return str_cat("too short for passkey: the hidden line, the question and the answer take ",
                   passkey_fixed_tokens(task.passkey.digits) - 1, " tokens; expected at least that");
  return "";
}

TaskGenerator::TaskGenerator(const train::TaskConfig& task, uint64_t seed) : task_(task), seed_(seed) {
  ST_CHECK(task.enabled() && std::count(task_names().begin(), task_names().end(), task.name) == 1,
           "task generator: unknown task '", task.name, "'");
  const std::string problem = task_vocab_problem(task);
  ST_CHECK(problem.empty(), "task generator: data.task.vocab_size: ", problem);
}

int64_t TaskGenerator::answers_per_sample() const {
  if (task_.name == "mqar") return task_.mqar.num_kv_pairs;
  if (task_.name == "selective_copy") return task_.selective_copy.num_tokens;
  if (task_.name == "passkey") return task_.passkey.digits;
  return 1;
}

Batch TaskGenerator::get_batch(int64_t first_sample, int64_t count, int64_t seq_len) const {
  return generate(kTrainStream, first_sample, count, seq_len);
}

Batch TaskGenerator::get_eval_batch(int64_t first_sample, int64_t count, int64_t seq_len) const {
  return generate(kEvalStream, first_sample, count, seq_len);
}

Batch TaskGenerator::generate(uint64_t stream, int64_t first_sample, int64_t count, int64_t seq_len) const {
  ST_CHECK(first_sample >= 0 && count >= 1, "task ", task_.name, ": batch (first_sample=", first_sample,
           ", count=", count, ") needs first_sample >= 0 and count >= 1");
  const std::string problem = task_length_problem(task_, seq_len);
  ST_CHECK(problem.empty(), "task ", task_.name, ": length ", seq_len, ": ", problem);
  Batch batch{Tensor::empty({count, seq_len}, DType::I32), Tensor::full({count, seq_len}, -1, DType::I32)};
  int32_t* inputs = batch.inputs.data<int32_t>();    // (count, T)
  int32_t* targets = batch.targets.data<int32_t>();  // (count, T)
  for (int64_t b = 0; b < count; ++b) {
    SampleRandom rng(seed_, stream, seq_len, first_sample + b);
    const Sample s{inputs + b * seq_len, targets + b * seq_len, seq_len};
    if (task_.name == "mqar") mqar(task_, rng, s);
    else if (task_.name == "selective_copy") selective_copy(task_, rng, s);
    else if (task_.name == "induction") induction(task_, rng, s);
    else if (task_.name == "assoc_recall")
      assoc_recall(task_, stream == kTrainStream && task_.assoc_recall.train_labels == "repeats", rng, s);
    else passkey(task_, rng, s);
  }
  return batch;
}

}  // namespace seqtrain::data
