// `seqtrain prepare-data`: a text file becomes byte-level token shards train.bin and val.bin.
#pragma once
#include <cstdint>
#include <string>

namespace seqtrain::data {

struct PrepareStats {
  int64_t train_tokens = 0;
  int64_t val_tokens = 0;
  std::string train_path;  // <out_dir>/train.bin
  std::string val_path;    // <out_dir>/val.bin
};

// Byte-tokenises `text_path` (ByteTokenizer, vocab 256, so version-1 uint16 shards). The last
// val_fraction of the bytes (rounded, at least one byte each side) become val.bin and the rest
// train.bin; a contiguous tail rather than a random subset keeps validation text unseen in training
// even at the level of neighbouring sentences. out_dir is created like `mkdir -p`.
// val_fraction must lie in (0, 1); the file must hold at least two bytes.
PrepareStats prepare_text_shards(const std::string& text_path, const std::string& out_dir, double val_fraction);

}  // namespace seqtrain::data
