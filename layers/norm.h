// Normalisation over the last dim: LayerNorm (weight, optional bias) and RMSNorm (weight).
#pragma once
#include "layers/module.h"

namespace seqtrain {

class Norm : public Module {
 public:
  enum class Kind { LayerNorm, RMSNorm };
  Norm(Kind kind, int64_t dim, bool bias, double eps);
  Tensor forward(const Tensor& x) const;
  static Kind parse(const std::string& name);  // "layernorm" | "rmsnorm"

 private:
  Kind kind_;
  double eps_;
  Tensor& weight_;
  Tensor* bias_ = nullptr;
};

}  // namespace seqtrain
