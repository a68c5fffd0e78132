// Depthwise causal conv1d over time, channel-last: x [B, T, C], w [C, K], bias [C].
//   y[b,t,c]  = bias[c] + sum_k w[c,k] * x[b, t-K+1+k, c]          (x before t = 0 is zero)
//   dx[b,t,c] = sum_k w[c,k] * dy[b, t+K-1-k, c]                    (dy past t = T-1 is zero)
//   dw[c,k]   = sum_{b,t} dy[b,t,c] * x[b, t-K+1+k, c],  dbias[c] = sum_{b,t} dy[b,t,c]
// Threads run over channels (consecutive threads touch consecutive addresses) and each walks a
// strip of time steps, keeping the last K inputs in registers so every x / dy element is loaded
// once per strip (plus K-1 halo steps). K up to 8 is a template parameter (register windows);
// larger K takes a generic path that re-reads the taps through L1. dw / dbias are reduced without
// atomics: one partial row per (batch, strip), summed in a fixed order by sum_partials.
#include <utility>

#include "core/backend.h"
#include "core/cuda/rowwise.cuh"
#include "core/cuda/runtime.h"

namespace seqtrain::cuda {
namespace {

constexpr int kBlock = 128;     // channels per block
constexpr int kMaxWindow = 8;   // largest K with register windows
constexpr int64_t kMinStrip = 64;  // time steps per thread at least: amortises the K-1 halo

struct StripPlan {
  int64_t strip, nstrips;  // time steps per strip, strips per sequence
  int block;
  dim3 grid;               // (B * nstrips, channel blocks)
};

// Enough (batch, strip) x channel threads to fill every SM once at full occupancy, with strips no
// shorter than kMinStrip; more strips would only add halo reads and dw partials.
StripPlan plan_strips(int64_t B, int64_t T, int64_t C, int device) {
  StripPlan p;
  p.block = int(C >= kBlock ? kBlock : (C + kWarpSize - 1) / kWarpSize * kWarpSize);
  const int64_t channel_blocks = (C + p.block - 1) / p.block;
  const int64_t target_threads = int64_t(sm_count(device)) * 2048;
  const int64_t want = (target_threads + channel_blocks * p.block * B - 1) / (channel_blocks * p.block * B);
  int64_t strip = (T + want - 1) / want;
  if (strip < kMinStrip) strip = kMinStrip;
  p.strip = strip;
  p.nstrips = (T + strip - 1) / strip;
  p.grid = dim3(unsigned(B * p.nstrips), unsigned(channel_blocks));
  return p;
}

// Forward: y [B, T, C]. Reads x once (+ (K-1)/strip halo) and writes y once:
// 2 * B * T * C * sizeof(T) bytes; 2K FLOPs per element (K <= 8): memory bound.
template <class T, class W, int K>
__global__ void __launch_bounds__(kBlock)
    causal_conv1d_forward_kernel(const T* __restrict__ x, const W* __restrict__ w,
                                 const W* __restrict__ bias, T* __restrict__ y, int64_t Tlen, int64_t C,
                                 int k_runtime, int64_t strip, int64_t nstrips) {
  using A = acc_t<T>;
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t b = blockIdx.x / nstrips, t0 = (blockIdx.x % nstrips) * strip;
  const int64_t t1 = t0 + strip < Tlen ? t0 + strip : Tlen;
  const size_t base = size_t(b) * size_t(Tlen) * size_t(C) + size_t(c);
  const T* xc = x + base;  // x[b, t, c] = xc[t * C]
  T* yc = y + base;
  const A b0 = bias != nullptr ? to_acc(bias[c]) : A(0);

  if constexpr (K > 0) {
    A wk[K], win[K];  // win[k] = x[t - K + 1 + k]
#pragma unroll
    for (int k = 0; k < K; ++k) wk[k] = to_acc(w[c * K + k]);
#pragma unroll
    for (int k = 0; k < K - 1; ++k) {
      const int64_t tt = t0 - K + 1 + k;
      win[k] = tt >= 0 ? to_acc(xc[tt * C]) : A(0);
    }
#pragma unroll 4
    for (int64_t t = t0; t < t1; ++t) {
      win[K - 1] = to_acc(xc[t * C]);
      A acc = b0;
#pragma unroll
      for (int k = 0; k < K; ++k) acc += wk[k] * win[k];
      yc[t * C] = to_storage<T>(acc);
#pragma unroll
      for (int k = 0; k < K - 1; ++k) win[k] = win[k + 1];
    }
  } else {
    const int K_ = k_runtime;
    for (int64_t t = t0; t < t1; ++t) {
      A acc = b0;
      for (int k = 0; k < K_; ++k) {
        const int64_t tt = t - K_ + 1 + k;
        if (tt >= 0) acc += to_acc(w[c * K_ + k]) * to_acc(xc[tt * C]);
      }
      yc[t * C] = to_storage<T>(acc);
    }
  }
}

// Backward: dx [B, T, C] and one (C*K + C) partial row of dw / dbias per (batch, strip).
// Reads x and dy once (+ halos) and writes dx once: 3 * B * T * C * sizeof(T) bytes, plus
// B * nstrips * C * (K+1) partials; 4K FLOPs per element (K <= 8): memory bound.
template <class T, class W, int K>
__global__ void __launch_bounds__(kBlock)
    causal_conv1d_backward_kernel(const T* __restrict__ x, const W* __restrict__ w,
                                  const T* __restrict__ dy, T* __restrict__ dx,
                                  acc_t<T>* __restrict__ partials, int64_t Tlen, int64_t C, int k_runtime,
                                  int64_t strip, int64_t nstrips) {
  using A = acc_t<T>;
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t b = blockIdx.x / nstrips, t0 = (blockIdx.x % nstrips) * strip;
  const int64_t t1 = t0 + strip < Tlen ? t0 + strip : Tlen;
  const size_t base = size_t(b) * size_t(Tlen) * size_t(C) + size_t(c);
  const T* xc = x + base;  // x[b, t, c] = xc[t * C]
  const T* dyc = dy + base;
  T* dxc = dx + base;
  const int K_ = K > 0 ? K : k_runtime;
  A* part = partials + size_t(blockIdx.x) * size_t(C * K_ + C);  // (C*K dw, C dbias)
  A db = 0;

  if constexpr (K > 0) {
    A wk[K], xw[K], dyw[K], dw[K];  // xw[k] = x[t-K+1+k], dyw[j] = dy[t+j]
#pragma unroll
    for (int k = 0; k < K; ++k) {
      wk[k] = to_acc(w[c * K + k]);
      dw[k] = 0;
    }
#pragma unroll
    for (int k = 0; k < K - 1; ++k) {
      const int64_t tx = t0 - K + 1 + k, ty = t0 + k;
      xw[k] = tx >= 0 ? to_acc(xc[tx * C]) : A(0);
      dyw[k] = ty < Tlen ? to_acc(dyc[ty * C]) : A(0);
    }
#pragma unroll 4
    for (int64_t t = t0; t < t1; ++t) {
      xw[K - 1] = to_acc(xc[t * C]);
      dyw[K - 1] = t + K - 1 < Tlen ? to_acc(dyc[(t + K - 1) * C]) : A(0);
      A acc = 0;
#pragma unroll
      for (int j = 0; j < K; ++j) acc += wk[K - 1 - j] * dyw[j];
      dxc[t * C] = to_storage<T>(acc);
#pragma unroll
      for (int k = 0; k < K; ++k) dw[k] += dyw[0] * xw[k];
      db += dyw[0];
#pragma unroll
      for (int k = 0; k < K - 1; ++k) {
        xw[k] = xw[k + 1];
        dyw[k] = dyw[k + 1];
      }
    }
#pragma unroll
    for (int k = 0; k < K; ++k) part[c * K + k] = dw[k];
  } else {
    for (int64_t t = t0; t < t1; ++t) {
      A acc = 0;
      for (int k = 0; k < K_; ++k) {
        const int64_t tt = t + K_ - 1 - k;
        if (tt < Tlen) acc += to_acc(w[c * K_ + k]) * to_acc(dyc[tt * C]);
      }
      dxc[t * C] = to_storage<T>(acc);
      db += to_acc(dyc[t * C]);
    }
    for (int k = 0; k < K_; ++k) {
      A dwk = 0;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t tt = t - K_ + 1 + k;
        if (tt >= 0) dwk += to_acc(dyc[t * C]) * to_acc(xc[tt * C]);
      }
      part[c * K_ + k] = dwk;
    }
  }
  part[C * K_ + c] = db;
}

// Calls f(std::integral_constant<int, K>) for K <= kMaxWindow, else with 0 (generic path).
template <class F>
void dispatch_window(int64_t K, F&& f) {
  switch (K) {
    case 1: f(std::integral_constant<int, 1>{}); return;
    case 2: f(std::integral_constant<int, 2>{}); return;
    case 3: f(std::integral_constant<int, 3>{}); return;
    case 4: f(std::integral_constant<int, 4>{}); return;
    case 5: f(std::integral_constant<int, 5>{}); return;
    case 6: f(std::integral_constant<int, 6>{}); return;
    case 7: f(std::integral_constant<int, 7>{}); return;
    case 8: f(std::integral_constant<int, 8>{}); return;
    default: f(std::integral_constant<int, 0>{}); return;
  }
}
static_assert(kMaxWindow == 8, "dispatch_window lists K = 1..kMaxWindow");

}  // namespace

void causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = w.size(1);
  if (B == 0 || T == 0 || C == 0) return;
  ST_CHECK(K >= 1, "causal_conv1d: weight ", w.desc(), " has no taps");
  const int device = x.device().index;
  cudaStream_t stream = stream_for(device);
  const StripPlan p = plan_strips(B, T, C, device);
  dispatch_floating(x.dtype(), "causal_conv1d input", [&](auto xtag) {
    using X = decltype(xtag);
    dispatch_param<X>(w.dtype(), "causal_conv1d weight", [&](auto wtag) {
      using W = decltype(wtag);
      ST_CHECK(!bias.defined() || bias.dtype() == w.dtype(), "causal_conv1d bias must match the weight dtype, got ",
               bias.desc(), " and ", w.desc());
      dispatch_window(K, [&](auto k) {
        causal_conv1d_forward_kernel<X, W, decltype(k)::value><<<p.grid, p.block, 0, stream>>>(
            x.data<X>(), w.data<W>(), bias.defined() ? bias.data<W>() : nullptr, y.data<X>(), T, C, int(K),
            p.strip, p.nstrips);
        CUDA_CHECK_LAUNCH(causal_conv1d_forward_kernel);
      });
    });
  });
}

void causal_conv1d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor& dx,
                            Tensor& dw, Tensor& dbias) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = w.size(1);
  if (C == 0) return;
  const int device = x.device().index;
  cudaStream_t stream = stream_for(device);
  dispatch_floating(x.dtype(), "causal_conv1d input", [&](auto xtag) {
    using X = decltype(xtag);
    using A = acc_t<X>;
    dispatch_param<X>(w.dtype(), "causal_conv1d weight", [&](auto wtag) {
      using W = decltype(wtag);
      ST_CHECK(dw.dtype() == w.dtype(), "causal_conv1d dw must match the weight dtype, got ", dw.desc());
      ST_CHECK(!dbias.defined() || dbias.dtype() == w.dtype(),
               "causal_conv1d dbias must match the weight dtype, got ", dbias.desc());
      if (B == 0 || T == 0) {
        CUDA_CHECK(cudaMemsetAsync(dw.data_ptr(), 0, dw.nbytes(), stream));
        if (dbias.defined()) CUDA_CHECK(cudaMemsetAsync(dbias.data_ptr(), 0, dbias.nbytes(), stream));
        return;
      }
      const StripPlan p = plan_strips(B, T, C, device);
      const int64_t nparts = B * p.nstrips, width = C * K + C;
      Tensor partials = Tensor::empty({nparts, width}, stats_dtype<X>(), x.device());  // (P, C*K + C)
      dispatch_window(K, [&](auto k) {
        causal_conv1d_backward_kernel<X, W, decltype(k)::value><<<p.grid, p.block, 0, stream>>>(
            x.data<X>(), w.data<W>(), dy.data<X>(), dx.data<X>(), partials.data<A>(), T, C, int(K), p.strip,
            p.nstrips);
        CUDA_CHECK_LAUNCH(causal_conv1d_backward_kernel);
      });
      sum_partials(partials.data<A>(), nparts, width, C * K, dw.data<W>(), stream);
      if (dbias.defined()) sum_partials(partials.data<A>() + C * K, nparts, width, C, dbias.data<W>(), stream);
    });
  });
}

}  // namespace seqtrain::cuda
