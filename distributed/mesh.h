// The process grid (DESIGN.md §5, reference/seqpar.md §6.6): world = dp × cp × tp with tp
// innermost, then cp, then dp (Megatron's order), so
//     rank = tp_rank + tp * (cp_rank + cp * dp_rank).
// Tensor-parallel peers are consecutive ranks (one NVLink island); data-parallel peers are
// tp * cp apart. Each group is an MPI sub-communicator owned by the mesh.
//
// Example, 8 ranks with dp = cp = tp = 2: tp {0,1} {2,3} {4,5} {6,7}; cp {0,2} {1,3} {4,6} {5,7};
// dp {0,4} {1,5} {2,6} {3,7}; dp×cp {0,2,4,6} {1,3,5,7}.
#pragma once
#include <string>

#include "distributed/world.h"

namespace seqtrain::distributed {

// One group of ranks: its MPI communicator and this process's place in it. Not owning.
struct ProcessGroup {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0;
  int size = 1;
};

class Mesh {
 public:
  // dp = -1 takes whatever the world leaves after tp * cp. Throws naming the sizes when
  // dp * cp * tp does not equal the world size.
  Mesh(const World& world, int dp, int cp, int tp);
  ~Mesh();
  Mesh(const Mesh&) = delete;
  Mesh& operator=(const Mesh&) = delete;

  int dp() const { return dp_; }
  int cp() const { return cp_; }
  int tp() const { return tp_; }
  const ProcessGroup& world() const { return world_; }
  const ProcessGroup& dp_group() const { return dp_group_; }
  const ProcessGroup& cp_group() const { return cp_group_; }
  const ProcessGroup& tp_group() const { return tp_group_; }
  // Every rank with the same tp rank: weight gradients are summed over it, because cp ranks hold
  // replicated weights and see different tokens.
  const ProcessGroup& dp_cp_group() const { return dp_cp_group_; }
  std::string str() const;  // "dp=2,tp=1,cp=1", as stored in checkpoints

 private:
  int dp_, cp_, tp_;
  ProcessGroup world_, dp_group_, cp_group_, tp_group_, dp_cp_group_;
};

}  // namespace seqtrain::distributed
