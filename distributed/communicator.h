// Collective communication over one process group (DESIGN.md §5). One interface, two
// implementations: MPI for CPU tensors (what CI tests every parallel algorithm with, via
// `mpirun -np 4` on CPU) and NCCL for CUDA tensors. Algorithms are written against this interface
// only, so the CPU tests exercise the same code paths as GPU runs.
//
// Every call is collective: all ranks of the group call it in the same order with tensors of the
// same shape and dtype. Tensors must be contiguous. The MPI implementation handles f32, f64, i32,
// i64 and bf16 (sums of bf16 are accumulated in f32); NCCL handles all of them natively.
//
// Ordering on GPU: the NCCL implementation runs on its own stream. A collective waits (event, no
// host block) for everything already queued on the device's compute stream, and the *_async form
// returns a Work whose wait() makes the compute stream wait for the result, so compute queued in
// between overlaps the communication. The blocking forms are the async form followed by wait().
#pragma once
#include <memory>

#include "core/tensor.h"
#include "distributed/mesh.h"

namespace seqtrain::distributed {

enum class Reduction { Sum, Max, Min };

// An operation in flight. wait() makes its result visible to the caller (the host for MPI, the
// compute stream for NCCL); it must be called exactly once, before the tensors are touched.
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // t = reduction over ranks of t, in place.
  virtual std::unique_ptr<Work> all_reduce_async(Tensor& t, Reduction op) = 0;
  void all_reduce(Tensor& t, Reduction op = Reduction::Sum) { all_reduce_async(t, op)->wait(); }
  // x [n, ...] on every rank -> [size * n, ...]: rank r's x is rows r*n .. r*n+n-1.
  virtual Tensor all_gather(const Tensor& x) = 0;
  // x [size * n, ...] -> [n, ...]: rank r gets the sum over ranks of rows r*n .. r*n+n-1.
  virtual Tensor reduce_scatter(const Tensor& x) = 0;
  // t = root's t, in place.
  virtual void broadcast(Tensor& t, int root) = 0;
  // Point to point; a send must be matched by a recv of the same shape and dtype on `peer`.
  virtual void send(const Tensor& t, int peer) = 0;
  virtual void recv(Tensor& t, int peer) = 0;
  virtual void barrier() = 0;
};

// The MPI implementation over `group` (CPU tensors only). The group must outlive it.
std::unique_ptr<Communicator> make_mpi_communicator(const ProcessGroup& group);
// The NCCL implementation for CUDA tensors on `device` (builds with SEQTRAIN_CUDA only): rank 0 of
// the group creates the NCCL unique id and broadcasts it over the group's MPI communicator.
std::unique_ptr<Communicator> make_nccl_communicator(const ProcessGroup& group, Device device);
// The communicator of a one-process group: every collective is the identity.
std::unique_ptr<Communicator> make_self_communicator();
// The communicator for tensors on `device`: NCCL for CUDA, MPI for the CPU, and for a group of
// one process the identity (make_self_communicator).
std::unique_ptr<Communicator> make_communicator(const ProcessGroup& group, Device device);

}  // namespace seqtrain::distributed
