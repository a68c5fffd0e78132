#include "layers/titans/neural_memory.h"

#include <algorithm>

#include "autograd/functions.h"
#include "layers/titans/chunk_grads.h"

namespace seqtrain {

namespace {

// gelu'(x) for the tanh GELU, from differentiable ops so that its own derivative (gelu'') reaches
// the outer gradient. With t = tanh(u), u = k (x + c x^3) and h = (1 + t) / 2 = sigmoid(2u):
// gelu'(x) = (1 + t) / 2 + x (1 - t^2) u' / 2 = h + h (1 - h) x b,  b = 2u' = 2k (1 + 3 c x^2).
Tensor gelu_derivative(const Tensor& x) {
  const double k = 0.7978845608028654, c = 0.044715;
  Tensor x2 = square(x);
  Tensor h = sigmoid(mul(x, add_scalar(scale(x2, 2.0 * k * c), 2.0 * k)));
  Tensor xb = mul(x, add_scalar(scale(x2, 6.0 * k * c), 2.0 * k));
  return mul(h, add_scalar(sub(xb, mul(h, xb)), 1.0));
}

// One pass of the memory's layers on x [..., L, d] (weights [..., in, out] with the same leading
// dims), up to the un-normalised output, keeping what the inner backward needs.
struct MemoryPass {
  std::vector<Tensor> inputs;  // input of each layer: a_0 = x, a_l = gelu(z_l)
  std::vector<Tensor> pre;     // z_l = a_{l-1} W_{l-1} for the hidden layers
  Tensor out;                  // depth 1: M(x) = x W0; depth >= 2: LN(o)
  Tensor sd;                   // sqrt(var(o) + eps) (depth >= 2)
};

MemoryPass memory_pass(const std::vector<Tensor>& w, const Tensor& x, double eps) {
  MemoryPass p;
  p.inputs.push_back(x);
  Tensor a = x;
  for (size_t l = 0; l + 1 < w.size(); ++l) {
    Tensor z = matmul(a, w[l]);
    p.pre.push_back(z);
    a = gelu(z);
    p.inputs.push_back(a);
  }
  Tensor o = matmul(a, w.back());
  if (w.size() == 1) {
    p.out = o;
    return p;
  }
  Tensor oc = sub(o, mean(o, -1, true));
  p.sd = sqrt(add_scalar(mean(square(oc), -1, true), eps));
  p.out = div(oc, p.sd);
  return p;
}

// M_W(x); gamma1 = 1 + gamma, broadcastable against x (depth >= 2).
Tensor retrieve(const std::vector<Tensor>& w, const Tensor& gamma1, const Tensor& x, double eps) {
  MemoryPass p = memory_pass(w, x, eps);
  return w.size() == 1 ? p.out : add(x, mul(p.out, gamma1));
}

// G = sum_t lr_t s_t grad_W l(W; k_t, v_t), one [B, H, in, out] per layer, for the L tokens of one
// piece of a chunk, from differentiable ops (memory_chunk_grads fuses depth 2). The per-token factor u = 2 lr_t (the 2 of grad ||M(k) - v||^2; u = 1 with the
// clamp, whose norm needs the unweighted deltas: there `weight` = 2 lr_t [B, H, L, 1] is applied per
// layer) scales the output-side delta before it is propagated: every delta is linear in it.
//   depth 1:     r = v, u [B, H, L, 1];                     delta_0 = (x W0 - r) u
//   depth >= 2:  r = (k - v)(1 + gamma) u, u := (1 + gamma)^2 u;  dn = r + LN(o) u = (M(k) - v)(1 + gamma) u
std::vector<Tensor> composed_chunk_gradients(const std::vector<Tensor>& w, const Tensor& k, const Tensor& r,
                                             const Tensor& u, const Tensor& weight, const NeuralMemoryConfig& cfg) {
  MemoryPass p = memory_pass(w, k, cfg.ln_eps);
  const size_t L = w.size();
  const bool clamp = cfg.max_grad_norm > 0;
  std::vector<Tensor> delta(L);  // u dl/d(output of layer l) / 2, per token
  if (L == 1) {
    delta[0] = clamp ? sub(p.out, r) : mul(sub(p.out, r), u);
  } else {
    // LayerNorm backward without affine: do = (dn - mean(dn) - n mean(dn n)) / sd.
    Tensor dn = add(r, mul(p.out, u));
    Tensor centred = sub(dn, mean(dn, -1, true));
    delta[L - 1] = div(sub(centred, mul(p.out, mean(mul(dn, p.out), -1, true))), p.sd);
    for (size_t l = L - 1; l-- > 0;)
      delta[l] = mul(matmul(delta[l + 1], w[l + 1], false, true), gelu_derivative(p.pre[l]));
  }
  std::vector<Tensor> g(L);
  if (!clamp) {
    for (size_t l = 0; l < L; ++l) g[l] = matmul(p.inputs[l], delta[l], true, false);
    return g;
  }
  // The deltas are half the gradient's, so n_t = 2 h_t with h_t = sqrt(sum_l ||a_l||^2 ||delta_l||^2 + 1e-12 / 4),
  // and the weight of a delta is 2 lr_t s_t = 2 lr_t (m / 2) tanh(2 h_t / m) / h_t.
  Tensor sq;
  for (size_t l = 0; l < L; ++l) {
    Tensor term = mul(sum(square(p.inputs[l]), -1, true), sum(square(delta[l]), -1, true));
    sq = sq.defined() ? add(sq, term) : term;
  }
  Tensor half_norm = sqrt(add_scalar(sq, kMemoryClampHalfNormEps));
  const double m = cfg.max_grad_norm;
  Tensor wcol = mul(weight, div(scale(tanh(scale(half_norm, 2.0 / m)), 0.5 * m), half_norm));
  for (size_t l = 0; l < L; ++l) g[l] = matmul(p.inputs[l], mul(delta[l], wcol), true, false);
  return g;
}

}  // namespace

std::vector<Tensor> memory_chunk_gradients(const std::vector<Tensor>& w, const Tensor& k, const Tensor& r,
                                           const Tensor& u, const Tensor& weight, const NeuralMemoryConfig& cfg) {
  if (cfg.fused && w.size() == 2 && memory_chunk_grads_supported(w[0], k.size(2), k.size(3), w[0].size(3))) {
    if (cfg.max_grad_norm <= 0) return memory_chunk_grads(w[0], w[1], k, r, u, cfg.ln_eps);
    // With the clamp u = (1 + gamma)^2 is per head and column only: the op takes it per token.
    return memory_chunk_grads(w[0], w[1], k, r, expand(u, k.shape()), cfg.ln_eps, weight, cfg.max_grad_norm);
  }
  return composed_chunk_gradients(w, k, r, u, weight, cfg);
}

namespace {

Tensor accumulate(const Tensor& acc, const Tensor& x) { return acc.defined() ? add(acc, x) : x; }

// Closes the current chunk with keep = 1 - alpha_c and eta_c [B, H, 1, 1]: S = eta S - G, W = keep W + S.
void close_chunk(NeuralMemoryState& s, const Tensor& keep, const Tensor& eta) {
  for (size_t l = 0; l < s.weights.size(); ++l) {
    Tensor S = s.momentum[l].defined() ? sub(mul(eta, s.momentum[l]), s.pending[l]) : neg(s.pending[l]);
    s.weights[l] = add(mul(keep, s.weights[l]), S);
    s.momentum[l] = S;
    s.pending[l] = Tensor();
  }
  s.alpha_sum = Tensor();
  s.eta_sum = Tensor();
  s.filled = 0;
}

Tensor gate_sum(const Tensor& logits) {  // [B, H, L] -> [B, H, 1, 1]
  return reshape(sum(logits, -1), {logits.size(0), logits.size(1), 1, 1});
}

// sigmoid(sign * mean over each chunk) of logits [B, H, n C] as n tensors [B, H, 1, 1].
std::vector<Tensor> chunk_gates(const Tensor& logits, int64_t n, int64_t chunk, double sign) {
  Tensor per_chunk = reshape(logits, {logits.size(0), logits.size(1), n, chunk});
  Tensor gate = sigmoid(scale(sum(per_chunk, -1, true), sign / double(chunk)));  // [B, H, n, 1]
  return split(gate, std::vector<int64_t>(static_cast<size_t>(n), 1), 2);
}

// Weights [B, H, in, out] of n chunks stacked to [B, H, n, in, out].
Tensor stack_chunks(const std::vector<Tensor>& ws) {
  const Tensor& w = ws[0];
  return reshape(concat(ws, 2), {w.size(0), w.size(1), int64_t(ws.size()), w.size(2), w.size(3)});
}

}  // namespace
NeuralMemoryState NeuralMemoryState::detached() const {
  NeuralMemoryState out;
  auto det = [](const std::vector<Tensor>& v) {
    std::vector<Tensor> r;
    for (const Tensor& t : v) r.push_back(t.defined() ? t.detach() : t);
    return r;
  };
  out.weights = det(weights);
  out.momentum = det(momentum);
  out.pending = det(pending);
  out.alpha_sum = alpha_sum.defined() ? alpha_sum.detach() : alpha_sum;
  out.eta_sum = eta_sum.defined() ? eta_sum.detach() : eta_sum;
  out.filled = filled;
  return out;
}

std::vector<std::pair<int64_t, int64_t>> memory_layer_shapes(int64_t depth, int64_t d, int64_t hidden) {
  ST_CHECK(depth >= 1 && d > 0 && hidden > 0, "neural memory: depth ", depth, ", head size ", d, ", hidden ", hidden,
           ": expected all >= 1");
  if (depth == 1) return {{d, d}};
  std::vector<std::pair<int64_t, int64_t>> shapes{{d, hidden}};
  for (int64_t l = 1; l + 1 < depth; ++l) shapes.emplace_back(hidden, hidden);
  shapes.emplace_back(hidden, d);
  return shapes;
}

Tensor memory_apply(const std::vector<Tensor>& weights, const Tensor& gamma, const Tensor& x, double ln_eps) {
  return retrieve(weights, weights.size() == 1 ? Tensor() : add_scalar(gamma, 1.0), x, ln_eps);
}

Tensor neural_memory(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lr, const Tensor& alpha_logit,
                     const Tensor& eta_logit, const Tensor& gamma, const NeuralMemoryConfig& cfg,
                     NeuralMemoryState& state) {
  ST_CHECK(q.defined() && q.dim() == 4 && k.shape() == q.shape() && v.shape() == q.shape(), "neural_memory: q ",
           q.defined() ? q.desc() : "undefined", ", k ", k.desc(), ", v ", v.desc(), ": expected equal [B, H, T, d]");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2);
  const Shape gate_shape{B, H, T};
  ST_CHECK(lr.shape() == gate_shape && alpha_logit.shape() == gate_shape && eta_logit.shape() == gate_shape,
           "neural_memory: lr ", lr.desc(), ", alpha_logit ", alpha_logit.desc(), ", eta_logit ", eta_logit.desc(),
           ": expected [", B, ", ", H, ", ", T, "]");
  ST_CHECK(T >= 1, "neural_memory: q ", q.desc(), " has no token; expected T >= 1");
  ST_CHECK(cfg.chunk >= 1 && state.filled >= 0 && state.filled < cfg.chunk, "neural_memory: chunk ", cfg.chunk,
           " with ", state.filled, " tokens pending: expected chunk >= 1 and 0 <= pending < chunk");
  ST_CHECK(!state.weights.empty() && (state.weights.size() == 1 || gamma.defined()),
           "neural_memory: the state has ", state.weights.size(),
           " weight tensors; expected >= 1, and gamma for a deep memory");
  for (const Tensor& w : state.weights)
    ST_CHECK(w.dim() == 4 && w.size(0) == B && w.size(1) == H && w.dtype() == q.dtype(), "neural_memory: weight ",
             w.desc(), " does not match q ", q.desc(), "; expected [B, H, in, out] of q's dtype");
  const size_t L = state.weights.size();
  state.momentum.resize(L);
  state.pending.resize(L);
  const int64_t C = cfg.chunk, d = q.size(3);
  const bool deep = L >= 2, clamp = cfg.max_grad_norm > 0;
  // Pieces: the rest of a chunk already begun (if any), n_full complete chunks, a partial tail.
  const int64_t head = state.filled > 0 ? std::min(T, C - state.filled) : 0;
  const int64_t n_full = (T - head) / C, full_end = head + n_full * C;
  std::vector<int64_t> sizes;
  if (head > 0) sizes.push_back(head);
  sizes.insert(sizes.end(), static_cast<size_t>(n_full), C);
  if (full_end < T) sizes.push_back(T - full_end);
  // Whole-sequence operands, cut into the pieces once.
  Tensor gamma1 = deep ? add_scalar(gamma, 1.0) : Tensor();
  Tensor weight = reshape(scale(lr, 2.0), {B, H, T, 1});
  Tensor r = v, u = weight;  // memory_chunk_gradients' operands
  if (deep) {
    Tensor ug = clamp ? gamma1 : mul(weight, gamma1);
    r = mul(sub(k, v), ug);
    u = mul(ug, gamma1);
  }
  const std::vector<Tensor> ks = split(k, sizes, 2), rs = split(r, sizes, 2);
  const std::vector<Tensor> us = clamp ? std::vector<Tensor>(sizes.size(), u) : split(u, sizes, 2);
  const std::vector<Tensor> ws = clamp ? split(weight, sizes, 2) : std::vector<Tensor>(sizes.size());
  std::vector<Tensor> keep, eta;  // per complete chunk: 1 - alpha_c, eta_c
  if (n_full > 0) {
    keep = chunk_gates(slice(alpha_logit, 2, head, full_end), n_full, C, -1.0);
    eta = chunk_gates(slice(eta_logit, 2, head, full_end), n_full, C, 1.0);
  }
  std::vector<Tensor> outs;
  // A piece that is not a complete chunk: partial sums in the state, retrieval right away.
  auto partial_piece = [&](size_t i, int64_t s, int64_t e) {
    std::vector<Tensor> g = memory_chunk_gradients(state.weights, ks[i], rs[i], us[i], ws[i], cfg);
    for (size_t l = 0; l < L; ++l) state.pending[l] = accumulate(state.pending[l], g[l]);
    state.alpha_sum = accumulate(state.alpha_sum, gate_sum(slice(alpha_logit, 2, s, e)));
    state.eta_sum = accumulate(state.eta_sum, gate_sum(slice(eta_logit, 2, s, e)));
    state.filled += e - s;
    const bool closes = state.filled == C;
    const int64_t before = closes ? e - 1 : e;  // tokens read from W^c
    if (before > s) outs.push_back(retrieve(state.weights, gamma1, slice(q, 2, s, before), cfg.ln_eps));
    if (closes) {
      close_chunk(state, sigmoid(scale(state.alpha_sum, -1.0 / double(C))),
                  sigmoid(scale(state.eta_sum, 1.0 / double(C))));
      outs.push_back(retrieve(state.weights, gamma1, slice(q, 2, e - 1, e), cfg.ln_eps));
    }
  };
  size_t piece = 0;
  if (head > 0) partial_piece(piece++, 0, head);
  // Complete chunks: only the update runs in the loop; W^0..W^n are kept for the retrieval.
  std::vector<std::vector<Tensor>> chunk_weights(L);  // [layer][c]
  for (int64_t c = 0; c < n_full; ++c, ++piece) {
    for (size_t l = 0; l < L; ++l) chunk_weights[l].push_back(state.weights[l]);
    state.pending = memory_chunk_gradients(state.weights, ks[piece], rs[piece], us[piece], ws[piece], cfg);
    close_chunk(state, keep[size_t(c)], eta[size_t(c)]);
  }
  if (n_full > 0) {
    // Retrieval of every complete chunk at once on the stacked weights [B, H, n, in, out]: the
    // first C - 1 tokens of chunk c read W^c, its last token W^{c+1}.
    std::vector<Tensor> read_before(L), read_last(L);
    for (size_t l = 0; l < L; ++l) {
      chunk_weights[l].push_back(state.weights[l]);
      const std::vector<Tensor>& wl = chunk_weights[l];
      if (C > 1) read_before[l] = stack_chunks(std::vector<Tensor>(wl.begin(), wl.end() - 1));
      read_last[l] = stack_chunks(std::vector<Tensor>(wl.begin() + 1, wl.end()));
    }
    Tensor g5 = deep ? reshape(gamma1, {1, H, 1, 1, d}) : Tensor();
    Tensor q5 = reshape(slice(q, 2, head, full_end), {B, H, n_full, C, d});
    Tensor y_last = retrieve(read_last, g5, slice(q5, 3, C - 1, C), cfg.ln_eps);
    Tensor y5 = C == 1 ? y_last
                       : concat({retrieve(read_before, g5, slice(q5, 3, 0, C - 1), cfg.ln_eps), y_last}, 3);
    outs.push_back(reshape(y5, {B, H, n_full * C, d}));
  }
  if (full_end < T) partial_piece(piece, full_end, T);
  return outs.size() == 1 ? outs[0] : concat(outs, 2);
}

}  // namespace seqtrain
