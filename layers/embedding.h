// Embedding table [num, dim] (weight), looked up by integer ids.
#pragma once
#include "layers/module.h"

namespace seqtrain {

class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim, double init_std);
  // ids [...] (i32/i64) -> [..., dim] in `compute` dtype.
  Tensor forward(const Tensor& ids, DType compute) const;
  Tensor& weight() { return weight_; }

 private:
  Tensor& weight_;
};

}  // namespace seqtrain
