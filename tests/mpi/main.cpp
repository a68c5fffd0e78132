// gtest main for the MPI tests: every rank runs every test; the results are all-reduced (MIN of
// "passed") so a failure on any rank fails the run on all of them. Rank 0 prints the usual gtest
// report; the other ranks print only their failures, prefixed with the rank.
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>

#include "mpi_test.h"

namespace seqtrain::test {

namespace {

const distributed::World* g_world = nullptr;

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "rank %d: %s:%d: failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
  }

 private:
  int rank_;
};

}  // namespace

const distributed::World& mpi_world() { return *g_world; }

}  // namespace seqtrain::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  int passed = 0;
  {
    seqtrain::distributed::World world(&argc, &argv);
    seqtrain::test::g_world = &world;
    if (world.rank() != 0) {
      auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new seqtrain::test::RankFailurePrinter(world.rank()));
    }
    int local = RUN_ALL_TESTS() == 0 ? 1 : 0;
    MPI_CHECK(MPI_Allreduce(&local, &passed, 1, MPI_INT, MPI_MIN, world.comm()));
    if (world.rank() == 0 && !passed) std::fprintf(stderr, "FAILED on at least one of %d ranks\n", world.size());
  }
  return passed ? 0 : 1;
}
