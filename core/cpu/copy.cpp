// Data movement on the host: fill, strided copy with dtype conversion, and Philox random fills.
// All three are bound by memory bandwidth (random by the 10-round Philox block per element).
#include <cstring>

#include "core/backend.h"
#include "core/cpu/dtype_dispatch.h"
#include "core/philox.h"

namespace seqtrain::cpu {

// out (contiguous) = value converted to out's dtype. Bytes: numel * elsize written.
void fill(Tensor& out, double value) {
  const int64_t n = out.numel();
  dispatch_any(out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T v = convert<T>(value);
    T* p = out.data<T>();
#pragma omp parallel for schedule(static) if (n >= kParallelGrain)
    for (int64_t i = 0; i < n; ++i) p[i] = v;
  });
}

// dst = src with any strides on either side; bytes: numel * (src + dst element sizes).
void copy(const Tensor& src, Tensor& dst) {
  ST_CHECK(src.shape() == dst.shape(), "copy: shapes differ, src ", src.desc(), " dst ",
           dst.desc());
  if (dst.numel() == 0) return;
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    std::memcpy(dst.data_ptr(), src.data_ptr(), dst.nbytes());
    return;
  }
  const StridedWalk<2> walk(dst.shape(), {&dst, &src});
  dispatch_any(src.dtype(), [&](auto src_tag) {
    using S = typename decltype(src_tag)::type;
    dispatch_any(dst.dtype(), [&](auto dst_tag) {
      using D = typename decltype(dst_tag)::type;
      D* out = dst.data<D>();
      const S* in = src.data<S>();
      walk.for_each_row(
          [&](const std::array<int64_t, 2>& base, int64_t len, const std::array<int64_t, 2>& step) {
            D* o = out + base[0];
            const S* s = in + base[1];
            if (step[0] == 1 && step[1] == 1) {
              for (int64_t j = 0; j < len; ++j) o[j] = convert<D>(s[j]);
            } else {
              for (int64_t j = 0; j < len; ++j) o[j * step[0]] = convert<D>(s[j * step[1]]);
            }
          });
    });
  });
}

// out[i] = uniform(seed, offset, i, a, b) or normal(seed, offset, i, mean a, std b), drawn in
// double and rounded to out's dtype, so CPU and GPU agree bit for bit.
void random(Tensor& out, bool normal, double a, double b, uint64_t seed, uint64_t offset) {
  const int64_t n = out.numel();
  dispatch_floating(out.dtype(), "random", [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = out.data<T>();
    // A Philox block is ~100 integer ops per element, so a smaller grain than copies pays.
#pragma omp parallel for schedule(static) if (n >= 4096)
    for (int64_t i = 0; i < n; ++i) {
      const double v = normal ? philox::normal(seed, offset, uint64_t(i), a, b)
                              : philox::uniform(seed, offset, uint64_t(i), a, b);
      p[i] = convert<T>(v);
    }
  });
}

}  // namespace seqtrain::cpu
