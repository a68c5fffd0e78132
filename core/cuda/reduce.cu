// Reductions: over one axis of x viewed as [outer, n, inner], and over a whole tensor.
// Deterministic by construction: every element goes to a fixed thread, threads combine in fixed
// shuffle/shared-memory trees, and work split across blocks goes through a partials buffer that a
// second kernel combines in a fixed order (no floating atomics). Accumulation is f32 for f32/bf16
// and f64 for f64.
#include <cmath>
#include <cstdint>

#include "core/backend.h"
#include "core/cuda/device_utils.cuh"
#include "core/cuda/runtime.h"

namespace seqtrain::cuda {
namespace {

constexpr int kBlock = 256;
constexpr int kWarpsPerBlock = kBlock / kWarpSize;
// Split counts are functions of the shape only (not of the GPU), so a result is reproducible
// across devices as well as across runs. 512 blocks are ~4 per SM on H100/H200.
constexpr int64_t kTargetBlocks = 512;
constexpr int64_t kMinPerSplitRow = 8192;  // elements of one row a split block reads, at least
constexpr int64_t kMinPerSplitCol = 256;   // rows of n a split column block reads, at least
// inner == 1 rows shorter than this take one warp each; longer ones a block (or several).
constexpr int64_t kBlockRowMin = 2048;
// Column reduction tile: 32 consecutive inner positions (one coalesced warp access) x 8 slices
// of n.
constexpr int kColTileY = kBlock / kWarpSize;

// Running reduction of one slot: a sum, or a max with the index of its first occurrence. NaN
// counts as larger than any number (so max propagates NaN, as torch does). merge() is
// commutative and associative, so Max is exact whatever the tree shape.
template <class A, ReduceOp OP>
struct Accum {
  A v;
  int64_t i;

  __device__ static Accum identity() {
    if constexpr (OP == ReduceOp::Max) return {A(-INFINITY), INT64_MAX};
    return {A(0), 0};
  }
  __device__ void merge(A x, int64_t xi) {
    if constexpr (OP == ReduceOp::Max) {
      const bool xnan = isnan(x), vnan = isnan(v);
      const bool better = xnan != vnan ? xnan : (xnan || x == v) ? xi < i : x > v;
      if (better) {
        v = x;
        i = xi;
      }
    } else {
      v += x;
    }
  }
  __device__ void merge(const Accum& o) { merge(o.v, o.i); }
};

template <class A, ReduceOp OP>
__device__ __forceinline__ Accum<A, OP> warp_reduce(Accum<A, OP> a) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) {
    const A ov = __shfl_xor_sync(0xffffffffu, a.v, o);
    int64_t oi = 0;
    if constexpr (OP == ReduceOp::Max) oi = __shfl_xor_sync(0xffffffffu, a.i, o);
    a.merge(ov, oi);
  }
  return a;
}

// Whole-block reduction (kBlock threads); the result is valid in warp 0.
template <class A, ReduceOp OP>
__device__ __forceinline__ Accum<A, OP> block_reduce(Accum<A, OP> a) {
  __shared__ A sv[kWarpsPerBlock];
  __shared__ int64_t si[kWarpsPerBlock];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  a = warp_reduce(a);
  if (lane == 0) {
    sv[warp] = a.v;
    si[warp] = a.i;
  }
  __syncthreads();
  a = Accum<A, OP>::identity();
  if (warp == 0 && lane < kWarpsPerBlock) a = {sv[lane], si[lane]};
  return warp_reduce(a);
}

// Where a finished slot goes: the final output (Mean divides by n; argmax for Max) or, when the
// reduction is split across blocks, its split's row of the partials buffer [splits, slots].
template <class OutT, class A>
struct Sink {
  OutT* out;
  int64_t* argmax;        // may be null
  A* partial;             // null when not split
  int64_t* partial_idx;   // Max only, with partial
  int64_t slots;
  int64_t mean_n;         // Mean divides by this; -1 for Sum and Max

  template <ReduceOp OP>
  __device__ void write(int64_t slot, int64_t split, const Accum<A, OP>& a) const {
    if (partial) {
      partial[split * slots + slot] = a.v;
      if constexpr (OP == ReduceOp::Max) partial_idx[split * slots + slot] = a.i;
      return;
    }
    out[slot] = to_storage<OutT>(mean_n >= 0 ? a.v / A(mean_n) : a.v);
    if constexpr (OP == ReduceOp::Max) {
      if (argmax) argmax[slot] = a.i;
    }
  }
};

// Accumulates p[begin, end) (SQUARE: p^2) into a, thread `lane` of a group of `group` threads
// taking elements lane, lane + group, ...; 16-byte loads when p + begin is aligned (chunks are
// multiples of kVec, so that holds for every chunk of an aligned row).
template <class T, ReduceOp OP, bool SQUARE>
__device__ __forceinline__ void accumulate_range(const T* __restrict__ p, int64_t begin,
                                                 int64_t end, int lane, int group,
                                                 Accum<acc_t<T>, OP>& a) {
  constexpr int V = kVec<T>;
  auto add = [&](T raw, int64_t idx) {
    const acc_t<T> x = to_acc(raw);
    a.merge(SQUARE ? x * x : x, idx);
  };
  int64_t scalar_from = begin;
  if (aligned16(p + begin)) {
    const int64_t nvec = (end - begin) / V;
    for (int64_t k = lane; k < nvec; k += group) {
      const Vec16<T> pack = load_vec16(p + begin + k * V);
#pragma unroll
      for (int j = 0; j < V; ++j) add(pack.v[j], begin + k * V + j);
    }
    scalar_from = begin + nvec * V;
  }
  for (int64_t k = scalar_from + lane; k < end; k += group) add(p[k], k);
}

// inner == 1, short rows: x [rows, n], one warp per row, written straight to the output.
// rows * n elements: 1 FLOP and sizeof(T) bytes each; bound by memory bandwidth.
template <class T, ReduceOp OP, bool SQUARE, class OutT>
__global__ void reduce_rows_warp_kernel(const T* __restrict__ x, int64_t rows, int64_t n,
                                        Sink<OutT, acc_t<T>> sink) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t nwarps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize; row < rows;
       row += nwarps) {
    auto a = Accum<acc_t<T>, OP>::identity();
    accumulate_range<T, OP, SQUARE>(x + row * n, 0, n, lane, kWarpSize, a);
    a = warp_reduce(a);
    if (lane == 0) sink.template write<OP>(row, 0, a);
  }
}

// inner == 1, long rows: x [rows, n]; block (row, split) reduces chunk `split` of the row.
// grid (rows, splits) x kBlock threads. rows * n elements: 1 FLOP and sizeof(T) bytes each;
// bound by memory bandwidth.
template <class T, ReduceOp OP, bool SQUARE, class OutT>
__global__ void reduce_rows_block_kernel(const T* __restrict__ x, int64_t n, int64_t chunk,
                                         Sink<OutT, acc_t<T>> sink) {
  const int64_t row = blockIdx.x, split = blockIdx.y;
  const int64_t begin = split * chunk;
  const int64_t end = begin + chunk < n ? begin + chunk : n;
  auto a = Accum<acc_t<T>, OP>::identity();
  accumulate_range<T, OP, SQUARE>(x + row * n, begin, end, threadIdx.x, kBlock, a);
  a = block_reduce(a);
  if (threadIdx.x == 0) sink.template write<OP>(row, split, a);
}

// inner > 1: x [outer, n, inner]. Block (32 x kColTileY) covers 32 consecutive inner positions
// of one outer index (coalesced along inner) and rows [split * chunk, ...) of n, threadIdx.y
// striding over them; the kColTileY partial results meet in shared memory, combined in order.
// grid (col_blocks * outer, splits). outer * n * inner elements: 1 FLOP and sizeof(T) bytes each;
// bound by memory bandwidth.
template <class T, ReduceOp OP, bool SQUARE, class OutT>
__global__ void reduce_cols_kernel(const T* __restrict__ x, int64_t n, int64_t inner,
                                   int64_t col_blocks, int64_t chunk, Sink<OutT, acc_t<T>> sink) {
  using A = acc_t<T>;
  __shared__ A sv[kColTileY][kWarpSize + 1];
  __shared__ int64_t si[kColTileY][kWarpSize + 1];
  const int64_t o = blockIdx.x / col_blocks;
  const int64_t col = (blockIdx.x % col_blocks) * kWarpSize + threadIdx.x;
  const int64_t split = blockIdx.y;
  const int64_t begin = split * chunk;
  const int64_t end = begin + chunk < n ? begin + chunk : n;
  auto a = Accum<A, OP>::identity();
  if (col < inner) {
    const T* p = x + o * n * inner + col;
    for (int64_t j = begin + threadIdx.y; j < end; j += kColTileY) {
      const A v = to_acc(p[j * inner]);
      a.merge(SQUARE ? v * v : v, j);
    }
  }
  sv[threadIdx.y][threadIdx.x] = a.v;
  si[threadIdx.y][threadIdx.x] = a.i;
  __syncthreads();
  if (threadIdx.y == 0 && col < inner) {
    for (int y = 1; y < kColTileY; ++y) a.merge(sv[y][threadIdx.x], si[y][threadIdx.x]);
    sink.template write<OP>(o * inner + col, split, a);
  }
}

// Second pass of a split reduction: one warp per slot combines partials [splits, slots] in a
// fixed tree. slots * splits * (sizeof(A) [+ 8 for Max]) bytes, latency-bound (small).
template <class A, ReduceOp OP, class OutT>
__global__ void reduce_partials_kernel(const A* __restrict__ partial,
                                       const int64_t* __restrict__ partial_idx, int64_t splits,
                                       Sink<OutT, A> sink) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t slot = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (slot >= sink.slots) return;
  auto a = Accum<A, OP>::identity();
  for (int64_t s = lane; s < splits; s += kWarpSize) {
    const int64_t k = s * sink.slots + slot;
    a.merge(partial[k], OP == ReduceOp::Max ? partial_idx[k] : 0);
  }
  a = warp_reduce(a);
  if (lane == 0) sink.template write<OP>(slot, 0, a);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How many blocks share one reduction of `len` elements so the grid reaches kTargetBlocks, with
// at least `min_per_split` elements each; chunk is a multiple of `align` elements.
struct Split {
  int64_t splits, chunk;
};
Split choose_split(int64_t len, int64_t base_blocks, int64_t min_per_split, int64_t align) {
  int64_t splits = ceil_div(kTargetBlocks, base_blocks);
  const int64_t max_splits = ceil_div(len, min_per_split);
  if (splits > max_splits) splits = max_splits;
  if (splits > 65535) splits = 65535;
  if (splits < 1) splits = 1;
  const int64_t chunk = ceil_div(ceil_div(len, splits), align) * align;
  return {ceil_div(len, chunk), chunk};
}

// Runs the reduction of x [outer, n, inner] into sink.out (sink.slots = outer * inner), adding a
// partials pass when the work is split across blocks.
template <class T, ReduceOp OP, bool SQUARE, class OutT>
void launch_reduce(const T* x, int64_t outer, int64_t n, int64_t inner, Sink<OutT, acc_t<T>> sink,
                   int device) {
  using A = acc_t<T>;
  cudaStream_t stream = stream_for(device);
  Split split{1, n};
  int64_t col_blocks = 0;
  if (inner == 1 && n < kBlockRowMin) {
    const unsigned grid = grid_for(size_t(outer), kWarpsPerBlock, 1u << 20);
    reduce_rows_warp_kernel<T, OP, SQUARE, OutT><<<grid, kBlock, 0, stream>>>(x, outer, n, sink);
    CUDA_CHECK_LAUNCH("reduce_rows_warp_kernel");
    return;
  }
  if (inner == 1) {
    split = choose_split(n, outer, kMinPerSplitRow, kVec<T>);
  } else {
    col_blocks = ceil_div(inner, kWarpSize);
    split = choose_split(n, col_blocks * outer, kMinPerSplitCol, 1);
  }
  // Partials of a split reduction: [splits, slots] values (+ indices for Max), freed in stream
  // order once the second pass has consumed them.
  A* partial = nullptr;
  int64_t* partial_idx = nullptr;
  Sink<OutT, A> first = sink;
  if (split.splits > 1) {
    const size_t count = size_t(split.splits) * size_t(sink.slots);
    partial = static_cast<A*>(pool_alloc(count * sizeof(A), device));
    if (OP == ReduceOp::Max) partial_idx = static_cast<int64_t*>(pool_alloc(count * 8, device));
    first.partial = partial;
    first.partial_idx = partial_idx;
  }
  if (inner == 1) {
    const dim3 grid(unsigned(outer), unsigned(split.splits));
    reduce_rows_block_kernel<T, OP, SQUARE, OutT><<<grid, kBlock, 0, stream>>>(x, n, split.chunk,
                                                                               first);
    CUDA_CHECK_LAUNCH("reduce_rows_block_kernel");
  } else {
    const dim3 grid(unsigned(col_blocks * outer), unsigned(split.splits));
    reduce_cols_kernel<T, OP, SQUARE, OutT><<<grid, dim3(kWarpSize, kColTileY), 0, stream>>>(
        x, n, inner, col_blocks, split.chunk, first);
    CUDA_CHECK_LAUNCH("reduce_cols_kernel");
  }
  if (split.splits > 1) {
    const unsigned grid = grid_for(size_t(sink.slots), kWarpsPerBlock, 1u << 30);
    reduce_partials_kernel<A, OP, OutT><<<grid, kBlock, 0, stream>>>(partial, partial_idx,
                                                                     split.splits, sink);
    CUDA_CHECK_LAUNCH("reduce_partials_kernel");
    pool_free(partial, device);
    pool_free(partial_idx, device);
  }
}

}  // namespace

void reduce(ReduceOp op, const Tensor& x, Tensor& out, Tensor* argmax, int64_t outer, int64_t n,
            int64_t inner) {
  ST_CHECK(x.is_contiguous() && out.is_contiguous() && out.dtype() == x.dtype() &&
               out.numel() == outer * inner && x.numel() == outer * n * inner,
           "cuda::reduce: contiguous x [", outer, ", ", n, ", ", inner, "] and out [", outer,
           ", ", inner, "] of one dtype expected, got ", x.desc(), " -> ", out.desc());
  ST_CHECK(op != ReduceOp::Max || n > 0, "cuda::reduce: max over an empty dim of ", x.desc());
  ST_CHECK(outer * inner <= INT32_MAX,
           "cuda::reduce: more than 2^31 outputs is unsupported, got ", x.desc());
  if (outer * inner == 0) return;
  const int device = out.device().index;
  int64_t* argmax_ptr = nullptr;
  if (argmax && argmax->defined() && op == ReduceOp::Max) {
    ST_CHECK(argmax->dtype() == DType::I64 && argmax->is_contiguous() &&
                 argmax->numel() == outer * inner,
             "cuda::reduce: argmax must be contiguous i64 [", outer, ", ", inner, "], got ",
             argmax->desc());
    argmax_ptr = argmax->data<int64_t>();
  }
  auto run = [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const Sink<T, A> sink{out.data<T>(), argmax_ptr, nullptr, nullptr, outer * inner,
                          op == ReduceOp::Mean ? n : -1};
    const T* xp = x.data<T>();
    switch (op) {
      case ReduceOp::Sum:
      case ReduceOp::Mean:
        launch_reduce<T, ReduceOp::Sum, false, T>(xp, outer, n, inner, sink, device);
        break;
      case ReduceOp::Max:
        launch_reduce<T, ReduceOp::Max, false, T>(xp, outer, n, inner, sink, device);
        break;
    }
  };
  switch (x.dtype()) {
    case DType::F32: run(float{}); break;
    case DType::BF16: run(bf16{}); break;
    case DType::F64: run(double{}); break;
    default: ST_THROW("cuda::reduce: floating dtype expected, got ", x.desc());
  }
}

void reduce_all(const Tensor& x, Tensor& out, bool squares) {
  ST_CHECK(x.is_contiguous(), "cuda::reduce_all: contiguous x expected, got ", x.desc());
  const DType want = x.dtype() == DType::F64 ? DType::F64 : DType::F32;
  ST_CHECK(out.numel() == 1 && out.dtype() == want, "cuda::reduce_all: out must be one ",
           dtype_name(want), " element, got ", out.desc());
  const int device = out.device().index;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const Sink<A, A> sink{out.data<A>(), nullptr, nullptr, nullptr, 1, -1};
    // A whole-tensor reduction is one long row: block-per-chunk first pass, then one warp
    // combining the partials.
    if (squares)
      launch_reduce<T, ReduceOp::Sum, true, A>(x.data<T>(), 1, x.numel(), 1, sink, device);
    else
      launch_reduce<T, ReduceOp::Sum, false, A>(x.data<T>(), 1, x.numel(), 1, sink, device);
  };
  switch (x.dtype()) {
    case DType::F32: run(float{}); break;
    case DType::BF16: run(bf16{}); break;
    case DType::F64: run(double{}); break;
    default: ST_THROW("cuda::reduce_all: floating dtype expected, got ", x.desc());
  }
}

}  // namespace seqtrain::cuda
