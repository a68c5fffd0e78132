// Device helpers shared by the CUDA kernels: typed loads/stores that widen to the accumulation
// type (f32 for f32/bf16, f64 for f64), 16-byte vector access, deterministic warp/block
// reductions, and an offset calculator for strided views of up to 8 dims.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/dtype.h"

namespace seqtrain::cuda {

constexpr int kWarpSize = 32;
constexpr int kMaxDims = 8;

// ---- element types ----

// Accumulation / compute type of a storage type: bf16 math runs in f32, f64 stays f64.
template <class T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <class T> using acc_t = typename AccType<T>::type;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return bf16_to_float(x); }
__device__ __forceinline__ float to_float(double x) { return float(x); }

template <class T> __device__ __forceinline__ float load_f(const T* p) { return to_float(*p); }

// Widen to the accumulation type: exact for every storage type.
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ float to_acc(bf16 x) { return bf16_to_float(x); }
__device__ __forceinline__ double to_acc(double x) { return x; }
template <class T> __device__ __forceinline__ acc_t<T> load_acc(const T* p) { return to_acc(*p); }

// Narrow a computed value to storage, rounding once (round-to-nearest-even for bf16, matching
// core/dtype.h's host conversion bit for bit).
template <class T> __device__ __forceinline__ T to_storage(float x);
template <> __device__ __forceinline__ float to_storage<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 to_storage<bf16>(float x) { return float_to_bf16(x); }
template <> __device__ __forceinline__ double to_storage<double>(float x) { return double(x); }
template <class T> __device__ __forceinline__ T to_storage(double x);
template <> __device__ __forceinline__ float to_storage<float>(double x) { return float(x); }
template <> __device__ __forceinline__ bf16 to_storage<bf16>(double x) { return float_to_bf16(float(x)); }
template <> __device__ __forceinline__ double to_storage<double>(double x) { return x; }

// ---- vector access ----

// N elements of T moved by one load/store instruction (sizeof(T) * N a power of two <= 16).
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};
// kVec<T> elements of T fill one 16-byte (128-bit) access.
template <class T> constexpr int kVec = int(16 / sizeof(T));
template <class T> using Vec16 = Pack<T, kVec<T>>;

// Vector paths need every pointer aligned to the access width; views with odd offsets take the
// scalar path.
__host__ __device__ __forceinline__ bool aligned_to(const void* p, size_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}
__host__ __device__ __forceinline__ bool aligned16(const void* p) { return aligned_to(p, 16); }

template <int N, class T> __device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}
template <int N, class T> __device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}
template <class T> __device__ __forceinline__ Vec16<T> load_vec16(const T* p) {
  return load_pack<kVec<T>>(p);
}
template <class T> __device__ __forceinline__ void store_vec16(T* p, const Vec16<T>& v) {
  store_pack<kVec<T>>(p, v);
}

// ---- reductions (fixed shuffle trees: bitwise deterministic) ----

template <class A> __device__ __forceinline__ A warp_sum(A x) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
template <class A> __device__ __forceinline__ A warp_max(A x) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) x = fmax(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Sum over the whole block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// Holds one __syncthreads pair, so all threads must call it; safe to call repeatedly.
template <class A> __device__ A block_sum(A x) {
  __shared__ A partial[kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int nwarps = blockDim.x / kWarpSize;
  x = warp_sum(x);
  __syncthreads();  // a previous call may still be reading `partial`
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  x = lane < nwarps ? partial[lane] : A(0);
  return warp_sum(x);
}

// ---- strided offsets ----

// Element offsets of NARGS tensors sharing one logical shape, for a row-major linear index.
// Built on the host (make_offset_calc) with size-1 dims dropped and mergeable dims coalesced, so
// the common cases (contiguous, one broadcast dim) cost zero or one divmod per element. Index is
// int32_t when every offset and the element count fit (cheaper divisions), else int64_t.
template <int NARGS, class Index>
struct OffsetCalc {
  int ndim;
  Index sizes[kMaxDims];            // innermost first
  Index strides[NARGS][kMaxDims];   // elements, innermost first

  __device__ __forceinline__ void get(Index linear, Index (&off)[NARGS]) const {
#pragma unroll
    for (int a = 0; a < NARGS; ++a) off[a] = 0;
#pragma unroll
    for (int d = 0; d < kMaxDims; ++d) {
      if (d == ndim) break;
      // The outermost dim needs no divmod: what is left of the index is its coordinate.
      Index idx = linear;
      if (d + 1 < ndim) {
        idx = linear % sizes[d];
        linear /= sizes[d];
      }
#pragma unroll
      for (int a = 0; a < NARGS; ++a) off[a] += idx * strides[a][d];
    }
  }
};

// shape: row-major logical shape; strides[a]: element strides of tensor a (ndim <= kMaxDims).
template <int NARGS, class Index>
inline OffsetCalc<NARGS, Index> make_offset_calc(int ndim, const int64_t* shape,
                                                 const int64_t* const (&strides)[NARGS]) {
  int64_t sizes[kMaxDims];
  int64_t st[NARGS][kMaxDims];
  int kept = 0;
  for (int d = ndim - 1; d >= 0; --d) {  // innermost first
    if (shape[d] == 1) continue;
    if (kept > 0) {
      // Dim d merges into the previous (inner) kept dim when every tensor steps through it as if
      // the two were one dim: stride_d == stride_inner * size_inner.
      const int p = kept - 1;
      bool mergeable = true;
      for (int a = 0; a < NARGS; ++a)
        mergeable = mergeable && strides[a][d] == st[a][p] * sizes[p];
      if (mergeable) {
        sizes[p] *= shape[d];
        continue;
      }
    }
    sizes[kept] = shape[d];
    for (int a = 0; a < NARGS; ++a) st[a][kept] = strides[a][d];
    ++kept;
  }
  OffsetCalc<NARGS, Index> c{};
  c.ndim = kept;
  for (int d = 0; d < kept; ++d) {
    c.sizes[d] = Index(sizes[d]);
    for (int a = 0; a < NARGS; ++a) c.strides[a][d] = Index(st[a][d]);
  }
  return c;
}

// ---- programmatic dependent launch (sm_90) ----

// In a kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization: block until the
// grids it depends on (the previous kernel in the stream) have completed and their writes are
// visible. Without the attribute it returns at once.
__device__ __forceinline__ void wait_for_prerequisite_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
// Lets the next kernel in the stream, when launched as a programmatic dependent, be scheduled
// before this grid ends (it must still call wait_for_prerequisite_grids before reading our output).
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Launches `kernel` as a programmatic dependent of the previous kernel in `stream`: its blocks may
// be scheduled while that kernel still runs (once it has called allow_dependent_launch, or as its
// blocks exit), so the launch latency hides behind it. The kernel must call
// wait_for_prerequisite_grids before it reads anything an earlier kernel wrote, or writes anything
// an earlier kernel reads.
template <class... Params, class... Args>
void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...));
}

}  // namespace seqtrain::cuda
