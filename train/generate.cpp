#include "train/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "autograd/grad_mode.h"
#include "core/philox.h"
#include "data/byte_tokenizer.h"

namespace seqtrain::train {

namespace {
// Samples an id from logits over the real vocabulary (padding rows excluded).
int64_t sample(const std::vector<double>& logits, int64_t vocab, const SampleOptions& o, uint64_t draw) {
  std::vector<int64_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  if (o.temperature <= 0) return *std::max_element(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[size_t(a)] < logits[size_t(b)]; });
  int64_t k = o.top_k > 0 ? std::min(o.top_k, vocab) : vocab;
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int64_t a, int64_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
  const double top = logits[size_t(order[0])];
  std::vector<double> weights(static_cast<size_t>(k));
  double total = 0;
  for (int64_t i = 0; i < k; ++i) total += weights[size_t(i)] = std::exp((logits[size_t(order[size_t(i)])] - top) / o.temperature);
  double u = philox::uniform(o.seed, 0x9e3779b97f4a7c15ULL, draw, 0.0, total);
  for (int64_t i = 0; i < k; ++i) {
    u -= weights[size_t(i)];
    if (u <= 0) return order[size_t(i)];
  }
  return order[size_t(k - 1)];
}
}  // namespace

std::string generate(LanguageModel& model, DType compute, Device device, const std::string& prompt,
                     const SampleOptions& options, const std::function<void(const std::string&)>& on_token) {
  NoGradGuard no_grad;
  data::ByteTokenizer tok;
  std::vector<int32_t> ids = tok.encode(prompt.empty() ? std::string("\n") : prompt);
  const int64_t vocab = model.config().vocab_size;
  const int64_t max_len = int64_t(ids.size()) + options.tokens;
  ST_CHECK(model.config().attn.pos != "learned" || max_len <= model.config().max_seq_len, "generate: prompt + ",
           options.tokens, " tokens = ", max_len, " exceeds the model's max_seq_len ", model.config().max_seq_len);
  auto states = model.make_states(1, max_len, compute, device);
  std::vector<int64_t> prompt_ids(ids.begin(), ids.end());
  Tensor logits = model.step(states, Tensor::from_ints(prompt_ids, {1, int64_t(ids.size())}, DType::I32, device), 0, compute);
  int64_t position = int64_t(ids.size());
  std::string out;
  for (int64_t i = 0; i < options.tokens; ++i) {
    int64_t next = sample(logits.to_vector(), vocab, options, uint64_t(i));
    std::string piece = tok.decode({int32_t(next)});
    out += piece;
    if (on_token) on_token(piece);
    if (i + 1 == options.tokens) break;
    logits = model.step(states, Tensor::from_ints({next}, {1, 1}, DType::I32, device), position++, compute);
  }
  return out;
}

}  // namespace seqtrain::train
