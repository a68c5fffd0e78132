// fill, copy (with dtype conversion, any strides) and Philox random fills on the GPU.
#include <cstring>
#include <type_traits>

#include "core/backend.h"
#include "core/cuda/device_utils.cuh"
#include "core/cuda/runtime.h"
#include "core/philox.h"

namespace seqtrain::cuda {
namespace {

constexpr unsigned kBlock = 256;

// Grid-stride kernels need only enough blocks to fill the GPU several times over.
unsigned grid_for_device(size_t work_items, int device) {
  return grid_for(work_items, kBlock, unsigned(sm_count(device)) * 16u);
}

// Calls f(T{}) with T the storage type of dt.
template <class F>
void dispatch_all(DType dt, F&& f) {
  switch (dt) {
    case DType::F32: f(float{}); return;
    case DType::BF16: f(bf16{}); return;
    case DType::F64: f(double{}); return;
    case DType::I32: f(int32_t{}); return;
    case DType::I64: f(int64_t{}); return;
  }
  ST_THROW("cuda: unknown dtype");
}

// ---- conversions ----
// f32/bf16 pairs convert through f32 (exact widening, one rounding); anything involving f64 or an
// integer goes through double, as the CPU backend does, so every pair rounds exactly once except
// f64 -> bf16, which rounds via f32 like core/dtype.h's host path.

template <class T> __device__ __forceinline__ double to_double(T x) { return double(x); }
template <> __device__ __forceinline__ double to_double<bf16>(bf16 x) { return bf16_to_float(x); }

template <class T> __device__ __forceinline__ T from_double(double x) { return T(x); }
template <> __device__ __forceinline__ bf16 from_double<bf16>(double x) {
  return float_to_bf16(float(x));
}

template <class T>
constexpr bool is_f32_or_bf16 = std::is_same_v<T, float> || std::is_same_v<T, bf16>;

template <class D, class S> __device__ __forceinline__ D convert(S x) {
  if constexpr (std::is_same_v<D, S>) {
    return x;
  } else if constexpr (is_f32_or_bf16<D> && is_f32_or_bf16<S>) {
    return to_storage<D>(to_float(x));
  } else {
    return from_double<D>(to_double(x));
  }
}

// ---- fill ----

// out[i] = pattern for an element of W bytes (the dtype's bit pattern, converted on the host).
// n elements: 0 FLOPs, n * W bytes written; bound by write bandwidth. Full 16-byte stores when out
// is aligned, scalar head-free tail otherwise.
template <class W>
__global__ void fill_kernel(W* __restrict__ out, int64_t n, W pattern, bool vec) {
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nthreads = int64_t(gridDim.x) * blockDim.x;
  int64_t scalar_from = 0;
  if (vec) {
    constexpr int V = kVec<W>;
    Vec16<W> p;
#pragma unroll
    for (int j = 0; j < V; ++j) p.v[j] = pattern;
    const int64_t nvec = n / V;
    for (int64_t i = tid; i < nvec; i += nthreads) store_vec16(out + i * V, p);
    scalar_from = nvec * V;
  }
  for (int64_t i = scalar_from + tid; i < n; i += nthreads) out[i] = pattern;
}

template <class W>
void launch_fill(void* out, int64_t n, W pattern, int device, cudaStream_t stream) {
  const bool vec = aligned16(out);
  const size_t work = vec ? size_t(n) / kVec<W> + kVec<W> : size_t(n);
  fill_kernel<W><<<grid_for_device(work, device), kBlock, 0, stream>>>(static_cast<W*>(out), n,
                                                                       pattern, vec);
  CUDA_CHECK_LAUNCH("fill_kernel");
}

// ---- copy ----

// dst[i] = convert(src[i]) for contiguous src and dst, N elements per thread-iteration where both
// pointers allow a packed access (N * max(sizeof) = 16 bytes). n elements: 0 FLOPs,
// n * (sizeof(S) + sizeof(D)) bytes; bound by memory bandwidth.
template <class D, class S, int N>
__global__ void convert_contiguous_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n,
                                          bool vec) {
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nthreads = int64_t(gridDim.x) * blockDim.x;
  int64_t scalar_from = 0;
  if (vec) {
    const int64_t npack = n / N;
    for (int64_t i = tid; i < npack; i += nthreads) {
      Pack<S, N> in = load_pack<N>(src + i * N);
      Pack<D, N> out;
#pragma unroll
      for (int j = 0; j < N; ++j) out.v[j] = convert<D>(in.v[j]);
      store_pack<N>(dst + i * N, out);
    }
    scalar_from = npack * N;
  }
  for (int64_t i = scalar_from + tid; i < n; i += nthreads) dst[i] = convert<D>(src[i]);
}

// dst[offset(i)] = convert(src[offset(i)]) for arbitrary strides (after dim coalescing).
// n elements: 0 FLOPs, n * (sizeof(S) + sizeof(D)) bytes, often uncoalesced on one side; bound by
// memory transactions, with Index-width divmods per coalesced dim (32-bit when offsets fit).
template <class D, class S, class Index>
__global__ void convert_strided_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n,
                                       OffsetCalc<2, Index> calc) {
  const int64_t nthreads = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += nthreads) {
    Index off[2];
    calc.get(Index(i), off);
    dst[off[0]] = convert<D>(src[off[1]]);
  }
}

// Largest |offset| reachable in a view plus one: decides whether 32-bit indexing is safe.
int64_t offset_extent(const Tensor& t) {
  int64_t extent = 1;
  for (int64_t d = 0; d < t.dim(); ++d) extent += (t.size(d) - 1) * std::abs(t.stride(d));
  return extent;
}

template <class D, class S>
void launch_copy(const Tensor& src, Tensor& dst, cudaStream_t stream) {
  const int64_t n = src.numel();
  const int device = dst.device().index;
  const int ndim = int(src.dim());
  const int64_t* strides[2] = {dst.strides().data(), src.strides().data()};
  const auto calc = make_offset_calc<2, int64_t>(ndim, src.shape().data(), strides);
  const bool contiguous =
      calc.ndim == 0 || (calc.ndim == 1 && calc.strides[0][0] == 1 && calc.strides[1][0] == 1);
  if (contiguous) {
    constexpr int N = int(16 / (sizeof(S) > sizeof(D) ? sizeof(S) : sizeof(D)));
    const bool vec = aligned_to(src.data_ptr(), sizeof(S) * N) &&
                     aligned_to(dst.data_ptr(), sizeof(D) * N);
    const size_t work = vec ? size_t(n) / N + N : size_t(n);
    convert_contiguous_kernel<D, S, N><<<grid_for_device(work, device), kBlock, 0, stream>>>(
        src.data<S>(), dst.data<D>(), n, vec);
    CUDA_CHECK_LAUNCH("convert_contiguous_kernel");
    return;
  }
  const bool fits32 = n < INT32_MAX && offset_extent(src) < INT32_MAX &&
                      offset_extent(dst) < INT32_MAX;
  if (fits32) {
    const auto calc32 = make_offset_calc<2, int32_t>(ndim, src.shape().data(), strides);
    convert_strided_kernel<D, S, int32_t><<<grid_for_device(size_t(n), device), kBlock, 0, stream>>>(
        src.data<S>(), dst.data<D>(), n, calc32);
  } else {
    convert_strided_kernel<D, S, int64_t><<<grid_for_device(size_t(n), device), kBlock, 0, stream>>>(
        src.data<S>(), dst.data<D>(), n, calc);
  }
  CUDA_CHECK_LAUNCH("convert_strided_kernel");
}

// ---- random ----

// out[i] = Philox draw i (core/philox.h), evaluated in double exactly as on the CPU and rounded
// once to T. n elements: ~10 Philox rounds (~100 integer ops) per element, plus log/sqrt/cos in
// f64 for normal; n * sizeof(T) bytes written; bound by integer/f64 throughput, not memory.
template <class T>
__global__ void random_kernel(T* __restrict__ out, int64_t n, bool normal, double a, double b,
                              uint64_t seed, uint64_t offset) {
  const int64_t nthreads = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += nthreads) {
    const double r = normal ? philox::normal(seed, offset, uint64_t(i), a, b)
                            : philox::uniform(seed, offset, uint64_t(i), a, b);
    out[i] = from_double<T>(r);
  }
}

}  // namespace

void fill(Tensor& out, double value) {
  ST_CHECK(out.is_contiguous(), "cuda::fill: out must be contiguous, got ", out.desc());
  const int64_t n = out.numel();
  if (n == 0) return;
  const int device = out.device().index;
  cudaStream_t stream = stream_for(device);
  // The element's bit pattern, converted on the host exactly as the CPU backend converts.
  uint64_t bits = 0;
  switch (out.dtype()) {
    case DType::F32: { float v = float(value); std::memcpy(&bits, &v, 4); break; }
    case DType::BF16: bits = float_to_bf16(float(value)).bits; break;
    case DType::F64: std::memcpy(&bits, &value, 8); break;
    case DType::I32: { int32_t v = int32_t(value); std::memcpy(&bits, &v, 4); break; }
    case DType::I64: { int64_t v = int64_t(value); std::memcpy(&bits, &v, 8); break; }
  }
  if (bits == 0) {
    CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), 0, out.nbytes(), stream));
    return;
  }
  switch (dtype_size(out.dtype())) {
    case 2: launch_fill<uint16_t>(out.data_ptr(), n, uint16_t(bits), device, stream); break;
    case 4: launch_fill<uint32_t>(out.data_ptr(), n, uint32_t(bits), device, stream); break;
    default: launch_fill<uint64_t>(out.data_ptr(), n, bits, device, stream); break;
  }
}

void copy(const Tensor& src, Tensor& dst) {
  ST_CHECK(src.shape() == dst.shape(), "cuda::copy: shape mismatch ", src.desc(), " -> ",
           dst.desc());
  ST_CHECK(src.dim() <= kMaxDims, "cuda::copy: at most ", kMaxDims, " dims, got ", src.desc());
  if (src.numel() == 0) return;
  cudaStream_t stream = stream_for(dst.device().index);
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    if (src.data_ptr() != dst.data_ptr())
      CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), src.nbytes(),
                                 cudaMemcpyDeviceToDevice, stream));
    return;
  }
  dispatch_all(src.dtype(), [&](auto s) {
    dispatch_all(dst.dtype(), [&](auto d) {
      launch_copy<decltype(d), decltype(s)>(src, dst, stream);
    });
  });
}

void random(Tensor& out, bool normal, double a, double b, uint64_t seed, uint64_t offset) {
  ST_CHECK(out.is_contiguous() && is_floating(out.dtype()),
           "cuda::random: out must be contiguous and floating, got ", out.desc());
  const int64_t n = out.numel();
  if (n == 0) return;
  const int device = out.device().index;
  cudaStream_t stream = stream_for(device);
  const unsigned grid = grid_for_device(size_t(n), device);
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    random_kernel<T><<<grid, kBlock, 0, stream>>>(out.data<T>(), n, normal, a, b, seed, offset);
    CUDA_CHECK_LAUNCH("random_kernel");
  };
  switch (out.dtype()) {
    case DType::F32: launch(float{}); break;
    case DType::BF16: launch(bf16{}); break;
    default: launch(double{}); break;
  }
}

}  // namespace seqtrain::cuda
