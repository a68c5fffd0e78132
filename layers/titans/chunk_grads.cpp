// Validation, dispatch and the autograd wrapper of the fused chunk gradients (math in chunk_grads.h).
#include "layers/titans/chunk_grads.h"

#include <atomic>
#include <cstdlib>
#include <string>

#include "autograd/node.h"

namespace seqtrain {
namespace {

void check_operand(const char* op, const char* name, const Tensor& t, const Shape& shape, const Tensor& w0) {
  ST_CHECK(t.defined(), op, ": ", name, " is undefined; expected ", dtype_name(w0.dtype()), shape_str(shape));
  ST_CHECK(t.device() == w0.device() && t.dtype() == w0.dtype(), op, ": ", name, " ", t.desc(), " and W0 ",
           w0.desc(), ": expected one dtype and device");
  ST_CHECK(t.shape() == shape, op, ": ", name, " ", t.desc(), " has the wrong shape; expected ", shape_str(shape),
           " (W0 [B, H, d, h], W1 [B, H, h, d], k, r, u [B, H, C, d])");
}

MemoryChunkDims check_args(const char* op, const MemoryChunkInputs& in) {
  const Tensor& w0 = in.w0;
  ST_CHECK(w0.defined() && w0.dim() == 4, op, ": W0 ", w0.defined() ? w0.desc() : "undefined",
           ": expected [B, H, d, h]");
  ST_CHECK(w0.dtype() == DType::F32 || w0.dtype() == DType::F64, op, ": W0 ", w0.desc(), ": expected f32 or f64");
  ST_CHECK(in.k.defined() && in.k.dim() == 4, op, ": k ", in.k.defined() ? in.k.desc() : "undefined",
           ": expected [B, H, C, d]");
  const MemoryChunkDims s{w0.size(0), w0.size(1), in.k.size(2), w0.size(2), w0.size(3)};
  check_operand(op, "W1", in.w1, {s.B, s.H, s.h, s.d}, w0);
  for (auto [name, t] : {std::pair<const char*, const Tensor*>{"k", &in.k}, {"r", &in.r}, {"u", &in.u}})
    check_operand(op, name, *t, {s.B, s.H, s.C, s.d}, w0);
  ST_CHECK(in.eps > 0, op, ": eps ", in.eps, ": expected > 0");
  ST_CHECK(in.max_norm >= 0, op, ": max_norm ", in.max_norm, ": expected >= 0 (0 = no clamp)");
  if (in.max_norm > 0)
    check_operand(op, "weight (the clamp's per-token 2 lr)", in.weight, {s.B, s.H, s.C, 1}, w0);
  else
    ST_CHECK(!in.weight.defined(), op, ": weight ", in.weight.desc(),
             " given without the clamp (max_norm 0); expected it undefined (lr folded into r, u)");
  return s;
}

// memory_chunk_grads_cuda_enabled(): -1 = not decided yet (read the environment on first use).
std::atomic<int> g_cuda_enabled{-1};

bool on_cuda(const Tensor& t) {
#ifdef SEQTRAIN_WITH_CUDA
  return t.is_cuda();
#else
  (void)t;
  return false;
#endif
}

}  // namespace

bool memory_chunk_grads_cuda_enabled() {
  int on = g_cuda_enabled.load();
  if (on < 0) {
    const char* env = std::getenv("SEQTRAIN_TITANS_FUSED_CUDA");
    on = env == nullptr || std::string(env) != "0";
    g_cuda_enabled.store(on);
  }
  return on == 1;
}

void set_memory_chunk_grads_cuda_enabled(bool on) { g_cuda_enabled.store(on ? 1 : 0); }

bool memory_chunk_grads_supported(const Tensor& w0, int64_t C, int64_t d, int64_t h) {
  if (!w0.is_cuda()) return true;
#ifdef SEQTRAIN_WITH_CUDA
  return memory_chunk_grads_cuda_enabled() && w0.dtype() == DType::F32 && cuda::memory_chunk_grads_fits({w0.size(0), w0.size(1), C, d, h}, w0.device().index);
#else
  (void)C, (void)d, (void)h;
  return false;
#endif
}

MemoryChunkGrads memory_chunk_grads_forward(const MemoryChunkInputs& in) {
  const MemoryChunkDims s = check_args("memory_chunk_grads", in);
  MemoryChunkGrads g{Tensor::empty({s.B, s.H, s.d, s.h}, in.w0.dtype(), in.w0.device()),
                     Tensor::empty({s.B, s.H, s.h, s.d}, in.w0.dtype(), in.w0.device())};
  if (on_cuda(in.w0)) {
#ifdef SEQTRAIN_WITH_CUDA
    cuda::memory_chunk_grads_forward(s, in, g.g0, g.g1);
#endif
    return g;
  }
  cpu::memory_chunk_grads_forward(s, in, g.g0, g.g1);
  return g;
}

MemoryChunkGradsVjp memory_chunk_grads_backward(const MemoryChunkInputs& in, const Tensor& dg0, const Tensor& dg1) {
  const char* op = "memory_chunk_grads backward";
  const MemoryChunkDims s = check_args(op, in);
  check_operand(op, "dG0", dg0, {s.B, s.H, s.d, s.h}, in.w0);
  check_operand(op, "dG1", dg1, {s.B, s.H, s.h, s.d}, in.w0);
  auto like = [](const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), t.device()); };
  MemoryChunkGradsVjp g{like(in.w0), like(in.w1), like(in.k), like(in.r), like(in.u),
                        in.max_norm > 0 ? like(in.weight) : Tensor()};
  if (on_cuda(in.w0)) {
#ifdef SEQTRAIN_WITH_CUDA
    cuda::memory_chunk_grads_backward(s, in, dg0, dg1, g);
#endif
    return g;
  }
  cpu::memory_chunk_grads_backward(s, in, dg0, dg1, g);
  return g;
}

std::vector<Tensor> memory_chunk_grads(const Tensor& w0, const Tensor& w1, const Tensor& k, const Tensor& r,
                                       const Tensor& u, double eps, const Tensor& weight, double max_norm) {
  const MemoryChunkInputs in{w0, w1, k, r, u, eps, weight, max_norm};
  MemoryChunkGrads g = memory_chunk_grads_forward(in);
  std::vector<Tensor> outputs{g.g0, g.g1};
  // Only the inputs are saved (detached); the backward recomputes the forward from them.
  const bool clamp = max_norm > 0;
  const MemoryChunkInputs saved{w0.detach(), w1.detach(), k.detach(), r.detach(), u.detach(),
                                eps, clamp ? weight.detach() : Tensor(), max_norm};
  std::vector<Tensor> inputs{w0, w1, k, r, u};
  if (clamp) inputs.push_back(weight);
  autograd::record("memory_chunk_grads", inputs, outputs, [saved, clamp](const std::vector<Tensor>& grads) {
    MemoryChunkGradsVjp d = memory_chunk_grads_backward(saved, grads[0], grads[1]);
    std::vector<Tensor> out{d.dw0, d.dw1, d.dk, d.dr, d.du};
    if (clamp) out.push_back(d.dweight);
    return out;
  });
  return outputs;
}

}  // namespace seqtrain
