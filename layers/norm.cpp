#include "layers/norm.h"

#include "autograd/functions.h"
#include "layers/linear.h"

namespace seqtrain {

Norm::Kind Norm::parse(const std::string& name) {
  if (name == "layernorm") return Kind::LayerNorm;
  if (name == "rmsnorm") return Kind::RMSNorm;
  ST_THROW("unknown norm '", name, "': expected layernorm or rmsnorm");
}

Norm::Norm(Kind kind, int64_t dim, bool bias, double eps)
    : kind_(kind), eps_(eps), weight_(add_parameter("weight", {dim}, Init::ones(), false)) {
  if (bias && kind == Kind::LayerNorm) bias_ = &add_parameter("bias", {dim}, Init::zeros(), false);
}

Tensor Norm::forward(const Tensor& x) const {
  Tensor w = compute_weight(weight_, x.dtype());
  if (kind_ == Kind::RMSNorm) return rmsnorm(x, w, eps_);
  return layernorm(x, w, bias_ ? compute_weight(*bias_, x.dtype()) : Tensor(), eps_);
}

}  // namespace seqtrain
