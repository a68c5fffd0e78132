// The MPI world of one training job (DESIGN.md §5): every process of `mpirun -np N` is one rank,
// one GPU per process. A process started without mpirun is a world of size 1 (MPI singleton), so
// single-process and multi-process runs share every code path.
#pragma once
#include <mpi.h>

#include "core/device.h"

namespace seqtrain::distributed {

// Throws seqtrain::Error naming the call and MPI's error text when `code` is not MPI_SUCCESS.
void check_mpi(int code, const char* call);
#define MPI_CHECK(call) ::seqtrain::distributed::check_mpi((call), #call)

class World {
 public:
  // Initialises MPI (MPI_THREAD_FUNNELED: only the main thread calls MPI; OpenMP threads never
  // do) unless it already is, and finalises it on destruction if this object initialised it.
  World(int* argc, char*** argv);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  MPI_Comm comm() const { return comm_; }  // a duplicate of MPI_COMM_WORLD owned by this object
  int rank() const { return rank_; }
  int size() const { return size_; }
  // Rank among the processes of this host (MPI_Comm_split_type SHARED), the GPU it drives.
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }

  // The device this rank computes on: CPU stays CPU; "cuda" becomes cuda:<local rank>, which
  // must exist (one process per GPU), and is made the current CUDA device.
  Device bind_device(Device requested) const;

  // Ends every process of the job (MPI_Abort): the way out when one rank cannot continue, so that
  // the others do not wait forever in a collective.
  [[noreturn]] void abort(int exit_code) const;

 private:
  bool owns_mpi_ = false;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
};

}  // namespace seqtrain::distributed
