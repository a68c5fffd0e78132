// Data-parallel gradient reduction (DESIGN.md §5, flashlight's reducer): parameters are grouped
// into buckets of about `bucket_bytes`, in reverse declaration order (the order backward produces
// their gradients), and each bucket is flattened into one buffer and sum-all-reduced over the
// data-parallel group, so a step costs a few large collectives instead of one per parameter.
//
// Sum, not mean: the loss is already normalised by the GLOBAL token count (each rank's micro-batch
// losses are scaled by 1 / (micro-batches of all ranks)), so the sum over ranks is exactly the
// gradient of the global-batch loss. (Megatron's equivalent averages, with a loss that is a
// per-rank mean; the two agree.)
//
// Use: after the last micro-batch's backward, call bucket_ready(b) for each bucket in order (each
// launches that bucket's all-reduce asynchronously), then finish() (waits for all of them and
// copies the results back). On CPU/MPI the launches happen after the whole backward; the split
// into bucket_ready/finish lets a backward hook launch bucket b as soon as its last gradient is
// written, overlapping NCCL with the rest of the backward.
//
// Determinism: for a fixed world size and buffer size MPI_Allreduce (OpenMPI's tuned component)
// and NCCL's ring pick a fixed algorithm and summation order, and every rank ends with the same
// bits, so replicas stay identical; the order differs from a single process accumulating the same
// micro-batches, so dp=N equals dp=1 to rounding (the mpi tests check 1e-6 relative in f32).
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

#include "distributed/communicator.h"
#include "layers/module.h"

namespace seqtrain::distributed {

class GradReducer {
 public:
  // 25 MiB buckets (PyTorch DDP's default): large enough to reach bandwidth, small enough for the
  // first bucket to start early in the backward.
  static constexpr size_t kDefaultBucketBytes = size_t(25) << 20;

  // `params` and `comm` (the data-parallel group) must outlive the reducer.
  GradReducer(std::vector<NamedParameter> params, Communicator& comm, size_t bucket_bytes = kDefaultBucketBytes);

  size_t num_buckets() const { return buckets_.size(); }
  // Indices into `params` of bucket b's parameters.
  const std::vector<size_t>& bucket(size_t b) const { return buckets_[b].params; }

  // Launches bucket b's all-reduce. Every parameter of the bucket must have its final gradient; a
  // parameter without one (unused by this rank's batch) contributes zeros and receives the sum.
  void bucket_ready(size_t b);
  // Waits for every launched bucket and writes the summed gradients back into the parameters.
  void finish();
  // bucket_ready for every bucket in order, then finish().
  void reduce();

 private:
  struct Bucket {
    std::vector<size_t> params;
    Tensor flat;  // the bucket's gradients, concatenated, while its all-reduce is in flight
    std::unique_ptr<Work> work;
  };
  std::vector<NamedParameter> params_;
  Communicator& comm_;
  std::vector<Bucket> buckets_;
};

}  // namespace seqtrain::distributed
