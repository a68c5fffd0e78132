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
  std::vector<int64_t> history(ids.begin(), ids.end());
  const int64_t context = options.context > 0 ? options.context : int64_t(history.size()) + options.tokens;
  ST_CHECK(model.config().attn.pos != "learned" || context <= model.config().max_seq_len, "generate: a context of ",
           context, " tokens exceeds the model's max_seq_len ", model.config().max_seq_len, "; pass a shorter context");
  if (int64_t(history.size()) > context) history.erase(history.begin(), history.end() - context / 2);
  std::vector<std::unique_ptr<MixerState>> states;
  int64_t position = 0;
  Tensor logits;
  // Feeds `history` into fresh states (the prompt, or the recent half after the context filled).
  auto restart = [&] {
    states = model.make_states(1, context, compute, device);
    logits = model.step(states, Tensor::from_ints(history, {1, int64_t(history.size())}, DType::I32, device), 0, compute);
    position = int64_t(history.size());
  };
  restart();
  std::string out;
  for (int64_t i = 0; i < options.tokens; ++i) {
    int64_t next = sample(logits.to_vector(), vocab, options, uint64_t(i));
    std::string piece = tok.decode({int32_t(next)});
    out += piece;
    if (on_token) on_token(piece);
    history.push_back(next);
    if (i + 1 == options.tokens) break;
    if (position == context) {
      history.erase(history.begin(), history.end() - context / 2);
      restart();
    } else {
      logits = model.step(states, Tensor::from_ints({next}, {1, 1}, DType::I32, device), position++, compute);
    }
  }
  return out;
}

}  // namespace seqtrain::train
