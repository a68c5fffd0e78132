// CUDA fused chunk gradients (math and names in chunk_grads.h): f32, one thread block of kThreads per
// (batch, head) for the whole chunk, B H blocks per launch, one launch for the forward and one for
// the backward.
//
// A block walks the chunk's tokens in tiles of `tile` rows (as many as fit in shared memory, so
// usually the whole chunk or two tiles): every quantity but the sums over tokens (G0, G1, dW0, dW1) is
// per token, so a tile is self-contained; the sums are accumulated across tiles in the output itself,
// each output element owned by one thread for the whole launch (the same strided loop every tile),
// so no atomics and a fixed summation order (bitwise reproducible).
// Shared memory per tile row (floats; rows padded to d + 1 and h + 1 so that the column walks of
// the "NT" products, lanes along tokens, are free of bank conflicts for even d, h):
//   forward  k, N, dn, D1 [d + 1 each]; Z, A, P [h + 1 each]; s, rho
//   backward the same plus e (later Ob) [d + 1], Q (later Pb) and X (P g'', then Q' P g'', later Zb)
//            [h + 1], and c, nu, |D0|^2, |D1|^2
// (at d = 64, h = 256: 4.4 KB / 6.5 KB per row, so 227 KB holds 51 / 35 rows: C = 64 runs as 2 tiles
// in the backward, 2 in the forward). The weights W0, W1, dG0, dG1 [d, h] are read from global memory
// (L1/L2-resident: 64 KB each at d = 64, h = 256) by FMA loops:
//   "NN" products (a tile operand times a weight, e.g. Z = k W0): a thread per output, lanes along
//        the weight's contiguous columns (coalesced), the tile operand broadcast from shared memory;
//   "NT" products (times a weight transposed, e.g. P = D1 W1^T): a thread per output, lanes along
//        tokens (the weight's row broadcast), the tile operand read down a padded column;
//   sums over tokens (G0 = k^T D0, ...): a thread per output element, both operands in shared memory.
// Row work (LayerNorm, its backward, the clamp's norms and factors c_t, nu_t): a warp per token row,
// shuffle reductions, each lane reading and writing only its own columns of the row.
// The clamp (max_norm > 0): the forward scales the tile's D0, D1 rows by c_t before the sums; the
// backward has every row computed in one form: c = 1, nu = 0 without the clamp.
// Cost per (b, head) and chunk: forward 10 C d h FMAs-worth of FLOPs, backward 26 C d h (chunk_grads.h);
// at B H = 8 heads the launch fills 8 of 132 SMs: latency-bound but ~2 launches per chunk instead of
// ~45 forward and ~80 backward ops. Global traffic: inputs and outputs once; weights re-read per
// output row from cache (L2 traffic ~ 2 C d h floats per product).
#include <cuda_runtime.h>

#include <algorithm>

#include "core/cuda/device_utils.cuh"
#include "core/cuda/runtime.h"
#include "layers/titans/chunk_grads.h"

namespace seqtrain::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

// A [B, H, rows, cols] operand with contiguous columns: element (b, hd, row, col) at
// p[b sb + hd sh + row sr + col].
struct Operand {
  const float* p;
  int64_t sb, sh, sr;
  __device__ const float* head(int b, int hd) const { return p + b * sb + hd * sh; }
};

struct Params {
  Operand w0, w1, k, r, u, dg0, dg1;  // dg0, dg1: backward only
  Operand wt;                         // [B, H, C, 1] the clamp's weights w_t (max_norm > 0 only)
  float *g0, *g1;                     // forward outputs [B, H, d, h], [B, H, h, d] (contiguous)
  float *dw0, *dw1, *dk, *dr, *du;    // backward outputs, contiguous
  float* dwt;                         // backward output [B, H, C, 1] (max_norm > 0 only)
  int H, C, d, h, tile;
  float eps, max_norm;
};

int64_t forward_row_floats(int64_t d, int64_t h) { return 4 * (d + 1) + 3 * (h + 1) + 2; }
int64_t backward_row_floats(int64_t d, int64_t h) { return 5 * (d + 1) + 5 * (h + 1) + 6; }

int max_smem_bytes(int device) {
  int bytes = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

// Tile rows for a kernel needing `row_floats` per row (0 when not even one fits).
int tile_rows(int64_t C, int64_t row_floats, int device) {
  return int(std::min<int64_t>(C, int64_t(max_smem_bytes(device)) / int64_t(sizeof(float)) / row_floats));
}

// The tile's buffers in shared memory; ld = d + 1 for the [rows, d] ones, lh = h + 1 for [rows, h].
struct Tile {
  float *k, *n, *dn, *d1, *e;  // [tile, ld]   (e: backward only)
  float *z, *a, *p, *q, *x;    // [tile, lh]   (q, x: backward only)
  float *sd, *rho;             // [tile]
  float *cl, *nu, *d0d0, *d1d1;  // [tile]: c_t, nu_t, |D0_t|^2, |D1_t|^2 (backward only)
  int ld, lh;
  __device__ Tile(float* smem, const Params& P, bool backward) : ld(P.d + 1), lh(P.h + 1) {
    const int T = P.tile;
    float* s = smem;
    k = s, s += T * ld;
    n = s, s += T * ld;
    dn = s, s += T * ld;
    d1 = s, s += T * ld;
    z = s, s += T * lh;
    a = s, s += T * lh;
    p = s, s += T * lh;
    if (backward) {
      e = s, s += T * ld;
      q = s, s += T * lh;
      x = s, s += T * lh;
    } else {
      e = q = x = nullptr;
    }
    sd = s, s += T;
    rho = s, s += T;
    if (backward) {
      cl = s, s += T;
      nu = s, s += T;
      d0d0 = s, s += T;
      d1d1 = s;
    } else {
      cl = nu = d0d0 = d1d1 = nullptr;
    }
  }
};

// The forward of tokens [t0, t0 + rows) of head (b, hd) into the tile: k, Z, A, N, dn, D1, s, rho and
// P = D1 W1^T (before the g'(Z) factor). Begins reading shared memory only after its first barrier,
// ends with a barrier: the caller must make sure nobody still reads the tile when it is called.
__device__ __forceinline__ void recompute(const Params& P, const Tile& s, int b, int hd, int t0, int rows) {
  const int d = P.d, h = P.h, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const float *W0 = P.w0.head(b, hd), *W1 = P.w1.head(b, hd);
  const float *K = P.k.head(b, hd), *R = P.r.head(b, hd), *U = P.u.head(b, hd);
  const int64_t sw0 = P.w0.sr, sw1 = P.w1.sr;
  for (int e = tid; e < rows * d; e += kThreads) {
    const int t = e / d, i = e % d;
    s.k[t * s.ld + i] = K[(t0 + t) * P.k.sr + i];
  }
  __syncthreads();
  for (int e = tid; e < rows * h; e += kThreads) {  // Z = k W0, A = gelu(Z)   (NN)
    const int t = e / h, j = e % h;
    const float* kt = s.k + t * s.ld;
    float acc = 0.f;
    for (int i = 0; i < d; ++i) acc = fmaf(kt[i], W0[i * sw0 + j], acc);
    s.z[t * s.lh + j] = acc;
    s.a[t * s.lh + j] = GeluTerms<float>(acc).value;
  }
  __syncthreads();
  for (int e = tid; e < rows * d; e += kThreads) {  // O = A W1 (into n)   (NN)
    const int t = e / d, i = e % d;
    const float* at = s.a + t * s.lh;
    float acc = 0.f;
    for (int j = 0; j < h; ++j) acc = fmaf(at[j], W1[j * sw1 + i], acc);
    s.n[t * s.ld + i] = acc;
  }
  __syncthreads();
  for (int t = warp; t < rows; t += kWarps) {  // LayerNorm, dn, D1: a warp per row, lanes own columns
    float* nt = s.n + t * s.ld;
    float* dnt = s.dn + t * s.ld;
    float* d1t = s.d1 + t * s.ld;
    const float* rt = R + (t0 + t) * P.r.sr;
    const float* ut = U + (t0 + t) * P.u.sr;
    float sum = 0.f;
    for (int i = lane; i < d; i += 32) sum += nt[i];
    const float mean = warp_sum(sum) / float(d);
    float sq = 0.f;
    for (int i = lane; i < d; i += 32) {
      const float oc = nt[i] - mean;
      nt[i] = oc;
      sq += oc * oc;
    }
    const float sdv = sqrtf(warp_sum(sq) / float(d) + P.eps);
    float sdn = 0.f, sdnn = 0.f;
    for (int i = lane; i < d; i += 32) {
      const float nv = nt[i] / sdv, dv = rt[i] + nv * ut[i];
      nt[i] = nv;
      dnt[i] = dv;
      sdn += dv;
      sdnn += dv * nv;
    }
    const float mdn = warp_sum(sdn) / float(d), rho = warp_sum(sdnn) / float(d);
    for (int i = lane; i < d; i += 32) d1t[i] = (dnt[i] - mdn - nt[i] * rho) / sdv;
    if (lane == 0) {
      s.sd[t] = sdv;
      s.rho[t] = rho;
    }
  }
  __syncthreads();
  for (int e = tid; e < rows * h; e += kThreads) {  // P = D1 W1^T   (NT: lanes along tokens)
    const int t = e % rows, j = e / rows;
    const float* d1t = s.d1 + t * s.ld;
    const float* w = W1 + j * sw1;
    float acc = 0.f;
    for (int i = 0; i < d; ++i) acc = fmaf(d1t[i], w[i], acc);
    s.p[t * s.lh + j] = acc;
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) forward_kernel(Params P) {
  extern __shared__ float smem[];
  const Tile s(smem, P, false);
  const int b = blockIdx.x / P.H, hd = blockIdx.x % P.H, d = P.d, h = P.h, tid = threadIdx.x;
  float* G0 = P.g0 + int64_t(blockIdx.x) * d * h;  // [d, h]
  float* G1 = P.g1 + int64_t(blockIdx.x) * d * h;  // [h, d]
  for (int t0 = 0; t0 < P.C; t0 += P.tile) {
    const int rows = min(P.tile, P.C - t0);
    recompute(P, s, b, hd, t0, rows);
    for (int e = tid; e < rows * h; e += kThreads) {  // D0 = P g'(Z)
      const int t = e / h, j = e % h;
      s.p[t * s.lh + j] *= GeluTerms<float>(s.z[t * s.lh + j]).d1;
    }
    __syncthreads();
    if (P.max_norm > 0.f) {  // the clamp: D0, D1 rows scaled by c_t (a warp per row, lanes own columns)
      const int lane = tid % 32, warp = tid / 32;
      const float* Wt = P.wt.head(b, hd);
      for (int t = warp; t < rows; t += kWarps) {
        float *d0t = s.p + t * s.lh, *d1t = s.d1 + t * s.ld;
        const float *kt = s.k + t * s.ld, *at = s.a + t * s.lh;
        float kk = 0.f, d1d1 = 0.f, aa = 0.f, d0d0 = 0.f;
        for (int i = lane; i < d; i += 32) {
          kk += kt[i] * kt[i];
          d1d1 += d1t[i] * d1t[i];
        }
        for (int j = lane; j < h; j += 32) {
          aa += at[j] * at[j];
          d0d0 += d0t[j] * d0t[j];
        }
        kk = warp_sum(kk), d1d1 = warp_sum(d1d1), aa = warp_sum(aa), d0d0 = warp_sum(d0d0);
        const float hn = sqrtf(kk * d0d0 + aa * d1d1 + float(kMemoryClampHalfNormEps));
        const float c = ClampTerms<float>(hn, Wt[(t0 + t) * P.wt.sr], P.max_norm).c;
        for (int i = lane; i < d; i += 32) d1t[i] *= c;
        for (int j = lane; j < h; j += 32) d0t[j] *= c;
      }
      __syncthreads();
    }
    for (int e = tid; e < d * h; e += kThreads) {  // G0 = k^T (c D0), G1 = A^T (c D1) (this thread's elements)
      const int i0 = e / h, j0 = e % h;             // G0[i0, j0]
      const int j1 = e / d, i1 = e % d;             // G1[j1, i1]
      float acc0 = 0.f, acc1 = 0.f;
      for (int t = 0; t < rows; ++t) {
        acc0 = fmaf(s.k[t * s.ld + i0], s.p[t * s.lh + j0], acc0);
        acc1 = fmaf(s.a[t * s.lh + j1], s.d1[t * s.ld + i1], acc1);
      }
      G0[e] = t0 == 0 ? acc0 : G0[e] + acc0;
      G1[e] = t0 == 0 ? acc1 : G1[e] + acc1;
    }
    __syncthreads();  // the next tile overwrites what this one read
  }
}

__global__ void __launch_bounds__(kThreads) backward_kernel(Params P) {
  extern __shared__ float smem[];
  const Tile s(smem, P, true);
  const int b = blockIdx.x / P.H, hd = blockIdx.x % P.H, d = P.d, h = P.h, tid = threadIdx.x;
  const int lane = tid % 32, warp = tid / 32;
  const float *W0 = P.w0.head(b, hd), *W1 = P.w1.head(b, hd), *U = P.u.head(b, hd);
  const float *dG0 = P.dg0.head(b, hd), *dG1 = P.dg1.head(b, hd);  // [d, h], [h, d]
  const int64_t sw0 = P.w0.sr, sw1 = P.w1.sr, sg0 = P.dg0.sr, sg1 = P.dg1.sr;
  const int64_t head_dh = int64_t(blockIdx.x) * d * h, head_cd = int64_t(blockIdx.x) * P.C * d;
  float *dW0 = P.dw0 + head_dh, *dW1 = P.dw1 + head_dh;                          // [d, h], [h, d]
  float *dK = P.dk + head_cd, *dR = P.dr + head_cd, *dU = P.du + head_cd;       // [C, d]
  float* dWt = P.max_norm > 0.f ? P.dwt + int64_t(blockIdx.x) * P.C : nullptr;    // [C] (clamp only)
  for (int t0 = 0; t0 < P.C; t0 += P.tile) {
    const int rows = min(P.tile, P.C - t0);
    recompute(P, s, b, hd, t0, rows);
    // Q = k dG0 (NN, into q); then, on the thread's own element: P g'' (into x), D0 = P g' (into p),
    // g' (into z).
    for (int e = tid; e < rows * h; e += kThreads) {
      const int t = e / h, j = e % h;
      const float* kt = s.k + t * s.ld;
      float qv = 0.f;
      for (int i = 0; i < d; ++i) qv = fmaf(kt[i], dG0[i * sg0 + j], qv);
      const int o = t * s.lh + j;
      const GeluTerms<float> g(s.z[o]);
      const float pv = s.p[o];
      s.q[o] = qv;
      s.x[o] = pv * g.d2;
      s.p[o] = pv * g.d1;
      s.z[o] = g.d1;
    }
    for (int e = tid; e < rows * d; e += kThreads) {  // A dG1 (NN, into e)
      const int t = e / d, i = e % d;
      const float* at = s.a + t * s.lh;
      float acc = 0.f;
      for (int j = 0; j < h; ++j) acc = fmaf(at[j], dG1[j * sg1 + i], acc);
      s.e[t * s.ld + i] = acc;
    }
    __syncthreads();
    // Per row (a warp, lanes own columns): c, nu (1, 0 without the clamp), dw = beta f; then
    // Q' = c Q + nu |k|^2 D0, X = Q' P g'' (into x), Pb = Q' g' (into q), e = c A dG1 + nu |A|^2 D1.
    for (int t = warp; t < rows; t += kWarps) {
      float *qt = s.q + t * s.lh, *xt = s.x + t * s.lh, *et = s.e + t * s.ld;
      const float *d0t = s.p + t * s.lh, *gpt = s.z + t * s.lh, *d1t = s.d1 + t * s.ld;
      const float *kt = s.k + t * s.ld, *at = s.a + t * s.lh;
      float c = 1.f, nu = 0.f, kk = 0.f, aa = 0.f, d0d0 = 0.f, d1d1 = 0.f;
      if (P.max_norm > 0.f) {
        float beta = 0.f;
        for (int i = lane; i < d; i += 32) {
          beta += et[i] * d1t[i];
          kk += kt[i] * kt[i];
          d1d1 += d1t[i] * d1t[i];
        }
        for (int j = lane; j < h; j += 32) {
          beta += qt[j] * d0t[j];
          aa += at[j] * at[j];
          d0d0 += d0t[j] * d0t[j];
        }
        beta = warp_sum(beta), kk = warp_sum(kk), aa = warp_sum(aa);
        d0d0 = warp_sum(d0d0), d1d1 = warp_sum(d1d1);
        const float hn = sqrtf(kk * d0d0 + aa * d1d1 + float(kMemoryClampHalfNormEps));
        const ClampTerms<float> ct(hn, P.wt.head(b, hd)[(t0 + t) * P.wt.sr], P.max_norm);
        c = ct.c;
        nu = beta * ct.fh_w;
        if (lane == 0) dWt[t0 + t] = beta * ct.f;
      }
      if (lane == 0) {
        s.cl[t] = c;
        s.nu[t] = nu;
        s.d0d0[t] = d0d0;
        s.d1d1[t] = d1d1;
      }
      for (int j = lane; j < h; j += 32) {
        const float qv = c * qt[j] + nu * kk * d0t[j];
        xt[j] *= qv;
        qt[j] = qv * gpt[j];
      }
      for (int i = lane; i < d; i += 32) et[i] = c * et[i] + nu * aa * d1t[i];
    }
    __syncthreads();
    for (int e = tid; e < rows * d; e += kThreads) {  // e += Pb W1   (NN)
      const int t = e / d, i = e % d;
      const float* qt = s.q + t * s.lh;
      float acc = 0.f;
      for (int j = 0; j < h; ++j) acc = fmaf(qt[j], W1[j * sw1 + i], acc);
      s.e[t * s.ld + i] += acc;
    }
    __syncthreads();
    for (int t = warp; t < rows; t += kWarps) {  // the LayerNorm rows: dr, du; Nb (into dn), Ob (into e)
      float* et = s.e + t * s.ld;
      float* nbt = s.dn + t * s.ld;
      const float *nt = s.n + t * s.ld, *d1t = s.d1 + t * s.ld;
      const float* ut = U + (t0 + t) * P.u.sr;
      const float sdv = s.sd[t], rho = s.rho[t];
      float se = 0.f, sen = 0.f, sed1 = 0.f;
      for (int i = lane; i < d; i += 32) {
        se += et[i];
        sen += et[i] * nt[i];
        sed1 += et[i] * d1t[i];
      }
      const float me = warp_sum(se) / float(d), kap = warp_sum(sen) / float(d), sb = -warp_sum(sed1) / sdv;
      float snb = 0.f, snbn = 0.f;
      for (int i = lane; i < d; i += 32) {
        const float dnb = (et[i] - me - nt[i] * kap) / sdv;
        dR[(t0 + t) * d + i] = dnb;
        dU[(t0 + t) * d + i] = dnb * nt[i];
        const float nb = dnb * ut[i] - (et[i] * rho + nbt[i] * kap) / sdv;  // nbt holds dn until here
        nbt[i] = nb;
        snb += nb;
        snbn += nb * nt[i];
      }
      const float mnb = warp_sum(snb) / float(d), mnbn = warp_sum(snbn) / float(d);
      for (int i = lane; i < d; i += 32) et[i] = (nbt[i] - mnb - nt[i] * mnbn) / sdv + sb * nt[i] / float(d);
    }
    __syncthreads();
    // dW1 = Pb^T D1 + A^T Ob (this thread's elements), and
    // Zb = X + (c D1 dG1^T + nu |D1|^2 A + Ob W1^T) g' (NT, into x).
    for (int e = tid; e < d * h; e += kThreads) {
      const int j = e / d, i = e % d;
      float acc = 0.f;
      for (int t = 0; t < rows; ++t)
        acc = fmaf(s.q[t * s.lh + j], s.d1[t * s.ld + i], fmaf(s.a[t * s.lh + j], s.e[t * s.ld + i], acc));
      dW1[e] = t0 == 0 ? acc : dW1[e] + acc;
    }
    for (int e = tid; e < rows * h; e += kThreads) {
      const int t = e % rows, j = e / rows;
      const float *d1t = s.d1 + t * s.ld, *obt = s.e + t * s.ld;
      const float *g1 = dG1 + j * sg1, *w1 = W1 + j * sw1;
      float acc_g = 0.f, acc_w = 0.f;
      for (int i = 0; i < d; ++i) {
        acc_g = fmaf(d1t[i], g1[i], acc_g);
        acc_w = fmaf(obt[i], w1[i], acc_w);
      }
      const int o = t * s.lh + j;
      s.x[o] += (s.cl[t] * acc_g + s.nu[t] * s.d1d1[t] * s.a[o] + acc_w) * s.z[o];
    }
    __syncthreads();
    // dk = c D0 dG0^T + nu |D0|^2 k + Zb W0^T (NT), dW0 = k^T Zb (this thread's elements).
    for (int e = tid; e < rows * d; e += kThreads) {
      const int t = e % rows, i = e / rows;
      const float *d0t = s.p + t * s.lh, *zbt = s.x + t * s.lh;
      const float *g0 = dG0 + i * sg0, *w0 = W0 + i * sw0;
      float acc_g = 0.f, acc_w = 0.f;
      for (int j = 0; j < h; ++j) {
        acc_g = fmaf(d0t[j], g0[j], acc_g);
        acc_w = fmaf(zbt[j], w0[j], acc_w);
      }
      dK[(t0 + t) * d + i] = s.cl[t] * acc_g + s.nu[t] * s.d0d0[t] * s.k[t * s.ld + i] + acc_w;
    }
    for (int e = tid; e < d * h; e += kThreads) {
      const int i = e / h, j = e % h;
      float acc = 0.f;
      for (int t = 0; t < rows; ++t) acc = fmaf(s.k[t * s.ld + i], s.x[t * s.lh + j], acc);
      dW0[e] = t0 == 0 ? acc : dW0[e] + acc;
    }
    __syncthreads();  // the next tile overwrites what this one read
  }
}

// The operand view of t [B, H, rows, cols]; `keep` holds a contiguous copy when the columns are strided.
Operand operand(const Tensor& t, Tensor& keep) {
  keep = t.stride(3) == 1 ? t : t.contiguous();
  return {keep.data<float>(), keep.stride(0), keep.stride(1), keep.stride(2)};
}

struct Launch {
  Params p{};
  Tensor keep[8];
};

void prepare(Launch& L, const MemoryChunkDims& s, const MemoryChunkInputs& in) {
  Params& p = L.p;
  p.w0 = operand(in.w0, L.keep[0]);
  p.w1 = operand(in.w1, L.keep[1]);
  p.k = operand(in.k, L.keep[2]);
  p.r = operand(in.r, L.keep[3]);
  p.u = operand(in.u, L.keep[4]);
  if (in.max_norm > 0) p.wt = operand(in.weight, L.keep[7]);
  p.H = int(s.H), p.C = int(s.C), p.d = int(s.d), p.h = int(s.h);
  p.eps = float(in.eps);
  p.max_norm = float(in.max_norm);
}

void check_fits(const char* op, const MemoryChunkDims& s, const Tensor& w0, int tile) {
  ST_CHECK(w0.dtype() == DType::F32, op, " (CUDA): W0 ", w0.desc(), ": expected f32");
  ST_CHECK(tile >= 1, op, " (CUDA): d ", s.d, ", h ", s.h, ": one token row does not fit in shared memory");
  ST_CHECK(s.B * s.H <= int64_t(1) << 31 && s.C * s.d <= int64_t(1) << 31 && s.d * s.h <= int64_t(1) << 31, op,
           " (CUDA): B ", s.B, ", H ", s.H, ", C ", s.C, ", d ", s.d, ", h ", s.h, ": sizes beyond int range");
}

template <class Kernel>
void launch(Kernel kernel, const Params& p, int64_t heads, int64_t row_floats, cudaStream_t stream, const char* name) {
  const size_t smem = size_t(p.tile) * size_t(row_floats) * sizeof(float);
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<unsigned(heads), kThreads, smem, stream>>>(p);
  CUDA_CHECK_LAUNCH(name);
}

}  // namespace

bool memory_chunk_grads_fits(const MemoryChunkDims& s, int device) {
  return tile_rows(s.C, backward_row_floats(s.d, s.h), device) >= 1 && s.d * s.h <= int64_t(1) << 31;
}

void memory_chunk_grads_forward(const MemoryChunkDims& s, const MemoryChunkInputs& in, Tensor& g0, Tensor& g1) {
  const int64_t heads = s.B * s.H;
  if (heads == 0 || s.d == 0 || s.h == 0) return;
  cudaStream_t stream = stream_for(in.w0.device().index);
  if (s.C == 0) {  // no token: zero gradients
    g0.copy_(Tensor::zeros(g0.shape(), g0.dtype(), g0.device()));
    g1.copy_(Tensor::zeros(g1.shape(), g1.dtype(), g1.device()));
    return;
  }
  Launch L;
  prepare(L, s, in);
  L.p.tile = tile_rows(s.C, forward_row_floats(s.d, s.h), in.w0.device().index);
  check_fits("memory_chunk_grads", s, in.w0, L.p.tile);
  L.p.g0 = g0.data<float>();
  L.p.g1 = g1.data<float>();
  launch(forward_kernel, L.p, heads, forward_row_floats(s.d, s.h), stream, "memory_chunk_grads forward_kernel");
}

void memory_chunk_grads_backward(const MemoryChunkDims& s, const MemoryChunkInputs& in, const Tensor& dg0,
                                 const Tensor& dg1, MemoryChunkGradsVjp& out) {
  const int64_t heads = s.B * s.H;
  if (heads == 0 || s.d == 0 || s.h == 0) return;
  cudaStream_t stream = stream_for(in.w0.device().index);
  if (s.C == 0) {  // no token: no gradient on the weights (k, r, u are empty)
    out.dw0.copy_(Tensor::zeros(out.dw0.shape(), out.dw0.dtype(), out.dw0.device()));
    out.dw1.copy_(Tensor::zeros(out.dw1.shape(), out.dw1.dtype(), out.dw1.device()));
    return;
  }
  Launch L;
  prepare(L, s, in);
  L.p.dg0 = operand(dg0, L.keep[5]);
  L.p.dg1 = operand(dg1, L.keep[6]);
  L.p.tile = tile_rows(s.C, backward_row_floats(s.d, s.h), in.w0.device().index);
  check_fits("memory_chunk_grads backward", s, in.w0, L.p.tile);
  L.p.dw0 = out.dw0.data<float>();
  L.p.dw1 = out.dw1.data<float>();
  L.p.dk = out.dk.data<float>();
  L.p.dr = out.dr.data<float>();
  L.p.du = out.du.data<float>();
  if (in.max_norm > 0) L.p.dwt = out.dweight.data<float>();
  launch(backward_kernel, L.p, heads, backward_row_floats(s.d, s.h), stream, "memory_chunk_grads backward_kernel");
}

}  // namespace seqtrain::cuda
