// The synthetic task generators (data/synthetic_tasks.h): each sample checked against the task's
// definition independently of how it was generated (answers where the definition puts them, labels
// at exactly those positions), samples as pure functions of (seed, global index) whatever the batch
// split, and the data.task config checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "data/synthetic_tasks.h"
#include "train/config.h"

namespace seqtrain::data {
namespace {

using train::TaskConfig;

TaskConfig task(const std::string& name, int64_t vocab) {
  TaskConfig t;
  t.name = name;
  t.vocab_size = vocab;
  return t;
}

std::vector<int32_t> row(const Tensor& t, int64_t r) {
  const int64_t cols = t.size(1);
  const int32_t* p = t.data<int32_t>() + r * cols;
  return std::vector<int32_t>(p, p + cols);
}

std::vector<int64_t> answer_positions(const std::vector<int32_t>& targets) {
  std::vector<int64_t> out;
  for (size_t t = 0; t < targets.size(); ++t)
    if (targets[t] >= 0) out.push_back(int64_t(t));
  return out;
}

// Every target is -1 or a token; the number of labels per sample is answers_per_sample.
void expect_label_count(const TaskGenerator& gen, const Batch& b) {
  for (int64_t s = 0; s < b.targets.size(0); ++s) {
    for (int32_t v : row(b.targets, s)) EXPECT_TRUE(v == -1 || (v >= 0 && v < gen.config().vocab_size)) << v;
    for (int32_t v : row(b.inputs, s)) EXPECT_TRUE(v >= 0 && v < gen.config().vocab_size) << v;
    EXPECT_EQ(int64_t(answer_positions(row(b.targets, s)).size()), gen.answers_per_sample());
  }
}

// Draws n samples of length T from global index `first`, checks their labels (expect_label_count),
// then calls check(inputs, targets) on each sample.
template <class Check>
void check_samples(const TaskGenerator& gen, int64_t first, int64_t n, int64_t T, const Check& check) {
  const Batch b = gen.get_batch(first, n, T);
  expect_label_count(gen, b);
  for (int64_t s = 0; s < n; ++s) check(row(b.inputs, s), row(b.targets, s));
}

TEST(SyntheticTasks, MqarAnswersAreTheValuesOfTheQueriedKeys) {
  for (bool random_non_queries : {false, true}) {
    TaskConfig cfg = task("mqar", 64);
    cfg.mqar.num_kv_pairs = 6;
    cfg.mqar.random_non_queries = random_non_queries;
    const TaskGenerator gen(cfg, 11);
    const int64_t T = 40, K = 6, V = 64;
    check_samples(gen, 0, 64, T, [&](const std::vector<int32_t>& in, const std::vector<int32_t>& tg) {
      std::set<int32_t> keys, values;
      for (int64_t i = 0; i < K; ++i) {
        EXPECT_GE(in[2 * i], 1);
        EXPECT_LT(in[2 * i], V / 2);
        EXPECT_GE(in[2 * i + 1], V / 2);
        keys.insert(in[2 * i]);
        values.insert(in[2 * i + 1]);
      }
      EXPECT_EQ(int64_t(keys.size()), K) << "keys repeat";
      EXPECT_EQ(int64_t(values.size()), K) << "values repeat";
      std::set<int32_t> queried;
      for (int64_t t : answer_positions(tg)) {
        EXPECT_GE(t, 2 * K);
        EXPECT_EQ((t - 2 * K) % 2, 0) << "queries sit at even offsets of the query region";
        // The token at an answer position is a context key; its target is that key's value.
        int64_t i = 0;
        while (i < K && in[2 * i] != in[t]) ++i;
        ASSERT_LT(i, K) << "query " << in[t] << " at " << t << " is not a context key";
        EXPECT_EQ(tg[t], in[2 * i + 1]);
        queried.insert(in[t]);
      }
      EXPECT_EQ(queried, keys) << "every key is queried once";
      for (int64_t t = 2 * K; t < T && !random_non_queries; ++t) {
        EXPECT_TRUE(tg[t] >= 0 || in[t] == 0) << "non-query position " << t << " holds " << in[t];
      }
    });
  }
}

TEST(SyntheticTasks, MqarGapsFollowThePowerLaw) {
  // p(g) ~ (g + 1)^(a - 1) with a = 0.01 puts most queries near the start of the query region.
  TaskConfig cfg = task("mqar", 256);
  cfg.mqar.num_kv_pairs = 2;
  const int64_t T = 260, K = 2, space = (T - 2 * K) / 2;
  const TaskGenerator gen(cfg, 5);
  const Batch b = gen.get_batch(0, 400, T);
  int64_t near = 0, far = 0;
  for (int64_t s = 0; s < 400; ++s)
    for (int64_t t : answer_positions(row(b.targets, s))) ((t - 2 * K) / 2 < space / 8 ? near : far)++;
  // Under the power law P(g < space/8) = H(space/8) / H(space) (harmonic-like sums), about 0.63.
  EXPECT_GT(near, far);
  EXPECT_GT(far, 0);
}

TEST(SyntheticTasks, SelectiveCopyRecallsTheTokensInOrderAtTheMarkers) {
  TaskConfig cfg = task("selective_copy", 16);
  cfg.selective_copy.num_tokens = 5;
  const TaskGenerator gen(cfg, 3);
  const int64_t T = 30, M = 5, V = 16;
  check_samples(gen, 7, 32, T, [&](const std::vector<int32_t>& in, const std::vector<int32_t>& tg) {
    std::vector<int32_t> data;
    for (int64_t t = 0; t < T - M; ++t) {
      EXPECT_NE(in[t], V - 1) << "marker before the marker block";
      if (in[t] != 0) data.push_back(in[t]);
    }
    ASSERT_EQ(int64_t(data.size()), M);
    for (int64_t i = 0; i < M; ++i) {
      EXPECT_EQ(in[T - M + i], V - 1);
      EXPECT_EQ(tg[T - M + i], data[size_t(i)]);
      EXPECT_GE(data[size_t(i)], 1);
      EXPECT_LE(data[size_t(i)], V - 2);
    }
    EXPECT_EQ(answer_positions(tg).front(), T - M);
  });
}

TEST(SyntheticTasks, InductionCopiesTheTokenAfterTheFirstPrefix) {
  const TaskGenerator gen(task("induction", 16), 9);
  for (int64_t T : {3, 4, 64, 257}) {
    check_samples(gen, 0, 32, T, [&](const std::vector<int32_t>& in, const std::vector<int32_t>& tg) {
      EXPECT_EQ(answer_positions(tg), std::vector<int64_t>{T - 1});
      EXPECT_EQ(in[T - 1], 15);
      std::vector<int64_t> prefixes;
      for (int64_t t = 0; t < T - 1; ++t)
        if (in[t] == 15) prefixes.push_back(t);
      ASSERT_EQ(prefixes.size(), 1u) << "one copy prefix before the last position";
      EXPECT_LE(prefixes[0], T - 3);
      EXPECT_EQ(tg[T - 1], in[prefixes[0] + 1]);
    });
  }
}

TEST(SyntheticTasks, AssocRecallAnswersTheQueriedKeysValue) {
  const int64_t V = 21, T = 40, keys = (V - 1) / 2;
  const TaskGenerator gen(task("assoc_recall", V), 4);
  check_samples(gen, 0, 32, T, [&](const std::vector<int32_t>& in, const std::vector<int32_t>& tg) {
    EXPECT_EQ(answer_positions(tg), std::vector<int64_t>{T - 1});
    EXPECT_EQ(in[T - 2], V - 1);
    int matches = 0;
    for (int64_t i = 0; 2 * i + 1 < T - 2; ++i) {
      EXPECT_LT(in[2 * i], keys);
      EXPECT_GE(in[2 * i + 1], keys);
      EXPECT_LT(in[2 * i + 1], V - 1);
      if (in[2 * i] == in[T - 1]) {
        EXPECT_EQ(in[2 * i + 1], tg[T - 1]) << "a key maps to one value within a sample";
        ++matches;
      }
    }
    EXPECT_GE(matches, 1) << "the queried key appears in the context";
  });
}

// train_labels = repeats: a training sample labels exactly the query and every value whose key
// appeared in an earlier pair (with that key's value); evaluation samples keep the query only, and
// the inputs do not change.
TEST(SyntheticTasks, AssocRecallRepeatsLabelsEveryRecalledValueInTraining) {
  const int64_t V = 21, T = 40, n = 32;
  TaskConfig cfg = task("assoc_recall", V);
  const Batch query_only = TaskGenerator(cfg, 4).get_batch(0, n, T);
  cfg.assoc_recall.train_labels = "repeats";
  const TaskGenerator gen(cfg, 4);
  const Batch b = gen.get_batch(0, n, T);
  int64_t labels = 0;
  for (int64_t s = 0; s < n; ++s) {
    const std::vector<int32_t> in = row(b.inputs, s), tg = row(b.targets, s);
    EXPECT_EQ(in, row(query_only.inputs, s));
    std::vector<int64_t> expected;
    std::set<int32_t> seen;
    for (int64_t i = 0; 2 * i + 1 < T - 2; ++i) {
      if (seen.count(in[2 * i])) {
        expected.push_back(2 * i);
        EXPECT_EQ(tg[2 * i], in[2 * i + 1]);
      }
      seen.insert(in[2 * i]);
    }
    expected.push_back(T - 1);
    EXPECT_EQ(answer_positions(tg), expected);
    EXPECT_EQ(tg[T - 1], row(query_only.targets, s)[T - 1]);
    labels += int64_t(expected.size());
  }
  EXPECT_GT(labels, 5 * n) << "19 pairs over 10 keys repeat about 9 keys per sample";
  const Batch eval = gen.get_eval_batch(0, n, T);
  for (int64_t s = 0; s < n; ++s) EXPECT_EQ(answer_positions(row(eval.targets, s)), std::vector<int64_t>{T - 1});
}

TEST(SyntheticTasks, PasskeyHidesTheNumberAtTheRequestedDepth) {
  TaskConfig cfg = task("passkey", 256);
  cfg.passkey.digits = 4;
  const int64_t T = 300;
  for (double depth : {-1.0, 0.0, 0.5, 1.0}) {
    cfg.passkey.depth = depth;
    const TaskGenerator gen(cfg, 2);
    check_samples(gen, 0, 16, T, [&](const std::vector<int32_t>& in, const std::vector<int32_t>& tg) {
      std::string text, number;
      for (int32_t c : in) text += char(c);
      EXPECT_EQ(answer_positions(tg), (std::vector<int64_t>{T - 4, T - 3, T - 2, T - 1}));
      for (int64_t t = T - 4; t < T; ++t) number += char(tg[t]);
      for (char c : number) EXPECT_TRUE(c >= '0' && c <= '9');
      // The answer's first digits are in the inputs (teacher forcing), after the question.
      EXPECT_EQ(text.substr(text.size() - 41), "What is the pass key? The pass key is " + number.substr(0, 3));
      const size_t at = text.find("The pass key is " + number + ". Remember it. " + number + " is the pass key. ");
      ASSERT_NE(at, std::string::npos) << text;
      const size_t line = 16 + 4 + 15 + 4 + 18, filler = size_t(T) + 1 - (line + 38 + 4);
      if (depth >= 0) {
        EXPECT_EQ(at, size_t(std::llround(depth * double(filler))));
      }
      EXPECT_EQ(text.substr(at == 0 ? line : 0, 20), "The grass is green. ");
    });
  }
}

TEST(SyntheticTasks, SamplesArePureFunctionsOfSeedAndGlobalIndex) {
  TaskConfig cfg = task("mqar", 128);
  cfg.mqar.num_kv_pairs = 4;
  cfg.mqar.random_non_queries = true;
  for (const char* name : {"mqar", "selective_copy", "induction", "assoc_recall"}) {
    SCOPED_TRACE(name);
    cfg.name = name;
    const TaskGenerator gen(cfg, 1234), again(cfg, 1234), other(cfg, 1235);
    const int64_t T = 48;
    // Ranks of any dp layout read slices of the global sample order: the slices equal the whole.
    const Batch whole = gen.get_batch(10, 12, T);
    for (int dp : {2, 3, 4}) {
      for (int r = 0; r < dp; ++r) {
        const int64_t per = 12 / dp;
        const Batch part = again.get_batch(10 + r * per, per, T);
        for (int64_t s = 0; s < per; ++s) {
          EXPECT_EQ(row(part.inputs, s), row(whole.inputs, r * per + s));
          EXPECT_EQ(row(part.targets, s), row(whole.targets, r * per + s));
        }
      }
    }
    EXPECT_NE(row(other.get_batch(10, 1, T).inputs, 0), row(whole.inputs, 0)) << "the seed matters";
    EXPECT_NE(row(gen.get_eval_batch(10, 1, T).inputs, 0), row(whole.inputs, 0)) << "validation is its own stream";
    EXPECT_EQ(row(gen.get_eval_batch(3, 1, T).inputs, 0), row(again.get_eval_batch(0, 4, T).inputs, 3));
    EXPECT_NE(row(gen.get_batch(10, 1, T).inputs, 0), row(gen.get_batch(11, 1, T).inputs, 0));
  }
}

TEST(SyntheticTasks, LengthAndVocabularyProblemsAreNamed) {
  TaskConfig mqar = task("mqar", 64);
  mqar.mqar.num_kv_pairs = 8;
  EXPECT_EQ(task_length_problem(mqar, 32), "");
  EXPECT_NE(task_length_problem(mqar, 31).find("T >= 4K = 32"), std::string::npos);
  mqar.vocab_size = 16;
  EXPECT_NE(task_vocab_problem(mqar).find("expected V >= 18"), std::string::npos);
  EXPECT_NE(task_length_problem(task("assoc_recall", 16), 41).find("even"), std::string::npos);
  EXPECT_NE(task_vocab_problem(task("passkey", 64)).find("ASCII"), std::string::npos);
  TaskConfig copy = task("selective_copy", 16);
  EXPECT_NE(task_length_problem(copy, 32).find("T > 2M = 32"), std::string::npos);
  EXPECT_EQ(task_length_problem(copy, 33), "");
  EXPECT_THROW(TaskGenerator(task("none", 16), 1), Error);
}

// ---- config ----

std::string task_config(const std::string& task_yaml, const std::string& extra = "") {
  return "model: {vocab_size: 64, d_model: 32, n_layers: 1, attn: {n_heads: 2, n_kv_heads: 2}}\n"
         "training: {seq_len: 32, micro_batch: 4, batch_tokens: 128, steps: 10}\n"
         "schedule: {warmup_steps: 1}\n"
         "data:\n  task: " + task_yaml + "\n" + extra;
}

void expect_config_error(const std::string& text, std::vector<std::string> parts) {
  try {
    train::parse_config(text, "task.yaml");
    ADD_FAILURE() << "no error for:\n" << text;
  } catch (const train::ConfigError& e) {
    for (const std::string& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(TaskConfig, ReadsChecksAndRoundTrips) {
  train::Config c = train::parse_config(
      task_config("{name: mqar, vocab_size: 64, eval_lengths: [64, 128], mqar: {num_kv_pairs: 4, random_non_queries: true}}"),
      "task.yaml");
  EXPECT_EQ(c.data.task.name, "mqar");
  EXPECT_EQ(c.data.task.eval_lengths, (std::vector<int64_t>{64, 128}));
  EXPECT_TRUE(c.data.task.mqar.random_non_queries);
  EXPECT_EQ(train::parse_config(train::to_yaml(c), "again.yaml"), c);

  expect_config_error(task_config("{name: mqar, vocab_size: 128}"), {"task.yaml:5", "data.task.vocab_size", "model.vocab_size = 64"});
  expect_config_error(task_config("{name: mqr, vocab_size: 64}"), {"data.task.name", "did you mean 'mqar'"});
  expect_config_error(task_config("{name: mqar, vocab_size: 64, mqar: {num_kv_pairs: 9}}"),
                      {"training.seq_len", "32: too short for mqar", "T >= 4K = 36"});
  expect_config_error(task_config("{name: induction, vocab_size: 64, eval_lengths: [64, 2]}"),
                      {"data.task.eval_lengths[1]", "2: too short for induction"});
  expect_config_error(task_config("{name: induction, vocab_size: 64, eval_lengths: [32]}"),
                      {"data.task.eval_lengths[0]", "training.seq_len"});
  expect_config_error(task_config("{name: none, eval_lengths: [64]}"), {"data.task.eval_lengths", "none"});
  expect_config_error(task_config("{name: passkey, vocab_size: 64}"), {"data.task.vocab_size", "ASCII"});
  expect_config_error(task_config("{name: passkey, vocab_size: 64, passkey: {depth: 1.5}}"), {"data.task.passkey.depth"});
  expect_config_error(task_config("{name: assoc_recall, vocab_size: 64, assoc_recall: {train_labels: all}}"),
                      {"data.task.assoc_recall.train_labels", "all", "repeats"});
  expect_config_error(task_config("{name: mqar, vocab_size: 64, mqar: {num_kv_pair: 2}}"),
                      {"data.task.mqar.num_kv_pair", "did you mean 'num_kv_pairs'"});
  expect_config_error(
      "model: {vocab_size: 64, d_model: 32, n_layers: 1, max_seq_len: 1024, attn: {n_heads: 2, n_kv_heads: 2, pos: learned}}\n"
      "training: {seq_len: 32, micro_batch: 4, batch_tokens: 128, steps: 10}\n"
      "schedule: {warmup_steps: 1}\n"
      "data: {task: {name: induction, vocab_size: 64, eval_lengths: [2048]}}\n",
      {"data.task.eval_lengths[0]", "2048 exceeds model.max_seq_len = 1024"});
}

}  // namespace
}  // namespace seqtrain::data
