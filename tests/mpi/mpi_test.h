// Shared by the MPI test files: the world the test main (main.cpp) initialised.
#pragma once
#include "distributed/world.h"

namespace seqtrain::test {

const distributed::World& mpi_world();

}  // namespace seqtrain::test
