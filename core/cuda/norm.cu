// LayerNorm and RMSNorm over the last dim of x [rows, D].
//   LayerNorm: y = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(mean((x - mean)^2) + eps)
//   RMSNorm:   y = x * rstd * w,               rstd = 1 / sqrt(mean(x^2) + eps)
// Backward, with xhat = (x - mean) * rstd (mean = 0 for RMSNorm) and g = dy * w:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))   (no mean(g) term for RMSNorm)
//   dw = sum_rows dy * xhat,  db = sum_rows dy
// Each kernel serves both norms (Center = LayerNorm). Each row is handled by a group of threads
// (core/cuda/rowwise.cuh), so x and dy are read from HBM once: in the forward the row is cached in
// registers; in the backward of rows that 16-byte chunks tile (up to 8192 bf16 elements) the next
// rows are staged into shared memory by cp.async while one is reduced (the pipelined kernel), and
// other rows take register-cached warp or group kernels. dw/db are reduced without atomics: each
// block accumulates the rows it owns into its own partial row, and the partial rows are added in a
// fixed order.
#include "core/backend.h"
#include "core/cuda/mma.cuh"
#include "core/cuda/rowwise.cuh"
#include "core/cuda/runtime.h"

#include <atomic>
#include <type_traits>

namespace seqtrain::cuda {
namespace {

// Chunks of a row each thread keeps in registers: 8 of x in the forward, 4 each of x and dy in
// the backward. The backward grid is persistent and a thread owns the same columns in every row it
// visits, so it also keeps the matching weight chunks in registers, loaded once. (The forward
// measured faster with one row per group, no persistence and the parameters re-read from L1/L2:
// it has fewer registers to spare.)
constexpr int kForwardCache = 8, kBackwardCache = 4;

// Rounds a chunk of computed values to the output type. bf16 takes the hardware's conversion of
// a pair per instruction (cvt.rn.bf16x2.f32, sm_80+): the same round-to-nearest-even as
// float_to_bf16, whose six integer instructions per element were a sixth of the backward kernel's
// instructions; only a NaN's payload differs (the canonical 0x7fff).
template <class T, int N, class A>
__device__ __forceinline__ Chunk<T, N> round_chunk(const A (&v)[N]) {
  Chunk<T, N> c;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, bf16> && std::is_same_v<A, float> && N % 2 == 0) {
    uint32_t pairs[N / 2];  // element 2i in the low half
#pragma unroll
    for (int i = 0; i < N / 2; ++i) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(pairs[i]) : "f"(v[2 * i + 1]), "f"(v[2 * i]));
    __builtin_memcpy(&c, pairs, sizeof(c));
    return c;
  }
#endif
#pragma unroll
  for (int i = 0; i < N; ++i) c.v[i] = to_storage<T>(v[i]);
  return c;
}

// Parameter chunk `c` (slot i): from registers when cached, else from memory (L2).
template <int VEC, int CACHE, class W>
__device__ __forceinline__ Chunk<W, VEC> param_chunk(const W* p, int c, int i,
                                                     const Chunk<W, VEC> (&cache)[CACHE]) {
  return i < CACHE ? cache[i < CACHE ? i : 0] : load_chunk<VEC>(p + size_t(c) * VEC);
}

// Forward of one norm over x [rows, n]: one group of `group` threads per row (see plan_rows);
// block b handles rows b*rpb .. b*rpb + rpb - 1.
// Reads x once and writes y once: 2 * rows * n * sizeof(T) bytes (+ w, b from L2, + stats);
// ~8 FLOPs per element, far below the ~100 FLOP/byte H100 balance: memory bound.
template <class T, class W, int VEC, bool Center>
__global__ void __launch_bounds__(kMaxGroup, 1)
    norm_forward_kernel(const T* __restrict__ x, const W* __restrict__ weight,
                        const W* __restrict__ bias, T* __restrict__ y, acc_t<T>* __restrict__ mean_out,
                        acc_t<T>* __restrict__ rstd_out, int64_t rows, int n, int chunks, int group,
                        acc_t<T> eps) {
  using A = acc_t<T>;
  using C = Chunk<T, VEC>;
  using WC = Chunk<W, VEC>;
  __shared__ A scratch[kWarpSize];
  const int rpb = blockDim.x / group, g = threadIdx.x / group, lane = threadIdx.x & (group - 1);
  const int64_t row = int64_t(blockIdx.x) * rpb + g;
  const bool valid = row < rows;
  const int my_chunks = valid ? chunks : 0;  // rows past the end still join the reductions
  const size_t row_off = size_t(valid ? row : 0) * size_t(n);
  const T* xr = x + row_off;
  C cache[kForwardCache];  // (kForwardCache, VEC): this thread's share of the row
  cache_chunks<VEC>(xr, my_chunks, lane, group, cache);

  A mean = 0;
  if constexpr (Center) {
    A s = 0;
    for_chunks<VEC>(xr, my_chunks, lane, group, cache, [&](int, int, const C& c) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) s += elem(c, i);
    });
    mean = group_sum(s, group, scratch) / A(n);
  }
  // Second pass over the cached row: sum of squared deviations, not E[x^2] - mean^2, which
  // cancels catastrophically when |mean| >> std.
  A ss = 0;
  for_chunks<VEC>(xr, my_chunks, lane, group, cache, [&](int, int, const C& c) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const A d = elem(c, i) - mean;
      ss += d * d;
    }
  });
  const A rstd = A(1) / sqrt(group_sum(ss, group, scratch) / A(n) + eps);

  T* yr = y + row_off;
  for_chunks<VEC>(xr, my_chunks, lane, group, cache, [&](int ci, int, const C& c) {
    const WC wc = load_chunk<VEC>(weight + size_t(ci) * VEC);
    WC bc{};
    if (Center && bias != nullptr) bc = load_chunk<VEC>(bias + size_t(ci) * VEC);
    A out[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      A v = (elem(c, i) - mean) * rstd * to_acc(wc.v[i]);
      if (Center && bias != nullptr) v += to_acc(bc.v[i]);
      out[i] = v;
    }
    store_chunk<VEC>(yr + size_t(ci) * VEC, round_chunk<T>(out));
  });
  if (valid && lane == 0) {
    if constexpr (Center) mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// Backward of one norm: dx for every row, plus this block's partial dw (and db) sums.
// Persistent grid: block b handles rows b*rpb + g + k*gridDim.x*rpb (group g); each thread owns the same columns in every row, so its
// column sums need no synchronisation. Sums go to `acc` (width = n or 2n: dw then db): per-group
// shared memory, combined over the groups in order into partials[b] at the end, or, when that
// would not fit, straight into partials[b * rpb + g] in global memory. Shared accumulators are
// stored element-major (slot i * chunks + c for column c * VEC + i) so a warp's accesses hit
// consecutive banks.
// Reads x and dy once and writes dx once: 3 * rows * n * sizeof(T) bytes, plus the partials
// (grid * width * sizeof(A), a few % of that); ~15 FLOPs per element: memory bound.
template <class T, class W, int VEC, bool Center>
__global__ void __launch_bounds__(kMaxGroup, 1)
    norm_backward_kernel(const T* __restrict__ x, const W* __restrict__ weight,
                         const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                         const T* __restrict__ dy, T* __restrict__ dx, acc_t<T>* __restrict__ partials,
                         bool has_bias, bool shared_acc, int64_t rows, int n, int chunks, int group) {
  using A = acc_t<T>;
  using C = Chunk<T, VEC>;
  using WC = Chunk<W, VEC>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ A scratch[kWarpSize];
  const int rpb = blockDim.x / group, g = threadIdx.x / group, lane = threadIdx.x & (group - 1);
  const int width = has_bias ? 2 * n : n;
  A* acc = shared_acc ? reinterpret_cast<A*>(smem_raw) + size_t(g) * width
                      : partials + (size_t(blockIdx.x) * rpb + g) * width;
  auto slot = [&](int ci, int i) { return shared_acc ? i * chunks + ci : ci * VEC + i; };
  WC w_cache[kBackwardCache];  // (kBackwardCache, VEC): this thread's columns
  cache_chunks<VEC>(weight, chunks, lane, group, w_cache);

  for (int ci = lane; ci < chunks; ci += group) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      acc[slot(ci, i)] = 0;
      if (has_bias) acc[n + slot(ci, i)] = 0;
    }
  }

  // The loop bound is uniform over the block, so every thread reaches group_sum's barriers.
  for (int64_t base = int64_t(blockIdx.x) * rpb; base < rows; base += int64_t(gridDim.x) * rpb) {
    const int64_t row = base + g;
    const bool valid = row < rows;
    const int my_chunks = valid ? chunks : 0;
    const size_t row_off = size_t(valid ? row : 0) * size_t(n);
    const T* xr = x + row_off;
    const T* dyr = dy + row_off;
    C xc[kBackwardCache], dyc[kBackwardCache];  // (kBackwardCache, VEC) each
    cache_chunks<VEC>(xr, my_chunks, lane, group, xc);
    cache_chunks<VEC>(dyr, my_chunks, lane, group, dyc);
    const A mu = Center && valid ? mean[row] : A(0);
    const A rs = valid ? rstd[row] : A(0);

    A sum_g = 0, sum_gx = 0;
    for_chunks2<VEC>(xr, xc, dyr, dyc, my_chunks, lane, group,
                     [&](int ci, int s, const C& xv, const C& dyv) {
      const WC wc = param_chunk<VEC>(weight, ci, s, w_cache);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const A gi = elem(dyv, i) * to_acc(wc.v[i]);
        sum_g += gi;
        sum_gx += gi * (elem(xv, i) - mu) * rs;
      }
    });
    const A mean_g = Center ? group_sum(sum_g, group, scratch) / A(n) : A(0);
    const A mean_gx = group_sum(sum_gx, group, scratch) / A(n);

    T* dxr = dx + row_off;
    for_chunks2<VEC>(xr, xc, dyr, dyc, my_chunks, lane, group,
                     [&](int ci, int s, const C& xv, const C& dyv) {
      const WC wc = param_chunk<VEC>(weight, ci, s, w_cache);
      A out[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const A d = elem(dyv, i), xhat = (elem(xv, i) - mu) * rs;
        out[i] = rs * (d * to_acc(wc.v[i]) - mean_g - xhat * mean_gx);
        acc[slot(ci, i)] += d * xhat;
        if (has_bias) acc[n + slot(ci, i)] += d;
      }
      store_chunk<VEC>(dxr + size_t(ci) * VEC, round_chunk<T>(out));
    });
  }

  if (!shared_acc) return;
  __syncthreads();
  const A* groups = reinterpret_cast<const A*>(smem_raw);
  A* out = partials + size_t(blockIdx.x) * width;
  for (int j = threadIdx.x; j < width; j += blockDim.x) {
    const int part = j < n ? 0 : n, col = j - part;
    const int s = part + slot(col / VEC, col % VEC);
    A total = groups[s];
    for (int k = 1; k < rpb; ++k) total += groups[size_t(k) * width + s];
    out[j] = total;
  }
}

// ---- warp-per-row fast path (rows of up to 32 * K chunks, K <= kMaxWarpChunks) ----
// One warp owns a whole row: lane l holds chunks l, l + 32, ... (K of them, a compile-time
// count, so the cached row is K packed 16-byte registers quads and no loop is left at runtime).
// All of the row's loads are issued before any arithmetic and the reductions are warp shuffles
// only (no shared memory, no barriers), so small per-thread register footprints let 48-64 warps
// per SM keep enough bytes in flight to run at HBM speed. Longer rows, and everything else, take
// the group-per-row kernels above.
constexpr int kWarpRowsPerBlock = 8;  // 256-thread blocks, one row per warp
constexpr int kWarpBlock = kWarpRowsPerBlock * kWarpSize;

template <int VEC, int K, class T>
__device__ __forceinline__ void load_row(const T* r, int chunks, int lane, Chunk<T, VEC> (&c)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int ci = lane + k * kWarpSize;
    if (ci < chunks) c[k] = load_chunk<VEC>(r + size_t(ci) * VEC);
  }
}

// Resident 256-thread blocks per SM the warp kernels are compiled for (register cap
// 65536 / (256 * blocks)): the forward caches 16 * R * K bytes of x per lane, so R * K <= 3 fits in 40
// registers (48 warps per SM), R * K <= 6 in 48 (40 warps), and more in 80 (24 warps: at 64, rows of
// 8 chunks spilled once the bf16 outputs took the paired conversion of round_chunk). The backward keeps its weight-gradient sums in shared memory, so
// its registers hold only the R rows of x and dy in flight: 4 blocks (64 registers) for
// R * K <= 4, else 3 (80 registers).
template <int K, int R> constexpr int forward_warp_min_blocks() { return R * K <= 3 ? 6 : R * K <= 6 ? 5 : 3; }
template <int K, int R> constexpr int backward_warp_min_blocks() { return R * K <= 4 ? 4 : 3; }

// Forward, one warp per R consecutive rows (R = 2 for rows of up to 2 chunks per lane: twice the
// loads in flight per warp); block b handles rows b * 8R .. b * 8R + 8R - 1. All R rows are loaded
// before any arithmetic. At 3 chunks per lane (bf16 rows of 768) one row per warp (48 warps per
// SM) measured fastest on the H100 at 16384 x 768: 22 us, against 23 with two rows (40 warps), 26
// with four (32 warps) and 31 with one row at 64 warps per SM, which spills (docs/benchmarks.md, run F).
template <int K> constexpr int forward_rows_in_flight() { return K <= 2 ? 2 : 1; }

template <class T, class W, int VEC, int K, int R, bool Center>
__global__ void __launch_bounds__(kWarpBlock, (forward_warp_min_blocks<K, R>()))
    norm_forward_warp_kernel(const T* __restrict__ x, const W* __restrict__ weight,
                             const W* __restrict__ bias, T* __restrict__ y,
                             acc_t<T>* __restrict__ mean_out, acc_t<T>* __restrict__ rstd_out,
                             int64_t rows, int n, int chunks, acc_t<T> eps) {
  using A = acc_t<T>;
  using C = Chunk<T, VEC>;
  using WC = Chunk<W, VEC>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t first = (int64_t(blockIdx.x) * kWarpRowsPerBlock + threadIdx.x / kWarpSize) * R;
  if (first >= rows) return;  // whole warps leave together: only warp shuffles follow
  C xc[R][K];
#pragma unroll
  for (int r = 0; r < R; ++r)
    if (first + r < rows) load_row<VEC>(x + size_t(first + r) * size_t(n), chunks, lane, xc[r]);

#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t row = first + r;
    if (row >= rows) break;  // uniform over the warp
    A mean = 0;
    if constexpr (Center) {
      A s = 0;
#pragma unroll
      for (int k = 0; k < K; ++k)
        if (lane + k * kWarpSize < chunks) {
#pragma unroll
          for (int i = 0; i < VEC; ++i) s += elem(xc[r][k], i);
        }
      mean = warp_sum(s) / A(n);
    }
    // Two-pass variance over the cached row (no E[x^2] - mean^2 cancellation).
    A ss = 0;
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (lane + k * kWarpSize < chunks) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const A d = elem(xc[r][k], i) - mean;
          ss += d * d;
        }
      }
    const A rstd = A(1) / sqrt(warp_sum(ss) / A(n) + eps);

    T* yr = y + size_t(row) * size_t(n);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int ci = lane + k * kWarpSize;
      if (ci < chunks) {
        const WC wc = load_chunk<VEC>(weight + size_t(ci) * VEC);
        WC bc{};
        if (Center && bias != nullptr) bc = load_chunk<VEC>(bias + size_t(ci) * VEC);
        A out[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          A v = (elem(xc[r][k], i) - mean) * rstd * to_acc(wc.v[i]);
          if (Center && bias != nullptr) v += to_acc(bc.v[i]);
          out[i] = v;
        }
        store_chunk<VEC>(yr + size_t(ci) * VEC, round_chunk<T>(out));
      }
    }
    if (lane == 0) {
      if constexpr (Center) mean_out[row] = mean;
      rstd_out[row] = rstd;
    }
  }
}

// Backward for rows that 16-byte chunks do not tile, of up to 128 elements (element-wise chunks).
// Persistent grid, one warp per row, R rows in flight per warp: warp w of block b
// handles the row groups (b * 8 + w) + j * gridDim.x * 8, each of R consecutive rows whose loads
// are all issued before any arithmetic (R * 2K independent 16-byte loads per lane). A lane owns
// the same columns in every row; it accumulates their dw (and db) in its own shared-memory slots
// (slot (k * VEC + i) * 32 + lane of its warp's area: conflict-free), which leaves the registers
// to the rows in flight. At the end the block's 8 warp areas are added in warp order into the
// block's partial row (fixed order: the result depends only on the shape and the grid, which
// depends only on the shape and the device).
template <class T, class W, int VEC, int K, int R, bool Center, bool HasBias>
__global__ void __launch_bounds__(kWarpBlock, (backward_warp_min_blocks<K, R>()))
    norm_backward_warp_kernel(const T* __restrict__ x, const W* __restrict__ weight,
                              const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                              const T* __restrict__ dy, T* __restrict__ dx,
                              acc_t<T>* __restrict__ partials, int64_t rows, int n, int chunks) {
  using A = acc_t<T>;
  using C = Chunk<T, VEC>;
  using WC = Chunk<W, VEC>;
  constexpr int kSlots = K * VEC * kWarpSize;     // one warp's dw (or db) area
  constexpr int kArea = (HasBias ? 2 : 1) * kSlots;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  A* acc = reinterpret_cast<A*>(smem_raw) + warp * kArea;  // [dw slots | db slots]
#pragma unroll
  for (int s = lane; s < kArea; s += kWarpSize) acc[s] = 0;

  const int64_t stride = int64_t(gridDim.x) * kWarpRowsPerBlock * R;
  wait_for_prerequisite_grids();  // launched as a programmatic dependent (launch_persistent_backward)
  for (int64_t first = (int64_t(blockIdx.x) * kWarpRowsPerBlock + warp) * R; first < rows; first += stride) {
    C xc[R][K], dyc[R][K];
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (first + r < rows) {
        load_row<VEC>(x + size_t(first + r) * size_t(n), chunks, lane, xc[r]);
        load_row<VEC>(dy + size_t(first + r) * size_t(n), chunks, lane, dyc[r]);
      }
    A mu[R], rs[R], mean_g[R], mean_gx[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const bool valid = first + r < rows;
      mu[r] = Center && valid ? mean[first + r] : A(0);
      rs[r] = valid ? rstd[first + r] : A(0);
      A sum_g = 0, sum_gx = 0;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int ci = lane + k * kWarpSize;
        if (valid && ci < chunks) {
          const WC wc = load_chunk<VEC>(weight + size_t(ci) * VEC);
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            const A gi = elem(dyc[r][k], i) * to_acc(wc.v[i]);
            sum_g += gi;
            sum_gx += gi * ((elem(xc[r][k], i) - mu[r]) * rs[r]);
          }
        }
      }
      mean_g[r] = Center ? warp_sum(sum_g) / A(n) : A(0);
      mean_gx[r] = warp_sum(sum_gx) / A(n);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (first + r >= rows) continue;  // uniform over the warp
      T* dxr = dx + size_t(first + r) * size_t(n);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int ci = lane + k * kWarpSize;
        if (ci < chunks) {
          const WC wc = load_chunk<VEC>(weight + size_t(ci) * VEC);
          A out[VEC];
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            const A d = elem(dyc[r][k], i), xhat = (elem(xc[r][k], i) - mu[r]) * rs[r];
            out[i] = rs[r] * (d * to_acc(wc.v[i]) - mean_g[r] - xhat * mean_gx[r]);
            const int s = (k * VEC + i) * kWarpSize + lane;
            acc[s] += d * xhat;
            if constexpr (HasBias) acc[kSlots + s] += d;
          }
          store_chunk<VEC>(dxr + size_t(ci) * VEC, round_chunk<T>(out));
        }
      }
    }
  }

  __syncthreads();
  const A* areas = reinterpret_cast<const A*>(smem_raw);
  const int width = HasBias ? 2 * n : n;
  A* out = partials + size_t(blockIdx.x) * width;
  for (int j = threadIdx.x; j < width; j += blockDim.x) {
    const int part = j < n ? 0 : kSlots, col = j < n ? j : j - n;
    const int ci = col / VEC, i = col % VEC;
    const int s = part + ((ci / kWarpSize) * VEC + i) * kWarpSize + ci % kWarpSize;
    A total = areas[s];
    for (int w = 1; w < kWarpRowsPerBlock; ++w) total += areas[w * kArea + s];
    out[j] = total;
  }
}

// ---- pipelined backward: rows staged through shared memory by cp.async ----
// A group of G threads per row (G = 32: one warp, eight rows per block; G = 256: the whole block);
// thread `lane` owns the 16-byte chunks lane + k * G (k < K) of every row its group visits, and the
// group walks the rows first, first + stride, ... (persistent grid). While one row is reduced and
// written, the x and dy chunks of the next S - 1 rows are in flight: cp.async into the thread's own
// shared-memory slots, which only that thread reads, so the staging needs no barrier. dw (and db)
// accumulate in registers and are combined over the block's groups in group order into its partial
// row at the end (fixed order: the result depends only on the shape and the device).
// Bytes as the other backward kernels (3 * rows * n * sizeof(T) + partials); shared memory
// 256 * S * 2 * K * 16 bytes per block.
// Full: every thread owns all K of its chunks in every row (chunks == G * K, e.g. bf16 rows of 768
// at G = 32, K = 3), so the per-chunk bounds checks, and the branches that kept the compiler from
// interleaving the K chunks' work, are compiled out.
constexpr int kPipeBlock = 256, kPipeStages = 3;
static_assert(kPipeBlock == kWarpBlock, "launch_persistent_backward launches kWarpBlock threads");

template <int G, int K, int S> constexpr size_t pipe_stage_bytes() { return size_t(kPipeBlock) * S * 2 * K * 16; }

template <class T, class W, int G, int K, int S, bool Center, bool HasBias, bool Full>
__global__ void __launch_bounds__(kPipeBlock, 2)
    norm_backward_pipelined_kernel(const T* __restrict__ x, const W* __restrict__ weight,
                                   const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                                   const T* __restrict__ dy, T* __restrict__ dx, acc_t<T>* __restrict__ partials,
                                   int64_t rows, int n, int chunks) {
  using A = acc_t<T>;
  constexpr int VEC = kVec<T>;
  using C = Chunk<T, VEC>;
  using WC = Chunk<W, VEC>;
  constexpr int kGroups = kPipeBlock / G;
  constexpr int kWarps = kPipeBlock / kWarpSize;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ A scratch[2][kWarps][2];  // per-warp (sum_g, sum_gx), double-buffered by row parity (G = 256)
  const int g = threadIdx.x / G, lane = threadIdx.x % G;
  C* stage = reinterpret_cast<C*>(smem_raw) + size_t(g) * S * 2 * K * G;  // [S][x | dy][K][G]
  auto slot = [&](int s, int which, int k) { return stage + ((s * 2 + which) * K + k) * G + lane; };

  const int64_t stride = int64_t(gridDim.x) * kGroups;
  const int64_t first = int64_t(blockIdx.x) * kGroups + g;
  wait_for_prerequisite_grids();  // launched as a programmatic dependent (launch_persistent_backward)
  // Issues the copies of `row` into stage s and commits them as one group (an empty group past the
  // last row, so that every thread's group count stays in step with the rows).
  auto issue = [&](int64_t row, int s) {
    if (row < rows) {
      const T* xr = x + size_t(row) * size_t(n);
      const T* dyr = dy + size_t(row) * size_t(n);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int ci = lane + k * G;
        if (Full || ci < chunks) {
          cp_async16(smem_addr(slot(s, 0, k)), xr + size_t(ci) * VEC, true);
          cp_async16(smem_addr(slot(s, 1, k)), dyr + size_t(ci) * VEC, true);
        }
      }
    }
    cp_async_commit();
  };

  A dw[K][VEC], db[K][VEC];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int i = 0; i < VEC; ++i) dw[k][i] = db[k][i] = 0;

#pragma unroll
  for (int s = 0; s + 1 < S; ++s) issue(first + s * stride, s);
  // Programmatic dependent launch: the kernel summing the partial rows may be scheduled now; it
  // waits (griddepcontrol.wait) until this grid has finished and its writes are visible.
  allow_dependent_launch();
  int s_cur = 0, parity = 0;
  // The row statistics are loaded one row ahead, so that their latency hides behind a row's work.
  auto stats = [&](int64_t row, A& mu, A& rs) {
    if (row < rows) mu = Center ? mean[row] : A(0), rs = rstd[row];
  };
  A mu_next = 0, rs_next = 0;
  stats(first, mu_next, rs_next);
  // The loop bound is uniform over the group (the block when G = 256, whose reduction has a barrier).
  for (int64_t row = first; row < rows; row += stride) {
    const A mu = mu_next, rs = rs_next;
    stats(row + stride, mu_next, rs_next);
    issue(row + (S - 1) * stride, s_cur == 0 ? S - 1 : s_cur - 1);
    cp_async_wait<S - 1>();  // this row's copies (all but the S - 1 newest groups) have landed
    A sum_g = 0, sum_gx = 0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int ci = lane + k * G;
      if (Full || ci < chunks) {
        const C xv = *slot(s_cur, 0, k), dyv = *slot(s_cur, 1, k);
        const WC wc = load_chunk<VEC>(weight + size_t(ci) * VEC);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const A gi = elem(dyv, i) * to_acc(wc.v[i]);
          sum_g += gi;
          sum_gx += gi * (elem(xv, i) - mu);  // times rs after the reduction
        }
      }
    }
    sum_g = warp_sum(sum_g);
    sum_gx = warp_sum(sum_gx);
    if constexpr (G > kWarpSize) {
      const int warp = threadIdx.x / kWarpSize;
      if (threadIdx.x % kWarpSize == 0) scratch[parity][warp][0] = sum_g, scratch[parity][warp][1] = sum_gx;
      __syncthreads();
      sum_g = scratch[parity][0][0];
      sum_gx = scratch[parity][0][1];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) sum_g += scratch[parity][w][0], sum_gx += scratch[parity][w][1];
      parity ^= 1;
    }
    const A mean_g = Center ? sum_g / A(n) : A(0);
    const A mean_gx = sum_gx * rs / A(n);
    T* dxr = dx + size_t(row) * size_t(n);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int ci = lane + k * G;
      if (Full || ci < chunks) {
        const C xv = *slot(s_cur, 0, k), dyv = *slot(s_cur, 1, k);
        const WC wc = load_chunk<VEC>(weight + size_t(ci) * VEC);
        A out[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const A d = elem(dyv, i), xhat = (elem(xv, i) - mu) * rs;
          out[i] = rs * (d * to_acc(wc.v[i]) - mean_g - xhat * mean_gx);
          dw[k][i] += d * xhat;
          if constexpr (HasBias) db[k][i] += d;
        }
        store_chunk<VEC>(dxr + size_t(ci) * VEC, round_chunk<T>(out));
      }
    }
    s_cur = s_cur + 1 == S ? 0 : s_cur + 1;
  }
  cp_async_wait<0>();

  // The block's partial row: group 0's sums plus groups 1, 2, ... in order (G = 32: through shared
  // memory, which the stages no longer need).
  const int width = HasBias ? 2 * n : n;
  A* out = partials + size_t(blockIdx.x) * width;
  if constexpr (kGroups == 1) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int ci = lane + k * G;
      if (Full || ci < chunks)
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          out[ci * VEC + i] = dw[k][i];
          if constexpr (HasBias) out[n + ci * VEC + i] = db[k][i];
        }
    }
  } else {
    __syncthreads();
    A* sums = reinterpret_cast<A*>(smem_raw);  // [kGroups][width]
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int ci = lane + k * G;
      if (Full || ci < chunks)
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          sums[size_t(g) * width + ci * VEC + i] = dw[k][i];
          if constexpr (HasBias) sums[size_t(g) * width + n + ci * VEC + i] = db[k][i];
        }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < width; j += kPipeBlock) {
      A total = sums[j];
      for (int q = 1; q < kGroups; ++q) total += sums[size_t(q) * width + j];
      out[j] = total;
    }
  }
}

// out0[j] (j < n) and out1[j - n] (n <= j < width) = sum_p partials[p * width + j], p < P, in a
// fixed order: thread row ty sums p = ty, ty + 32, ... eight loads at a time (all issued before
// they are added, in a fixed tree), then warp w adds column w's 32 thread-row sums in a fixed
// shuffle tree. Block (32, 32) per 32 columns; at P = 256 (16384 x 768) each thread issues its
// eight loads at once, so the kernel is about one L2 round trip.
constexpr int kRedCols = 32, kRedRows = 32;
template <class A, class O>
__global__ void __launch_bounds__(kRedCols * kRedRows)
    sum_norm_partials_kernel(const A* __restrict__ partials, int P, int n, int width,
                             O* __restrict__ out0, O* __restrict__ out1) {
  __shared__ A sums[kRedRows][kRedCols + 1];
  wait_for_prerequisite_grids();
  allow_dependent_launch();  // the next kernel may be scheduled while this one sums
  const int j = blockIdx.x * kRedCols + threadIdx.x;
  A acc = 0;
  if (j < width) {
    int p = threadIdx.y;
    for (; p + 7 * kRedRows < P; p += 8 * kRedRows) {
      A v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) v[u] = partials[size_t(p + u * kRedRows) * width + j];
      acc += ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
    }
    for (; p < P; p += kRedRows) acc += partials[size_t(p) * width + j];
  }
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  const A total = warp_sum(sums[threadIdx.x][threadIdx.y]);  // warp ty: column blockIdx.x * 32 + ty
  const int col = blockIdx.x * kRedCols + threadIdx.y;
  if (threadIdx.x == 0 && col < width) {
    if (col < n)
      out0[col] = to_storage<O>(total);
    else
      out1[col - n] = to_storage<O>(total);
  }
}

constexpr int kMaxWarpChunksFwd = 8, kMaxWarpChunksBwd = 4;

// Calls f(std::integral_constant<int, K>) for the smallest K in {1, 2, 3, 4, 8} (up to KMax) with
// 32 * K >= chunks; returns false when no such K exists.
template <int KMax, class F>
bool dispatch_warp_chunks(int chunks, F&& f) {
  const int need = (chunks + kWarpSize - 1) / kWarpSize;
  if (need <= 1) { f(std::integral_constant<int, 1>{}); return true; }
  if (need <= 2) { f(std::integral_constant<int, 2>{}); return true; }
  if (need <= 3) { f(std::integral_constant<int, 3>{}); return true; }
  if (need <= 4) { f(std::integral_constant<int, 4>{}); return true; }
  if constexpr (KMax >= 8)
    if (need <= 8) { f(std::integral_constant<int, 8>{}); return true; }
  return false;
}

// Resident blocks per SM of a kernel at kWarpBlock threads, queried once per kernel.
// (The host path of these kernels is part of what a single call costs, so it stays lean.)
template <auto Kernel>
int warp_blocks_per_sm(size_t smem) {
  static std::atomic<int> cached{0};
  int b = cached.load(std::memory_order_relaxed);
  if (b == 0) {
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, Kernel, kWarpBlock, smem));
    if (b < 1) b = 1;
    cached.store(b, std::memory_order_relaxed);
  }
  return b;
}

// Largest shared accumulator a backward block uses before falling back to global partials (whose
// read-modify-writes then compete with the rows for L2 and HBM): most of the 227 KiB an H100
// block may opt into.
constexpr size_t kMaxSharedAcc = 200 * 1024;

// Persistent grid for the backward: as many blocks as fit on the device at once (each loops over
// its rows, so there are only that many partial rows), or fewer when there are not that many rows.
template <class Kernel>
unsigned resident_grid(Kernel kernel, const RowPlan& p, int64_t rows, size_t smem, int device) {
  int blocks_per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, p.block, smem));
  const int64_t needed = (rows + p.rows_per_block - 1) / p.rows_per_block;
  const int64_t resident = int64_t(sm_count(device)) * (blocks_per_sm > 0 ? blocks_per_sm : 1);
  return unsigned(needed < resident ? needed : resident);
}

// Rows each warp of the backward keeps in flight: two for short rows (K <= 2 chunks per lane),
// where one row's loads are too few to cover HBM latency.
template <int K> constexpr int backward_rows_in_flight() { return K <= 2 ? 2 : 1; }

// Launches a persistent backward kernel (kWarpBlock threads holding `groups_per_block` row groups,
// each of which walks rows `unit` at a time) and the fixed-order sum of its per-block partial rows
// into dweight (and dbias). The grid: as few rounds as the resident groups allow, then as few
// blocks as give every group that many (at most one fewer): no partly filled last round.
template <auto Kernel, class T, class W, bool HasBias>
void launch_persistent_backward(size_t smem, int groups_per_block, int unit, const Tensor& x, const Tensor& weight,
                                const Tensor* mean, const Tensor& rstd, const Tensor& dy, Tensor& dx, Tensor& dweight,
                                Tensor* dbias, int64_t rows, int n, int chunks, cudaStream_t stream) {
  using A = acc_t<T>;
  static const bool configured = [&] {
    CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    return true;
  }();
  (void)configured;
  const int64_t resident = int64_t(sm_count(x.device().index)) * warp_blocks_per_sm<Kernel>(smem);
  const int64_t units = (rows + unit - 1) / unit, slots = resident * groups_per_block;
  const int64_t per_group = (units + slots - 1) / slots;
  const int64_t groups = (units + per_group - 1) / per_group;
  const int grid = int((groups + groups_per_block - 1) / groups_per_block);
  const int width = HasBias ? 2 * n : n;
  Tensor partials = Tensor::empty({int64_t(grid), width}, stats_dtype<T>(), x.device());
  // Both kernels are launched as programmatic dependents: the backward's blocks are scheduled while
  // the previous kernel (e.g. the last call's partial sum, which allows it at once) still runs, and
  // the partial sum's blocks are resident and waiting when the last row is written, instead of
  // launching then (H100, 16384 x 768 bf16: 37 -> 36 us per call; docs/benchmarks.md run I).
  launch_dependent(Kernel, dim3(unsigned(grid)), dim3(kWarpBlock), smem, stream, x.data<T>(), weight.data<W>(),
                   mean ? mean->data<A>() : nullptr, rstd.data<A>(), dy.data<T>(), dx.data<T>(), partials.data<A>(),
                   rows, n, chunks);
  launch_dependent(sum_norm_partials_kernel<A, W>, dim3(unsigned((width + kRedCols - 1) / kRedCols)),
                   dim3(kRedCols, kRedRows), 0, stream, partials.data<A>(), grid, n, width, dweight.data<W>(),
                   HasBias ? dbias->data<W>() : nullptr);
}

// The warp-per-row backward: one row group of R rows per warp.
template <class T, class W, int V, int K, int R, bool Center, bool HasBias>
void launch_backward_warp(const Tensor& x, const Tensor& weight, const Tensor* mean, const Tensor& rstd,
                          const Tensor& dy, Tensor& dx, Tensor& dweight, Tensor* dbias, int64_t rows, int n,
                          int chunks, cudaStream_t stream) {
  constexpr size_t smem = size_t(HasBias ? 2 : 1) * K * V * kWarpSize * kWarpRowsPerBlock * sizeof(acc_t<T>);
  launch_persistent_backward<norm_backward_warp_kernel<T, W, V, K, R, Center, HasBias>, T, W, HasBias>(
      smem, kWarpRowsPerBlock, R, x, weight, mean, rstd, dy, dx, dweight, dbias, rows, n, chunks, stream);
}

// The pipelined backward (16-byte chunks; K chunks per thread, G threads per row).
template <class T, class W, int G, int K, bool Center, bool HasBias>
void launch_backward_pipelined(const Tensor& x, const Tensor& weight, const Tensor* mean, const Tensor& rstd,
                               const Tensor& dy, Tensor& dx, Tensor& dweight, Tensor* dbias, int64_t rows, int n,
                               int chunks, cudaStream_t stream) {
  constexpr int S = kPipeStages, kGroups = kPipeBlock / G;
  // The stages, or (G = 32) the groups' partial rows combined at the end, whichever is larger.
  constexpr size_t stage_bytes = pipe_stage_bytes<G, K, S>();
  constexpr size_t max_sums = size_t(kGroups) * 2 * G * K * kVec<T> * sizeof(acc_t<T>);
  constexpr size_t smem = kGroups == 1 || stage_bytes >= max_sums ? stage_bytes : max_sums;
  if (chunks == G * K)
    launch_persistent_backward<norm_backward_pipelined_kernel<T, W, G, K, S, Center, HasBias, true>, T, W, HasBias>(
        smem, kGroups, 1, x, weight, mean, rstd, dy, dx, dweight, dbias, rows, n, chunks, stream);
  else
    launch_persistent_backward<norm_backward_pipelined_kernel<T, W, G, K, S, Center, HasBias, false>, T, W, HasBias>(
        smem, kGroups, 1, x, weight, mean, rstd, dy, dx, dweight, dbias, rows, n, chunks, stream);
}

// Calls f(integral_constant<G>, integral_constant<K>) for the pipelined backward's shape of a row of
// `chunks` 16-byte chunks: a warp per row up to 128 chunks (K = 1..4 per lane), the block up to
// 1024 (K = 1..4 per thread); returns false for longer rows.
template <class F>
bool dispatch_pipelined(int chunks, F&& f) {
  auto by_k = [&](auto g_tag) {
    constexpr int G = decltype(g_tag)::value;
    const int need = (chunks + G - 1) / G;
    if (need <= 1) f(g_tag, std::integral_constant<int, 1>{});
    else if (need <= 2) f(g_tag, std::integral_constant<int, 2>{});
    else if (need <= 3) f(g_tag, std::integral_constant<int, 3>{});
    else f(g_tag, std::integral_constant<int, 4>{});
  };
  if (chunks <= 4 * kWarpSize) by_k(std::integral_constant<int, kWarpSize>{});
  else if (chunks <= 4 * kPipeBlock) by_k(std::integral_constant<int, kPipeBlock>{});
  else return false;
  return true;
}

template <bool Center>
void norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y,
                  Tensor* mean, Tensor& rstd) {
  const int64_t n = x.size(-1), rows = n > 0 ? x.numel() / n : 0;
  if (rows == 0 || n == 0) return;
  cudaStream_t stream = stream_for(x.device().index);
  dispatch_floating(x.dtype(), "norm input", [&](auto xtag) {
    using T = decltype(xtag);
    using A = acc_t<T>;
    check_stats(rstd, stats_dtype<T>(), "rstd");
    if (mean) check_stats(*mean, stats_dtype<T>(), "mean");
    dispatch_param<T>(weight.dtype(), "norm weight", [&](auto wtag) {
      using W = decltype(wtag);
      ST_CHECK(!bias.defined() || bias.dtype() == weight.dtype(), "norm bias must match the weight dtype, got ",
               bias.desc(), " and ", weight.desc());
      const W* b = bias.defined() ? bias.data<W>() : nullptr;
      const bool vec = rows_vectorizable(n, sizeof(T), {x.data_ptr(), y.data_ptr()}) &&
                       aligned16(weight.data_ptr()) && (b == nullptr || aligned16(b));
      auto launch = [&](auto kernel, int vec_width) {
        const RowPlan p = plan_rows(n, vec_width, kForwardCache, 256);
        const unsigned grid = unsigned((rows + p.rows_per_block - 1) / p.rows_per_block);
        kernel<<<grid, p.block, 0, stream>>>(x.data<T>(), weight.data<W>(), b, y.data<T>(),
                                             mean ? mean->data<A>() : nullptr, rstd.data<A>(), rows,
                                             int(n), p.chunks, p.group, A(eps));
        CUDA_CHECK_LAUNCH(norm_forward_kernel);
      };
      // Warp-per-row kernel when the row fits in K <= 8 chunks per lane (16-byte chunks: up to
      // 2048 bf16 / 1024 f32 / 512 f64 elements; element-wise chunks, for unaligned rows: 128).
      auto launch_warp = [&](auto vec_tag, auto kmax_tag) {
        constexpr int V = decltype(vec_tag)::value;
        const int chunks = int(n / V);
        return dispatch_warp_chunks<decltype(kmax_tag)::value>(chunks, [&](auto k_tag) {
          constexpr int K = decltype(k_tag)::value;
          constexpr int R = forward_rows_in_flight<K>();
          const unsigned grid = unsigned((rows + kWarpRowsPerBlock * R - 1) / (kWarpRowsPerBlock * R));
          norm_forward_warp_kernel<T, W, V, K, R, Center><<<grid, kWarpBlock, 0, stream>>>(
              x.data<T>(), weight.data<W>(), b, y.data<T>(), mean ? mean->data<A>() : nullptr,
              rstd.data<A>(), rows, int(n), chunks, A(eps));
          CUDA_CHECK_LAUNCH(norm_forward_warp_kernel);
        });
      };
      if (n < (int64_t(1) << 31) && rows < (int64_t(1) << 34)) {
        if (vec ? launch_warp(std::integral_constant<int, kVec<T>>{},
                              std::integral_constant<int, kMaxWarpChunksFwd>{})
                : launch_warp(std::integral_constant<int, 1>{}, std::integral_constant<int, 4>{}))
          return;
      }
      if (vec)
        launch(norm_forward_kernel<T, W, kVec<T>, Center>, kVec<T>);
      else
        launch(norm_forward_kernel<T, W, 1, Center>, 1);
    });
  });
}

template <bool Center>
void norm_backward(const Tensor& x, const Tensor& weight, const Tensor* mean, const Tensor& rstd,
                   const Tensor& dy, Tensor& dx, Tensor& dweight, Tensor* dbias) {
  const int64_t n = x.size(-1), rows = n > 0 ? x.numel() / n : 0;
  if (n == 0) return;
  cudaStream_t stream = stream_for(x.device().index);
  dispatch_floating(x.dtype(), "norm input", [&](auto xtag) {
    using T = decltype(xtag);
    using A = acc_t<T>;
    check_stats(rstd, stats_dtype<T>(), "rstd");
    if (mean) check_stats(*mean, stats_dtype<T>(), "mean");
    dispatch_param<T>(weight.dtype(), "norm weight", [&](auto wtag) {
      using W = decltype(wtag);
      ST_CHECK(dweight.dtype() == weight.dtype(), "dweight must match the weight dtype, got ", dweight.desc());
      ST_CHECK(!dbias || dbias->dtype() == weight.dtype(), "dbias must match the weight dtype, got ",
               dbias->desc());
      if (rows == 0) {
        CUDA_CHECK(cudaMemsetAsync(dweight.data_ptr(), 0, dweight.nbytes(), stream));
        if (dbias) CUDA_CHECK(cudaMemsetAsync(dbias->data_ptr(), 0, dbias->nbytes(), stream));
        return;
      }
      const bool has_bias = dbias != nullptr;
      const int64_t width = has_bias ? 2 * n : n;
      const bool vec = rows_vectorizable(n, sizeof(T), {x.data_ptr(), dy.data_ptr(), dx.data_ptr()}) &&
                       aligned16(weight.data_ptr());
      auto launch = [&](auto kernel, int vec_width) {
        const RowPlan p = plan_rows(n, vec_width, kBackwardCache, 256);
        const size_t acc_bytes = size_t(p.rows_per_block) * size_t(width) * sizeof(A);
        const bool shared_acc = acc_bytes <= kMaxSharedAcc;
        const size_t smem = shared_acc ? acc_bytes : 0;
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
        const unsigned grid = resident_grid(kernel, p, rows, smem, x.device().index);
        const int64_t nparts = shared_acc ? grid : int64_t(grid) * p.rows_per_block;
        Tensor partials = Tensor::empty({nparts, width}, stats_dtype<T>(), x.device());  // (P, width)
        kernel<<<grid, p.block, smem, stream>>>(x.data<T>(), weight.data<W>(),
                                                mean ? mean->data<A>() : nullptr, rstd.data<A>(),
                                                dy.data<T>(), dx.data<T>(), partials.data<A>(), has_bias,
                                                shared_acc, rows, int(n), p.chunks, p.group);
        CUDA_CHECK_LAUNCH(norm_backward_kernel);
        sum_partials(partials.data<A>(), nparts, width, n, dweight.data<W>(), stream);
        if (has_bias) sum_partials(partials.data<A>() + n, nparts, width, n, dbias->data<W>(), stream);
      };
      // Rows that 16-byte chunks cannot tile (unaligned, or n * sizeof(T) not a multiple of 16) of
      // up to 128 elements: the warp-per-row kernel with element-wise chunks (K <= 4 per lane).
      auto launch_warp = [&](auto bias_tag) {
        constexpr bool HasBias = decltype(bias_tag)::value;
        const int chunks = int(n);
        return dispatch_warp_chunks<kMaxWarpChunksBwd>(chunks, [&](auto k_tag) {
          constexpr int K = decltype(k_tag)::value;
          launch_backward_warp<T, W, 1, K, backward_rows_in_flight<K>(), Center, HasBias>(
              x, weight, mean, rstd, dy, dx, dweight, dbias, rows, int(n), chunks, stream);
        });
      };
      // 16-byte-chunk rows of up to 1024 chunks (8192 bf16 / 4096 f32 / 2048 f64 elements): the
      // pipelined kernel (measured on the H100 against the warp-per-row and group kernels it replaced
      // there: equal at 16384 x 768, faster at 65536 x 768 and 16384 x 4096; docs/benchmarks.md).
      auto launch_pipelined = [&](auto bias_tag) {
        constexpr bool HasBias = decltype(bias_tag)::value;
        const int chunks = int(n / kVec<T>);
        return dispatch_pipelined(chunks, [&](auto g_tag, auto k_tag) {
          launch_backward_pipelined<T, W, decltype(g_tag)::value, decltype(k_tag)::value, Center, HasBias>(
              x, weight, mean, rstd, dy, dx, dweight, dbias, rows, int(n), chunks, stream);
        });
      };
      if (n < (int64_t(1) << 31)) {
        if (vec && (has_bias ? launch_pipelined(std::true_type{}) : launch_pipelined(std::false_type{})))
          return;
        if (!vec && n <= 4 * kWarpSize && (has_bias ? launch_warp(std::true_type{}) : launch_warp(std::false_type{})))
          return;
      }
      if (vec)
        launch(norm_backward_kernel<T, W, kVec<T>, Center>, kVec<T>);
      else
        launch(norm_backward_kernel<T, W, 1, Center>, 1);
    });
  });
}

}  // namespace

void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                       Tensor& y, Tensor& mean, Tensor& rstd) {
  norm_forward<true>(x, weight, bias, eps, y, &mean, rstd);
}

void layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, const Tensor& dy, Tensor& dx, Tensor& dweight,
                        Tensor& dbias) {
  norm_backward<true>(x, weight, &mean, rstd, dy, dx, dweight, dbias.defined() ? &dbias : nullptr);
}

void rmsnorm_forward(const Tensor& x, const Tensor& weight, double eps, Tensor& y, Tensor& rstd) {
  norm_forward<false>(x, weight, Tensor(), eps, y, nullptr, rstd);
}

void rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                      Tensor& dx, Tensor& dweight) {
  norm_backward<false>(x, weight, nullptr, rstd, dy, dx, dweight, nullptr);
}

}  // namespace seqtrain::cuda
