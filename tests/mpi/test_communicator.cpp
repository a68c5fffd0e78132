// The MPI Communicator's collectives, the mesh's groups and the gradient reducer against values
// computed by hand, at whatever world size mpirun started (1..4).
#include <gtest/gtest.h>

#include "core/ops.h"
#include "distributed/communicator.h"
#include "distributed/grad_reducer.h"
#include "mpi_test.h"

namespace seqtrain {
namespace {

using distributed::Reduction;

class CommunicatorTest : public ::testing::TestWithParam<DType> {
 protected:
  CommunicatorTest() : mesh_(test::mpi_world(), -1, 1, 1), comm_(distributed::make_mpi_communicator(mesh_.world())) {}
  int rank() const { return comm_->rank(); }
  int size() const { return comm_->size(); }
  distributed::Mesh mesh_;
  std::unique_ptr<distributed::Communicator> comm_;
};

// Small integers: exact in every dtype under test, bf16 included.
Tensor values(const std::vector<double>& v, const Shape& shape, DType d) { return Tensor::from_vector(v, shape, d); }

TEST_P(CommunicatorTest, AllReduceSumMaxMin) {
  const int n = 5, r = rank(), s = size();
  std::vector<double> mine(n);
  for (int i = 0; i < n; ++i) mine[size_t(i)] = double((r + 1) * (i + 1));
  for (Reduction op : {Reduction::Sum, Reduction::Max, Reduction::Min}) {
    Tensor t = values(mine, {n}, GetParam());
    comm_->all_reduce(t, op);
    std::vector<double> got = t.to_vector();
    for (int i = 0; i < n; ++i) {
      double expected = op == Reduction::Sum ? double((i + 1) * s * (s + 1) / 2) : op == Reduction::Max ? double((i + 1) * s) : double(i + 1);
      EXPECT_EQ(got[size_t(i)], expected) << "op " << int(op) << " element " << i;
    }
  }
}

TEST_P(CommunicatorTest, AllGatherPlacesRankRowsInOrder) {
  const int r = rank(), s = size();
  Tensor x = values({double(10 * r), double(10 * r + 1), double(10 * r + 2), double(10 * r + 3)}, {2, 2}, GetParam());
  Tensor out = comm_->all_gather(x);
  ASSERT_EQ(out.shape(), (Shape{2 * s, 2}));
  std::vector<double> got = out.to_vector();
  for (int q = 0; q < s; ++q)
    for (int j = 0; j < 4; ++j) EXPECT_EQ(got[size_t(4 * q + j)], double(10 * q + j));
}

TEST_P(CommunicatorTest, ReduceScatterSumsThisRanksBlock) {
  const int r = rank(), s = size();
  // x[i][j] = (rank + 1) * (i * 3 + j): the sum over ranks is (i * 3 + j) * s (s + 1) / 2.
  std::vector<double> v;
  for (int i = 0; i < 2 * s; ++i)
    for (int j = 0; j < 3; ++j) v.push_back(double((r + 1) * (i * 3 + j)));
  Tensor out = comm_->reduce_scatter(values(v, {2 * s, 3}, GetParam()));
  ASSERT_EQ(out.shape(), (Shape{2, 3}));
  std::vector<double> got = out.to_vector();
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      EXPECT_EQ(got[size_t(i * 3 + j)], double(((2 * r + i) * 3 + j) * s * (s + 1) / 2)) << i << "," << j;
}

TEST_P(CommunicatorTest, BroadcastFromLastRank) {
  const int r = rank(), s = size();
  Tensor t = values({double(r), double(r + 7), double(2 * r)}, {3}, GetParam());
  comm_->broadcast(t, s - 1);
  EXPECT_EQ(t.to_vector(), (std::vector<double>{double(s - 1), double(s + 6), double(2 * (s - 1))}));
}

TEST_P(CommunicatorTest, SendRecvAroundTheRing) {
  const int r = rank(), s = size();
  if (s == 1) GTEST_SKIP() << "no peer";
  const int next = (r + 1) % s, prev = (r + s - 1) % s;
  Tensor out = values({double(r), double(r + 1)}, {2}, GetParam());
  Tensor in = Tensor::zeros({2}, GetParam());
  // Blocking send/recv: even ranks send first, odd ranks receive first, so no cycle of waits
  // forms whatever MPI's eager limit.
  if (r % 2 == 0) {
    comm_->send(out, next);
    comm_->recv(in, prev);
  } else {
    comm_->recv(in, prev);
    comm_->send(out, next);
  }
  EXPECT_EQ(in.to_vector(), (std::vector<double>{double(prev), double(prev + 1)}));
  comm_->barrier();
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CommunicatorTest, ::testing::Values(DType::F32, DType::F64, DType::I64, DType::BF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// The rank layout of reference/seqpar.md §6.6 (tp innermost), checked through all-gathers of the
// world ranks inside each group.
TEST(MeshTest, GroupsFollowTpInnermostOrder) {
  const distributed::World& world = test::mpi_world();
  const int n = world.size();
  const int tp = n % 2 == 0 ? 2 : 1;
  distributed::Mesh mesh(world, -1, 1, tp);
  EXPECT_EQ(mesh.dp(), n / tp);
  EXPECT_EQ(mesh.str(), str_cat("dp=", n / tp, ",tp=", tp, ",cp=1"));
  auto gather_ranks = [&](const distributed::ProcessGroup& g) {
    auto comm = distributed::make_mpi_communicator(g);
    std::vector<int64_t> out;
    for (double v : comm->all_gather(Tensor::full({1}, world.rank(), DType::I64)).to_vector()) out.push_back(int64_t(v));
    return out;
  };
  const int r = world.rank();
  std::vector<int64_t> tp_ranks, dp_ranks;
  for (int t = 0; t < tp; ++t) tp_ranks.push_back(r / tp * tp + t);
  for (int d = 0; d < n / tp; ++d) dp_ranks.push_back(r % tp + d * tp);
  EXPECT_EQ(gather_ranks(mesh.tp_group()), tp_ranks);
  EXPECT_EQ(gather_ranks(mesh.dp_group()), dp_ranks);
  EXPECT_EQ(gather_ranks(mesh.dp_cp_group()), dp_ranks);
  EXPECT_EQ(gather_ranks(mesh.cp_group()), std::vector<int64_t>{r});
}

TEST(MeshTest, ImpossibleLayoutsNameTheSizes) {
  const distributed::World& world = test::mpi_world();
  const int n = world.size();
  try {
    distributed::Mesh mesh(world, n + 1, 1, 1);
    ADD_FAILURE() << "dp = world size + 1 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(str_cat("the world has ", n, " processes")), std::string::npos) << e.what();
  }
  if (n == 1) return;
  try {
    distributed::Mesh mesh(world, -1, 1, n + 1);
    ADD_FAILURE() << "tp > world size was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a multiple of tp * cp"), std::string::npos) << e.what();
  }
}

// 40-byte buckets give two, {p3, p2, p1} and {p0} (reverse order, closed at >= 40 bytes). Buckets
// launch in order as their parameters are reported, whatever the reporting order; a parameter
// without a gradient on one rank contributes zeros.
TEST(GradReducerTest, SumsEveryGradientAcrossBuckets) {
  const distributed::World& world = test::mpi_world();
  distributed::Mesh mesh(world, -1, 1, 1);
  auto comm = distributed::make_mpi_communicator(mesh.dp_group());
  const int r = world.rank(), s = world.size();
  std::vector<Parameter> storage(4);
  std::vector<NamedParameter> params;
  const std::vector<Shape> shapes = {{3, 4}, {5}, {2, 2, 2}, {1}};
  for (size_t i = 0; i < storage.size(); ++i) {
    storage[i].value = Tensor::zeros(shapes[i], DType::F32);
    params.push_back({"p" + std::to_string(i), &storage[i]});
    // grad[j] = (rank + 1) * (j + i): the sum over ranks is (j + i) * s (s + 1) / 2.
    std::vector<double> g(size_t(shape_numel(shapes[i])));
    for (size_t j = 0; j < g.size(); ++j) g[j] = double((r + 1) * int(j + i));
    if (!(i == 1 && r == 0)) storage[i].value.set_grad(Tensor::from_vector(g, shapes[i], DType::F32));
  }
  distributed::GradReducer reducer(params, *comm, 40);
  ASSERT_EQ(reducer.num_buckets(), size_t(2));
  EXPECT_EQ(reducer.bucket(1), std::vector<size_t>{0});
  reducer.grad_ready(*storage[0].value.impl());
  EXPECT_EQ(reducer.launched(), size_t(0)) << "bucket 1 launched before bucket 0";
  reducer.grad_ready(*storage[3].value.impl());
  reducer.grad_ready(*storage[2].value.impl());
  EXPECT_EQ(reducer.launched(), size_t(0));
  reducer.grad_ready(*storage[1].value.impl());
  EXPECT_EQ(reducer.launched(), size_t(2));
  reducer.finish();
  EXPECT_EQ(reducer.launched(), size_t(0));
  for (size_t i = 0; i < storage.size(); ++i) {
    std::vector<double> got = storage[i].value.grad().to_vector();
    for (size_t j = 0; j < got.size(); ++j) {
      double expected = double(int(j + i) * s * (s + 1) / 2);
      if (i == 1) expected -= double(j + i);  // rank 0 had no gradient for p1
      EXPECT_EQ(got[j], expected) << "p" << i << "[" << j << "]";
    }
  }
}

// make_communicator gives a one-process group the identity communicator (no MPI transport, no
// NCCL), whatever the world size: every rank's own group of one.
TEST(SelfCommunicator, OneProcessGroupsGetTheIdentity) {
  distributed::Mesh mesh(test::mpi_world(), -1, 1, 1);  // dp = world size; tp = cp = 1
  auto comm = distributed::make_communicator(mesh.tp_group(), Device::cpu());
  ASSERT_EQ(comm->size(), 1);
  EXPECT_EQ(comm->rank(), 0);
  Tensor t = Tensor::from_vector({1, -2, 3}, {3}, DType::F32);
  for (Reduction op : {Reduction::Sum, Reduction::Max, Reduction::Min}) comm->all_reduce(t, op);
  EXPECT_EQ(t.to_vector(), (std::vector<double>{1, -2, 3}));
  Tensor gathered = comm->all_gather(t), scattered = comm->reduce_scatter(t);
  EXPECT_EQ(gathered.to_vector(), t.to_vector());
  EXPECT_EQ(scattered.to_vector(), t.to_vector());
  EXPECT_NE(gathered.data_ptr(), t.data_ptr()) << "a new tensor, as from the other communicators";
  comm->broadcast(t, 0);
  comm->barrier();
  EXPECT_THROW(comm->broadcast(t, 1), Error);
  EXPECT_THROW(comm->send(t, 1), Error);
  EXPECT_THROW(comm->recv(t, 0), Error);
}

}  // namespace
}  // namespace seqtrain
