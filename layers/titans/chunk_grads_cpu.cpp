// CPU reference of the fused chunk gradients (chunk_grads.h): per (batch, head) the whole chunk's
// forward recomputed into row-major buffers, then the GEMMs as plain loops in the input dtype
// (f64 or f32), inner loops over contiguous rows. OpenMP over the B H heads, each thread writing its
// own heads' outputs (the result does not depend on the thread count).
#include <cmath>
#include <vector>

#include "layers/titans/chunk_grads.h"

namespace seqtrain::cpu {
namespace {

// One head's operands (contiguous [B, H, rows, cols] tensors, pointer at this head).
template <class Real>
struct HeadInputs {
  const Real *w0, *w1, *k, *r, *u;  // [d, h], [h, d], [C, d] x 3
  const Real* w;                    // [C], the clamp's weights (null without the clamp)
};

template <class Real>
Real dot(int64_t n, const Real* x, const Real* y) {
  Real acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += x[i] * y[i];
  return acc;
}

// The forward of one head, recomputed (chunk_grads.h's names).
template <class Real>
struct HeadForward {
  int64_t C, d, h;
  std::vector<Real> z, a, p;    // [C, h]: Z, gelu(Z), P = D1 W1^T
  std::vector<Real> n, dn, d1;  // [C, d]: N = LN(O), dn, D1
  std::vector<Real> sd, rho;    // [C]: s, mean(dn N)
  HeadForward(int64_t C_, int64_t d_, int64_t h_)
      : C(C_), d(d_), h(h_), z(size_t(C * h)), a(size_t(C * h)), p(size_t(C * h)), n(size_t(C * d)),
        dn(size_t(C * d)), d1(size_t(C * d)), sd(size_t(C)), rho(size_t(C)) {}

  void compute(const HeadInputs<Real>& in, Real eps) {
    for (int64_t t = 0; t < C; ++t) {
      Real* zt = &z[size_t(t * h)];
      for (int64_t j = 0; j < h; ++j) zt[j] = 0;
      for (int64_t i = 0; i < d; ++i) {
        const Real kv = in.k[t * d + i];
        const Real* w = in.w0 + i * h;
        for (int64_t j = 0; j < h; ++j) zt[j] += kv * w[j];
      }
      Real* at = &a[size_t(t * h)];
      for (int64_t j = 0; j < h; ++j) at[j] = GeluTerms<Real>(zt[j]).value;
      Real* nt = &n[size_t(t * d)];  // O, then N
      for (int64_t i = 0; i < d; ++i) nt[i] = 0;
      for (int64_t j = 0; j < h; ++j) {
        const Real av = at[j];
        const Real* w = in.w1 + j * d;
        for (int64_t i = 0; i < d; ++i) nt[i] += av * w[i];
      }
      Real mean = 0, var = 0;
      for (int64_t i = 0; i < d; ++i) mean += nt[i];
      mean /= Real(d);
      for (int64_t i = 0; i < d; ++i) {
        nt[i] -= mean;
        var += nt[i] * nt[i];
      }
      const Real s = std::sqrt(var / Real(d) + eps);
      Real* dnt = &dn[size_t(t * d)];
      Real mdn = 0, r = 0;
      for (int64_t i = 0; i < d; ++i) {
        nt[i] /= s;
        dnt[i] = in.r[t * d + i] + nt[i] * in.u[t * d + i];
        mdn += dnt[i];
        r += dnt[i] * nt[i];
      }
      mdn /= Real(d);
      r /= Real(d);
      Real* d1t = &d1[size_t(t * d)];
      for (int64_t i = 0; i < d; ++i) d1t[i] = (dnt[i] - mdn - nt[i] * r) / s;
      sd[size_t(t)] = s;
      rho[size_t(t)] = r;
      Real* pt = &p[size_t(t * h)];
      for (int64_t j = 0; j < h; ++j) {
        const Real* w = in.w1 + j * d;
        Real acc = 0;
        for (int64_t i = 0; i < d; ++i) acc += d1t[i] * w[i];
        pt[j] = acc;
      }
    }
  }
};

// out[i, j] = sum_t x[t, i] y[t, j] for x [C, m], y [C, n] (out [m, n] overwritten).
template <class Real>
void sum_outer(int64_t C, int64_t m, int64_t n, const Real* x, const Real* y, Real* out, bool accumulate) {
  if (!accumulate)
    for (int64_t e = 0; e < m * n; ++e) out[e] = 0;
  for (int64_t t = 0; t < C; ++t)
    for (int64_t i = 0; i < m; ++i) {
      const Real xv = x[t * m + i];
      Real* o = out + i * n;
      const Real* yt = y + t * n;
      for (int64_t j = 0; j < n; ++j) o[j] += xv * yt[j];
    }
}

// out[t, j] (+)= sum_i x[t, i] w[i, j] for x [C, m], w [m, n].
template <class Real>
void matmul_nn(int64_t C, int64_t m, int64_t n, const Real* x, const Real* w, Real* out, bool accumulate) {
  for (int64_t t = 0; t < C; ++t) {
    Real* o = out + t * n;
    if (!accumulate)
      for (int64_t j = 0; j < n; ++j) o[j] = 0;
    for (int64_t i = 0; i < m; ++i) {
      const Real xv = x[t * m + i];
      const Real* wr = w + i * n;
      for (int64_t j = 0; j < n; ++j) o[j] += xv * wr[j];
    }
  }
}

// out[t, j] (+)= sum_i x[t, i] w[j, i] for x [C, m], w [n, m].
template <class Real>
void matmul_nt(int64_t C, int64_t m, int64_t n, const Real* x, const Real* w, Real* out, bool accumulate) {
  for (int64_t t = 0; t < C; ++t)
    for (int64_t j = 0; j < n; ++j) {
      const Real* xt = x + t * m;
      const Real* wr = w + j * m;
      Real acc = 0;
      for (int64_t i = 0; i < m; ++i) acc += xt[i] * wr[i];
      out[t * n + j] = accumulate ? out[t * n + j] + acc : acc;
    }
}

template <class Real>
HeadInputs<Real> head_inputs(const MemoryChunkDims& s, const std::vector<Tensor>& in, int64_t bh) {
  const int64_t dh = s.d * s.h, cd = s.C * s.d;
  return {in[0].data<Real>() + bh * dh, in[1].data<Real>() + bh * dh, in[2].data<Real>() + bh * cd,
          in[3].data<Real>() + bh * cd, in[4].data<Real>() + bh * cd,
          in.size() > 5 ? in[5].data<Real>() + bh * s.C : nullptr};
}

std::vector<Tensor> contiguous_inputs(const MemoryChunkInputs& in) {
  std::vector<Tensor> x{in.w0.contiguous(), in.w1.contiguous(), in.k.contiguous(), in.r.contiguous(),
                        in.u.contiguous()};
  if (in.max_norm > 0) x.push_back(in.weight.contiguous());
  return x;
}

// h_t of the clamp (chunk_grads.h) from the squared row norms of k, D0, A, D1.
template <class Real>
Real clamp_half_norm(Real kk, Real d0d0, Real aa, Real d1d1) {
  return std::sqrt(kk * d0d0 + aa * d1d1 + Real(kMemoryClampHalfNormEps));
}

template <class Real>
void forward_impl(const MemoryChunkDims& s, const MemoryChunkInputs& in, Tensor& g0, Tensor& g1) {
  const std::vector<Tensor> x = contiguous_inputs(in);
  Real *G0 = g0.data<Real>(), *G1 = g1.data<Real>();
  const int64_t C = s.C, d = s.d, h = s.h;
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < s.B * s.H; ++bh) {
    const HeadInputs<Real> hi = head_inputs<Real>(s, x, bh);
    HeadForward<Real> f(C, d, h);
    f.compute(hi, Real(in.eps));
    for (int64_t e = 0; e < C * h; ++e) f.p[size_t(e)] *= GeluTerms<Real>(f.z[size_t(e)]).d1;  // D0
    if (in.max_norm > 0)  // D0, D1 scaled by c_t
      for (int64_t t = 0; t < C; ++t) {
        Real *d0t = &f.p[size_t(t * h)], *d1t = &f.d1[size_t(t * d)];
        const Real *kt = hi.k + t * d, *at = &f.a[size_t(t * h)];
        const Real hn = clamp_half_norm(dot(d, kt, kt), dot(h, d0t, d0t), dot(h, at, at), dot(d, d1t, d1t));
        const Real c = ClampTerms<Real>(hn, hi.w[t], Real(in.max_norm)).c;
        for (int64_t j = 0; j < h; ++j) d0t[j] *= c;
        for (int64_t i = 0; i < d; ++i) d1t[i] *= c;
      }
    sum_outer(C, d, h, hi.k, f.p.data(), G0 + bh * d * h, false);
    sum_outer(C, h, d, f.a.data(), f.d1.data(), G1 + bh * d * h, false);
  }
}

template <class Real>
void backward_impl(const MemoryChunkDims& s, const MemoryChunkInputs& in, const Tensor& dg0, const Tensor& dg1,
                   MemoryChunkGradsVjp& out) {
  const std::vector<Tensor> x = contiguous_inputs(in);
  const Tensor dG0t = dg0.contiguous(), dG1t = dg1.contiguous();
  const Real *dG0 = dG0t.data<Real>(), *dG1 = dG1t.data<Real>();
  Real *dW0 = out.dw0.data<Real>(), *dW1 = out.dw1.data<Real>(), *dK = out.dk.data<Real>();
  Real *dR = out.dr.data<Real>(), *dU = out.du.data<Real>();
  const int64_t C = s.C, d = s.d, h = s.h;
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < s.B * s.H; ++bh) {
    const HeadInputs<Real> hi = head_inputs<Real>(s, x, bh);
    HeadForward<Real> f(C, d, h);
    f.compute(hi, Real(in.eps));
    const Real* dg0h = dG0 + bh * d * h;  // [d, h]
    const Real* dg1h = dG1 + bh * d * h;  // [h, d]
    // Q = k dG0, A dG1 (into ev), D0 = P g' (into d0), g', g''.
    std::vector<Real> q(size_t(C * h)), d0(size_t(C * h)), gp(size_t(C * h)), gpp(size_t(C * h));
    std::vector<Real> ev(size_t(C * d));
    matmul_nn(C, d, h, hi.k, dg0h, q.data(), false);
    matmul_nn(C, h, d, f.a.data(), dg1h, ev.data(), false);
    for (size_t e = 0; e < q.size(); ++e) {
      const GeluTerms<Real> g(f.z[e]);
      gp[e] = g.d1;
      gpp[e] = g.d2;
      d0[e] = f.p[e] * g.d1;
    }
    // Per token: c, nu (chunk_grads.h; 1, 0 without the clamp), and dw. Then Q' = c Q + nu |k|^2 D0 (into
    // q), X = Q' P g'' (into xz), Pb = Q' g' (into q), and e = c A dG1 + nu |A|^2 D1 (into ev).
    std::vector<Real> c(size_t(C), Real(1)), nu(size_t(C), Real(0)), xz(size_t(C * h));
    Real* dwh = in.max_norm > 0 ? out.dweight.data<Real>() + bh * C : nullptr;
    for (int64_t t = 0; t < C; ++t) {
      Real *qt = &q[size_t(t * h)], *et = &ev[size_t(t * d)];
      const Real *d0t = &d0[size_t(t * h)], *d1t = &f.d1[size_t(t * d)];
      const Real *kt = hi.k + t * d, *at = &f.a[size_t(t * h)];
      if (dwh) {
        const Real beta = dot(h, qt, d0t) + dot(d, et, d1t);
        const Real kk = dot(d, kt, kt), aa = dot(h, at, at);
        const ClampTerms<Real> ct(clamp_half_norm(kk, dot(h, d0t, d0t), aa, dot(d, d1t, d1t)), hi.w[t],
                                  Real(in.max_norm));
        c[size_t(t)] = ct.c;
        nu[size_t(t)] = beta * ct.fh_w;
        dwh[t] = beta * ct.f;
        for (int64_t j = 0; j < h; ++j) qt[j] = ct.c * qt[j] + nu[size_t(t)] * kk * d0t[j];
        for (int64_t i = 0; i < d; ++i) et[i] = ct.c * et[i] + nu[size_t(t)] * aa * d1t[i];
      }
      const Real *pt = &f.p[size_t(t * h)], *gpt = &gp[size_t(t * h)], *gppt = &gpp[size_t(t * h)];
      Real* xt = &xz[size_t(t * h)];
      for (int64_t j = 0; j < h; ++j) {
        xt[j] = qt[j] * pt[j] * gppt[j];
        qt[j] *= gpt[j];  // Pb
      }
    }
    // e += Pb W1, then the row work: dr, du, and Ob (into e).
    matmul_nn(C, h, d, q.data(), hi.w1, ev.data(), true);
    Real *drh = dR + bh * C * d, *duh = dU + bh * C * d;
    for (int64_t t = 0; t < C; ++t) {
      Real* et = &ev[size_t(t * d)];
      const Real *nt = &f.n[size_t(t * d)], *dnt = &f.dn[size_t(t * d)], *d1t = &f.d1[size_t(t * d)];
      const Real sdv = f.sd[size_t(t)], rho = f.rho[size_t(t)];
      Real me = 0, kap = 0, ed1 = 0;
      for (int64_t i = 0; i < d; ++i) {
        me += et[i];
        kap += et[i] * nt[i];
        ed1 += et[i] * d1t[i];
      }
      me /= Real(d);
      kap /= Real(d);
      const Real sb = -ed1 / sdv;
      Real mnb = 0, mnbn = 0;
      for (int64_t i = 0; i < d; ++i) {
        const Real dnb = (et[i] - me - nt[i] * kap) / sdv;
        drh[t * d + i] = dnb;
        duh[t * d + i] = dnb * nt[i];
        const Real nb = dnb * hi.u[t * d + i] - (et[i] * rho + dnt[i] * kap) / sdv;
        et[i] = nb;  // Nb
        mnb += nb;
        mnbn += nb * nt[i];
      }
      mnb /= Real(d);
      mnbn /= Real(d);
      for (int64_t i = 0; i < d; ++i) et[i] = (et[i] - mnb - nt[i] * mnbn) / sdv + sb * nt[i] / Real(d);  // Ob
    }
    // dW1 = Pb^T D1 + A^T Ob
    Real* dw1h = dW1 + bh * d * h;
    sum_outer(C, h, d, q.data(), f.d1.data(), dw1h, false);
    sum_outer(C, h, d, f.a.data(), ev.data(), dw1h, true);
    // Zb = X + (c D1 dG1^T + nu |D1|^2 A + Ob W1^T) g'  (into q: Pb is no longer needed)
    matmul_nt(C, d, h, f.d1.data(), dg1h, q.data(), false);
    if (dwh)
      for (int64_t t = 0; t < C; ++t) {
        const Real *d1t = &f.d1[size_t(t * d)], *at = &f.a[size_t(t * h)];
        const Real ct = c[size_t(t)], na = nu[size_t(t)] * dot(d, d1t, d1t);
        Real* qt = &q[size_t(t * h)];
        for (int64_t j = 0; j < h; ++j) qt[j] = ct * qt[j] + na * at[j];
      }
    matmul_nt(C, d, h, ev.data(), hi.w1, q.data(), true);
    for (size_t e = 0; e < q.size(); ++e) q[e] = xz[e] + q[e] * gp[e];
    // dk = c D0 dG0^T + nu |D0|^2 k + Zb W0^T;  dW0 = k^T Zb
    Real* dkh = dK + bh * C * d;
    matmul_nt(C, h, d, d0.data(), dg0h, dkh, false);
    if (dwh)
      for (int64_t t = 0; t < C; ++t) {
        const Real *d0t = &d0[size_t(t * h)], *kt = hi.k + t * d;
        const Real ct = c[size_t(t)], nk = nu[size_t(t)] * dot(h, d0t, d0t);
        Real* dkt = dkh + t * d;
        for (int64_t i = 0; i < d; ++i) dkt[i] = ct * dkt[i] + nk * kt[i];
      }
    matmul_nt(C, h, d, q.data(), hi.w0, dkh, true);
    sum_outer(C, d, h, hi.k, q.data(), dW0 + bh * d * h, false);
  }
}

}  // namespace

void memory_chunk_grads_forward(const MemoryChunkDims& s, const MemoryChunkInputs& in, Tensor& g0, Tensor& g1) {
  if (g0.dtype() == DType::F64)
    forward_impl<double>(s, in, g0, g1);
  else
    forward_impl<float>(s, in, g0, g1);
}

void memory_chunk_grads_backward(const MemoryChunkDims& s, const MemoryChunkInputs& in, const Tensor& dg0,
                                 const Tensor& dg1, MemoryChunkGradsVjp& out) {
  if (out.dw0.dtype() == DType::F64)
    backward_impl<double>(s, in, dg0, dg1, out);
  else
    backward_impl<float>(s, in, dg0, dg1, out);
}

}  // namespace seqtrain::cpu
