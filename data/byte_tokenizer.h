// Byte-level tokenizer: token id = byte value, vocabulary 256. Text is stored as UTF-8, so a token
// is exactly one byte of UTF-8 and the cross-entropy per token in nats divided by ln 2 is bits per
// byte, comparable across tokenizers and against the unigram byte entropy of the corpus.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace seqtrain::data {

class ByteTokenizer {
 public:
  static constexpr int64_t kVocabSize = 256;
  int64_t vocab_size() const { return kVocabSize; }

  std::vector<int32_t> encode(std::string_view text) const {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = int32_t(static_cast<unsigned char>(text[i]));
    return ids;
  }

  // Ids outside [0, 255] become '?' rather than an error: a model whose embedding table is padded
  // past 256 rows (for GEMM-friendly shapes) can sample such ids, and decoding generated text must
  // not fail halfway. The result may also be invalid UTF-8 where the model emits a partial
  // multi-byte sequence; it is returned as raw bytes.
  std::string decode(const std::vector<int32_t>& ids) const {
    std::string text(ids.size(), '?');
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] >= 0 && ids[i] < kVocabSize) text[i] = char(static_cast<unsigned char>(ids[i]));
    }
    return text;
  }
};

}  // namespace seqtrain::data
