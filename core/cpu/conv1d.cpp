// Depthwise causal conv1d over time, x [B, T, C], w [C, K], bias [C]:
//   y[b, t, c] = bias[c] + sum_k w[c, k] * x[b, t - K + 1 + k, c]   (x[b, s < 0, c] = 0)
// In double, rounded once on store. FLOPs 2 * B * T * C * K against B * T * C elements in and
// out: memory bound for the small K (~4) it is used with.
#include "core/backend.h"
#include "core/cpu/dtype_dispatch.h"

namespace seqtrain::cpu {

void causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y) {
  const int64_t batch = x.size(0), steps = x.size(1), ch = x.size(2), taps = w.size(1);
  const std::vector<double> wv = to_doubles(w);  // (C, K)
  const std::vector<double> bv =
      bias.defined() ? to_doubles(bias) : std::vector<double>(size_t(ch), 0.0);
  dispatch_floating(x.dtype(), "causal_conv1d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
#pragma omp parallel if (batch * steps * ch * taps >= kParallelGrain)
    {
      std::vector<double> acc(static_cast<size_t>(ch));
#pragma omp for schedule(static)
      for (int64_t bt = 0; bt < batch * steps; ++bt) {  // one output row y[b, t, :]
        const int64_t b = bt / steps, t = bt % steps;
        for (int64_t c = 0; c < ch; ++c) acc[size_t(c)] = bv[size_t(c)];
        for (int64_t k = 0; k < taps; ++k) {
          const int64_t s = t - taps + 1 + k;
          if (s < 0) continue;
          const T* xr = xp + (b * steps + s) * ch;  // x[b, s, :]
          for (int64_t c = 0; c < ch; ++c)
            acc[size_t(c)] += wv[size_t(c * taps + k)] * convert<double>(xr[c]);
        }
        T* yr = yp + bt * ch;
        for (int64_t c = 0; c < ch; ++c) yr[c] = convert<T>(acc[size_t(c)]);
      }
    }
  });
}

// dx[b, s, c] = sum_k w[c, k] * dy[b, s + K - 1 - k, c]   (terms with s + K - 1 - k >= T vanish)
// dw[c, k]    = sum_{b, t} dy[b, t, c] * x[b, t - K + 1 + k, c]
// dbias[c]    = sum_{b, t} dy[b, t, c]
// dx is parallel over rows; dw and dbias over blocks of channels, each summing (b, t) in order,
// so they do not depend on the thread count.
void causal_conv1d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor& dx,
                            Tensor& dw, Tensor& dbias) {
  const int64_t batch = x.size(0), steps = x.size(1), ch = x.size(2), taps = w.size(1);
  const std::vector<double> wv = to_doubles(w);
  std::vector<double> dw_v(size_t(ch * taps), 0.0), db_v(size_t(ch), 0.0);
  const bool parallel = batch * steps * ch * taps >= kParallelGrain;
  dispatch_floating(x.dtype(), "causal_conv1d_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = x.data<T>();
    const T* gp = dy.data<T>();
    T* dxp = dx.data<T>();
#pragma omp parallel if (parallel)
    {
      std::vector<double> acc(static_cast<size_t>(ch));
#pragma omp for schedule(static)
      for (int64_t bs = 0; bs < batch * steps; ++bs) {  // one input row dx[b, s, :]
        const int64_t b = bs / steps, s = bs % steps;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t k = 0; k < taps; ++k) {
          const int64_t t = s + taps - 1 - k;
          if (t >= steps) continue;
          const T* gr = gp + (b * steps + t) * ch;  // dy[b, t, :]
          for (int64_t c = 0; c < ch; ++c)
            acc[size_t(c)] += wv[size_t(c * taps + k)] * convert<double>(gr[c]);
        }
        T* dxr = dxp + bs * ch;
        for (int64_t c = 0; c < ch; ++c) dxr[c] = convert<T>(acc[size_t(c)]);
      }
    }

    constexpr int64_t kBlock = 64;
    const int64_t blocks = (ch + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (parallel && blocks > 1)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t c0 = blk * kBlock, c1 = std::min(ch, c0 + kBlock);
      for (int64_t bt = 0; bt < batch * steps; ++bt) {
        const int64_t t = bt % steps;
        const T* gr = gp + bt * ch;  // dy[b, t, :]
        for (int64_t c = c0; c < c1; ++c) db_v[size_t(c)] += convert<double>(gr[c]);
        for (int64_t k = 0; k < taps; ++k) {
          const int64_t s = t - taps + 1 + k;
          if (s < 0) continue;
          const T* xr = xp + (bt - t + s) * ch;  // x[b, s, :]
          for (int64_t c = c0; c < c1; ++c)
            dw_v[size_t(c * taps + k)] += convert<double>(gr[c]) * convert<double>(xr[c]);
        }
      }
    }
  });
  store_doubles(dw_v, dw);
  if (dbias.defined()) store_doubles(db_v, dbias);
}

}  // namespace seqtrain::cpu
