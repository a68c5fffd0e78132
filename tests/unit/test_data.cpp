// The data layer: byte tokenizer, token shards (format, atomic writes, every bad-input error),
// the loader's sampling (a pure function of (seed, sample index)) and prepare_text_shards.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/byte_tokenizer.h"
#include "data/prepare.h"
#include "data/token_loader.h"
#include "data/token_shard.h"

namespace seqtrain::data {
namespace {

namespace fs = std::filesystem;

// Each test gets a fresh directory under /tmp, removed afterwards.
class DataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/seqtrain_data_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return dir_ + "/" + name; }

  std::string dir_;
};

using ByteTokenizerTest = DataTest;
using TokenShardTest = DataTest;
using TokenLoaderTest = DataTest;
using PrepareDataTest = DataTest;

// Runs fn, expects a seqtrain::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
    return;
  }
  ADD_FAILURE() << "no seqtrain::Error thrown";
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// A raw shard file with an arbitrary header and token payload, for the bad-input tests.
void write_raw_shard(const std::string& path, int32_t magic, int32_t version, int32_t count,
                     size_t payload_bytes) {
  std::vector<char> bytes(size_t(kShardHeaderBytes) + payload_bytes, 0);
  int32_t header[3] = {magic, version, count};
  std::memcpy(bytes.data(), header, sizeof(header));
  write_bytes(path, bytes);
}

std::vector<uint32_t> ramp(int64_t n, uint32_t modulus) {
  std::vector<uint32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = uint32_t((i * 7 + 3) % modulus);
  return t;
}

std::vector<int32_t> row(const Tensor& t, int64_t r) {
  const int64_t cols = t.size(1);
  const int32_t* p = t.data<int32_t>() + r * cols;
  return std::vector<int32_t>(p, p + cols);
}

// ---- tokenizer ----

TEST_F(ByteTokenizerTest, RoundTripIncludingNonAsciiBytes) {
  const ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 256);
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes.push_back(char(b));
  const std::string text = "In the beginning \xC3\xA9\xE2\x80\x94\xF0\x9F\x99\x82 " + all_bytes;
  const std::vector<int32_t> ids = tok.encode(text);
  ASSERT_EQ(ids.size(), text.size());
  for (int32_t id : ids) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 256);
  }
  EXPECT_EQ(ids[17], 0xC3);  // first byte of "é" as an unsigned byte, not a negative char
  EXPECT_EQ(tok.decode(ids), text);
}

TEST_F(ByteTokenizerTest, DecodeMapsNonByteIdsToQuestionMark) {
  const ByteTokenizer tok;
  EXPECT_EQ(tok.decode({72, 256, 105, -1, 300}), "H?i??");
}

// ---- shards ----

TEST_F(TokenShardTest, WritesAndReadsVersion1Uint16) {
  const std::string path = file("v1.bin");
  const std::vector<uint32_t> tokens = {0, 1, 255, 256, 65535, 42};
  write_token_shard(path, tokens, 65536);
  EXPECT_EQ(fs::file_size(path), uint64_t(kShardHeaderBytes) + 2 * tokens.size());
  std::ifstream in(path, std::ios::binary);
  int32_t header[3];
  in.read(reinterpret_cast<char*>(header), sizeof(header));
  EXPECT_EQ(header[0], 20240520);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], int32_t(tokens.size()));

  const TokenShard shard(path);
  EXPECT_EQ(shard.path(), path);
  EXPECT_EQ(shard.token_bytes(), 2);
  ASSERT_EQ(shard.size(), int64_t(tokens.size()));
  for (size_t i = 0; i < tokens.size(); ++i) EXPECT_EQ(shard[int64_t(i)], tokens[i]);
  std::vector<int32_t> out(3);
  shard.copy(2, 3, out.data());
  EXPECT_EQ(out, (std::vector<int32_t>{255, 256, 65535}));
  expect_error([&] { shard.copy(4, 3, out.data()); }, {path, "outside"});
  expect_error([&] { (void)shard[6]; }, {path, "outside"});
}

TEST_F(TokenShardTest, WritesAndReadsVersion2Uint32) {
  const std::string path = file("v2.bin");
  const std::vector<uint32_t> tokens = {0, 65535, 65536, 100000, 7};
  write_token_shard(path, tokens, 100001);
  EXPECT_EQ(fs::file_size(path), uint64_t(kShardHeaderBytes) + 4 * tokens.size());
  TokenShard shard(path);
  EXPECT_EQ(shard.token_bytes(), 4);
  ASSERT_EQ(shard.size(), int64_t(tokens.size()));
  for (size_t i = 0; i < tokens.size(); ++i) EXPECT_EQ(shard[int64_t(i)], tokens[i]);
  EXPECT_EQ(shard.find_token_at_least(65536), 2);
  EXPECT_EQ(shard.find_token_at_least(100001), -1);

  TokenShard moved(std::move(shard));  // movable: the mapping travels with the object
  EXPECT_EQ(moved[3], 100000u);
  EXPECT_EQ(moved.size(), 5);
}

TEST_F(TokenShardTest, ReadsLlmcLlama3Format) {
  const std::string path = file("llama3.bin");
  std::vector<char> bytes(size_t(kShardHeaderBytes) + 8, 0);
  const int32_t header[3] = {20240801, 7, 2};
  const uint32_t tokens[2] = {128000, 9906};
  std::memcpy(bytes.data(), header, sizeof(header));
  std::memcpy(bytes.data() + kShardHeaderBytes, tokens, sizeof(tokens));
  write_bytes(path, bytes);
  const TokenShard shard(path);
  EXPECT_EQ(shard.size(), 2);
  EXPECT_EQ(shard[0], 128000u);
  EXPECT_EQ(shard[1], 9906u);
}

TEST_F(TokenShardTest, EmptyShardIsValid) {
  const std::string path = file("empty.bin");
  write_token_shard(path, {}, 256);
  EXPECT_EQ(TokenShard(path).size(), 0);
}

TEST_F(TokenShardTest, MissingFileIsAnError) {
  const std::string path = file("nope.bin");
  expect_error([&] { TokenShard s(path); }, {path, "cannot open", "No such file"});
  expect_error([&] { TokenLoader l(path, 4, 256, 1); }, {path, "cannot open"});
}

TEST_F(TokenShardTest, WrongMagicIsAnError) {
  const std::string path = file("magic.bin");
  write_raw_shard(path, 12345, 1, 4, 8);
  expect_error([&] { TokenShard s(path); }, {path, "wrong magic number 12345", "20240520"});
}

TEST_F(TokenShardTest, UnknownVersionIsAnError) {
  const std::string path = file("version.bin");
  write_raw_shard(path, kShardMagic, 3, 4, 8);
  expect_error([&] { TokenShard s(path); }, {path, "unknown version 3"});
}

TEST_F(TokenShardTest, TruncatedFileIsAnError) {
  const std::string path = file("truncated.bin");
  write_raw_shard(path, kShardMagic, 1, 100, 150);  // 100 uint16 tokens need 200 bytes
  expect_error([&] { TokenShard s(path); }, {path, "truncated", "100 tokens", "1174"});

  const std::string header_only = file("short_header.bin");
  write_bytes(header_only, std::vector<char>(100, 0));
  expect_error([&] { TokenShard s(header_only); }, {header_only, "truncated", "1024-byte header"});

  const std::string too_long = file("too_long.bin");
  write_raw_shard(too_long, kShardMagic, 2, 3, 16);  // 3 uint32 tokens need 12 bytes
  expect_error([&] { TokenShard s(too_long); }, {too_long, "corrupt", "3 tokens"});
}

TEST_F(TokenShardTest, WriteRejectsTokensOutsideVocab) {
  const std::string path = file("bad_write.bin");
  expect_error([&] { write_token_shard(path, {1, 2, 300}, 256); }, {path, "token 300 at position 2"});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST_F(TokenShardTest, InterruptedWriteLeavesTheRealFileIntact) {
  const std::string path = file("atomic.bin");
  write_token_shard(path, {5, 6, 7, 8}, 256);
  // A crash during a later write leaves only a partial `.tmp` beside the real file.
  write_bytes(path + ".tmp", std::vector<char>(37, 'x'));
  {
    const TokenShard shard(path);
    ASSERT_EQ(shard.size(), 4);
    EXPECT_EQ(shard[3], 8u);
  }
  // The next write replaces the leftover and commits the new contents.
  write_token_shard(path, {9, 10}, 256);
  const TokenShard shard(path);
  ASSERT_EQ(shard.size(), 2);
  EXPECT_EQ(shard[0], 9u);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

// ---- loader ----

TEST_F(TokenLoaderTest, ShardShorterThanOneSampleIsAnError) {
  const std::string path = file("short.bin");
  write_token_shard(path, ramp(8, 256), 256);
  expect_error([&] { TokenLoader l(path, 8, 256, 1); }, {path, "too short", "8 tokens", "seq_len + 1 = 9"});
  TokenLoader ok(path, 7, 256, 1);  // exactly seq_len + 1 tokens: one possible window
  EXPECT_EQ(ok.sample_start(0), 0);
  EXPECT_EQ(ok.sample_start(12345), 0);
}

TEST_F(TokenLoaderTest, TokenOutsideVocabIsAnError) {
  const std::string path = file("vocab.bin");
  std::vector<uint32_t> tokens = ramp(100, 200);
  tokens[57] = 300;
  tokens[80] = 400;
  write_token_shard(path, tokens, 65536);
  expect_error([&] { TokenLoader l(path, 4, 256, 1); },
               {path, "token 300 at position 57", "vocab_size 256"});
  TokenLoader ok(path, 4, 401, 1);
  EXPECT_EQ(ok.num_tokens(), 100);
}

TEST_F(TokenLoaderTest, SamplesArePureFunctionsOfSeedAndIndex) {
  const std::string path = file("train.bin");
  write_token_shard(path, ramp(5000, 251), 256);
  const TokenLoader loader(path, 16, 256, 1234);
  const Batch whole = loader.get_batch(0, 8);
  const Batch first = loader.get_batch(0, 4);
  const Batch second = loader.get_batch(4, 4);
  const Batch middle = loader.get_batch(3, 2);
  ASSERT_EQ(whole.inputs.shape(), (Shape{8, 16}));
  ASSERT_EQ(whole.targets.shape(), (Shape{8, 16}));
  EXPECT_EQ(whole.inputs.dtype(), DType::I32);
  EXPECT_FALSE(whole.inputs.is_cuda());
  for (int64_t r = 0; r < 4; ++r) {
    EXPECT_EQ(row(whole.inputs, r), row(first.inputs, r));
    EXPECT_EQ(row(whole.targets, r), row(first.targets, r));
    EXPECT_EQ(row(whole.inputs, r + 4), row(second.inputs, r));
    EXPECT_EQ(row(whole.targets, r + 4), row(second.targets, r));
  }
  EXPECT_EQ(row(whole.inputs, 3), row(middle.inputs, 0));
  EXPECT_EQ(row(whole.inputs, 4), row(middle.inputs, 1));

  // A second loader over the same file and seed (another rank, or a resumed run) agrees; another
  // seed gives another order.
  const TokenLoader again(path, 16, 256, 1234);
  const TokenLoader other(path, 16, 256, 1235);
  int64_t differ = 0;
  for (int64_t i = 0; i < 64; ++i) {
    EXPECT_EQ(loader.sample_start(i), again.sample_start(i));
    differ += loader.sample_start(i) != other.sample_start(i);
  }
  EXPECT_GT(differ, 60);
}

TEST_F(TokenLoaderTest, WindowsAreInBoundsAndTargetsAreShiftedInputs) {
  const int64_t n = 300, seq_len = 32;
  const std::string path = file("train.bin");
  const std::vector<uint32_t> tokens = ramp(n, 256);
  write_token_shard(path, tokens, 256);
  const TokenLoader loader(path, seq_len, 256, 7);
  std::set<int64_t> starts;
  for (int64_t i = 0; i < 20000; ++i) {
    const int64_t s = loader.sample_start(i);
    ASSERT_GE(s, 0);
    ASSERT_LE(s, n - seq_len - 1);
    starts.insert(s);
  }
  EXPECT_EQ(int64_t(starts.size()), n - seq_len);  // every valid start is reachable, both ends included

  const Batch batch = loader.get_batch(1000, 16);
  for (int64_t b = 0; b < 16; ++b) {
    const int64_t s = loader.sample_start(1000 + b);
    const std::vector<int32_t> in = row(batch.inputs, b), tg = row(batch.targets, b);
    for (int64_t t = 0; t < seq_len; ++t) {
      EXPECT_EQ(in[size_t(t)], int32_t(tokens[size_t(s + t)]));
      EXPECT_EQ(tg[size_t(t)], int32_t(tokens[size_t(s + t + 1)]));
    }
  }
  expect_error([&] { loader.get_batch(-1, 2); }, {path, "first_sample"});
  expect_error([&] { loader.get_batch(0, 0); }, {path, "count"});
}

TEST_F(TokenLoaderTest, EvalWindowsAreConsecutiveAndWrap) {
  const int64_t n = 50, seq_len = 8;  // (50 - 1) / 8 = 6 whole windows
  const std::string path = file("val.bin");
  const std::vector<uint32_t> tokens = ramp(n, 256);
  write_token_shard(path, tokens, 256);
  const TokenLoader loader(path, seq_len, 256, 99);
  ASSERT_EQ(loader.num_eval_windows(), 6);
  const Batch batch = loader.get_eval_batch(4, 4);  // windows 4, 5, 0, 1
  const int64_t expected_start[4] = {32, 40, 0, 8};
  for (int64_t b = 0; b < 4; ++b) {
    const std::vector<int32_t> in = row(batch.inputs, b), tg = row(batch.targets, b);
    for (int64_t t = 0; t < seq_len; ++t) {
      EXPECT_EQ(in[size_t(t)], int32_t(tokens[size_t(expected_start[b] + t)]));
      EXPECT_EQ(tg[size_t(t)], int32_t(tokens[size_t(expected_start[b] + t + 1)]));
    }
  }
  // Independent of the seed and of grouping.
  const TokenLoader other_seed(path, seq_len, 256, 1);
  const Batch a = other_seed.get_eval_batch(0, 6), b = loader.get_eval_batch(3, 3);
  for (int64_t r = 0; r < 3; ++r) EXPECT_EQ(row(a.inputs, r + 3), row(b.inputs, r));
}

// ---- prepare-data ----

TEST_F(PrepareDataTest, SplitsTheLastFractionIntoVal) {
  std::string text;
  for (int i = 0; i < 100; ++i) text += "Line " + std::to_string(i) + ": caf\xC3\xA9\n";
  const std::string text_path = file("corpus.txt");
  write_bytes(text_path, std::vector<char>(text.begin(), text.end()));
  const std::string out = file("out/nested/kjv");  // created like mkdir -p
  const PrepareStats stats = prepare_text_shards(text_path, out, 0.1);
  const int64_t total = int64_t(text.size());
  const int64_t val = int64_t(std::llround(double(total) * 0.1));
  EXPECT_EQ(stats.val_tokens, val);
  EXPECT_EQ(stats.train_tokens, total - val);
  EXPECT_EQ(stats.train_path, out + "/train.bin");
  EXPECT_EQ(stats.val_path, out + "/val.bin");

  const TokenShard train(stats.train_path), held_out(stats.val_path);
  EXPECT_EQ(train.token_bytes(), 2);
  ASSERT_EQ(train.size(), total - val);
  ASSERT_EQ(held_out.size(), val);
  std::vector<int32_t> all(static_cast<size_t>(total));
  train.copy(0, train.size(), all.data());
  held_out.copy(0, held_out.size(), all.data() + train.size());
  EXPECT_EQ(ByteTokenizer().decode(all), text);
}

TEST_F(PrepareDataTest, BadInputsAreErrors) {
  const std::string missing = file("missing.txt");
  expect_error([&] { prepare_text_shards(missing, file("out"), 0.1); }, {missing, "cannot open"});
  const std::string empty = file("empty.txt");
  write_bytes(empty, {});
  expect_error([&] { prepare_text_shards(empty, file("out"), 0.1); }, {empty, "empty"});
  const std::string text = file("text.txt");
  write_bytes(text, {'a', 'b', 'c'});
  expect_error([&] { prepare_text_shards(text, file("out"), 0.0); }, {"val_fraction", "(0, 1)"});
  expect_error([&] { prepare_text_shards(text, file("out"), 1.0); }, {"val_fraction", "(0, 1)"});
  const PrepareStats tiny = prepare_text_shards(text, file("out"), 0.01);  // rounds to 0: kept at 1
  EXPECT_EQ(tiny.val_tokens, 1);
  EXPECT_EQ(tiny.train_tokens, 2);
}

}  // namespace
}  // namespace seqtrain::data
