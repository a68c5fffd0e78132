// The NCCL Communicator for CUDA tensors (built with SEQTRAIN_CUDA only). Collectives run on the
// communicator's own stream: each one first waits (an event, no host block) for the work already
// queued on the device's compute stream, which produced its inputs; its completion is another event
// that the compute stream waits on in Work::wait(). Compute queued between the launch and wait()
// therefore overlaps the communication (gradient buckets during backward).
#include <nccl.h>

#include <memory>

#include "core/cuda/runtime.h"
#include "core/error.h"
#include "distributed/communicator.h"

namespace seqtrain::distributed {

namespace {

#define NCCL_CHECK(call)                                                                         \
  do {                                                                                           \
    ncclResult_t r_ = (call);                                                                    \
    ST_CHECK(r_ == ncclSuccess, "NCCL error in ", #call, ": ", ncclGetErrorString(r_),           \
             " (NCCL_DEBUG=INFO explains; check that every rank calls the same collectives)");   \
  } while (0)

ncclDataType_t nccl_type(DType d) {
  switch (d) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    default: ST_THROW("NCCL communicator: dtype ", dtype_name(d), " is not supported");
  }
}

ncclRedOp_t nccl_op(Reduction op) {
  switch (op) {
    case Reduction::Sum: return ncclSum;
    case Reduction::Max: return ncclMax;
    case Reduction::Min: return ncclMin;
  }
  ST_THROW("NCCL communicator: unknown reduction");
}

// Completion of one collective; holds its tensors so their memory is not reused before it ends.
class NcclWork : public Work {
 public:
  NcclWork(std::unique_ptr<cuda::Event> done, cudaStream_t compute, std::vector<Tensor> keep)
      : done_(std::move(done)), compute_(compute), keep_(std::move(keep)) {}
  void wait() override { done_->wait(compute_); }

 private:
  std::unique_ptr<cuda::Event> done_;
  cudaStream_t compute_;
  std::vector<Tensor> keep_;
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(const ProcessGroup& group, Device device) : group_(group), device_(device) {
    ST_CHECK(device.is_cuda(), "NCCL communicator: expected a CUDA device, got ", device.str());
    compute_ = cuda::stream_for(device.index);
    ncclUniqueId id;
    if (group.rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    MPI_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, group.comm));
    NCCL_CHECK(ncclCommInitRank(&comm_, group.size, id, group.rank));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~NcclCommunicator() override {
    cudaStreamSynchronize(stream_);
    ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }
  int rank() const override { return group_.rank; }
  int size() const override { return group_.size; }

  std::unique_ptr<Work> all_reduce_async(Tensor& t, Reduction op) override {
    check(t, "all_reduce");
    begin();
    NCCL_CHECK(ncclAllReduce(t.data_ptr(), t.data_ptr(), size_t(t.numel()), nccl_type(t.dtype()), nccl_op(op), comm_,
                             stream_));
    return end({t});
  }

  Tensor all_gather(const Tensor& x) override {
    check(x, "all_gather");
    Shape shape = x.shape();
    shape[0] *= group_.size;
    Tensor out = Tensor::empty(shape, x.dtype(), device_);
    begin();
    NCCL_CHECK(ncclAllGather(x.data_ptr(), out.data_ptr(), size_t(x.numel()), nccl_type(x.dtype()), comm_, stream_));
    end({x, out})->wait();
    return out;
  }

  Tensor reduce_scatter(const Tensor& x) override {
    check(x, "reduce_scatter");
    ST_CHECK(x.size(0) % group_.size == 0, "reduce_scatter: ", x.desc(),
             ": the first dimension must be a multiple of the group size ", group_.size);
    Shape shape = x.shape();
    shape[0] /= group_.size;
    Tensor out = Tensor::empty(shape, x.dtype(), device_);
    begin();
    NCCL_CHECK(ncclReduceScatter(x.data_ptr(), out.data_ptr(), size_t(out.numel()), nccl_type(x.dtype()), ncclSum,
                                 comm_, stream_));
    end({x, out})->wait();
    return out;
  }

  void broadcast(Tensor& t, int root) override {
    check(t, "broadcast");
    begin();
    NCCL_CHECK(ncclBroadcast(t.data_ptr(), t.data_ptr(), size_t(t.numel()), nccl_type(t.dtype()), root, comm_,
                             stream_));
    end({t})->wait();
  }

  void send(const Tensor& t, int peer) override {
    check(t, "send");
    begin();
    NCCL_CHECK(ncclSend(t.data_ptr(), size_t(t.numel()), nccl_type(t.dtype()), peer, comm_, stream_));
    end({t})->wait();
  }

  void recv(Tensor& t, int peer) override {
    check(t, "recv");
    begin();
    NCCL_CHECK(ncclRecv(t.data_ptr(), size_t(t.numel()), nccl_type(t.dtype()), peer, comm_, stream_));
    end({t})->wait();
  }

  void barrier() override {
    // NCCL has no barrier: an all-reduce of one value, waited for on the host.
    Tensor one = Tensor::ones({1}, DType::F32, device_);
    all_reduce(one, Reduction::Sum);
    cuda::synchronize(device_.index);
  }

 private:
  void check(const Tensor& t, const char* what) const {
    ST_CHECK(t.defined() && t.device() == device_ && t.is_contiguous() && t.dim() >= 1, what,
             ": expected a contiguous tensor with at least one dimension on ", device_.str(), ", got ",
             t.defined() ? t.desc() : std::string("an undefined tensor"));
  }
  // The communication stream waits for everything queued so far on the compute stream.
  void begin() {
    cuda::Event ready;
    ready.record(compute_);
    ready.wait(stream_);
  }
  std::unique_ptr<Work> end(std::vector<Tensor> keep) {
    auto done = std::make_unique<cuda::Event>();
    done->record(stream_);
    return std::make_unique<NcclWork>(std::move(done), compute_, std::move(keep));
  }

  ProcessGroup group_;
  Device device_;
  cudaStream_t compute_ = nullptr, stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const ProcessGroup& group, Device device) {
  return std::make_unique<NcclCommunicator>(group, device);
}

}  // namespace seqtrain::distributed
