// Softmax and log-softmax over the last dim of contiguous x [rows, n].
//   softmax:     y = exp(x - max) / sum(exp(x - max))
//   log-softmax: y = x - max - log(sum(exp(x - max)))
// Backward:
//   softmax:     dx = y * (dy - sum(dy * y))
//   log-softmax: dx = dy - exp(y) * sum(dy)
// Each row is handled by a group of threads with the row cached in registers
// (core/cuda/rowwise.cuh), so every input is read from HBM once and every output written once.
#include "core/backend.h"
#include "core/cuda/rowwise.cuh"
#include "core/cuda/runtime.h"

namespace seqtrain::cuda {
namespace {

// Chunks each thread keeps in registers: 8 of x in the forward, 4 each of y and dy in the backward.
constexpr int kForwardCache = 8, kBackwardCache = 4;

// Forward over x [rows, n], one group of threads per row. Reads x once, writes y once:
// 2 * rows * n * sizeof(T) bytes; ~2 exp + 6 FLOPs per element: memory bound (exp through MUFU
// ex2 keeps the arithmetic well under the bandwidth time).
template <class T, int VEC, bool Log>
__global__ void __launch_bounds__(kMaxGroup, 1)
    softmax_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int n,
                           int chunks, int group) {
  using A = acc_t<T>;
  using C = Chunk<T, VEC>;
  __shared__ A scratch[kWarpSize];
  const int lane = threadIdx.x & (group - 1);
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / group) + threadIdx.x / group;
  const bool valid = row < rows;
  const int my_chunks = valid ? chunks : 0;  // rows past the end still join the reductions
  const size_t row_off = size_t(valid ? row : 0) * size_t(n);
  const T* xr = x + row_off;

  C cache[kForwardCache];  // (kForwardCache, VEC): this thread's share of the row
  cache_chunks<VEC>(xr, my_chunks, lane, group, cache);

  A m = -INFINITY;
  for_chunks<VEC>(xr, my_chunks, lane, group, cache, [&](int, int, const C& c) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) m = fmax(m, elem(c, i));
  });
  m = group_max(m, group, scratch);
  const A m_log2e = scaled_log2e(m);
  A s = 0;
  for_chunks<VEC>(xr, my_chunks, lane, group, cache, [&](int, int, const C& c) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) s += exp_shifted(elem(c, i), m_log2e);
  });
  s = group_sum(s, group, scratch);
  const A log_s = log(s), inv_s = A(1) / s;

  T* yr = y + row_off;
  for_chunks<VEC>(xr, my_chunks, lane, group, cache, [&](int ci, int, const C& c) {
    C out;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const A xi = elem(c, i);
      out.v[i] = to_storage<T>(Log ? xi - m - log_s : exp_shifted(xi, m_log2e) * inv_s);
    }
    store_chunk<VEC>(yr + size_t(ci) * VEC, out);
  });
}

// Backward over y, dy [rows, n], one group of threads per row. Reads y and dy once, writes dx
// once: 3 * rows * n * sizeof(T) bytes; ~4 FLOPs (+1 exp for log) per element: memory bound.
template <class T, int VEC, bool Log>
__global__ void __launch_bounds__(kMaxGroup, 1)
    softmax_backward_kernel(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx,
                            int64_t rows, int n, int chunks, int group) {
  using A = acc_t<T>;
  using C = Chunk<T, VEC>;
  __shared__ A scratch[kWarpSize];
  const int lane = threadIdx.x & (group - 1);
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / group) + threadIdx.x / group;
  const bool valid = row < rows;
  const int my_chunks = valid ? chunks : 0;
  const size_t row_off = size_t(valid ? row : 0) * size_t(n);
  const T* yr = y + row_off;
  const T* dyr = dy + row_off;

  C yc[kBackwardCache], dyc[kBackwardCache];  // (kBackwardCache, VEC) each
  cache_chunks<VEC>(yr, my_chunks, lane, group, yc);
  cache_chunks<VEC>(dyr, my_chunks, lane, group, dyc);

  A s = 0;  // sum(dy) for log-softmax, sum(dy * y) for softmax
  for_chunks2<VEC>(yr, yc, dyr, dyc, my_chunks, lane, group, [&](int, int, const C& yv, const C& dyv) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) s += Log ? elem(dyv, i) : elem(dyv, i) * elem(yv, i);
  });
  s = group_sum(s, group, scratch);

  T* dxr = dx + row_off;
  for_chunks2<VEC>(yr, yc, dyr, dyc, my_chunks, lane, group, [&](int ci, int, const C& yv, const C& dyv) {
    C out;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const A yi = elem(yv, i), dyi = elem(dyv, i);
      out.v[i] = to_storage<T>(Log ? dyi - exp(yi) * s : yi * (dyi - s));
    }
    store_chunk<VEC>(dxr + size_t(ci) * VEC, out);
  });
}

template <class T, bool Log>
void launch_forward(const Tensor& x, Tensor& y, int64_t rows, int64_t n, cudaStream_t stream) {
  auto launch = [&](auto kernel, int vec) {
    const RowPlan p = plan_rows(n, vec, kForwardCache, 256);
    const unsigned grid = unsigned((rows + p.rows_per_block - 1) / p.rows_per_block);
    kernel<<<grid, p.block, 0, stream>>>(x.data<T>(), y.data<T>(), rows, int(n), p.chunks, p.group);
    CUDA_CHECK_LAUNCH(softmax_forward_kernel);
  };
  if (rows_vectorizable(n, sizeof(T), {x.data_ptr(), y.data_ptr()}))
    launch(softmax_forward_kernel<T, kVec<T>, Log>, kVec<T>);
  else
    launch(softmax_forward_kernel<T, 1, Log>, 1);
}

template <class T, bool Log>
void launch_backward(const Tensor& y, const Tensor& dy, Tensor& dx, int64_t rows, int64_t n,
                     cudaStream_t stream) {
  auto launch = [&](auto kernel, int vec) {
    const RowPlan p = plan_rows(n, vec, kBackwardCache, 256);
    const unsigned grid = unsigned((rows + p.rows_per_block - 1) / p.rows_per_block);
    kernel<<<grid, p.block, 0, stream>>>(y.data<T>(), dy.data<T>(), dx.data<T>(), rows, int(n),
                                         p.chunks, p.group);
    CUDA_CHECK_LAUNCH(softmax_backward_kernel);
  };
  if (rows_vectorizable(n, sizeof(T), {y.data_ptr(), dy.data_ptr(), dx.data_ptr()}))
    launch(softmax_backward_kernel<T, kVec<T>, Log>, kVec<T>);
  else
    launch(softmax_backward_kernel<T, 1, Log>, 1);
}

}  // namespace

void softmax_forward(const Tensor& x, Tensor& y, bool log) {
  const int64_t n = x.size(-1), rows = n > 0 ? x.numel() / n : 0;
  if (rows == 0) return;
  cudaStream_t stream = stream_for(x.device().index);
  dispatch_floating(x.dtype(), "softmax input", [&](auto tag) {
    using T = decltype(tag);
    if (log)
      launch_forward<T, true>(x, y, rows, n, stream);
    else
      launch_forward<T, false>(x, y, rows, n, stream);
  });
}

void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log) {
  const int64_t n = y.size(-1), rows = n > 0 ? y.numel() / n : 0;
  if (rows == 0) return;
  cudaStream_t stream = stream_for(y.device().index);
  dispatch_floating(y.dtype(), "softmax output", [&](auto tag) {
    using T = decltype(tag);
    if (log)
      launch_backward<T, true>(y, dy, dx, rows, n, stream);
    else
      launch_backward<T, false>(y, dy, dx, rows, n, stream);
  });
}

}  // namespace seqtrain::cuda
