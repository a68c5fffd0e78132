// Validation, dispatch and the autograd wrapper of attention (math in attention_op.h).
#include "layers/attention/attention_op.h"

#include <cmath>

#include "autograd/node.h"

namespace seqtrain {
namespace {

constexpr const char* kOp = "attention";

void check_operand(const char* op, const char* name, const Tensor& t, const Tensor& q) {
  ST_CHECK(t.defined(), op, ": ", name, " is undefined");
  ST_CHECK(t.dim() == 4, op, ": ", name, " ", t.desc(), " must be 4-D ([B, T, H, d] or [B, S, Hkv, d])");
  ST_CHECK(is_floating(t.dtype()), op, ": ", name, " ", t.desc(), " must be f32, bf16 or f64");
  ST_CHECK(t.dtype() == q.dtype(), op, ": dtype mismatch: ", name, " is ", t.desc(), ", q is ", q.desc(),
           "; expected the same dtype");
  ST_CHECK(t.device() == q.device(), op, ": device mismatch: ", name, " is ", t.desc(), ", q is ",
           q.desc(), "; expected the same device");
  ST_CHECK(t.size(3) <= 1 || t.stride(3) == 1, op, ": ", name, " ", t.desc(), " has last-dim stride ",
           t.stride(3), "; expected unit stride (call contiguous() first)");
}

AttentionDims check_args(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                         const AttentionConfig& cfg) {
  ST_CHECK(q.defined(), op, ": q is undefined");
  check_operand(op, "q", q, q);
  check_operand(op, "k", k, q);
  check_operand(op, "v", v, q);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), d = q.size(3);
  const int64_t S = k.size(1), Hkv = k.size(2);
  ST_CHECK(k.shape() == v.shape(), op, ": k ", k.desc(), " and v ", v.desc(), " must have the same shape");
  ST_CHECK(k.size(0) == B && k.size(3) == d, op, ": q ", q.desc(), " and k ", k.desc(),
           " must agree in batch (dim 0) and head dim (dim 3)");
  ST_CHECK(Hkv > 0 && H % Hkv == 0, op, ": q has ", H, " heads and k/v have ", Hkv,
           "; expected a kv head count that divides the query head count");
  ST_CHECK(d > 0, op, ": head dim of q ", q.desc(), " must be positive");
  ST_CHECK(cfg.window >= 0, op, ": window ", cfg.window, " must be >= 0 (0 = unlimited)");
  ST_CHECK(std::isfinite(cfg.scale) && cfg.scale >= 0, op, ": scale ", cfg.scale,
           " must be finite and >= 0 (0 = 1/sqrt(d))");
  AttentionDims a{B, T, S, H, Hkv, d, cfg.causal, cfg.window,
                  cfg.scale == 0 ? 1.0 / std::sqrt(double(d)) : cfg.scale};
  return a;
}

DType lse_dtype(DType t) { return t == DType::F64 ? DType::F64 : DType::F32; }

}  // namespace

AttentionOut attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionConfig& cfg) {
  const AttentionDims a = check_args(kOp, q, k, v, cfg);
  AttentionOut out;
  out.o = Tensor::empty({a.B, a.T, a.H, a.d}, q.dtype(), q.device());
  out.lse = Tensor::empty({a.B, a.H, a.T}, lse_dtype(q.dtype()), q.device());
  if (q.numel() == 0) return out;
#ifdef SEQTRAIN_WITH_CUDA
  if (q.is_cuda()) {
    cuda::attention_forward(a, q, k, v, out.o, out.lse);
    return out;
  }
#endif
  cpu::attention_forward(a, q, k, v, out.o, out.lse);
  return out;
}

AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                  const Tensor& lse, const Tensor& dout, const AttentionConfig& cfg) {
  const char* op = "attention backward";
  const AttentionDims a = check_args(op, q, k, v, cfg);
  const Shape o_shape{a.B, a.T, a.H, a.d};
  check_operand(op, "o", o, q);
  check_operand(op, "dout", dout, q);
  ST_CHECK(o.shape() == o_shape, op, ": o ", o.desc(), " must have q's shape ", shape_str(o_shape));
  ST_CHECK(dout.shape() == o_shape, op, ": dout ", dout.desc(), " must have q's shape ", shape_str(o_shape));
  ST_CHECK(lse.defined() && lse.shape() == Shape({a.B, a.H, a.T}) && lse.dtype() == lse_dtype(q.dtype()) &&
               lse.device() == q.device(),
           op, ": lse ", lse.defined() ? lse.desc() : std::string("undefined"), " must be ",
           dtype_name(lse_dtype(q.dtype())), shape_str({a.B, a.H, a.T}), " on ", q.device().str(),
           " (the lse returned by attention_forward)");
  AttentionGrads g;
  g.dq = Tensor::empty(q.shape(), q.dtype(), q.device());
  g.dk = Tensor::empty(k.shape(), k.dtype(), k.device());
  g.dv = Tensor::empty(v.shape(), v.dtype(), v.device());
  if (q.numel() == 0 || k.numel() == 0) {
    g.dq = Tensor::zeros(q.shape(), q.dtype(), q.device());
    g.dk = Tensor::zeros(k.shape(), k.dtype(), k.device());
    g.dv = Tensor::zeros(v.shape(), v.dtype(), v.device());
    return g;
  }
  const Tensor oc = o.contiguous(), dc = dout.contiguous(), lc = lse.contiguous();
#ifdef SEQTRAIN_WITH_CUDA
  if (q.is_cuda()) {
    cuda::attention_backward(a, q, k, v, oc, lc, dc, g.dq, g.dk, g.dv);
    return g;
  }
#endif
  cpu::attention_backward(a, q, k, v, oc, lc, dc, g.dq, g.dk, g.dv);
  return g;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionConfig& cfg) {
  AttentionOut out = attention_forward(q, k, v, cfg);
  // Inputs and the output are saved detached (an output holds its grad_fn: no reference cycle).
  Tensor qd = q.detach(), kd = k.detach(), vd = v.detach(), od = out.o.detach(), lse = out.lse;
  autograd::record("attention", {q, k, v}, {out.o}, [qd, kd, vd, od, lse, cfg](const std::vector<Tensor>& g) {
    AttentionGrads gr = attention_backward(qd, kd, vd, od, lse, g[0], cfg);
    return std::vector<Tensor>{gr.dq, gr.dk, gr.dv};
  });
  return out.o;
}

}  // namespace seqtrain
