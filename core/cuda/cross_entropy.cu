// Cross-entropy over logits [N, V] with integer targets [N] (negative = ignored):
//   lse[n]     = log(sum_v exp(logits[n, v]))
//   losses[n]  = lse[n] - logits[n, target[n]]            (0 when ignored)
//   dlogits[n] = dlosses[n] * (exp(logits[n] - lse[n]) - onehot(target[n]))   (0 when ignored)
// One block per row. The forward keeps an online (max, sum-exp) pair per thread, so it reads the
// logits once; the backward recomputes the softmax from the saved lse, so it reads the logits once
// and writes dlogits once. A row is walked as an unaligned head, a body of 16-byte vectors and a
// tail, so vocabularies of any size (e.g. 50257) get vector loads.
#include "core/backend.h"
#include "core/cuda/rowwise.cuh"
#include "core/cuda/runtime.h"

namespace seqtrain::cuda {
namespace {

constexpr int kMaxBlock = 256;
// Vectors each thread loads before using any: 4 x 16 bytes in flight per thread.
constexpr int kUnroll = 4;

// Threads per row: enough for kUnroll vectors each over the row, 32 to kMaxBlock.
int block_for(int64_t V, int vec) {
  int block = kWarpSize;
  while (block < kMaxBlock && int64_t(block) * kUnroll * vec < V) block *= 2;
  return block;
}

// Split of a row starting at `p` into [0, head) scalars, nvec 16-byte vectors, then scalars.
template <class T>
__device__ __forceinline__ void split_row(const T* p, int64_t V, bool vec, int64_t& head, int64_t& nvec) {
  head = V;
  nvec = 0;
  if (!vec) return;
  const int64_t misaligned = int64_t((16 - (reinterpret_cast<uintptr_t>(p) & 15u)) & 15u) / int64_t(sizeof(T));
  head = misaligned < V ? misaligned : V;
  nvec = (V - head) / kVec<T>;
}

// Online log-sum-exp state: the running max m (and m * log2(e)) and the sum of exp(x - m).
template <class A>
struct OnlineLse {
  A m = -INFINITY, m_log2e = -INFINITY, s = 0;

  // Adds n values whose max is `chunk_max`: the sum is rescaled only when the max grows.
  template <class F>
  __device__ __forceinline__ void add(A chunk_max, int n, F&& value) {
    if (chunk_max == -INFINITY) return;  // all -inf: contributes exp(-inf) = 0
    if (chunk_max > m) {
      s *= exp(m - chunk_max);
      m = chunk_max;
      m_log2e = scaled_log2e(m);
    }
    for (int i = 0; i < n; ++i) s += exp_shifted(value(i), m_log2e);
  }

  __device__ __forceinline__ void merge(A om, A os) {
    const A nm = fmax(m, om);
    if (nm == -INFINITY) return;
    s = (m == -INFINITY ? A(0) : s * exp(m - nm)) + (om == -INFINITY ? A(0) : os * exp(om - nm));
    m = nm;
  }
};

// Forward: one block per row of logits [N, V]. Reads N * V * sizeof(T) bytes once and writes
// 2 * N stats; ~1 exp + 3 FLOPs per element: memory bound.
template <class T, class I>
__global__ void __launch_bounds__(kMaxBlock, 1)
    cross_entropy_forward_kernel(const T* __restrict__ logits, const I* __restrict__ targets,
                                 acc_t<T>* __restrict__ losses, acc_t<T>* __restrict__ lse, int64_t V) {
  using A = acc_t<T>;
  __shared__ A warp_m[kMaxBlock / kWarpSize], warp_s[kMaxBlock / kWarpSize];
  const int64_t row = blockIdx.x;
  const T* xr = logits + size_t(row) * size_t(V);
  int64_t head, nvec;
  split_row(xr, V, true, head, nvec);
  const T* body = xr + head;

  OnlineLse<A> st;
  for (int64_t v = head + nvec * kVec<T> + threadIdx.x, h = threadIdx.x; h < head || v < V;
       h += blockDim.x, v += blockDim.x) {
    if (h < head) {
      const A x = to_acc(xr[h]);
      st.add(x, 1, [&](int) { return x; });
    }
    if (v < V) {
      const A x = to_acc(xr[v]);
      st.add(x, 1, [&](int) { return x; });
    }
  }
  for (int64_t v0 = threadIdx.x; v0 < nvec; v0 += int64_t(kUnroll) * blockDim.x) {
    Vec16<T> buf[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t vi = v0 + int64_t(u) * blockDim.x;
      if (vi < nvec) buf[u] = load_vec16(body + vi * kVec<T>);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (v0 + int64_t(u) * blockDim.x >= nvec) break;
      A x[kVec<T>];
      A cm = -INFINITY;
#pragma unroll
      for (int i = 0; i < kVec<T>; ++i) {
        x[i] = to_acc(buf[u].v[i]);
        cm = fmax(cm, x[i]);
      }
      st.add(cm, kVec<T>, [&](int i) { return x[i]; });
    }
  }

  // Merge the per-thread states: shuffle tree within each warp, then warps in order.
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) {
    const A om = __shfl_xor_sync(0xffffffffu, st.m, o), os = __shfl_xor_sync(0xffffffffu, st.s, o);
    st.merge(om, os);
  }
  const int warp = threadIdx.x / kWarpSize;
  if (threadIdx.x % kWarpSize == 0) {
    warp_m[warp] = st.m;
    warp_s[warp] = st.s;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  OnlineLse<A> total;
  for (int w = 0; w < int(blockDim.x / kWarpSize); ++w) total.merge(warp_m[w], warp_s[w]);
  const A row_lse = total.m + log(total.s);
  lse[row] = row_lse;
  const int64_t t = int64_t(targets[row]);
  // A target >= V is out of contract; NaN makes it visible in the loss instead of reading past
  // the row.
  losses[row] = t < 0 ? A(0) : t < V ? row_lse - to_acc(xr[t]) : A(NAN);
}

// Backward: one block per row. Reads N * V * sizeof(T) bytes of logits (none for ignored rows)
// and writes as many of dlogits; 1 exp + 3 FLOPs per element: memory bound. `vec` says logits
// and dlogits are congruent modulo 16 bytes, so one head/body/tail split serves both.
template <class T, class I>
__global__ void __launch_bounds__(kMaxBlock, 1)
    cross_entropy_backward_kernel(const T* __restrict__ logits, const I* __restrict__ targets,
                                  const acc_t<T>* __restrict__ lse, const acc_t<T>* __restrict__ dlosses,
                                  T* __restrict__ dlogits, int64_t V, bool vec) {
  using A = acc_t<T>;
  const int64_t row = blockIdx.x;
  const size_t off = size_t(row) * size_t(V);
  const T* xr = logits + off;
  T* dr = dlogits + off;
  const int64_t t = int64_t(targets[row]);
  const bool ignored = t < 0;
  const A d = ignored ? A(0) : dlosses[row], l_log2e = scaled_log2e(lse[row]);
  auto grad = [&](A x, int64_t v) {
    return ignored ? A(0) : d * (exp_shifted(x, l_log2e) - (v == t ? A(1) : A(0)));
  };

  int64_t head, nvec;
  split_row(xr, V, vec, head, nvec);
  for (int64_t v = head + nvec * kVec<T> + threadIdx.x, h = threadIdx.x; h < head || v < V;
       h += blockDim.x, v += blockDim.x) {
    if (h < head) dr[h] = to_storage<T>(grad(ignored ? A(0) : to_acc(xr[h]), h));
    if (v < V) dr[v] = to_storage<T>(grad(ignored ? A(0) : to_acc(xr[v]), v));
  }
  const T* xb = xr + head;
  T* db = dr + head;
  for (int64_t v0 = threadIdx.x; v0 < nvec; v0 += int64_t(kUnroll) * blockDim.x) {
    Vec16<T> buf[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t vi = v0 + int64_t(u) * blockDim.x;
      if (vi < nvec && !ignored) buf[u] = load_vec16(xb + vi * kVec<T>);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t vi = v0 + int64_t(u) * blockDim.x;
      if (vi >= nvec) break;
      Vec16<T> out;
#pragma unroll
      for (int i = 0; i < kVec<T>; ++i)
        out.v[i] = to_storage<T>(grad(ignored ? A(0) : to_acc(buf[u].v[i]), head + vi * kVec<T> + i));
      store_vec16(db + vi * kVec<T>, out);
    }
  }
}

}  // namespace

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor& losses, Tensor& lse) {
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0) return;
  ST_CHECK(V > 0, "cross_entropy: logits ", logits.desc(), " have no classes");
  cudaStream_t stream = stream_for(logits.device().index);
  dispatch_floating(logits.dtype(), "cross_entropy logits", [&](auto ltag) {
    using T = decltype(ltag);
    using A = acc_t<T>;
    check_stats(losses, stats_dtype<T>(), "cross_entropy losses");
    check_stats(lse, stats_dtype<T>(), "cross_entropy lse");
    dispatch_index(targets.dtype(), "cross_entropy targets", [&](auto itag) {
      using I = decltype(itag);
      cross_entropy_forward_kernel<T, I><<<unsigned(N), block_for(V, kVec<T>), 0, stream>>>(
          logits.data<T>(), targets.data<I>(), losses.data<A>(), lse.data<A>(), V);
      CUDA_CHECK_LAUNCH(cross_entropy_forward_kernel);
    });
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            const Tensor& dlosses, Tensor& dlogits) {
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0 || V == 0) return;
  cudaStream_t stream = stream_for(logits.device().index);
  dispatch_floating(logits.dtype(), "cross_entropy logits", [&](auto ltag) {
    using T = decltype(ltag);
    using A = acc_t<T>;
    check_stats(lse, stats_dtype<T>(), "cross_entropy lse");
    check_stats(dlosses, stats_dtype<T>(), "cross_entropy dlosses");
    const bool vec = ((reinterpret_cast<uintptr_t>(logits.data_ptr()) -
                       reinterpret_cast<uintptr_t>(dlogits.data_ptr())) & 15u) == 0;
    dispatch_index(targets.dtype(), "cross_entropy targets", [&](auto itag) {
      using I = decltype(itag);
      cross_entropy_backward_kernel<T, I><<<unsigned(N), block_for(V, kVec<T>), 0, stream>>>(
          logits.data<T>(), targets.data<I>(), lse.data<A>(), dlosses.data<A>(), dlogits.data<T>(), V,
          vec);
      CUDA_CHECK_LAUNCH(cross_entropy_backward_kernel);
    });
  });
}

}  // namespace seqtrain::cuda
