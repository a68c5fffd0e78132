#include "distributed/world.h"

#include <string>

#include "core/error.h"
#include <cstdlib>
#ifdef SEQTRAIN_WITH_CUDA
#include "core/cuda/runtime.h"
#endif

namespace seqtrain::distributed {

void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  ST_THROW("MPI error in ", call, ": ", std::string(text, size_t(len)));
}

World::World(int* argc, char*** argv) {
  int initialized = 0;
  MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    owns_mpi_ = true;
    ST_CHECK(provided >= MPI_THREAD_FUNNELED, "the MPI library provides thread level ", provided,
             " but seqtrain needs MPI_THREAD_FUNNELED");
  }
  // Errors come back as codes (turned into exceptions by MPI_CHECK) instead of aborting inside MPI,
  // so the failing rank can name the cause before it ends the job.
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm_));
  MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &size_));
  MPI_Comm node = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  MPI_CHECK(MPI_Comm_rank(node, &local_rank_));
  MPI_CHECK(MPI_Comm_size(node, &local_size_));
  MPI_Comm_free(&node);
}

World::~World() {
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_mpi_ && !finalized) MPI_Finalize();
}

Device World::bind_device(Device requested) const {
  if (!requested.is_cuda()) return requested;
  const int count = cuda_device_count();
  ST_CHECK(local_rank_ < count, "rank ", rank_, " is local rank ", local_rank_, " of ", local_size_,
           " on its host but the host has ", count, " CUDA device(s); start one process per GPU");
#ifdef SEQTRAIN_WITH_CUDA
  CUDA_CHECK(cudaSetDevice(local_rank_));
#endif
  return Device::cuda(local_rank_);
}

void World::abort(int exit_code) const {
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);  // MPI_Abort does not return; this satisfies [[noreturn]] if it ever did
}

}  // namespace seqtrain::distributed
