// CPU reference of the selective scan (selective_scan.h): a sequential scan per (batch, channel)
// in the accumulation type (f64 for f64, f32 for f32 and bf16, whose inputs widen exactly), rounding
// the outputs once.
// Forward: OpenMP over (batch, channel); each thread owns its output column and state.
// Backward: OpenMP over the batch only, channels in order inside: dB and dC sum over channels and
// dA, dD, ddelta_bias over the batch, so every thread writes its own rows (dB, dC) or its own
// per-batch partial (summed in batch order afterwards) and the result does not depend on the
// thread count.
// Cost per call: forward ~6 B T E N flops + B T E N exps, reading O(B T (E + N)) (compute-bound);
// the backward recomputes the forward and adds ~14 B T E N flops.
#include <algorithm>
#include <cmath>
#include <vector>

#include "layers/mamba/selective_scan.h"

namespace seqtrain::cpu {
namespace {

// The accumulation-type copy of t (contiguous), or t itself when it already is one; undefined
// stays undefined.
Tensor widened(const Tensor& t, DType acc) { return t.defined() ? t.to(acc).contiguous() : t; }

template <class Real>
const Real* ptr(const Tensor& t) { return t.defined() ? t.data<Real>() : nullptr; }

// The same threshold as the softplus op (core/elementwise_math.h): linear above 20.
template <class Real>
Real softplus(Real x) { return x > Real(20) ? x : std::log1p(std::exp(x)); }
template <class Real>
Real softplus_grad(Real x) { return x > Real(20) ? Real(1) : Real(1) / (Real(1) + std::exp(-x)); }
template <class Real>
Real sigmoid(Real x) { return Real(1) / (Real(1) + std::exp(-x)); }

// Widened inputs with the step size d_t = softplus(delta_t + bias) computed in one place.
template <class Real>
struct Operands {
  Tensor u, delta, A, B, C, D, z, bias, h0;
  bool use_softplus;
  Operands(const SelectiveScanInputs& in, DType acc)
      : u(widened(in.u, acc)), delta(widened(in.delta, acc)), A(widened(in.A, acc)), B(widened(in.B, acc)),
        C(widened(in.C, acc)), D(widened(in.D, acc)), z(widened(in.z, acc)), bias(widened(in.delta_bias, acc)),
        h0(widened(in.h0, acc)), use_softplus(in.delta_softplus) {}
  // delta + bias at element bte = (b, t, e), before the softplus
  Real raw_step(size_t bte, int64_t e) const {
    return delta.data<Real>()[bte] + (bias.defined() ? bias.data<Real>()[e] : Real(0));
  }
  Real step(Real raw) const { return use_softplus ? softplus(raw) : raw; }
};

// Writes the accumulation-type result into `dst` (a no-op copy when the dtypes match).
void store(Tensor& dst, const Tensor& acc) {
  if (!dst.same(acc)) dst.copy_(acc);
}
Tensor acc_buffer(const Tensor& dst, DType acc) {
  return dst.dtype() == acc ? dst : Tensor::empty(dst.shape(), acc, dst.device());
}

template <class Real>
void forward_impl(const SelectiveScanDims& s, const SelectiveScanInputs& in, Tensor& out, Tensor& h_final,
                  Tensor& chunk_states) {
  const DType acc = h_final.dtype();
  const Operands<Real> op(in, acc);
  Tensor out_acc = acc_buffer(out, acc);
  const Real *U = ptr<Real>(op.u), *Z = ptr<Real>(op.z);    // [B, T, E]
  const Real *Bm = ptr<Real>(op.B), *Cm = ptr<Real>(op.C);  // [B, T, N]
  const Real *Am = ptr<Real>(op.A), *Dv = ptr<Real>(op.D);  // [E, N], [E]
  const Real* H0 = ptr<Real>(op.h0);                        // [B, E, N]
  Real* O = out_acc.data<Real>();             // [B, T, E]
  Real* HF = h_final.data<Real>();            // [B, E, N]
  Real* CS = chunk_states.data<Real>();       // [B, n_chunks, E, N]
  const int64_t T = s.T, E = s.E, N = s.N, n_chunks = chunk_states.size(1);
#pragma omp parallel for schedule(static)
  for (int64_t be = 0; be < s.B * E; ++be) {
    const int64_t b = be / E, e = be % E;
    std::vector<Real> h(size_t(N), Real(0));  // [N]
    if (H0) std::copy(H0 + be * N, H0 + (be + 1) * N, h.begin());
    const Real* Ae = Am + e * N;
    for (int64_t t = 0; t < T; ++t) {
      if (t % kScanChunk == 0) std::copy(h.begin(), h.end(), CS + ((b * n_chunks + t / kScanChunk) * E + e) * N);
      const size_t bte = size_t((b * T + t) * E + e);
      const Real d = op.step(op.raw_step(bte, e)), x = U[bte];
      const Real* Bt = Bm + (b * T + t) * N;
      const Real* Ct = Cm + (b * T + t) * N;
      Real y = Dv ? Dv[e] * x : Real(0);
      for (int64_t n = 0; n < N; ++n) {
        h[size_t(n)] = std::exp(d * Ae[n]) * h[size_t(n)] + d * Bt[n] * x;
        y += Ct[n] * h[size_t(n)];
      }
      O[bte] = Z ? y * Z[bte] * sigmoid(Z[bte]) : y;
    }
    std::copy(h.begin(), h.end(), HF + be * N);
  }
  store(out, out_acc);
}

template <class Real>
void backward_impl(const SelectiveScanDims& s, const SelectiveScanInputs& in, const Tensor& chunk_states,
                   const Tensor& dout, const Tensor& dh_final, SelectiveScanGrads& g) {
  const DType acc = chunk_states.dtype();
  const Operands<Real> op(in, acc);
  const int64_t Bsz = s.B, T = s.T, E = s.E, N = s.N, n_chunks = chunk_states.size(1);
  const Tensor dout_acc = widened(dout, acc), dhf_acc = widened(dh_final, acc), cs = chunk_states.contiguous();
  // Per-input accumulation buffers ([B, ...] partials for the parameters summed over the batch).
  Tensor du = acc_buffer(g.du, acc), ddelta = acc_buffer(g.ddelta, acc);
  Tensor dB = Tensor::zeros(g.dB.shape(), acc), dC = Tensor::zeros(g.dC.shape(), acc);
  Tensor dz = g.dz.defined() ? acc_buffer(g.dz, acc) : Tensor();
  Tensor dA_part = Tensor::zeros({Bsz, E, N}, acc), dD_part = Tensor::zeros({Bsz, E}, acc);
  Tensor dbias_part = Tensor::zeros({Bsz, E}, acc), dh0 = Tensor::empty({Bsz, E, N}, acc);
  const Real *U = ptr<Real>(op.u), *Z = ptr<Real>(op.z), *DO = ptr<Real>(dout_acc);  // [B, T, E]
  const Real *Bm = ptr<Real>(op.B), *Cm = ptr<Real>(op.C);                             // [B, T, N]
  const Real *Am = ptr<Real>(op.A), *Dv = ptr<Real>(op.D);                             // [E, N], [E]
  const Real *DHF = ptr<Real>(dhf_acc), *CS = ptr<Real>(cs);                           // [B, E, N], [B, n_chunks, E, N]
  Real *dU = du.data<Real>(), *dDelta = ddelta.data<Real>();                           // [B, T, E]
  Real* dZ = dz.defined() ? dz.data<Real>() : nullptr;                                 // [B, T, E]
  Real *dBm = dB.data<Real>(), *dCm = dC.data<Real>();                                 // [B, T, N]
  Real *dAp = dA_part.data<Real>(), *dH0 = dh0.data<Real>();                           // [B, E, N]
  Real *dDp = dD_part.data<Real>(), *dbp = dbias_part.data<Real>();                    // [B, E]
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < Bsz; ++b) {
    // One chunk recomputed from its saved entry state: hs[i] = h_{t0+i-1} (hs[0] = entry state),
    // decay[i] = a_{t0+i}, raws[i] = delta + bias and steps[i] = d at t0+i, ys[i] = y (before the gate).
    const size_t chunk = kScanChunk, states = static_cast<size_t>(N);
    std::vector<Real> hs((chunk + 1) * states), decay(chunk * states), raws(chunk), steps(chunk), ys(chunk);
    std::vector<Real> lam_next(states);  // a_{t+1} lam_{t+1}: the gradient reaching h_t from h_{t+1}
    for (int64_t e = 0; e < E; ++e) {
      const Real* Ae = Am + e * N;
      Real* dAe = dAp + (b * E + e) * N;
      Real dD = 0, dbias = 0;
      for (int64_t n = 0; n < N; ++n) lam_next[size_t(n)] = DHF ? DHF[(b * E + e) * N + n] : Real(0);
      for (int64_t c = n_chunks - 1; c >= 0; --c) {
        const int64_t t0 = c * kScanChunk, L = std::min(kScanChunk, T - t0);
        std::copy(CS + ((b * n_chunks + c) * E + e) * N, CS + ((b * n_chunks + c) * E + e + 1) * N, hs.begin());
        for (int64_t i = 0; i < L; ++i) {
          const size_t bte = size_t((b * T + t0 + i) * E + e);
          const Real raw = op.raw_step(bte, e), d = op.step(raw), x = U[bte];
          const Real* Bt = Bm + (b * T + t0 + i) * N;
          const Real* Ct = Cm + (b * T + t0 + i) * N;
          Real y = Dv ? Dv[e] * x : Real(0);
          for (int64_t n = 0; n < N; ++n) {
            const Real a = std::exp(d * Ae[n]);
            const Real h = a * hs[size_t(i * N + n)] + d * Bt[n] * x;
            decay[size_t(i * N + n)] = a;
            hs[size_t((i + 1) * N + n)] = h;
            y += Ct[n] * h;
          }
          raws[size_t(i)] = raw;
          steps[size_t(i)] = d;
          ys[size_t(i)] = y;
        }
        for (int64_t i = L - 1; i >= 0; --i) {
          const int64_t t = t0 + i;
          const size_t bte = size_t((b * T + t) * E + e);
          const Real d = steps[size_t(i)], x = U[bte], go = DO[bte];
          Real gy = go;  // dL/dy_t
          if (Z) {
            const Real sz = sigmoid(Z[bte]);
            gy = go * Z[bte] * sz;
            dZ[bte] = go * ys[size_t(i)] * sz * (Real(1) + Z[bte] * (Real(1) - sz));
          }
          const Real* Bt = Bm + (b * T + t) * N;
          const Real* Ct = Cm + (b * T + t) * N;
          Real* dBt = dBm + (b * T + t) * N;
          Real* dCt = dCm + (b * T + t) * N;
          Real dx = Dv ? Dv[e] * gy : Real(0), dd = 0;
          for (int64_t n = 0; n < N; ++n) {
            const Real lam = Ct[n] * gy + lam_next[size_t(n)];  // dL/dh_t
            const Real a = decay[size_t(i * N + n)], h_prev = hs[size_t(i * N + n)];
            dBt[n] += lam * d * x;
            dCt[n] += gy * hs[size_t((i + 1) * N + n)];
            dx += lam * d * Bt[n];
            dd += lam * (Bt[n] * x + Ae[n] * a * h_prev);
            dAe[n] += lam * d * a * h_prev;
            lam_next[size_t(n)] = a * lam;
          }
          const Real draw = op.use_softplus ? dd * softplus_grad(raws[size_t(i)]) : dd;
          dU[bte] = dx;
          dDelta[bte] = draw;
          dD += gy * x;
          dbias += draw;
        }
      }
      std::copy(lam_next.begin(), lam_next.end(), dH0 + (b * E + e) * N);
      dDp[b * E + e] = dD;
      dbp[b * E + e] = dbias;
    }
  }
  store(g.du, du);
  store(g.ddelta, ddelta);
  g.dB.copy_(dB);
  g.dC.copy_(dC);
  if (g.dz.defined()) store(g.dz, dz);
  if (g.dh0.defined()) g.dh0.copy_(dh0);
  // Sums over the batch, in batch order (deterministic).
  auto batch_sum = [&](const Tensor& part, Tensor& dst) {
    const int64_t inner = dst.numel();
    std::vector<double> total(size_t(inner), 0.0);
    const Real* P = part.data<Real>();
    for (int64_t b = 0; b < Bsz; ++b)
      for (int64_t i = 0; i < inner; ++i) total[size_t(i)] += double(P[b * inner + i]);
    dst.copy_(Tensor::from_vector(total, dst.shape(), dst.dtype()));
  };
  batch_sum(dA_part, g.dA);
  if (g.dD.defined()) batch_sum(dD_part, g.dD);
  if (g.ddelta_bias.defined()) batch_sum(dbias_part, g.ddelta_bias);
}

}  // namespace

void selective_scan_forward(const SelectiveScanDims& s, const SelectiveScanInputs& in, Tensor& out, Tensor& h_final,
                            Tensor& chunk_states) {
  if (h_final.dtype() == DType::F64)
    forward_impl<double>(s, in, out, h_final, chunk_states);
  else
    forward_impl<float>(s, in, out, h_final, chunk_states);
}

void selective_scan_backward(const SelectiveScanDims& s, const SelectiveScanInputs& in, const Tensor& chunk_states,
                             const Tensor& dout, const Tensor& dh_final, SelectiveScanGrads& g) {
  if (chunk_states.dtype() == DType::F64)
    backward_impl<double>(s, in, chunk_states, dout, dh_final, g);
  else
    backward_impl<float>(s, in, chunk_states, dout, dh_final, g);
}

}  // namespace seqtrain::cpu
