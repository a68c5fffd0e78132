// CPU reference of the Aaren scan (aaren_scan.h): the sequential recurrence per (batch, head) in
// the state dtype (f64 for f64, f32 for f32 and bf16, whose values widen exactly), rounding o and
// dv once. OpenMP over (batch, head): every output row is written by one thread, so the result does
// not depend on the thread count.
// Cost per (b, t, h): forward ~4d FLOPs and 2 exp, reading v_t and writing o_t (d elements each);
// backward ~8d FLOPs, reading v_t, o_t, dout_t and writing dv_t. Both are memory-bound.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "layers/aaren/aaren_scan.h"

namespace seqtrain::cpu {
namespace {

// e^{x - m} for x <= m, with e^{-inf - m} = 0 even for m = -inf: the identity state's running max
// is -inf, and -inf - (-inf) would be NaN (reference/layers.md §1.2).
template <class A>
A rescale(A x, A m) {
  return x == -std::numeric_limits<A>::infinity() ? A(0) : std::exp(x - m);
}

// The accumulation-type copy of t (contiguous), or t itself when it already is one.
Tensor widened(const Tensor& t, DType acc) { return t.to(acc).contiguous(); }

template <class T>
const T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

template <class A>
void forward_impl(const AarenScanDims& a, const Tensor& scores, const Tensor& v, const AarenState* initial, Tensor& o,
                  Tensor& lse, AarenState& final_state) {
  const DType acc = lse.dtype();
  const Tensor va = widened(v, acc);
  Tensor oa = o.dtype() == acc ? o : Tensor::empty(o.shape(), acc);
  const A* S = scores.data<A>();  // [B, T, H]
  const A* V = va.data<A>();      // [B, T, H, d]
  A* O = oa.data<A>();            // [B, T, H, d]
  A* L = lse.data<A>();           // [B, T, H]
  const A* M0 = initial ? initial->m.data<A>() : nullptr;    // [B, H]
  const A* N0 = initial ? initial->num.data<A>() : nullptr;  // [B, H, d]
  const A* D0 = initial ? initial->den.data<A>() : nullptr;  // [B, H]
  A* MF = final_state.m.data<A>();                           // [B, H]
  A* NF = final_state.num.data<A>();                         // [B, H, d]
  A* DF = final_state.den.data<A>();                         // [B, H]
  const int64_t T = a.T, H = a.H, d = a.d;
  const A neg_inf = -std::numeric_limits<A>::infinity();
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < a.B * H; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    A m = M0 ? M0[bh] : neg_inf;
    A den = D0 ? D0[bh] : A(0);
    A* num = NF + bh * d;  // the running numerator lives in the final state's row
    for (int64_t e = 0; e < d; ++e) num[e] = N0 ? N0[bh * d + e] : A(0);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = (b * T + t) * H + h;
      const A s = S[row];
      const A m_new = std::max(m, s);
      const A g = rescale(m, m_new), p = rescale(s, m_new);
      const A* vt = V + row * d;
      A* ot = O + row * d;
      den = g * den + p;
      // den = 0 only when nothing has been seen (all scores -inf): o = 0 then, as attention does
      // for a row without a visible key.
      const A inv_den = den > 0 ? A(1) / den : A(0);
      for (int64_t e = 0; e < d; ++e) {
        num[e] = g * num[e] + p * vt[e];
        ot[e] = num[e] * inv_den;
      }
      L[row] = den > 0 ? m_new + std::log(den) : neg_inf;
      m = m_new;
    }
    MF[bh] = m;
    DF[bh] = den;
  }
  if (!oa.same(o)) o.copy_(oa);
}

template <class A>
void backward_impl(const AarenScanDims& a, const Tensor& scores, const Tensor& v, const AarenState* initial,
                   const Tensor& o, const Tensor& lse, const Tensor& dout, const AarenState* final_state,
                   const AarenState* dfinal, AarenScanGrads& g) {
  const DType acc = lse.dtype();
  const Tensor va = widened(v, acc), oa = widened(o, acc), da = widened(dout, acc);
  Tensor dva = g.dv.dtype() == acc ? g.dv : Tensor::empty(g.dv.shape(), acc);
  const A* S = scores.data<A>();  // [B, T, H]
  const A* V = va.data<A>();      // [B, T, H, d]
  const A* O = oa.data<A>();      // [B, T, H, d]
  const A* dO = da.data<A>();     // [B, T, H, d]
  const A* L = lse.data<A>();     // [B, T, H]
  A* dS = g.dscores.data<A>();    // [B, T, H]
  A* dV = dva.data<A>();          // [B, T, H, d]
  const A* M0 = initial ? initial->m.data<A>() : nullptr;        // [B, H]
  const A* N0 = initial ? initial->num.data<A>() : nullptr;      // [B, H, d]
  const A* D0 = initial ? initial->den.data<A>() : nullptr;      // [B, H]
  const A* NF = final_state ? final_state->num.data<A>() : nullptr;  // [B, H, d]
  const A* DF = final_state ? final_state->den.data<A>() : nullptr;  // [B, H]
  const A* dMF = dfinal ? data_or_null<A>(dfinal->m) : nullptr;      // [B, H]
  const A* dNF = dfinal ? data_or_null<A>(dfinal->num) : nullptr;    // [B, H, d]
  const A* dDF = dfinal ? data_or_null<A>(dfinal->den) : nullptr;    // [B, H]
  const int64_t T = a.T, H = a.H, d = a.d;
  const A neg_inf = -std::numeric_limits<A>::infinity();
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < a.B * H; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    // Running maxima m_t [T] (recomputed: exact), and the first maximum of (m0, s_0, ..) that the
    // final m's gradient goes to (-1: m0; -2: none, when every score is -inf and no m0 is given).
    std::vector<A> ms(static_cast<size_t>(T));
    A m = M0 ? M0[bh] : neg_inf;
    int64_t argmax = M0 ? -1 : -2;
    for (int64_t t = 0; t < T; ++t) {
      const A s = S[(b * T + t) * H + h];
      if (s > m) {
        m = s;
        argmax = t;
      }
      ms[size_t(t)] = m;
    }
    // R, Q enter the loop as R_T = dnum_final, Q_T = -dden_final, at the scale of m_{T-1}.
    std::vector<A> R(size_t(d), A(0));
    A Q = dDF ? -dDF[bh] : A(0);
    A gm = dMF ? dMF[bh] : A(0);
    if (dDF) gm -= dDF[bh] * DF[bh];
    if (dNF)
      for (int64_t e = 0; e < d; ++e) {
        R[size_t(e)] = dNF[bh * d + e];
        gm -= dNF[bh * d + e] * NF[bh * d + e];
      }
    A m_next = ms[size_t(T - 1)];
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t row = (b * T + t) * H + h;
      const A mt = ms[size_t(t)];
      const A gamma = rescale(mt, m_next);                           // g_{t+1} (1 at t = T - 1)
      const A w = L[row] == neg_inf ? A(0) : std::exp(mt - L[row]);  // 1 / den_t
      const A p = rescale(S[row], mt);
      const A *vt = V + row * d, *ot = O + row * d, *dot = dO + row * d;
      A* dvt = dV + row * d;
      A do_o = 0, v_r = 0;
      for (int64_t e = 0; e < d; ++e) {
        do_o += dot[e] * ot[e];
        R[size_t(e)] = gamma * R[size_t(e)] + w * dot[e];
        v_r += vt[e] * R[size_t(e)];
        dvt[e] = p * R[size_t(e)];
      }
      Q = gamma * Q + w * do_o;
      dS[row] = p * (v_r - Q);
      m_next = mt;
    }
    if (argmax >= 0) dS[(b * T + argmax) * H + h] += gm;
    if (initial) {
      const A g0 = rescale(M0[bh], m_next);
      A* dN0 = g.dinitial.num.data<A>() + bh * d;
      const A dD0 = -g0 * Q;
      A dM0 = dD0 * D0[bh] + (argmax == -1 ? gm : A(0));
      for (int64_t e = 0; e < d; ++e) {
        dN0[e] = g0 * R[size_t(e)];
        dM0 += dN0[e] * N0[bh * d + e];
      }
      g.dinitial.den.data<A>()[bh] = dD0;
      g.dinitial.m.data<A>()[bh] = dM0;
    }
  }
  if (!dva.same(g.dv)) g.dv.copy_(dva);
}

}  // namespace

void aaren_scan_forward(const AarenScanDims& a, const Tensor& scores, const Tensor& v, const AarenState* initial,
                        Tensor& o, Tensor& lse, AarenState& final_state) {
  if (lse.dtype() == DType::F64)
    forward_impl<double>(a, scores, v, initial, o, lse, final_state);
  else
    forward_impl<float>(a, scores, v, initial, o, lse, final_state);
}

void aaren_scan_backward(const AarenScanDims& a, const Tensor& scores, const Tensor& v, const AarenState* initial,
                         const Tensor& o, const Tensor& lse, const Tensor& dout, const AarenState* final_state,
                         const AarenState* dfinal, AarenScanGrads& g) {
  if (lse.dtype() == DType::F64)
    backward_impl<double>(a, scores, v, initial, o, lse, dout, final_state, dfinal, g);
  else
    backward_impl<float>(a, scores, v, initial, o, lse, dout, final_state, dfinal, g);
}

}  // namespace seqtrain::cpu
