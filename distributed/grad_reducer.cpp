#include "distributed/grad_reducer.h"

#include "core/ops.h"

namespace seqtrain::distributed {

GradReducer::GradReducer(std::vector<NamedParameter> params, Communicator& comm, size_t bucket_bytes)
    : params_(std::move(params)), comm_(comm) {
  // Gradients are reduced in the dtype of the master weights (f32), whatever the compute dtype.
  Bucket current;
  size_t bytes = 0;
  for (size_t i = params_.size(); i-- > 0;) {
    const Tensor& p = params_[i].param->value;
    current.params.push_back(i);
    bytes += p.nbytes();
    if (bytes >= bucket_bytes) {
      buckets_.push_back(std::move(current));
      current = Bucket();
      bytes = 0;
    }
  }
  if (!current.params.empty()) buckets_.push_back(std::move(current));
}

void GradReducer::bucket_ready(size_t b) {
  Bucket& bucket = buckets_.at(b);
  ST_CHECK(!bucket.work, "GradReducer: bucket ", b, " was launched twice without finish()");
  std::vector<Tensor> flat;
  for (size_t i : bucket.params) {
    const Tensor& p = params_[i].param->value;
    const Tensor& g = p.grad();
    flat.push_back(g.defined() ? g.to(p.dtype()).contiguous().view({-1})
                               : Tensor::zeros({p.numel()}, p.dtype(), p.device()));
  }
  bucket.flat = ops::concat(flat, 0);
  bucket.work = comm_.all_reduce_async(bucket.flat, Reduction::Sum);
}

void GradReducer::finish() {
  for (Bucket& bucket : buckets_) {
    if (!bucket.work) continue;
    bucket.work->wait();
    bucket.work.reset();
    int64_t at = 0;
    for (size_t i : bucket.params) {
      Tensor& p = params_[i].param->value;
      const int64_t n = p.numel();
      p.set_grad(bucket.flat.slice(0, at, at + n).view(p.shape()));
      at += n;
    }
    bucket.flat = Tensor();
  }
}

void GradReducer::reduce() {
  if (comm_.size() == 1) return;  // nothing to sum; keeps single-process runs exactly as they were
  for (size_t b = 0; b < buckets_.size(); ++b) bucket_ready(b);
  finish();
}

}  // namespace seqtrain::distributed
