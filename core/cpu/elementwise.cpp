// Elementwise kernels. The scalar functions come from core/elementwise_math.h, evaluated in the
// compute type (float for f32/bf16, double for f64) exactly as the CUDA backend evaluates them.
// All are memory bound: a few flops per element against 2-4 element reads/writes.
#include "core/backend.h"
#include "core/cpu/dtype_dispatch.h"

namespace seqtrain::cpu {

// y = f(x), contiguous, one dtype. Bytes: 2 * numel * elsize.
void unary(UnaryOp op, const Tensor& x, Tensor& y, double alpha) {
  const int64_t n = x.numel();
  dispatch_floating(x.dtype(), "unary", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    const C a = C(alpha);
#pragma omp parallel for schedule(static) if (n >= kParallelGrain)
    for (int64_t i = 0; i < n; ++i) yp[i] = convert<T>(emath::unary<C>(op, convert<C>(xp[i]), a));
  });
}

// Whether f'(x) is computed from x (otherwise from y = f(x), or from neither).
static bool grad_reads_x(UnaryOp op) {
  switch (op) {
    case UnaryOp::Square:
    case UnaryOp::Log:
    case UnaryOp::Silu:
    case UnaryOp::Gelu:
    case UnaryOp::Softplus:
    case UnaryOp::Relu: return true;
    default: return false;
  }
}
static bool grad_reads_y(UnaryOp op) {
  switch (op) {
    case UnaryOp::Sqrt:
    case UnaryOp::Exp:
    case UnaryOp::Tanh:
    case UnaryOp::Sigmoid: return true;
    default: return false;
  }
}

// dx = dy * f'(x). When the derivative is a function of y but only x was passed, y is recomputed
// from x with the forward's own formula, so both call forms give the same bits.
void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx,
                    double alpha) {
  ST_CHECK(!grad_reads_x(op) || x.defined(), "unary_backward(", unary_op_name(op),
           "): the derivative needs x, which was not given");
  ST_CHECK(!grad_reads_y(op) || y.defined() || x.defined(), "unary_backward(", unary_op_name(op),
           "): the derivative needs y = f(x) or x, neither was given");
  const int64_t n = dy.numel();
  dispatch_floating(dy.dtype(), "unary_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T* xp = x.defined() ? x.data<T>() : nullptr;
    const T* yp = y.defined() ? y.data<T>() : nullptr;
    const T* dyp = dy.data<T>();
    T* dxp = dx.data<T>();
    const C a = C(alpha);
#pragma omp parallel for schedule(static) if (n >= kParallelGrain)
    for (int64_t i = 0; i < n; ++i) {
      const C xv = xp ? convert<C>(xp[i]) : C(0);
      // The forward stored y rounded to T; recomputing it rounds the same way.
      const C yv =
          yp ? convert<C>(yp[i]) : (xp ? convert<C>(convert<T>(emath::unary<C>(op, xv, a))) : C(0));
      dxp[i] = convert<T>(convert<C>(dyp[i]) * emath::unary_grad<C>(op, xv, yv, a));
    }
  });
}

// out = a op b; a and b are stride-0-expanded views of out's shape. Bytes: 3 * numel * elsize
// at most (less when an operand is broadcast).
void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  if (out.numel() == 0) return;
  const StridedWalk<3> walk(out.shape(), {&out, &a, &b});
  dispatch_floating(out.dtype(), "binary", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    T* outp = out.data<T>();
    const T* ap = a.data<T>();
    const T* bp = b.data<T>();
    walk.for_each_row(
        [&](const std::array<int64_t, 3>& base, int64_t len, const std::array<int64_t, 3>& step) {
          T* o = outp + base[0];
          const T* ar = ap + base[1];
          const T* br = bp + base[2];
          if (step[0] == 1 && step[1] == 1 && step[2] == 1) {
            for (int64_t j = 0; j < len; ++j)
              o[j] = convert<T>(emath::binary<C>(op, convert<C>(ar[j]), convert<C>(br[j])));
          } else {
            for (int64_t j = 0; j < len; ++j)
              o[j * step[0]] = convert<T>(
                  emath::binary<C>(op, convert<C>(ar[j * step[1]]), convert<C>(br[j * step[2]])));
          }
        });
  });
}

// a += b (gradient accumulation), contiguous, one dtype. Bytes: 3 * numel * elsize.
void add_inplace(Tensor& a, const Tensor& b) {
  const int64_t n = a.numel();
  dispatch_floating(a.dtype(), "add_inplace", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    T* ap = a.data<T>();
    const T* bp = b.data<T>();
#pragma omp parallel for schedule(static) if (n >= kParallelGrain)
    for (int64_t i = 0; i < n; ++i) ap[i] = convert<T>(convert<C>(ap[i]) + convert<C>(bp[i]));
  });
}

}  // namespace seqtrain::cpu
