// Token shards: llm.c's `.bin` format, plus a uint32 variant for vocabularies above 65536.
//
//   header  256 x int32 (1024 bytes, little-endian)
//           [0] magic   [1] version   [2] token count   [3..255] zero
//   tokens  count x uint16 (version 1) or count x uint32 (version 2)
//
//   magic 20240520, version 1: llm.c's GPT-2 format, written for vocab_size <= 65536.
//   magic 20240520, version 2: seqtrain's own uint32 variant (same magic, 4-byte tokens), written
//                              for larger vocabularies.
//   magic 20240801, version 7: llm.c's Llama-3 uint32 format; read (not written) so that shards
//                              made by llm.c's scripts load unchanged.
//
// The token count is an int32 as in llm.c, so one shard holds at most 2^31 - 1 tokens.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace seqtrain::data {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersionU16 = 1;
constexpr int32_t kShardVersionU32 = 2;
constexpr int32_t kLlmcLlama3Magic = 20240801;
constexpr int32_t kLlmcLlama3Version = 7;
constexpr int64_t kShardHeaderInts = 256;
constexpr int64_t kShardHeaderBytes = kShardHeaderInts * 4;

// Writes `tokens` to `path` as version 1 when vocab_size <= 65536, else version 2. Every token must
// be < vocab_size. The bytes go to `path.tmp`, which is fsynced and then renamed over `path`, so a
// crash mid-write leaves either the old file or the new one, never a truncated shard.
void write_token_shard(const std::string& path, const std::vector<uint32_t>& tokens, int64_t vocab_size);

// A read-only, memory-mapped shard. The header and the file size are validated on open; the tokens
// themselves are not scanned (see find_token_at_least).
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(TokenShard&& other) noexcept;
  TokenShard& operator=(TokenShard&& other) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  int64_t size() const { return size_; }           // number of tokens
  int64_t token_bytes() const { return token_bytes_; }  // 2 or 4
  const std::string& path() const { return path_; }

  uint32_t operator[](int64_t i) const;  // bounds-checked
  // out[k] = token[start + k] for k in [0, n); [start, start + n) must lie inside the shard and the
  // tokens must fit int32 (guaranteed once a vocabulary check has passed).
  void copy(int64_t start, int64_t n, int32_t* out) const;
  // Position of the first token >= limit, or -1 if there is none. One pass over the shard.
  int64_t find_token_at_least(uint64_t limit) const;

 private:
  void release();

  std::string path_;
  void* map_ = nullptr;      // the whole file
  size_t map_bytes_ = 0;
  const unsigned char* tokens_ = nullptr;  // map_ + kShardHeaderBytes
  int64_t size_ = 0;
  int64_t token_bytes_ = 2;
};

}  // namespace seqtrain::data
