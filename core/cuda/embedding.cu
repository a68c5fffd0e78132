// Embedding lookup out[n] = table[ids[n]] and its deterministic backward
// dtable[v] = sum over n with ids[n] == v of dout[n], added in increasing n.
// The backward sorts (id, position) pairs with CUB's stable radix sort, so each id's positions
// come out contiguous and in increasing order; one block per vocabulary row then finds its
// segment by binary search and sums the rows in that order. No atomics: bitwise reproducible.
#include <cub/device/device_radix_sort.cuh>

#include "core/backend.h"
#include "core/cuda/rowwise.cuh"
#include "core/cuda/runtime.h"

namespace seqtrain::cuda {
namespace {

constexpr int kBlock = 256;

// out [N, D] = table [V, D] rows picked by ids [N]; one thread per chunk of VEC elements.
// Reads and writes N * D * sizeof(T) bytes, no FLOPs: memory bound. Ids outside [0, V) are out of
// contract; their rows become NaN instead of reading outside the table.
template <class T, class I, int VEC>
__global__ void __launch_bounds__(kBlock)
    embedding_forward_kernel(const I* __restrict__ ids, const T* __restrict__ table, T* __restrict__ out,
                             int64_t N, int64_t D, int64_t V) {
  const int64_t chunks = D / VEC, total = N * chunks;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = idx / chunks, col = (idx - n * chunks) * VEC;
    const int64_t id = int64_t(ids[n]);
    Chunk<T, VEC> c;
    if (id >= 0 && id < V) {
      c = load_chunk<VEC>(table + id * D + col);
    } else {
#pragma unroll
      for (int i = 0; i < VEC; ++i) c.v[i] = to_storage<T>(acc_t<T>(NAN));
    }
    store_chunk<VEC>(out + n * D + col, c);
  }
}

__global__ void __launch_bounds__(kBlock) iota_kernel(int32_t* out, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = int32_t(i);
}

// First index in sorted[0, n) whose value is >= key.
template <class I>
__device__ __forceinline__ int64_t lower_bound(const I* sorted, int64_t n, int64_t key) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (int64_t(sorted[mid]) < key) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// dtable [V, D] from dout [N, D] and the sorted (id, position) pairs. Grid (V, column blocks),
// one thread per chunk of VEC columns; every dtable row is written (0 where no id refers to it).
// Reads N * D * sizeof(T) of dout once, writes V * D * sizeof(O), 1 FLOP per element read:
// memory bound (a very frequent id serialises its rows on one block column, in position order).
template <class T, class O, class I, int VEC>
__global__ void __launch_bounds__(kBlock)
    embedding_backward_kernel(const I* __restrict__ sorted_ids, const int32_t* __restrict__ sorted_pos,
                              const T* __restrict__ dout, O* __restrict__ dtable, int64_t N, int64_t D) {
  using A = acc_t<T>;
  constexpr int kUnroll = 4;  // dout rows loaded before any is added: loads in flight per thread
  __shared__ int64_t segment[2];
  const int64_t v = blockIdx.x;
  if (threadIdx.x < 2) segment[threadIdx.x] = lower_bound(sorted_ids, N, v + threadIdx.x);
  __syncthreads();
  const int64_t lo = segment[0], hi = segment[1];
  const int64_t col = (int64_t(blockIdx.y) * blockDim.x + threadIdx.x) * VEC;
  if (col >= D) return;

  A acc[VEC] = {};
  for (int64_t k = lo; k < hi; k += kUnroll) {
    Chunk<T, VEC> rows[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (k + u < hi) rows[u] = load_chunk<VEC>(dout + int64_t(sorted_pos[k + u]) * D + col);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (k + u >= hi) break;
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] += elem(rows[u], i);
    }
  }
  Chunk<O, VEC> out;
#pragma unroll
  for (int i = 0; i < VEC; ++i) out.v[i] = to_storage<O>(acc[i]);
  store_chunk<VEC>(dtable + v * D + col, out);
}

template <class T, class O, class I>
void launch_embedding_backward(const I* sorted_ids, const int32_t* sorted_pos, const Tensor& dout,
                               Tensor& dtable, int64_t N, int64_t V, int64_t D, cudaStream_t stream) {
  auto launch = [&](auto kernel, int vec) {
    const int64_t chunks = D / vec;
    const int block = int(chunks >= kBlock ? kBlock : (chunks + kWarpSize - 1) / kWarpSize * kWarpSize);
    const dim3 grid(unsigned(V), unsigned((chunks + block - 1) / block));
    kernel<<<grid, block, 0, stream>>>(sorted_ids, sorted_pos, dout.data<T>(), dtable.data<O>(), N, D);
    CUDA_CHECK_LAUNCH(embedding_backward_kernel);
  };
  // One vector width for both: dout chunks of kVec<T> elements, dtable chunks of as many O.
  const bool vec = (size_t(D) * sizeof(T)) % 16 == 0 && aligned16(dout.data_ptr()) &&
                   (size_t(D) * sizeof(O)) % alignof(Chunk<O, kVec<T>>) == 0 &&
                   reinterpret_cast<uintptr_t>(dtable.data_ptr()) % alignof(Chunk<O, kVec<T>>) == 0;
  if (vec)
    launch(embedding_backward_kernel<T, O, I, kVec<T>>, kVec<T>);
  else
    launch(embedding_backward_kernel<T, O, I, 1>, 1);
}

}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  const int64_t N = ids.numel(), V = table.size(0), D = table.size(1);
  if (N == 0 || D == 0) return;
  cudaStream_t stream = stream_for(table.device().index);
  const int device = table.device().index;
  dispatch_floating(table.dtype(), "embedding table", [&](auto ttag) {
    using T = decltype(ttag);
    dispatch_index(ids.dtype(), "embedding ids", [&](auto itag) {
      using I = decltype(itag);
      auto launch = [&](auto kernel, int vec) {
        const unsigned grid = grid_for(size_t(N) * size_t(D / vec), kBlock, unsigned(sm_count(device)) * 16);
        kernel<<<grid, kBlock, 0, stream>>>(ids.data<I>(), table.data<T>(), out.data<T>(), N, D, V);
        CUDA_CHECK_LAUNCH(embedding_forward_kernel);
      };
      if (rows_vectorizable(D, sizeof(T), {table.data_ptr(), out.data_ptr()}))
        launch(embedding_forward_kernel<T, I, kVec<T>>, kVec<T>);
      else
        launch(embedding_forward_kernel<T, I, 1>, 1);
    });
  });
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  const int64_t N = ids.numel(), V = dtable.size(0), D = dtable.size(1);
  if (V == 0 || D == 0) return;
  ST_CHECK(N < (int64_t(1) << 31), "embedding_backward: ", N, " ids exceed the 2^31 - 1 the sort supports");
  const Device dev = dtable.device();
  cudaStream_t stream = stream_for(dev.index);
  dispatch_index(ids.dtype(), "embedding ids", [&](auto itag) {
    using I = decltype(itag);
    // (id, position) pairs sorted by id; positions stay increasing within an id (stable sort).
    Tensor sorted_ids = Tensor::empty({N}, ids.dtype(), dev);
    Tensor positions = Tensor::empty({N}, DType::I32, dev);
    Tensor sorted_pos = Tensor::empty({N}, DType::I32, dev);
    if (N > 0) {
      iota_kernel<<<grid_for(size_t(N), kBlock, unsigned(sm_count(dev.index)) * 8), kBlock, 0, stream>>>(
          positions.data<int32_t>(), N);
      CUDA_CHECK_LAUNCH(iota_kernel);
      // Ids are in [0, V): only their low bits need sorting.
      int end_bit = 1;
      while (end_bit < 63 && (int64_t(1) << end_bit) < V) ++end_bit;
      size_t temp_bytes = 0;
      CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, ids.data<I>(), sorted_ids.data<I>(),
                                                 positions.data<int32_t>(), sorted_pos.data<int32_t>(),
                                                 int(N), 0, end_bit, stream));
      Tensor temp = Tensor::empty({int64_t(temp_bytes / 8 + 1)}, DType::I64, dev);
      CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), temp_bytes, ids.data<I>(),
                                                 sorted_ids.data<I>(), positions.data<int32_t>(),
                                                 sorted_pos.data<int32_t>(), int(N), 0, end_bit, stream));
    }
    dispatch_floating(dout.dtype(), "embedding dout", [&](auto dtag) {
      using T = decltype(dtag);
      dispatch_floating(dtable.dtype(), "embedding dtable", [&](auto otag) {
        using O = decltype(otag);
        launch_embedding_backward<T, O, I>(sorted_ids.data<I>(), sorted_pos.data<int32_t>(), dout, dtable, N,
                                           V, D, stream);
      });
    });
  });
}

}  // namespace seqtrain::cuda
