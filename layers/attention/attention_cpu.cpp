// CPU reference of attention (attention_op.h): exact softmax per query row in the accumulation
// type (f64 for f64, f32 for f32 and bf16, whose inputs widen exactly), rounding the outputs once.
// OpenMP over (batch, head) in the forward and over (batch, kv head) in the backward, so that every
// output row is written by one thread and the result does not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "layers/attention/attention_op.h"

namespace seqtrain::cpu {
namespace {

// Keys visible to query i: [lo, hi] (empty when hi < lo).
struct KeyRange {
  int64_t lo, hi;
};
KeyRange visible_keys(const AttentionDims& a, int64_t i) {
  const int64_t pos = i + a.S - a.T;  // bottom-right alignment
  KeyRange r{0, a.S - 1};
  if (a.causal) r.hi = std::min(r.hi, pos);
  if (a.window > 0) r.lo = std::max<int64_t>(0, pos - a.window + 1);
  return r;
}

// The accumulation-type copy of t (contiguous), or t itself when it already is one.
Tensor widened(const Tensor& t, DType acc) { return t.to(acc).contiguous(); }

template <class A>
void forward_impl(const AttentionDims& a, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& o,
                  Tensor& lse) {
  const DType acc = lse.dtype();
  const Tensor qa = widened(q, acc), ka = widened(k, acc), va = widened(v, acc);
  Tensor oa = o.dtype() == acc ? o : Tensor::empty(o.shape(), acc);
  const A* Q = qa.data<A>();  // [B, T, H, d]
  const A* K = ka.data<A>();  // [B, S, Hkv, d]
  const A* V = va.data<A>();  // [B, S, Hkv, d]
  A* O = oa.data<A>();        // [B, T, H, d]
  A* L = lse.data<A>();       // [B, H, T]
  const int64_t d = a.d, group = a.H / a.Hkv;
  const A scale = A(a.scale);
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < a.B * a.H; ++bh) {
    const int64_t b = bh / a.H, h = bh % a.H, hk = h / group;
    std::vector<A> s(size_t(a.S));
    for (int64_t i = 0; i < a.T; ++i) {
      const A* qi = Q + ((b * a.T + i) * a.H + h) * d;
      A* oi = O + ((b * a.T + i) * a.H + h) * d;
      const KeyRange r = visible_keys(a, i);
      std::fill(oi, oi + d, A(0));
      if (r.hi < r.lo) {
        L[bh * a.T + i] = -std::numeric_limits<A>::infinity();
        continue;
      }
      A m = -std::numeric_limits<A>::infinity();
      for (int64_t j = r.lo; j <= r.hi; ++j) {
        const A* kj = K + ((b * a.S + j) * a.Hkv + hk) * d;
        A dot = 0;
        for (int64_t e = 0; e < d; ++e) dot += qi[e] * kj[e];
        s[j] = scale * dot;
        m = std::max(m, s[j]);
      }
      A l = 0;
      for (int64_t j = r.lo; j <= r.hi; ++j) {
        const A p = std::exp(s[j] - m);
        l += p;
        const A* vj = V + ((b * a.S + j) * a.Hkv + hk) * d;
        for (int64_t e = 0; e < d; ++e) oi[e] += p * vj[e];
      }
      for (int64_t e = 0; e < d; ++e) oi[e] /= l;
      L[bh * a.T + i] = m + std::log(l);
    }
  }
  if (!oa.same(o)) o.copy_(oa);
}

template <class A>
void backward_impl(const AttentionDims& a, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& o, const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk,
                   Tensor& dv) {
  const DType acc = lse.dtype();
  const Tensor qa = widened(q, acc), ka = widened(k, acc), va = widened(v, acc);
  const Tensor oa = widened(o, acc), da = widened(dout, acc);
  Tensor dqa = Tensor::zeros(dq.shape(), acc), dka = Tensor::zeros(dk.shape(), acc),
         dva = Tensor::zeros(dv.shape(), acc);
  const A *Q = qa.data<A>(), *K = ka.data<A>(), *V = va.data<A>(), *O = oa.data<A>(), *dO = da.data<A>();
  const A* L = lse.data<A>();
  A *dQ = dqa.data<A>(), *dK = dka.data<A>(), *dV = dva.data<A>();
  const int64_t d = a.d, group = a.H / a.Hkv;
  const A scale = A(a.scale);
  // Each (b, kv head) owns its dk, dv rows and the dq rows of its query heads.
#pragma omp parallel for schedule(dynamic)
  for (int64_t bk = 0; bk < a.B * a.Hkv; ++bk) {
    const int64_t b = bk / a.Hkv, hk = bk % a.Hkv;
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      for (int64_t i = 0; i < a.T; ++i) {
        const KeyRange r = visible_keys(a, i);
        const A lse_i = L[(b * a.H + h) * a.T + i];
        if (r.hi < r.lo || !std::isfinite(lse_i)) continue;  // no visible key: zero gradient
        const int64_t row = ((b * a.T + i) * a.H + h) * d;
        const A *qi = Q + row, *oi = O + row, *doi = dO + row;
        A* dqi = dQ + row;
        A Di = 0;
        for (int64_t e = 0; e < d; ++e) Di += doi[e] * oi[e];
        for (int64_t j = r.lo; j <= r.hi; ++j) {
          const int64_t col = ((b * a.S + j) * a.Hkv + hk) * d;
          const A *kj = K + col, *vj = V + col;
          A s = 0, dp = 0;
          for (int64_t e = 0; e < d; ++e) {
            s += qi[e] * kj[e];
            dp += doi[e] * vj[e];
          }
          const A p = std::exp(scale * s - lse_i);
          const A ds = p * (dp - Di) * scale;
          A *dkj = dK + col, *dvj = dV + col;
          for (int64_t e = 0; e < d; ++e) {
            dqi[e] += ds * kj[e];
            dkj[e] += ds * qi[e];
            dvj[e] += p * doi[e];
          }
        }
      }
    }
  }
  dq.copy_(dqa);
  dk.copy_(dka);
  dv.copy_(dva);
}

}  // namespace

void attention_forward(const AttentionDims& a, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& o,
                       Tensor& lse) {
  if (lse.dtype() == DType::F64) forward_impl<double>(a, q, k, v, o, lse);
  else forward_impl<float>(a, q, k, v, o, lse);
}

void attention_backward(const AttentionDims& a, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& o, const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk,
                        Tensor& dv) {
  if (lse.dtype() == DType::F64) backward_impl<double>(a, q, k, v, o, lse, dout, dq, dk, dv);
  else backward_impl<float>(a, q, k, v, o, lse, dout, dq, dk, dv);
}

}  // namespace seqtrain::cpu
