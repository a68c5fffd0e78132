#include "layers/embedding.h"

#include "autograd/functions.h"
#include "layers/linear.h"

namespace seqtrain {

// Embeddings are not decayed by default (DESIGN: no decay on norms, biases and embeddings).
Embedding::Embedding(int64_t num, int64_t dim, double init_std)
    : weight_(add_parameter("weight", {num, dim}, Init::normal(init_std), false)) {}

Tensor Embedding::forward(const Tensor& ids, DType compute) const {
  return embedding(ids, compute_weight(weight_, compute));
}

}  // namespace seqtrain
