#include "distributed/mesh.h"

#include "core/error.h"

namespace seqtrain::distributed {

namespace {

// The group of ranks sharing `color`, ordered by `key`.
ProcessGroup split(MPI_Comm parent, int color, int key) {
  ProcessGroup g;
  MPI_CHECK(MPI_Comm_split(parent, color, key, &g.comm));
  MPI_CHECK(MPI_Comm_set_errhandler(g.comm, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(g.comm, &g.rank));
  MPI_CHECK(MPI_Comm_size(g.comm, &g.size));
  return g;
}

}  // namespace

Mesh::Mesh(const World& world, int dp, int cp, int tp) : dp_(dp), cp_(cp), tp_(tp) {
  ST_CHECK(tp >= 1 && cp >= 1 && (dp == -1 || dp >= 1), "parallel: dp=", dp, " cp=", cp, " tp=", tp,
           "; expected tp, cp >= 1 and dp >= 1 or -1 (inferred)");
  const int n = world.size();
  if (dp_ == -1) {
    ST_CHECK(n % (tp * cp) == 0, "parallel: the world has ", n, " processes, not a multiple of tp * cp = ", tp * cp,
             "; launch a multiple of ", tp * cp, " processes or change parallel.tp / parallel.cp");
    dp_ = n / (tp * cp);
  }
  ST_CHECK(dp_ * cp * tp == n, "parallel: dp * cp * tp = ", dp_, " * ", cp, " * ", tp, " = ", dp_ * cp * tp,
           " but the world has ", n, " processes; launch with mpirun -np ", dp_ * cp * tp,
           " or set parallel.dp: -1 to infer dp");
  world_ = split(world.comm(), 0, world.rank());
  const int r = world.rank();
  const int tp_rank = r % tp, cp_rank = r / tp % cp, dp_rank = r / (tp * cp);
  tp_group_ = split(world.comm(), r / tp, tp_rank);
  cp_group_ = split(world.comm(), dp_rank * tp + tp_rank, cp_rank);
  dp_group_ = split(world.comm(), cp_rank * tp + tp_rank, dp_rank);
  dp_cp_group_ = split(world.comm(), tp_rank, r / tp);
}

Mesh::~Mesh() {
  for (ProcessGroup* g : {&world_, &dp_group_, &cp_group_, &tp_group_, &dp_cp_group_})
    if (g->comm != MPI_COMM_NULL) MPI_Comm_free(&g->comm);
}

std::string Mesh::str() const { return str_cat("dp=", dp_, ",tp=", tp_, ",cp=", cp_); }

}  // namespace seqtrain::distributed
