// The inner-loop gradient of one chunk of the depth-2 Titans memory (neural_memory.h), fused: what
// neural_memory's composed chunk_gradients computes with ~45 ops (and ~80 more in its backward) for
// depth 2 without the gradient clamp, as one op with a hand-written vector-Jacobian product.
//
// Per (batch b, head), row vectors, C tokens, head size d, hidden size h; inputs
//   W0 [d, h], W1 [h, d]    the chunk-start weights W^c
//   k, r, u [C, d]          keys and neural_memory's folded operands: with g1 = 1 + gamma and
//                           lr_t the per-token rate, r = (k - v) g1 2 lr_t, u = g1^2 2 lr_t
// forward (everything per token t, i.e. per row; LN without affine; mean over the d columns):
//   Z  = k W0                 A = gelu(Z)                 O = A W1                [C, h], [C, d]
//   Oc = O - mean(O)          s = sqrt(mean(Oc^2) + eps)  N = Oc / s              (LN(O))
//   dn = r + N u              = (M(k) - v) g1 2 lr_t, the loss gradient at N, lr folded in
//   D1 = (dn - mean(dn) - N rho) / s,   rho = mean(dn N)                          (LN backward)
//   P  = D1 W1^T              D0 = P g'(Z)                                        [C, h]
//   G0 = k^T D0  [d, h]       G1 = A^T D1  [h, d]        (sums over the chunk's tokens)
// with gelu the tanh GELU; writing y = sqrt(2/pi) (x + c x^3), y' = sqrt(2/pi) (1 + 3 c x^2), t = tanh(y):
//   g'(x)  = (1 + t) / 2 + x (1 - t^2) y' / 2
//   g''(x) = (1 - t^2) (y' - x t y'^2 + 3 sqrt(2/pi) c x^2)
//
// Backward: given dG0 [d, h], dG1 [h, d], the gradients of every input (with e = dL/dD1):
//   Q   = k dG0               Pb = Q g'(Z)     (dL/dD0 and dL/dP)                 [C, h]
//   e   = A dG1 + Pb W1                                                           [C, d]
//   per row, from D1(dn, N, s):     kap = mean(e N),  sb = -sum(e D1) / s         (dL/ds, direct)
//     dnb = (e - mean(e) - N kap) / s                                             (dL/ddn)
//     Nb  = dnb u - (e rho + dn kap) / s                                          (dL/dN: via dn and D1)
//     Ob  = (Nb - mean(Nb) - N mean(Nb N)) / s + sb N / d                         (dL/dO: LN backward, ds/dO = N / d)
//   dr  = dnb                 du = dnb N
//   dW1 = Pb^T D1 + A^T Ob                                                        [h, d]
//   Zb  = Q P g''(Z) + (D1 dG1^T + Ob W1^T) g'(Z)                                 [C, h]
//   dk  = D0 dG0^T + Zb W0^T                                                      [C, d]
//   dW0 = k^T Zb                                                                  [d, h]
// The second-order terms are Q P g'' (through gelu'), -(e rho + dn kap) / s and sb (through the
// LayerNorm backward's dependence on N and s), and the P^T, D0 dG0^T terms (the weights and keys in
// the inner backward). The backward recomputes the forward from the inputs (nothing is saved but them).
//
// Cost per (b, head): forward 10 C d h FLOPs (five GEMMs), backward 26 C d h (the recomputed forward's
// three, and ten more), plus O(C h) elementwise (tanh) and O(C d) row work. Bytes: the inputs and
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

struct MemoryChunkInputs {
  Tensor w0, w1;  // [B, H, d, h], [B, H, h, d]
  Tensor k, r, u;  // [B, H, C, d]
  double eps = 1e-5;
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
};
// dg0 [B, H, d, h], dg1 [B, H, h, d]: the gradients of the outputs.
MemoryChunkGradsVjp memory_chunk_grads_backward(const MemoryChunkInputs& in, const Tensor& dg0, const Tensor& dg1);

// Differentiable: returns {G0, G1} and records memory_chunk_grads_backward on the tape.
std::vector<Tensor> memory_chunk_grads(const Tensor& w0, const Tensor& w1, const Tensor& k, const Tensor& r,
                                       const Tensor& u, double eps);

// Whether the device of `w0` has an implementation for these dtype and sizes (the dispatch of
// neural_memory: the composed ops otherwise).
bool memory_chunk_grads_supported(const Tensor& w0, int64_t C, int64_t d, int64_t h);

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
