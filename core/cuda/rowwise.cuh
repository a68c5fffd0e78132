// Shared machinery of the row-wise kernels (softmax, norms, cross-entropy, embedding, conv1d):
// dtype dispatch, chunked row access with the row cached in registers, deterministic reductions
// over a group of threads, and the fixed-order reduction of per-block parameter-gradient partials.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "core/cuda/device_utils.cuh"
#include "core/cuda/runtime.h"
#include "core/tensor.h"

namespace seqtrain::cuda {

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<bf16>() { return DType::BF16; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }

// ---- host-side dtype dispatch: f(T{}) with the storage type of the dtype ----

template <class F>
void dispatch_floating(DType t, const char* what, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); return;
    case DType::BF16: f(bf16{}); return;
    case DType::F64: f(double{}); return;
    default: ST_THROW(what, " must be f32, bf16 or f64, got ", dtype_name(t));
  }
}

template <class F>
void dispatch_index(DType t, const char* what, F&& f) {
  switch (t) {
    case DType::I32: f(int32_t{}); return;
    case DType::I64: f(int64_t{}); return;
    default: ST_THROW(what, " must be i32 or i64, got ", dtype_name(t));
  }
}

// Parameters (norm weights, conv weights) are either of the activation dtype or f32 (bf16
// activations with f32 master weights); anything else would only multiply the instantiations.
template <class T, class F>
void dispatch_param(DType t, const char* what, F&& f) {
  if (t == DType::F32) {
    f(float{});
  } else if (!std::is_same_v<T, float> && t == dtype_of<T>()) {
    f(T{});
  } else {
    ST_THROW(what, " must be f32 or the input dtype, got ", dtype_name(t));
  }
}

// Statistics (mean, rstd, lse, losses) are f32 for f32/bf16 inputs and f64 for f64 inputs.
template <class T> constexpr DType stats_dtype() { return dtype_of<acc_t<T>>(); }

inline void check_stats(const Tensor& t, DType expected, const char* what) {
  ST_CHECK(t.dtype() == expected, what, " must be ", dtype_name(expected), ", got ", t.desc());
}

// ---- chunks: N consecutive elements moved with the widest aligned loads ----

template <class T, int N>
struct alignas(N * sizeof(T) >= 16 ? 16 : N * sizeof(T)) Chunk {
  T v[N];
};

template <int Bytes> struct Piece;
template <> struct Piece<16> { using type = int4; };
template <> struct Piece<8> { using type = uint2; };
template <> struct Piece<4> { using type = unsigned int; };
template <> struct Piece<2> { using type = unsigned short; };

// p must be aligned to alignof(Chunk<T, N>); read through the read-only cache.
template <int N, class T>
__device__ __forceinline__ Chunk<T, N> load_chunk(const T* p) {
  constexpr int bytes = N * int(sizeof(T)), piece = bytes >= 16 ? 16 : bytes;
  using P = typename Piece<piece>::type;
  P raw[bytes / piece];
#pragma unroll
  for (int i = 0; i < bytes / piece; ++i) raw[i] = __ldg(reinterpret_cast<const P*>(p) + i);
  Chunk<T, N> c;
  __builtin_memcpy(&c, raw, bytes);
  return c;
}

template <int N, class T>
__device__ __forceinline__ void store_chunk(T* p, const Chunk<T, N>& c) {
  *reinterpret_cast<Chunk<T, N>*>(p) = c;
}

// Widened element i of a chunk.
template <class T, int N>
__device__ __forceinline__ acc_t<T> elem(const Chunk<T, N>& c, int i) {
  return to_acc(c.v[i]);
}

// True when every pointer is 16-byte aligned and rows of n elements of T keep them aligned, so
// chunks of kVec<T> elements can be moved with 16-byte accesses.
inline bool rows_vectorizable(int64_t n, size_t elem_size, std::initializer_list<const void*> ptrs) {
  if ((size_t(n) * elem_size) % 16 != 0) return false;
  for (const void* p : ptrs)
    if (p != nullptr && !aligned16(p)) return false;
  return true;
}

// ---- rows held by groups of threads ----

// Each row of n elements is split into chunks of VEC elements; thread `lane` of the row's group
// owns chunks lane, lane + group, ... The first CACHE of them stay in registers, so a row of up to
// kMaxGroup * CACHE * VEC elements is read from HBM once; longer rows re-read the remaining chunks
// (from L2) on each pass. The planner gives each thread between CACHE/2 and CACHE chunks, i.e.
// several independent 16-byte loads in flight before the first reduction, which is what hides
// HBM latency in these kernels.
// Row kernels are __launch_bounds__(kMaxGroup, 1): up to 128 registers per thread. (Without the
// explicit minimum of one block, ptxas caps them at 64 registers and spills the cached row.)
constexpr int kMaxGroup = 512;

struct RowPlan {
  int chunks;          // chunks per row
  int group;           // threads per row: a power of two in [1, kMaxGroup]
  int block;           // threads per block: a multiple of group
  int rows_per_block;
};

inline RowPlan plan_rows(int64_t n, int vec, int cache, int min_block) {
  ST_CHECK(n < (int64_t(1) << 31), "row length ", n, " exceeds 2^31 - 1");
  RowPlan p;
  p.chunks = int((n + vec - 1) / vec);
  p.group = 1;
  while (p.group < kMaxGroup && int64_t(p.group) * cache < p.chunks) p.group *= 2;
  p.block = p.group > min_block ? p.group : min_block;
  p.rows_per_block = p.block / p.group;
  return p;
}

// Calls f(chunk_index, slot, chunk) for every chunk of the row owned by this thread: cached chunks
// (slot i < CACHE, a compile-time constant after unrolling, so per-slot register arrays of the
// caller stay in registers) from `cache`, the rest (slot == CACHE) loaded from `row`.
template <int VEC, int CACHE, class T, class F>
__device__ __forceinline__ void for_chunks(const T* row, int chunks, int lane, int group,
                                           const Chunk<T, VEC> (&cache)[CACHE], F&& f) {
#pragma unroll
  for (int i = 0; i < CACHE; ++i) {
    const int c = lane + i * group;
    if (c < chunks) f(c, i, cache[i]);
  }
  for (int c = lane + CACHE * group; c < chunks; c += group)
    f(c, CACHE, load_chunk<VEC>(row + size_t(c) * VEC));
}

// As for_chunks, over two rows of the same length: f(chunk_index, slot, chunk_a, chunk_b).
template <int VEC, int CACHE, class T, class U, class F>
__device__ __forceinline__ void for_chunks2(const T* row_a, const Chunk<T, VEC> (&cache_a)[CACHE],
                                            const U* row_b, const Chunk<U, VEC> (&cache_b)[CACHE],
                                            int chunks, int lane, int group, F&& f) {
#pragma unroll
  for (int i = 0; i < CACHE; ++i) {
    const int c = lane + i * group;
    if (c < chunks) f(c, i, cache_a[i], cache_b[i]);
  }
  for (int c = lane + CACHE * group; c < chunks; c += group)
    f(c, CACHE, load_chunk<VEC>(row_a + size_t(c) * VEC), load_chunk<VEC>(row_b + size_t(c) * VEC));
}

template <int VEC, int CACHE, class T>
__device__ __forceinline__ void cache_chunks(const T* row, int chunks, int lane, int group,
                                             Chunk<T, VEC> (&cache)[CACHE]) {
#pragma unroll
  for (int i = 0; i < CACHE; ++i) {
    const int c = lane + i * group;
    if (c < chunks) cache[i] = load_chunk<VEC>(row + size_t(c) * VEC);
  }
}

// Sum / max over the `group` threads of a row (group a power of two, uniform over the block).
// Fixed shuffle trees and a fixed-order pass over the group's warps keep the result bitwise
// reproducible. Every thread of the block must call it (it holds __syncthreads when group > 32);
// `scratch` is a __shared__ array of 32 elements.
template <bool IsMax, class A>
__device__ __forceinline__ A group_reduce(A v, int group, A* scratch) {
  const int width = group < kWarpSize ? group : kWarpSize;
  for (int o = width / 2; o > 0; o >>= 1) {
    const A other = __shfl_xor_sync(0xffffffffu, v, o);
    v = IsMax ? fmax(v, other) : v + other;
  }
  if (group <= kWarpSize) return v;
  __syncthreads();  // a previous call may still be reading scratch
  if (threadIdx.x % kWarpSize == 0) scratch[threadIdx.x / kWarpSize] = v;
  __syncthreads();
  const int warps = group / kWarpSize, first = int(threadIdx.x / group) * warps;
  A r = scratch[first];
  for (int i = 1; i < warps; ++i) r = IsMax ? fmax(r, scratch[first + i]) : r + scratch[first + i];
  return r;
}

template <class A>
__device__ __forceinline__ A group_sum(A v, int group, A* scratch) {
  return group_reduce<false>(v, group, scratch);
}
template <class A>
__device__ __forceinline__ A group_max(A v, int group, A* scratch) {
  return group_reduce<true>(v, group, scratch);
}

// ---- math ----

// exp(x - m) through exp2 with the shift folded into one FMA: x * log2(e) - m * log2(e). Error
// stays within a few ulp for the arguments that matter (x - m near 0; large negative arguments
// only affect terms that vanish next to exp(0) = 1).
__device__ __forceinline__ float exp_shifted(float x, float m_log2e) {
  return exp2f(fmaf(x, 1.4426950408889634f, -m_log2e));
}
__device__ __forceinline__ double exp_shifted(double x, double m_log2e) {
  return exp2(fma(x, 1.4426950408889634, -m_log2e));
}
__device__ __forceinline__ float scaled_log2e(float m) { return m * 1.4426950408889634f; }
__device__ __forceinline__ double scaled_log2e(double m) { return m * 1.4426950408889634; }

// ---- fixed-order reduction of partial sums ----

namespace {

constexpr int kPartialCols = 32, kPartialRows = 16;

// out[j] = sum_p partials[p * stride + j] for j < cols, p < P, always in the same order: thread
// row ty sums p = ty, ty + 16, ...; the 16 results are then added in order. Block (32, 16) per
// 32 columns. Reads P * cols * sizeof(A) bytes once, ~1 FLOP per 4-8 bytes: memory bound, and
// small next to the kernel that produced the partials.
template <class A, class O>
__global__ void __launch_bounds__(kPartialCols * kPartialRows)
    sum_partials_kernel(const A* partials, int64_t P, int64_t stride, int64_t cols, O* out) {
  __shared__ A sums[kPartialRows][kPartialCols + 1];
  const int64_t j = int64_t(blockIdx.x) * kPartialCols + threadIdx.x;
  A acc = 0;
  if (j < cols)
    for (int64_t p = threadIdx.y; p < P; p += kPartialRows) acc += partials[p * stride + j];
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    A s = sums[0][threadIdx.x];
    for (int i = 1; i < kPartialRows; ++i) s += sums[i][threadIdx.x];
    out[j] = to_storage<O>(s);
  }
}

}  // namespace

template <class A, class O>
void sum_partials(const A* partials, int64_t P, int64_t stride, int64_t cols, O* out,
                  cudaStream_t stream) {
  const unsigned grid = unsigned((cols + kPartialCols - 1) / kPartialCols);
  sum_partials_kernel<A, O><<<grid, dim3(kPartialCols, kPartialRows), 0, stream>>>(partials, P, stride,
                                                                                 cols, out);
  CUDA_CHECK_LAUNCH(sum_partials_kernel);
}

}  // namespace seqtrain::cuda
