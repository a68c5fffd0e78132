// CPU reference of chunked causal linear attention (linear_attention.h), in the accumulation type
// (f64 for f64, f32 for f32 and bf16, whose inputs widen exactly), rounding the outputs once.
// OpenMP over (batch, head): every output row and state slice is written by one thread, so the
// result does not depend on the thread count.
// Per (b, h) and call: forward ~2 T (C + F) (F + Dv) flops (intra-chunk products plus state
// reads/updates); backward about three times that. Memory traffic is the inputs and outputs once;
// on a CPU the flops bound it.
#include <algorithm>
#include <vector>

#include "layers/hedgehog/linear_attention.h"

namespace seqtrain::cpu {
namespace {

// The accumulation-type copy of t (contiguous), or t itself when it already is one.
Tensor widened(const Tensor& t, DType acc) { return t.to(acc).contiguous(); }
// A contiguous accumulation-type buffer for the output `out` (out itself when the dtypes match).
Tensor acc_buffer(const Tensor& out, DType acc) { return out.dtype() == acc ? out : Tensor::empty(out.shape(), acc); }

template <class A>
A dot(const A* x, const A* y, int64_t n) {
  A s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}
// y += alpha x
template <class A>
void axpy(A alpha, const A* x, A* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// Row pointers of one (b, h) into [B, T, H, X] tensors.
template <class A>
struct HeadRows {
  const A* q;
  const A* k;
  const A* v;
  int64_t qk_stride, v_stride;  // elements between consecutive time steps
  const A* q_row(int64_t t) const { return q + t * qk_stride; }
  const A* k_row(int64_t t) const { return k + t * qk_stride; }
  const A* v_row(int64_t t) const { return v + t * v_stride; }
};

// num_t = q_t^T S + sum_{c0<=s<=t} (q_t . k_s) v_s and den_t = q_t . z + sum (q_t . k_s) + eps for
// row t of the chunk starting at c0 (S [F, Dv], z [F]: the state entering it).
template <class A>
A numerator_denominator(const LinearAttentionDims& a, const HeadRows<A>& r, const A* S, const A* z, int64_t c0,
                        int64_t t, A* num) {
  const A* qt = r.q_row(t);
  std::fill(num, num + a.Dv, A(0));
  for (int64_t f = 0; f < a.F; ++f) axpy(qt[f], S + f * a.Dv, num, a.Dv);
  A den = dot(qt, z, a.F) + A(a.eps);
  for (int64_t s = c0; s <= t; ++s) {
    const A score = dot(qt, r.k_row(s), a.F);
    axpy(score, r.v_row(s), num, a.Dv);
    den += score;
  }
  return den;
}

// S += sum_{s in [c0, c1)} k_s v_s^T, z += sum k_s.
template <class A>
void add_chunk_to_state(const LinearAttentionDims& a, const HeadRows<A>& r, int64_t c0, int64_t c1, A* S, A* z) {
  for (int64_t s = c0; s < c1; ++s) {
    const A* ks = r.k_row(s);
    for (int64_t f = 0; f < a.F; ++f) axpy(ks[f], r.v_row(s), S + f * a.Dv, a.Dv);
    axpy(A(1), ks, z, a.F);
  }
}

template <class A>
void forward_impl(const LinearAttentionDims& a, const Tensor& phi_q, const Tensor& phi_k, const Tensor& v,
                  const Tensor& S0, const Tensor& z0, Tensor& y, Tensor& S_final, Tensor& z_final) {
  const DType acc = S_final.dtype();
  const Tensor qa = widened(phi_q, acc), ka = widened(phi_k, acc), va = widened(v, acc);
  Tensor ya = acc_buffer(y, acc);
  const A* Q = qa.data<A>();  // [B, T, H, F]
  const A* K = ka.data<A>();  // [B, T, H, F]
  const A* V = va.data<A>();  // [B, T, H, Dv]
  A* Y = ya.data<A>();        // [B, T, H, Dv]
  A* SF = S_final.data<A>();  // [B, H, F, Dv]
  A* ZF = z_final.data<A>();  // [B, H, F]
  const Tensor S0c = S0.defined() ? S0.contiguous() : Tensor(), z0c = z0.defined() ? z0.contiguous() : Tensor();
  const int64_t FD = a.F * a.Dv;
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < a.B * a.H; ++bh) {
    const int64_t b = bh / a.H, h = bh % a.H;
    const HeadRows<A> r{Q + (b * a.T * a.H + h) * a.F, K + (b * a.T * a.H + h) * a.F,
                        V + (b * a.T * a.H + h) * a.Dv, a.H * a.F, a.H * a.Dv};
    // The running state lives directly in the final-state slices.
    A* S = SF + bh * FD;
    A* z = ZF + bh * a.F;
    if (S0c.defined()) {
      std::copy(S0c.data<A>() + bh * FD, S0c.data<A>() + (bh + 1) * FD, S);
      std::copy(z0c.data<A>() + bh * a.F, z0c.data<A>() + (bh + 1) * a.F, z);
    } else {
      std::fill(S, S + FD, A(0));
      std::fill(z, z + a.F, A(0));
    }
    for (int64_t c0 = 0; c0 < a.T; c0 += a.chunk) {
      const int64_t c1 = std::min(a.T, c0 + a.chunk);
      for (int64_t t = c0; t < c1; ++t) {
        A* yt = Y + ((b * a.T + t) * a.H + h) * a.Dv;
        const A inv = A(1) / numerator_denominator(a, r, S, z, c0, t, yt);
        for (int64_t e = 0; e < a.Dv; ++e) yt[e] *= inv;
      }
      add_chunk_to_state(a, r, c0, c1, S, z);
    }
  }
  if (!ya.same(y)) y.copy_(ya);
}

template <class A>
void backward_impl(const LinearAttentionDims& a, const Tensor& phi_q, const Tensor& phi_k, const Tensor& v,
                   const Tensor& S0, const Tensor& z0, const Tensor& dy, const Tensor& dS_final,
                   const Tensor& dz_final, Tensor& dphi_q, Tensor& dphi_k, Tensor& dv, Tensor& dS0, Tensor& dz0) {
  const DType acc = dS0.dtype();
  const Tensor qa = widened(phi_q, acc), ka = widened(phi_k, acc), va = widened(v, acc), dya = widened(dy, acc);
  Tensor dqa = acc_buffer(dphi_q, acc), dka = acc_buffer(dphi_k, acc), dva = acc_buffer(dv, acc);
  const A* Q = qa.data<A>();    // [B, T, H, F]
  const A* K = ka.data<A>();    // [B, T, H, F]
  const A* V = va.data<A>();    // [B, T, H, Dv]
  const A* DY = dya.data<A>();  // [B, T, H, Dv]
  A* DQ = dqa.data<A>();        // [B, T, H, F]
  A* DK = dka.data<A>();        // [B, T, H, F]
  A* DV = dva.data<A>();        // [B, T, H, Dv]
  A* G0 = dS0.data<A>();        // [B, H, F, Dv]
  A* H0 = dz0.data<A>();        // [B, H, F]
  const Tensor S0c = S0.defined() ? S0.contiguous() : Tensor(), z0c = z0.defined() ? z0.contiguous() : Tensor();
  const Tensor dSc = dS_final.defined() ? dS_final.contiguous() : Tensor();
  const Tensor dzc = dz_final.defined() ? dz_final.contiguous() : Tensor();
  const int64_t FD = a.F * a.Dv, n_chunks = (a.T + a.chunk - 1) / a.chunk;
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < a.B * a.H; ++bh) {
    const int64_t b = bh / a.H, h = bh % a.H;
    const int64_t row0 = b * a.T * a.H + h;  // (b, t = 0, h) in [B, T, H] rows
    const HeadRows<A> r{Q + row0 * a.F, K + row0 * a.F, V + row0 * a.Dv, a.H * a.F, a.H * a.Dv};
    // States entering each chunk: [n_chunks, F, Dv] and [n_chunks, F], recomputed forward.
    std::vector<A> chunk_S(size_t(n_chunks * FD)), chunk_z(size_t(n_chunks * a.F));
    std::vector<A> S(size_t(FD), A(0)), z(size_t(a.F), A(0));
    if (S0c.defined()) {
      std::copy(S0c.data<A>() + bh * FD, S0c.data<A>() + (bh + 1) * FD, S.begin());
      std::copy(z0c.data<A>() + bh * a.F, z0c.data<A>() + (bh + 1) * a.F, z.begin());
    }
    for (int64_t c = 0; c < n_chunks; ++c) {
      std::copy(S.begin(), S.end(), chunk_S.begin() + c * FD);
      std::copy(z.begin(), z.end(), chunk_z.begin() + c * a.F);
      add_chunk_to_state(a, r, c * a.chunk, std::min(a.T, (c + 1) * a.chunk), S.data(), z.data());
    }
    // Reverse scan: G, hz = gradients w.r.t. the state leaving the current chunk ([F, Dv], [F]).
    A* G = G0 + bh * FD;
    A* hz = H0 + bh * a.F;
    if (dSc.defined()) std::copy(dSc.data<A>() + bh * FD, dSc.data<A>() + (bh + 1) * FD, G);
    else std::fill(G, G + FD, A(0));
    if (dzc.defined()) std::copy(dzc.data<A>() + bh * a.F, dzc.data<A>() + (bh + 1) * a.F, hz);
    else std::fill(hz, hz + a.F, A(0));
    const int64_t rows = std::min(a.chunk, a.T);
    std::vector<A> g(static_cast<size_t>(rows * a.Dv)), dd(static_cast<size_t>(rows)), num(static_cast<size_t>(a.Dv));
    for (int64_t c = n_chunks - 1; c >= 0; --c) {
      const int64_t c0 = c * a.chunk, c1 = std::min(a.T, c0 + a.chunk);
      const A* Sc = chunk_S.data() + c * FD;
      const A* zc = chunk_z.data() + c * a.F;
      // g_t = dy_t / den_t, dd_t = -(g_t . num_t) / den_t.
      for (int64_t t = c0; t < c1; ++t) {
        const A den = numerator_denominator(a, r, Sc, zc, c0, t, num.data());
        const A* dyt = DY + (row0 + t * a.H) * a.Dv;
        A* gt = g.data() + (t - c0) * a.Dv;
        for (int64_t e = 0; e < a.Dv; ++e) gt[e] = dyt[e] / den;
        dd[size_t(t - c0)] = -dot(gt, num.data(), a.Dv) / den;
      }
      // dK = V G^T + 1 h^T and dV = K G from the state leaving the chunk; dQ = g S_c^T + dd z_c^T.
      for (int64_t s = c0; s < c1; ++s) {
        const A* vs = r.v_row(s);
        const A* ks = r.k_row(s);
        A* dks = DK + (row0 + s * a.H) * a.F;
        A* dvs = DV + (row0 + s * a.H) * a.Dv;
        std::fill(dvs, dvs + a.Dv, A(0));
        for (int64_t f = 0; f < a.F; ++f) {
          dks[f] = dot(G + f * a.Dv, vs, a.Dv) + hz[f];
          axpy(ks[f], G + f * a.Dv, dvs, a.Dv);
        }
        const A* gs = g.data() + (s - c0) * a.Dv;
        A* dqs = DQ + (row0 + s * a.H) * a.F;
        for (int64_t f = 0; f < a.F; ++f) dqs[f] = dot(Sc + f * a.Dv, gs, a.Dv) + zc[f] * dd[size_t(s - c0)];
      }
      // Intra-chunk: A_ts = q_t . k_s and dA_ts = g_t . v_s + dd_t for s <= t.
      for (int64_t t = c0; t < c1; ++t) {
        const A* qt = r.q_row(t);
        const A* gt = g.data() + (t - c0) * a.Dv;
        A* dqt = DQ + (row0 + t * a.H) * a.F;
        for (int64_t s = c0; s <= t; ++s) {
          const A score = dot(qt, r.k_row(s), a.F);
          const A dscore = dot(gt, r.v_row(s), a.Dv) + dd[size_t(t - c0)];
          axpy(dscore, r.k_row(s), dqt, a.F);
          axpy(dscore, qt, DK + (row0 + s * a.H) * a.F, a.F);
          axpy(score, gt, DV + (row0 + s * a.H) * a.Dv, a.Dv);
        }
      }
      // G_c = G_{c+1} + Q^T g, h_c = h_{c+1} + Q^T dd.
      for (int64_t t = c0; t < c1; ++t) {
        const A* qt = r.q_row(t);
        const A* gt = g.data() + (t - c0) * a.Dv;
        for (int64_t f = 0; f < a.F; ++f) axpy(qt[f], gt, G + f * a.Dv, a.Dv);
        axpy(dd[size_t(t - c0)], qt, hz, a.F);
      }
    }
  }
  if (!dqa.same(dphi_q)) dphi_q.copy_(dqa);
  if (!dka.same(dphi_k)) dphi_k.copy_(dka);
  if (!dva.same(dv)) dv.copy_(dva);
}

}  // namespace

void linear_attention_forward(const LinearAttentionDims& a, const Tensor& phi_q, const Tensor& phi_k,
                              const Tensor& v, const Tensor& S0, const Tensor& z0, Tensor& y, Tensor& S_final,
                              Tensor& z_final) {
  if (S_final.dtype() == DType::F64) forward_impl<double>(a, phi_q, phi_k, v, S0, z0, y, S_final, z_final);
  else forward_impl<float>(a, phi_q, phi_k, v, S0, z0, y, S_final, z_final);
}

void linear_attention_backward(const LinearAttentionDims& a, const Tensor& phi_q, const Tensor& phi_k,
                               const Tensor& v, const Tensor& S0, const Tensor& z0, const Tensor& dy,
                               const Tensor& dS_final, const Tensor& dz_final, Tensor& dphi_q, Tensor& dphi_k,
                               Tensor& dv, Tensor& dS0, Tensor& dz0) {
  if (dS0.dtype() == DType::F64)
    backward_impl<double>(a, phi_q, phi_k, v, S0, z0, dy, dS_final, dz_final, dphi_q, dphi_k, dv, dS0, dz0);
  else
    backward_impl<float>(a, phi_q, phi_k, v, S0, z0, dy, dS_final, dz_final, dphi_q, dphi_k, dv, dS0, dz0);
}

}  // namespace seqtrain::cpu
