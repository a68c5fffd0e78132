// Titans neural long-term memory (reference/layers.md §5): an MLP M whose weights are learned at test
// time by gradient descent with momentum and decay on the associative loss l(M; k, v) = ||M(k) - v||^2.
// Per (batch, head), row vectors, head size d, hidden size h:
//
//   depth 1 (linear):  M(x) = x W0                                               W0 [d, d]
//   depth L >= 2:      a_0 = x, a_l = gelu(a_{l-1} W_{l-1}) (l < L), o = a_{L-1} W_{L-1}
//                      M(x) = x + LN(o) * (1 + gamma)       (LN without affine; gamma [d] learned,
//                                                             not updated by the inner loop)
//                      W0 [d, h], W_l [h, h], W_{L-1} [h, d]
//
// The chunked rule (chunk size C; tokens t of chunk c; W^c, S^c the weights and momentum entering it):
//
//   G^c      = sum_{t in c} theta_t s_t grad_W l(W^c; k_t, v_t)     gradients at the chunk-start weights
//   eta_c    = sigmoid(mean_{t in c} eta_logit_t)                     momentum, per chunk
//   alpha_c  = sigmoid(mean_{t in c} alpha_logit_t)                   decay (forgetting), per chunk
//   S^{c+1}  = eta_c S^c - G^c,   W^{c+1} = (1 - alpha_c) W^c + S^{c+1}      (S^0 = 0)
//   y_t      = M_{W^c}(q_t) for the tokens of chunk c but its last,  M_{W^{c+1}}(q_t) for the last
//
// so a token reads a memory that has seen every complete chunk up to and including itself
// (titans-pytorch's retrieval rule). C = 1 is the paper's exact sequential rule
// y_t = M_t(q_t), M_t = (1 - alpha_t) M_{t-1} + S_t, S_t = eta_t S_{t-1} - theta_t grad l(M_{t-1}; x_t).
// s_t = 1, or with max_grad_norm m > 0 the soft clamp s_t = m tanh(n_t / m) / n_t of the per-token
// gradient norm n_t = ||grad_W l_t|| (all layers together).
//
// The per-token gradients are outer products a_l^T delta_l (the inner backward, written with
// differentiable ops: matmul, gelu', LayerNorm's backward), so G^c is one batched matmul per layer,
// n_t^2 = sum_l ||a_{l,t}||^2 ||delta_{l,t}||^2 costs O(C (d + h)), and the outer gradient (a gradient of
// a gradient) comes from autograd through those ops: it runs on any backend that has them.
// Chunks are sequential (W^{c+1} depends non-linearly on W^c), so the loop over chunks is made of small
// ops (each a kernel launch and an autograd node) and its op count, not its FLOPs, bounds the speed on
// a GPU. Structure of one call:
//   before the loop: the gates of every complete chunk (one reshape, sum, scale, sigmoid each for
//     1 - alpha_c and eta_c), 1 + gamma, the inner backward's operands with 2 lr_t and (1 + gamma)
//     folded in ((k - v)(1 + gamma) 2 lr_t, (1 + gamma)^2 2 lr_t), each cut into the chunks by one split;
//   in the loop, per complete chunk: the memory pass on k, the inner backward (lr, the 2 of the loss
//     and the residual folded in; gelu' in 12 ops), one matmul per layer for G^c, and the update
//     (4 ops per layer): about 45 ops for depth 2 (65 with the clamp), 9 for depth 1 (21 with the clamp);
//   for depth 2 (with or without the clamp), the per-chunk gradients are one fused op instead
//     (chunk_grads.h: memory pass, inner backward, the clamp and the sums, with a hand-written
//     backward; 1 op + the update's 8),
//     where the device has it (cfg.fused; the composed ops otherwise);
//   after the loop: the retrieval of every complete chunk at once, batched matmuls on the weights
//     stacked over chunks: q [B, H, n, C - 1, d] against W^c [B, H, n, in, out] and the chunks' last
//     tokens q [B, H, n, 1, d] against W^{c+1}. Those stacks are two more copies of the per-chunk
//     weights, which the autograd graph holds anyway (n B H in out elements each, per layer).
// A chunk begun by an earlier call (state.filled > 0) and a partial last chunk take the per-piece
// path: partial sums in the state, retrieval at once.
// FLOPs per token and head for depth 2 (d -> h -> d): memory pass on k 4 d h, inner backward 2 d h,
// per-token gradients summed 4 d h, retrieval on q 4 d h: 14 d h in the forward (56 d^2 at h = 4d),
// about three times that with the outer backward; plus O(d h) per chunk for the update. Bytes: the
// weights W^c, S^c [B, H, d, h] are read and written once per chunk, and read once more by the retrieval.
//
// State passing: the state holds W^c, S^c and the partial sums of the current chunk, so a sequence cut
// anywhere (not only at chunk boundaries) and continued from the state gives the same outputs.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace seqtrain {

struct NeuralMemoryConfig {
  int64_t depth = 2;           // 1 = linear memory; >= 2 = MLP with LayerNorm and residual
  int64_t chunk = 16;          // C
  double max_grad_norm = 0.0;  // per-token soft clamp of ||grad l||; 0 = off
  double ln_eps = 1e-5;
  // Depth 2: the per-chunk gradients by the fused op (chunk_grads.h) where the
  // device has it; false forces the composed ops (tests compare the two).
  bool fused = true;
};

struct NeuralMemoryState {
  std::vector<Tensor> weights;   // W^c per layer [B, H, in, out]
  std::vector<Tensor> momentum;  // S^c per layer (undefined = zero)
  std::vector<Tensor> pending;   // partial G^c of the current chunk (undefined = no token yet)
  Tensor alpha_sum, eta_sum;     // [B, H, 1, 1] partial sums of the gate logits of the current chunk
  int64_t filled = 0;            // tokens of the current chunk seen so far
  // A copy with every tensor detached (what generation carries between calls).
  NeuralMemoryState detached() const;
};

// q, k, v [B, H, T, d]; lr (theta_t, already scaled), alpha_logit, eta_logit [B, H, T]; gamma [1, H, 1, d]
// (depth >= 2; undefined for depth 1). All one floating dtype and device. Continues from `state`
// (whose weights must be set, [B, H, in, out]) and advances it. Returns y [B, H, T, d].
Tensor neural_memory(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lr, const Tensor& alpha_logit,
                     const Tensor& eta_logit, const Tensor& gamma, const NeuralMemoryConfig& cfg,
                     NeuralMemoryState& state);

// M_W(x) for x [B, H, L, d] with the weights `weights` (retrieval, no update).
Tensor memory_apply(const std::vector<Tensor>& weights, const Tensor& gamma, const Tensor& x, double ln_eps);

// G = sum_t lr_t s_t grad_W l(W; k_t, v_t) for the tokens of one piece of a chunk, one [B, H, in, out]
// per layer, from neural_memory's folded operands (neural_memory.cpp says which): the fused op for
// depth 2 when cfg.fused and the device has it, the composed ops otherwise.
std::vector<Tensor> memory_chunk_gradients(const std::vector<Tensor>& w, const Tensor& k, const Tensor& r,
                                           const Tensor& u, const Tensor& weight, const NeuralMemoryConfig& cfg);

// The shapes [in, out] of the memory's layers for head size d and hidden size h.
std::vector<std::pair<int64_t, int64_t>> memory_layer_shapes(int64_t depth, int64_t d, int64_t hidden);

}  // namespace seqtrain
