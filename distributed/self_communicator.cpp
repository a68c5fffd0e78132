// The communicator of a one-process group: every collective is the identity, so a single-process
// run (every dimension of the mesh 1) touches neither MPI's transport nor NCCL. (An NCCL
// communicator of one rank still allocates device buffers and a stream, and its initialisation was
// seen to fail when the GPU was nearly full of other runs' memory.)
#include "core/error.h"
#include "distributed/communicator.h"

namespace seqtrain::distributed {

namespace {

class DoneWork : public Work {
 public:
  void wait() override {}
};

class SelfCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::unique_ptr<Work> all_reduce_async(Tensor&, Reduction) override { return std::make_unique<DoneWork>(); }
  Tensor all_gather(const Tensor& x) override { return x.clone(); }
  Tensor reduce_scatter(const Tensor& x) override { return x.clone(); }
  void broadcast(Tensor&, int root) override {
    ST_CHECK(root == 0, "broadcast: root ", root, " is not a rank of a one-process group");
  }
  void send(const Tensor&, int peer) override { ST_THROW("send to rank ", peer, ": a one-process group has no peers"); }
  void recv(Tensor&, int peer) override { ST_THROW("recv from rank ", peer, ": a one-process group has no peers"); }
  void barrier() override {}
};

}  // namespace

std::unique_ptr<Communicator> make_self_communicator() { return std::make_unique<SelfCommunicator>(); }

}  // namespace seqtrain::distributed
