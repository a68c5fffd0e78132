// Errors: every failed check throws seqtrain::Error with what was called or expected and where.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace seqtrain {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append_all(std::ostringstream&) {}
template <typename T, typename... Rest>
void append_all(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append_all(os, rest...);
}
[[noreturn]] void throw_error(const char* file, int line, const std::string& msg);
}  // namespace detail

template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  detail::append_all(os, args...);
  return os.str();
}

}  // namespace seqtrain

// ST_CHECK(cond, parts...) throws "<parts...> (file:line)" when cond is false.
#define ST_CHECK(cond, ...)                                                                 \
  do {                                                                                      \
    if (!(cond)) ::seqtrain::detail::throw_error(__FILE__, __LINE__, ::seqtrain::str_cat(__VA_ARGS__)); \
  } while (0)

#define ST_THROW(...) ::seqtrain::detail::throw_error(__FILE__, __LINE__, ::seqtrain::str_cat(__VA_ARGS__))
