// Scalar math for the elementwise ops, shared verbatim by the CPU and CUDA backends so both compute
// the same function. Evaluated in float for f32/bf16 and in double for f64.
#pragma once
#include <cmath>

#include "core/dtype.h"

namespace seqtrain {

enum class UnaryOp : uint8_t {
  Neg, Scale, AddScalar, Square, Sqrt, Exp, Log, Tanh, Sigmoid, Silu, Gelu, Softplus, Relu
};
enum class BinaryOp : uint8_t { Add, Sub, Mul, Div };

const char* unary_op_name(UnaryOp op);
const char* binary_op_name(BinaryOp op);

namespace emath {

using std::exp;
using std::log;
using std::log1p;
using std::sqrt;
using std::tanh;


// GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3),
// evaluated as x * s with s = sigmoid(2u) = (1 + tanh(u)) / 2: for negative x, 1 + tanh(u) cancels
// (f32 at x = -3 kept only ~3 significant digits: relative error 8e-4), while s and 1 - s, each
// taken from e = exp(-|2u|) on the side where it does not cancel, keep f32's precision.
template <typename T>
struct GeluSigmoid {
  T s, one_minus_s, du;  // sigmoid(2u), 1 - sigmoid(2u), du/dx
  SEQTRAIN_HD explicit GeluSigmoid(T x) {
    const T k = T(0.7978845608028654), c = T(0.044715);
    const T z = T(2) * k * (x + c * x * x * x);
    const T e = exp(z >= T(0) ? -z : z), a = T(1) / (T(1) + e), b = e * a;  // a = sigmoid(|z|), b = 1 - a
    s = z >= T(0) ? a : b;
    one_minus_s = z >= T(0) ? b : a;
    du = k * (T(1) + T(3) * c * x * x);
  }
};
template <typename T>
SEQTRAIN_HD T gelu(T x) { return x * GeluSigmoid<T>(x).s; }
// d/dx [x s(2u)] = s + 2 x s (1 - s) du/dx
template <typename T>
SEQTRAIN_HD T gelu_grad(T x) {
  const GeluSigmoid<T> g(x);
  return g.s + T(2) * x * g.s * g.one_minus_s * g.du;
}
template <typename T>
SEQTRAIN_HD T sigmoid(T x) { return T(1) / (T(1) + exp(-x)); }
// softplus(x) = log(1 + e^x), evaluated without overflow; torch's threshold of 20 for the linear tail.
template <typename T>
SEQTRAIN_HD T softplus(T x) { return x > T(20) ? x : log1p(exp(x)); }

// y = f(x; alpha)
template <typename T>
SEQTRAIN_HD T unary(UnaryOp op, T x, T alpha) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Scale: return alpha * x;
    case UnaryOp::AddScalar: return x + alpha;
    case UnaryOp::Square: return x * x;
    case UnaryOp::Sqrt: return sqrt(x);
    case UnaryOp::Exp: return exp(x);
    case UnaryOp::Log: return log(x);
    case UnaryOp::Tanh: return tanh(x);
    case UnaryOp::Sigmoid: return sigmoid(x);
    case UnaryOp::Silu: return x * sigmoid(x);
    case UnaryOp::Gelu: return gelu(x);
    case UnaryOp::Softplus: return softplus(x);
    case UnaryOp::Relu: return x > T(0) ? x : T(0);
  }
  return x;
}

// dy/dx given x and y = f(x) (whichever is cheaper is used).
template <typename T>
SEQTRAIN_HD T unary_grad(UnaryOp op, T x, T y, T alpha) {
  switch (op) {
    case UnaryOp::Neg: return T(-1);
    case UnaryOp::Scale: return alpha;
    case UnaryOp::AddScalar: return T(1);
    case UnaryOp::Square: return T(2) * x;
    case UnaryOp::Sqrt: return T(0.5) / y;
    case UnaryOp::Exp: return y;
    case UnaryOp::Log: return T(1) / x;
    case UnaryOp::Tanh: return T(1) - y * y;
    case UnaryOp::Sigmoid: return y * (T(1) - y);
    case UnaryOp::Silu: {
      T s = sigmoid(x);
      return s * (T(1) + x * (T(1) - s));
    }
    case UnaryOp::Gelu: return gelu_grad(x);
    case UnaryOp::Softplus: return sigmoid(x);
    case UnaryOp::Relu: return x > T(0) ? T(1) : T(0);
  }
  return T(0);
}

template <typename T>
SEQTRAIN_HD T binary(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
  }
  return a;
}

}  // namespace emath
}  // namespace seqtrain
