// The MPI Communicator for CPU tensors. bf16 travels as its 16-bit pattern (MPI has no bf16
// type); a bf16 reduction is done in f32 and rounded back once, like NCCL's bf16 sums.
#include <climits>
#include <functional>

#include "core/error.h"
#include "distributed/communicator.h"

namespace seqtrain::distributed {

namespace {

MPI_Datatype mpi_type(DType d) {
  switch (d) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::BF16: return MPI_UINT16_T;  // bit pattern: moved, never reduced as integers
    default: ST_THROW("MPI communicator: dtype ", dtype_name(d), " is not supported");
  }
}

MPI_Op mpi_op(Reduction op) {
  switch (op) {
    case Reduction::Sum: return MPI_SUM;
    case Reduction::Max: return MPI_MAX;
    case Reduction::Min: return MPI_MIN;
  }
  ST_THROW("MPI communicator: unknown reduction");
}

int mpi_count(const Tensor& t, const char* what) {
  ST_CHECK(t.defined() && !t.is_cuda() && t.is_contiguous(), what, ": expected a contiguous CPU tensor, got ",
           t.defined() ? t.desc() : std::string("an undefined tensor"));
  ST_CHECK(t.numel() <= INT_MAX, what, ": ", t.desc(), " has more than INT_MAX elements; split it into buckets");
  return int(t.numel());
}

// A nonblocking MPI request plus what must run once it completes (copying an f32 staging
// buffer back into a bf16 tensor).
class MpiWork : public Work {
 public:
  MpiWork(MPI_Request request, std::function<void()> on_done) : request_(request), on_done_(std::move(on_done)) {}
  void wait() override {
    MPI_CHECK(MPI_Wait(&request_, MPI_STATUS_IGNORE));
    if (on_done_) on_done_();
  }

 private:
  MPI_Request request_;
  std::function<void()> on_done_;
};

class MpiCommunicator : public Communicator {
 public:
  explicit MpiCommunicator(const ProcessGroup& group) : group_(group) {}
  int rank() const override { return group_.rank; }
  int size() const override { return group_.size; }

  std::unique_ptr<Work> all_reduce_async(Tensor& t, Reduction op) override {
    const int n = mpi_count(t, "all_reduce");
    MPI_Request request;
    if (t.dtype() == DType::BF16) {
      Tensor staged = t.to(DType::F32);
      MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, staged.data_ptr(), n, MPI_FLOAT, mpi_op(op), group_.comm, &request));
      Tensor target = t;
      return std::make_unique<MpiWork>(request, [staged, target]() mutable { target.copy_(staged); });
    }
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, t.data_ptr(), n, mpi_type(t.dtype()), mpi_op(op), group_.comm, &request));
    return std::make_unique<MpiWork>(request, nullptr);
  }

  Tensor all_gather(const Tensor& x) override {
    const int n = mpi_count(x, "all_gather");
    ST_CHECK(x.dim() >= 1, "all_gather: expected at least one dimension, got ", x.desc());
    Shape shape = x.shape();
    shape[0] *= group_.size;
    Tensor out = Tensor::empty(shape, x.dtype());
    MPI_Datatype type = mpi_type(x.dtype());
    MPI_CHECK(MPI_Allgather(x.data_ptr(), n, type, out.data_ptr(), n, type, group_.comm));
    return out;
  }

  Tensor reduce_scatter(const Tensor& x) override {
    const int n = mpi_count(x, "reduce_scatter");
    ST_CHECK(x.dim() >= 1 && x.size(0) % group_.size == 0, "reduce_scatter: ", x.desc(),
             ": the first dimension must be a multiple of the group size ", group_.size);
    Shape shape = x.shape();
    shape[0] /= group_.size;
    const int block = n / group_.size;
    if (x.dtype() == DType::BF16) {
      Tensor staged = x.to(DType::F32), out = Tensor::empty(shape, DType::F32);
      MPI_CHECK(MPI_Reduce_scatter_block(staged.data_ptr(), out.data_ptr(), block, MPI_FLOAT, MPI_SUM, group_.comm));
      return out.to(DType::BF16);
    }
    Tensor out = Tensor::empty(shape, x.dtype());
    MPI_CHECK(MPI_Reduce_scatter_block(x.data_ptr(), out.data_ptr(), block, mpi_type(x.dtype()), MPI_SUM,
                                       group_.comm));
    return out;
  }

  void broadcast(Tensor& t, int root) override {
    const int n = mpi_count(t, "broadcast");
    MPI_CHECK(MPI_Bcast(t.data_ptr(), n, mpi_type(t.dtype()), root, group_.comm));
  }

  void send(const Tensor& t, int peer) override {
    const int n = mpi_count(t, "send");
    MPI_CHECK(MPI_Send(t.data_ptr(), n, mpi_type(t.dtype()), peer, kTag, group_.comm));
  }

  void recv(Tensor& t, int peer) override {
    const int n = mpi_count(t, "recv");
    MPI_Status status;
    MPI_CHECK(MPI_Recv(t.data_ptr(), n, mpi_type(t.dtype()), peer, kTag, group_.comm, &status));
    int got = 0;
    MPI_CHECK(MPI_Get_count(&status, mpi_type(t.dtype()), &got));
    ST_CHECK(got == n, "recv: rank ", peer, " sent ", got, " elements but ", t.desc(), " holds ", n);
  }

  void barrier() override { MPI_CHECK(MPI_Barrier(group_.comm)); }

 private:
  static constexpr int kTag = 7;
  ProcessGroup group_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const ProcessGroup& group) {
  return std::make_unique<MpiCommunicator>(group);
}

std::unique_ptr<Communicator> make_communicator(const ProcessGroup& group, Device device) {
  if (group.size == 1) return make_self_communicator();
  if (device.is_cuda()) return make_nccl_communicator(group, device);
  return make_mpi_communicator(group);
}

#ifndef SEQTRAIN_WITH_CUDA
std::unique_ptr<Communicator> make_nccl_communicator(const ProcessGroup&, Device device) {
  ST_THROW("NCCL communicator for ", device.str(), ": this seqtrain was built without CUDA (SEQTRAIN_CUDA=OFF)");
}
#endif

}  // namespace seqtrain::distributed
