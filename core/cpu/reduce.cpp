// Reductions, accumulated in double on the host (the reference is at least as accurate as the
// GPU's f32 accumulation). Every output's sum runs in one fixed order on one thread, so results
// do not depend on the thread count. Memory bound: one read of x.
#include <cmath>

#include "core/backend.h"
#include "core/cpu/dtype_dispatch.h"

namespace seqtrain::cpu {

// x [outer, n, inner] -> out [outer, inner]. Work is split into (outer, tile of inner) tasks so a
// column sum (outer 1, large inner: a bias gradient) parallelises as well as a row sum does; a
// task walks its tile row by row (k = 0..n-1), reading x contiguously.
void reduce(ReduceOp op, const Tensor& x, Tensor& out, Tensor* argmax, int64_t outer, int64_t n,
            int64_t inner) {
  ST_CHECK(op != ReduceOp::Max || n > 0, "reduce(max): the reduced dim of ", x.desc(), " is empty");
  constexpr int64_t kTile = 256;
  const int64_t tiles = (inner + kTile - 1) / kTile;
  const int64_t ntasks = outer * tiles;
  int64_t* arg_out = (argmax != nullptr && op == ReduceOp::Max) ? argmax->data<int64_t>() : nullptr;
  dispatch_floating(x.dtype(), "reduce", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = x.data<T>();
    T* outp = out.data<T>();
#pragma omp parallel for schedule(static) if (ntasks > 1 && outer * n * inner >= kParallelGrain)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t o = task / tiles, i0 = (task % tiles) * kTile;
      const int64_t width = std::min(kTile, inner - i0);
      const T* src = xp + o * n * inner + i0;  // src[k * inner + j] = x[o, k, i0 + j]
      T* dst = outp + o * inner + i0;
      double acc[kTile];
      if (op == ReduceOp::Max) {
        // The first maximum wins (strict >); NaN beats any number and the first NaN is kept, as
        // in torch.max.
        int64_t arg[kTile];
        for (int64_t j = 0; j < width; ++j) {
          acc[j] = convert<double>(src[j]);
          arg[j] = 0;
        }
        for (int64_t k = 1; k < n; ++k) {
          const T* row = src + k * inner;
          for (int64_t j = 0; j < width; ++j) {
            const double v = convert<double>(row[j]);
            if (v > acc[j] || (std::isnan(v) && !std::isnan(acc[j]))) {
              acc[j] = v;
              arg[j] = k;
            }
          }
        }
        if (arg_out != nullptr)
          for (int64_t j = 0; j < width; ++j) arg_out[o * inner + i0 + j] = arg[j];
      } else {
        for (int64_t j = 0; j < width; ++j) acc[j] = 0.0;
        for (int64_t k = 0; k < n; ++k) {
          const T* row = src + k * inner;
          for (int64_t j = 0; j < width; ++j) acc[j] += convert<double>(row[j]);
        }
        if (op == ReduceOp::Mean)
          for (int64_t j = 0; j < width; ++j) acc[j] /= double(n);
      }
      for (int64_t j = 0; j < width; ++j) dst[j] = convert<T>(acc[j]);
    }
  });
}

// out (0-d) = sum(x) or sum(x^2). Fixed-size chunks are summed in parallel and their partial
// sums added in chunk order, so the result is the same on 1 or 64 threads.
void reduce_all(const Tensor& x, Tensor& out, bool squares) {
  constexpr int64_t kChunk = 1 << 14;
  const int64_t n = x.numel();
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(size_t(nchunks), 0.0);
  dispatch_floating(x.dtype(), "reduce_all", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = x.data<T>();
#pragma omp parallel for schedule(static) if (nchunks > 1)
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t end = std::min(n, (c + 1) * kChunk);
      double s = 0.0;
      for (int64_t i = c * kChunk; i < end; ++i) {
        const double v = convert<double>(xp[i]);
        s += squares ? v * v : v;
      }
      partial[size_t(c)] = s;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  store_doubles({total}, out);
}

}  // namespace seqtrain::cpu
