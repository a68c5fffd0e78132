#include "data/token_shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "core/error.h"

namespace seqtrain::data {

// The format is little-endian on disk and is read by reinterpreting the mapped bytes.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "token shards are read on little-endian hosts only");

namespace {

// Closes a file descriptor on scope exit unless released.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

void write_all(int fd, const void* bytes, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(bytes);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    ST_CHECK(w > 0, "token shard ", path, ": write failed: ", std::strerror(errno));
    p += w;
    n -= size_t(w);
  }
}

// Makes the rename itself durable: a rename is an update of the directory's entries.
void fsync_parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  FileDescriptor fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() >= 0) ::fsync(fd.get());  // best effort: some filesystems refuse fsync on directories
}

// Writes the header and tokens of one shard to an open file.
template <typename Token>
void write_tokens(int fd, const std::string& path, const std::vector<uint32_t>& tokens) {
  constexpr size_t kChunk = size_t(1) << 16;  // tokens converted per write() call
  std::vector<Token> chunk;
  chunk.reserve(std::min(kChunk, tokens.size()));
  for (size_t begin = 0; begin < tokens.size(); begin += kChunk) {
    const size_t end = std::min(tokens.size(), begin + kChunk);
    chunk.assign(tokens.begin() + begin, tokens.begin() + end);
    write_all(fd, chunk.data(), chunk.size() * sizeof(Token), path);
  }
}

}  // namespace

void write_token_shard(const std::string& path, const std::vector<uint32_t>& tokens, int64_t vocab_size) {
  ST_CHECK(vocab_size >= 1 && vocab_size <= (int64_t(1) << 32), "token shard ", path, ": vocab_size ",
           vocab_size, " is outside [1, 2^32]");
  ST_CHECK(tokens.size() <= size_t(std::numeric_limits<int32_t>::max()), "token shard ", path, ": ",
           tokens.size(), " tokens exceed the format's int32 token count; split them into several shards");
  for (size_t i = 0; i < tokens.size(); ++i) {
    ST_CHECK(int64_t(tokens[i]) < vocab_size, "token shard ", path, ": token ", tokens[i], " at position ", i,
             " is not below vocab_size ", vocab_size);
  }
  const bool narrow = vocab_size <= 65536;
  int32_t header[kShardHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = narrow ? kShardVersionU16 : kShardVersionU32;
  header[2] = int32_t(tokens.size());

  const std::string tmp = path + ".tmp";
  FileDescriptor fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ST_CHECK(fd.get() >= 0, "token shard ", path, ": cannot create ", tmp, ": ", std::strerror(errno));
  try {
    write_all(fd.get(), header, sizeof(header), path);
    if (narrow) {
      write_tokens<uint16_t>(fd.get(), path, tokens);
    } else {
      write_tokens<uint32_t>(fd.get(), path, tokens);
    }
    ST_CHECK(::fsync(fd.get()) == 0, "token shard ", path, ": fsync of ", tmp, " failed: ", std::strerror(errno));
    ST_CHECK(::close(fd.release()) == 0, "token shard ", path, ": close of ", tmp, " failed: ", std::strerror(errno));
    ST_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "token shard ", path, ": rename from ", tmp,
             " failed: ", std::strerror(errno));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  fsync_parent_dir(path);
}

TokenShard::TokenShard(const std::string& path) : path_(path) {
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  ST_CHECK(fd.get() >= 0, "token shard ", path, ": cannot open: ", std::strerror(errno),
           " (make shards with `seqtrain prepare-data`)");
  struct stat st;
  ST_CHECK(::fstat(fd.get(), &st) == 0, "token shard ", path, ": cannot stat: ", std::strerror(errno));
  ST_CHECK(S_ISREG(st.st_mode), "token shard ", path, ": not a regular file");
  const int64_t file_bytes = int64_t(st.st_size);
  ST_CHECK(file_bytes >= kShardHeaderBytes, "token shard ", path, ": truncated: the file has ", file_bytes,
           " bytes, fewer than the ", kShardHeaderBytes, "-byte header");

  map_ = ::mmap(nullptr, size_t(file_bytes), PROT_READ, MAP_PRIVATE, fd.get(), 0);
  ST_CHECK(map_ != MAP_FAILED, "token shard ", path, ": mmap failed: ", std::strerror(errno));
  map_bytes_ = size_t(file_bytes);
  try {
    int32_t header[3];
    std::memcpy(header, map_, sizeof(header));
    const int32_t magic = header[0], version = header[1], count = header[2];
    if (magic == kShardMagic) {
      ST_CHECK(version == kShardVersionU16 || version == kShardVersionU32, "token shard ", path,
               ": unknown version ", version, " (magic ", kShardMagic, " has version ", kShardVersionU16,
               " = uint16 tokens or ", kShardVersionU32, " = uint32 tokens)");
      token_bytes_ = version == kShardVersionU16 ? 2 : 4;
    } else if (magic == kLlmcLlama3Magic) {
      ST_CHECK(version == kLlmcLlama3Version, "token shard ", path, ": unknown version ", version,
               " (magic ", kLlmcLlama3Magic, " has version ", kLlmcLlama3Version, " = uint32 tokens)");
      token_bytes_ = 4;
    } else {
      ST_THROW("token shard ", path, ": wrong magic number ", magic, " (expected ", kShardMagic,
               "; is this an llm.c-format .bin token shard?)");
    }
    ST_CHECK(count >= 0, "token shard ", path, ": corrupt header: negative token count ", count);
    const int64_t expected = kShardHeaderBytes + int64_t(count) * token_bytes_;
    ST_CHECK(file_bytes == expected, "token shard ", path, ": ", file_bytes < expected ? "truncated" : "corrupt",
             ": the file has ", file_bytes, " bytes but its header promises ", count, " tokens of ", token_bytes_,
             " bytes, i.e. ", expected, " bytes including the header");
    size_ = count;
    tokens_ = static_cast<const unsigned char*>(map_) + kShardHeaderBytes;
  } catch (...) {
    release();
    throw;
  }
}

TokenShard::~TokenShard() { release(); }

TokenShard::TokenShard(TokenShard&& other) noexcept
    : path_(std::move(other.path_)),
      map_(std::exchange(other.map_, nullptr)),
      map_bytes_(std::exchange(other.map_bytes_, 0)),
      tokens_(std::exchange(other.tokens_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      token_bytes_(other.token_bytes_) {}

TokenShard& TokenShard::operator=(TokenShard&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_bytes_ = std::exchange(other.map_bytes_, 0);
    tokens_ = std::exchange(other.tokens_, nullptr);
    size_ = std::exchange(other.size_, 0);
    token_bytes_ = other.token_bytes_;
  }
  return *this;
}

void TokenShard::release() {
  if (map_ != nullptr) ::munmap(map_, map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
  tokens_ = nullptr;
  size_ = 0;
}

uint32_t TokenShard::operator[](int64_t i) const {
  ST_CHECK(i >= 0 && i < size_, "token shard ", path_, ": index ", i, " is outside [0, ", size_, ")");
  if (token_bytes_ == 2) return reinterpret_cast<const uint16_t*>(tokens_)[i];
  return reinterpret_cast<const uint32_t*>(tokens_)[i];
}

void TokenShard::copy(int64_t start, int64_t n, int32_t* out) const {
  ST_CHECK(start >= 0 && n >= 0 && start <= size_ - n, "token shard ", path_, ": range [", start, ", ",
           start + n, ") is outside [0, ", size_, ")");
  if (token_bytes_ == 2) {
    const uint16_t* src = reinterpret_cast<const uint16_t*>(tokens_) + start;
    std::copy(src, src + n, out);
  } else {
    const uint32_t* src = reinterpret_cast<const uint32_t*>(tokens_) + start;
    for (int64_t k = 0; k < n; ++k) out[k] = int32_t(src[k]);
  }
}

int64_t TokenShard::find_token_at_least(uint64_t limit) const {
  if (token_bytes_ == 2) {
    if (limit > 0xFFFF) return -1;
    const uint16_t* t = reinterpret_cast<const uint16_t*>(tokens_);
    for (int64_t i = 0; i < size_; ++i) {
      if (t[i] >= limit) return i;
    }
  } else {
    const uint32_t* t = reinterpret_cast<const uint32_t*>(tokens_);
    for (int64_t i = 0; i < size_; ++i) {
      if (t[i] >= limit) return i;
    }
  }
  return -1;
}

}  // namespace seqtrain::data
