// Softmax / log-softmax over the last dim of contiguous [rows, n], one row per task, computed in
// double and rounded once on store. Memory bound: forward reads x twice (max, then exp-sum) and
// writes y; backward reads y and dy twice.
#include <cmath>

#include "core/backend.h"
#include "core/cpu/dtype_dispatch.h"

namespace seqtrain::cpu {

// y = exp(x - max) / sum exp(x - max), or log-softmax y = x - max - log(sum exp(x - max)).
void softmax_forward(const Tensor& x, Tensor& y, bool log) {
  const int64_t n = x.size(-1);
  const int64_t rows = n == 0 ? 0 : x.numel() / n;
  dispatch_floating(x.dtype(), "softmax_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
#pragma omp parallel for schedule(static) if (rows > 1 && rows * n >= kParallelGrain)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * n;  // (n,)
      T* yr = yp + r * n;        // (n,)
      double mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, convert<double>(xr[j]));
      double sum = 0.0;
      for (int64_t j = 0; j < n; ++j) sum += std::exp(convert<double>(xr[j]) - mx);
      if (log) {
        const double log_sum = std::log(sum);
        for (int64_t j = 0; j < n; ++j) yr[j] = convert<T>(convert<double>(xr[j]) - mx - log_sum);
      } else {
        const double inv = 1.0 / sum;
        for (int64_t j = 0; j < n; ++j)
          yr[j] = convert<T>(std::exp(convert<double>(xr[j]) - mx) * inv);
      }
    }
  });
}

// softmax:     dx = y * (dy - sum(dy * y))
// log-softmax: dx = dy - exp(y) * sum(dy)
void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log) {
  const int64_t n = y.size(-1);
  const int64_t rows = n == 0 ? 0 : y.numel() / n;
  dispatch_floating(y.dtype(), "softmax_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* yp = y.data<T>();
    const T* dyp = dy.data<T>();
    T* dxp = dx.data<T>();
#pragma omp parallel for schedule(static) if (rows > 1 && rows * n >= kParallelGrain)
    for (int64_t r = 0; r < rows; ++r) {
      const T* yr = yp + r * n;
      const T* dyr = dyp + r * n;
      T* dxr = dxp + r * n;
      double dot = 0.0;
      for (int64_t j = 0; j < n; ++j)
        dot += convert<double>(dyr[j]) * (log ? 1.0 : convert<double>(yr[j]));
      for (int64_t j = 0; j < n; ++j) {
        const double yv = convert<double>(yr[j]), g = convert<double>(dyr[j]);
        dxr[j] = convert<T>(log ? g - std::exp(yv) * dot : yv * (g - dot));
      }
    }
  });
}

}  // namespace seqtrain::cpu
