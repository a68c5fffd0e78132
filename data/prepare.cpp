#include "data/prepare.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <system_error>
#include <vector>

#include "core/error.h"
#include "data/byte_tokenizer.h"
#include "data/token_shard.h"

namespace seqtrain::data {

namespace {

std::string read_file(const std::string& path) {
  std::error_code ec;
  ST_CHECK(!std::filesystem::is_directory(path, ec), "text file ", path, ": is a directory");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  ST_CHECK(file != nullptr, "text file ", path, ": cannot open: ", std::strerror(errno));
  std::string text;
  char buffer[1 << 16];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file.get())) > 0) text.append(buffer, n);
  ST_CHECK(!std::ferror(file.get()), "text file ", path, ": read failed: ", std::strerror(errno));
  return text;
}

std::vector<uint32_t> to_tokens(const std::vector<int32_t>& ids, size_t begin, size_t end) {
  return std::vector<uint32_t>(ids.begin() + begin, ids.begin() + end);
}

}  // namespace

PrepareStats prepare_text_shards(const std::string& text_path, const std::string& out_dir, double val_fraction) {
  ST_CHECK(val_fraction > 0.0 && val_fraction < 1.0, "prepare-data: val_fraction must lie in (0, 1), got ",
           val_fraction);
  const std::string text = read_file(text_path);
  ST_CHECK(!text.empty(), "text file ", text_path, ": is empty; there is nothing to tokenise");
  ST_CHECK(text.size() >= 2, "text file ", text_path, ": holds ", text.size(),
           " byte; a train/val split needs at least 2");

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  ST_CHECK(!ec, "prepare-data: cannot create output directory ", out_dir, ": ", ec.message());

  const ByteTokenizer tokenizer;
  const std::vector<int32_t> ids = tokenizer.encode(text);
  const int64_t total = int64_t(ids.size());
  const int64_t val = std::clamp<int64_t>(std::llround(double(total) * val_fraction), 1, total - 1);
  const int64_t train = total - val;

  PrepareStats stats;
  stats.train_tokens = train;
  stats.val_tokens = val;
  stats.train_path = (std::filesystem::path(out_dir) / "train.bin").string();
  stats.val_path = (std::filesystem::path(out_dir) / "val.bin").string();
  write_token_shard(stats.train_path, to_tokens(ids, 0, size_t(train)), tokenizer.vocab_size());
  write_token_shard(stats.val_path, to_tokens(ids, size_t(train), size_t(total)), tokenizer.vocab_size());
  return stats;
}

}  // namespace seqtrain::data
