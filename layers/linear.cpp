#include "layers/linear.h"

#include "autograd/functions.h"

namespace seqtrain {

Tensor compute_weight(const Tensor& master, DType compute) { return cast(master, compute); }

Linear::Linear(int64_t in_features, int64_t out_features, bool bias, double init_std)
    : weight_(add_parameter("weight", {out_features, in_features}, Init::normal(init_std), true)) {
  if (bias) bias_ = &add_parameter("bias", {out_features}, Init::zeros(), false);
}

Tensor Linear::forward(const Tensor& x) const {
  return linear(x, compute_weight(weight_, x.dtype()), bias_ ? compute_weight(*bias_, x.dtype()) : Tensor());
}

}  // namespace seqtrain
