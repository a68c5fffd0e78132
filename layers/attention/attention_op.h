// Causal softmax attention (FlashAttention-2 math), with grouped-query heads and sliding windows.
//
//   q [B, T, H, d], k, v [B, S, Hkv, d], H % Hkv == 0; query head h reads kv head h / (H / Hkv).
//   Query i sits at absolute position i + (S - T) (bottom-right alignment: T == 1, S == n is one
//   decoding step against a KV cache). Key j is visible to query i iff
//       j <= i + (S - T)                      when causal
//       j >  i + (S - T) - window             when window > 0
//   s_ij = scale * <q_i, k_j>   (scale = 1/sqrt(d) unless given)
//   lse_i = log sum_{j visible} exp(s_ij)                           [B, H, T]
//   o_i   = sum_j exp(s_ij - lse_i) v_j                             [B, T, H, d]
// Backward (P recomputed from lse, never stored):
//   D_i = <dO_i, O_i>,  dP_ij = <dO_i, v_j>,  dS_ij = P_ij (dP_ij - D_i)
//   dq_i = scale * sum_j dS_ij k_j,  dk_j = scale * sum_i dS_ij q_i,  dv_j = sum_i P_ij dO_i
//   (dk, dv of a kv head sum over the H / Hkv query heads that share it).
// A row with no visible key (only possible when T > S) has o = 0, lse = -inf and zero gradient.
//
// q, k, v may be views (the last dim must have unit stride), e.g. slices of one fused
// [B, T, 3, H, d] projection. CPU: f64, f32, bf16 (computed in f32). CUDA: bf16 (tensor cores for
// d = 64, 128), f32 and other d through a simple kernel; SEQTRAIN_ATTENTION_KERNEL=simple forces
// the simple kernels for every case (to bisect a suspected fast-kernel bug).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace seqtrain {

struct AttentionConfig {
  bool causal = true;
  int64_t window = 0;  // 0 = unlimited; else key j visible to query i iff i_abs - window < j (<= i_abs)
  double scale = 0;    // 0 -> 1/sqrt(d)
};

struct AttentionOut {
  Tensor o;    // [B, T, H, d] contiguous, q's dtype
  Tensor lse;  // [B, H, T], f32 (f64 for f64)
};
AttentionOut attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionConfig& cfg);

struct AttentionGrads {
  Tensor dq, dk, dv;  // shapes of q, k, v; contiguous
};
AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                  const Tensor& lse, const Tensor& dout, const AttentionConfig& cfg);

// Differentiable: records attention_backward on the tape.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionConfig& cfg);

// ---- backends, called by attention_op.cpp after validation ----
// Sizes shared by both backends; `scale` is resolved (never 0).
struct AttentionDims {
  int64_t B, T, S, H, Hkv, d;
  bool causal;
  int64_t window;
  double scale;
};

namespace cpu {
// o, lse preallocated (contiguous); dq, dk, dv preallocated contiguous; o, dout contiguous.
void attention_forward(const AttentionDims& a, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& o,
                       Tensor& lse);
void attention_backward(const AttentionDims& a, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& o, const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk,
                        Tensor& dv);
}  // namespace cpu

#ifdef SEQTRAIN_WITH_CUDA
namespace cuda {
void attention_forward(const AttentionDims& a, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& o,
                       Tensor& lse);
void attention_backward(const AttentionDims& a, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& o, const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk,
                        Tensor& dv);
}  // namespace cuda
#endif

}  // namespace seqtrain
