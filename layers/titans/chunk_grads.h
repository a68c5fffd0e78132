// The inner-loop gradient of one chunk of the depth-2 Titans memory (neural_memory.h), fused: what
// neural_memory's composed chunk_gradients computes with ~45 ops (~65 with the gradient clamp, and
// ~80 to ~120 more in its backward) for depth 2, as one op with a hand-written vector-Jacobian product.
//
// Per (batch b, head), row vectors, C tokens, head size d, hidden size h; inputs
//   W0 [d, h], W1 [h, d]    the chunk-start weights W^c
//   k, r, u [C, d]          keys and neural_memory's folded operands: with g1 = 1 + gamma and
//                           lr_t the per-token rate, r = (k - v) g1 w_t, u = g1^2 w_t, where
//                           w_t = 2 lr_t without the clamp and w_t = 1 with it
//   w [C] (clamp only)      the per-token weight 2 lr_t, applied after the clamp
//   m                       max_grad_norm: 0 = no clamp (c_t = 1 below)
// forward (everything per token t, i.e. per row; LN without affine; mean over the d columns):
//   Z  = k W0                 A = gelu(Z)                 O = A W1                [C, h], [C, d]
//   Oc = O - mean(O)          s = sqrt(mean(Oc^2) + eps)  N = Oc / s              (LN(O))
//   dn = r + N u              = (M(k) - v) g1 2 lr_t, the loss gradient at N, lr folded in
//   D1 = (dn - mean(dn) - N rho) / s,   rho = mean(dn N)                          (LN backward)
//   P  = D1 W1^T              D0 = P g'(Z)                                        [C, h]
//   G0 = k^T (c D0)  [d, h]   G1 = A^T (c D1)  [h, d]    (sums over the chunk's tokens; c per row)
// The clamp (m > 0): D0, D1 are then half the unweighted per-token gradient's deltas, so the norm of
// token t's gradient over both layers is n_t = 2 h_t with
//   h_t = sqrt(|k_t|^2 |D0_t|^2 + |A_t|^2 |D1_t|^2 + 1e-12 / 4)       (|.| the row's 2-norm)
//   c_t = w_t f(h_t),  f(h) = (m / 2) tanh(2 h / m) / h                 (= w_t s_t, s_t the soft clamp of n_t)
// and without it c_t = 1. With tau = tanh(2 h / m): f'(h) = (1 - tau^2 - f(h)) / h.
// with gelu the tanh GELU; writing y = sqrt(2/pi) (x + c x^3), y' = sqrt(2/pi) (1 + 3 c x^2), t = tanh(y):
//   g'(x)  = (1 + t) / 2 + x (1 - t^2) y' / 2
//   g''(x) = (1 - t^2) (y' - x t y'^2 + 3 sqrt(2/pi) c x^2)
//
// Backward: given dG0 [d, h], dG1 [h, d], the gradients of every input. L = sum_t c_t l_t with
// l_t = Q_t . D0_t + (A dG1)_t . D1_t, Q = k dG0: each c_t scales all of token t's cotangents, and the
// clamp adds dL/dc_t = beta_t = l_t, through h_t (nu_t = dL/dh_t / h_t = beta_t w_t f'(h_t) / h_t):
//   dw  = beta f(h)                                 (clamp only; without it nu = 0, c = 1)
//   Q'  = c Q + nu |k|^2 D0   (dL/dD0)             Pb = Q' g'(Z)  (dL/dP)          [C, h]
//   e   = c A dG1 + nu |A|^2 D1 + Pb W1             (e = dL/dD1)                    [C, d]
//   per row, from D1(dn, N, s):     kap = mean(e N),  sb = -sum(e D1) / s         (dL/ds, direct)
//     dnb = (e - mean(e) - N kap) / s                                             (dL/ddn)
//     Nb  = dnb u - (e rho + dn kap) / s                                          (dL/dN: via dn and D1)
//     Ob  = (Nb - mean(Nb) - N mean(Nb N)) / s + sb N / d                         (dL/dO: LN backward, ds/dO = N / d)
//   dr  = dnb                 du = dnb N
//   dW1 = Pb^T D1 + A^T Ob                                                        [h, d]
//   Zb  = Q' P g''(Z) + (c D1 dG1^T + nu |D1|^2 A + Ob W1^T) g'(Z)                [C, h]
//   dk  = c D0 dG0^T + nu |D0|^2 k + Zb W0^T                                      [C, d]
//   dW0 = k^T Zb                                                                  [d, h]
// The second-order terms are Q' P g'' (through gelu'), -(e rho + dn kap) / s and sb (through the
// LayerNorm backward's dependence on N and s), and the P^T, D0 dG0^T terms (the weights and keys in
// the inner backward); the clamp's are the four nu terms (through h_t) and dw.
// The backward recomputes the forward from the inputs (nothing is saved but them).
//
// Cost per (b, head): forward 10 C d h FLOPs (five GEMMs), backward 26 C d h (the recomputed forward's
// three, and ten more), plus O(C h) elementwise (tanh) and O(C (d + h)) row work (the clamp's norms
// and l_t). Bytes: the inputs and
// outputs once (2 d h + 3 C d read, 2 d h written; backward 4 d h + 3 C d read, 2 d h + 3 C d written),
// the weights re-read from cache by every GEMM.
//
// Dtypes: all inputs one dtype, f64 or f32 (the memory runs in f32 for bf16 models); outputs in it.
// Inputs may be strided views (neural_memory passes k, r, u as slices of [B, H, T, d]).
// CPU (chunk_grads_cpu.cpp): f64 and f32, any size. CUDA (chunk_grads_cuda.cu): f32, sizes whose
// per-token shared memory fits (memory_chunk_grads_supported says).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace seqtrain {

// The tanh GELU and its first two derivatives at x (formulas above), shared by the CPU and CUDA code.
template <class Real>
struct GeluTerms {
  Real value, d1, d2;
  SEQTRAIN_HD explicit GeluTerms(Real x) {
    using std::tanh;
    const Real k = Real(0.7978845608028654), c = Real(0.044715);
    const Real t = tanh(k * (x + c * x * x * x)), dy = k * (Real(1) + Real(3) * c * x * x);
    const Real sech2 = Real(1) - t * t;
    value = Real(0.5) * x * (Real(1) + t);
    d1 = Real(0.5) * (Real(1) + t) + Real(0.5) * x * sech2 * dy;
    d2 = sech2 * (dy - x * t * dy * dy + Real(3) * k * c * x * x);
  }
};

// The norm term of h_t^2 above (the 1e-12 of n_t^2, over 4), shared with neural_memory's composed ops.
constexpr double kMemoryClampHalfNormEps = 0.25e-12;

// The clamp's per-token factors from h_t, w_t, m: c_t = w f(h) and, for the backward, f(h) and
// (f'(h) / h) w, so that dw_t = beta_t f and nu_t = beta_t fh_w.
template <class Real>
struct ClampTerms {
  Real c, f, fh_w;
  SEQTRAIN_HD ClampTerms(Real hn, Real w, Real m) {
    using std::tanh;
    const Real tau = tanh(Real(2) * hn / m);
    f = Real(0.5) * m * tau / hn;
    c = w * f;
    fh_w = w * (Real(1) - tau * tau - f) / (hn * hn);
  }
};

struct MemoryChunkInputs {
  Tensor w0, w1;  // [B, H, d, h], [B, H, h, d]
  Tensor k, r, u;  // [B, H, C, d]
  double eps = 1e-5;
  Tensor weight;          // [B, H, C, 1]: w_t, with the clamp only (undefined without)
  double max_norm = 0.0;  // m; 0 = no clamp
};

struct MemoryChunkDims {
  int64_t B, H, C, d, h;
};

struct MemoryChunkGrads {
  Tensor g0, g1;  // [B, H, d, h], [B, H, h, d]
};
MemoryChunkGrads memory_chunk_grads_forward(const MemoryChunkInputs& in);

struct MemoryChunkGradsVjp {
  Tensor dw0, dw1, dk, dr, du;  // the inputs' shapes, contiguous
  Tensor dweight;               // [B, H, C, 1] with the clamp; undefined without
};
// dg0 [B, H, d, h], dg1 [B, H, h, d]: the gradients of the outputs.
MemoryChunkGradsVjp memory_chunk_grads_backward(const MemoryChunkInputs& in, const Tensor& dg0, const Tensor& dg1);

// Differentiable: returns {G0, G1} and records memory_chunk_grads_backward on the tape. max_norm > 0
// turns the clamp on and needs `weight` [B, H, C, 1]; max_norm = 0 needs it undefined.
std::vector<Tensor> memory_chunk_grads(const Tensor& w0, const Tensor& w1, const Tensor& k, const Tensor& r,
                                       const Tensor& u, double eps, const Tensor& weight = Tensor(),
                                       double max_norm = 0.0);

// Whether the device of `w0` has an implementation for these dtype and sizes that neural_memory may
// use (the composed ops otherwise).
bool memory_chunk_grads_supported(const Tensor& w0, int64_t C, int64_t d, int64_t h);

// Whether neural_memory sends CUDA tensors to the fused kernels: on (they pass
// tests/cuda/test_titans_chunk_grads_cuda.cpp on an H100, 2026-11-23); SEQTRAIN_TITANS_FUSED_CUDA=0
// in the environment turns them off (the composed ops then run, e.g. to compare). Direct calls of
// memory_chunk_grads on CUDA tensors always reach the kernels.
bool memory_chunk_grads_cuda_enabled();
void set_memory_chunk_grads_cuda_enabled(bool on);

// ---- backends, called after validation; outputs preallocated contiguous ----
namespace cpu {
void memory_chunk_grads_forward(const MemoryChunkDims& s, const MemoryChunkInputs& in, Tensor& g0, Tensor& g1);
void memory_chunk_grads_backward(const MemoryChunkDims& s, const MemoryChunkInputs& in, const Tensor& dg0,
                                 const Tensor& dg1, MemoryChunkGradsVjp& out);
}  // namespace cpu

#ifdef SEQTRAIN_WITH_CUDA
namespace cuda {
// f32 only; inputs may be strided (inner dimension contiguous, else copied).
// Whether one token row of the backward fits in the shared memory of CUDA device `device`.
bool memory_chunk_grads_fits(const MemoryChunkDims& s, int device);
void memory_chunk_grads_forward(const MemoryChunkDims& s, const MemoryChunkInputs& in, Tensor& g0, Tensor& g1);
void memory_chunk_grads_backward(const MemoryChunkDims& s, const MemoryChunkInputs& in, const Tensor& dg0,
                                 const Tensor& dg1, MemoryChunkGradsVjp& out);
}  // namespace cuda
#endif

}  // namespace seqtrain
