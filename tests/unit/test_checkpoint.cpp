// HDF5 checkpoints: bitwise round trip, the commit protocol (tmp + rename + `latest`, keep-last-K),
// choosing the newest complete file when writes were interrupted, clear errors for a model that does
// not fit (with nothing modified), inspection, and hyperslab reads for resharded resume.
#include "train/checkpoint.h"

#include <hdf5.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "test_util.h"

namespace seqtrain::train {
namespace {

namespace fs = std::filesystem;
using testing::random_tensor;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "seqtrain-ckpt-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr) << std::strerror(errno);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string dir_;
};

// A small model: a matrix, a vector and a 0-dim scalar, with the names real layers use.
std::vector<NamedTensor> make_params(uint64_t salt, int64_t width = 6) {
  return {{"blocks.0.attn.qkv.weight", random_tensor({4, width}, DType::F32, Device::cpu(), salt)},
          {"blocks.0.norm.weight", random_tensor({width}, DType::F32, Device::cpu(), salt + 1)},
          {"final.scale", random_tensor({}, DType::F32, Device::cpu(), salt + 2)}};
}

std::vector<OptimizerSlot> make_optim(const std::vector<NamedTensor>& params, uint64_t salt) {
  std::vector<OptimizerSlot> slots;
  for (const NamedTensor& p : params)
    slots.push_back({p.name, random_tensor(p.value.shape(), DType::F32, Device::cpu(), salt),
                     random_tensor(p.value.shape(), DType::F32, Device::cpu(), salt + 100, 0.0, 1.0)});
  return slots;
}

// Same names and shapes, different values: what a freshly built model looks like before loading.
std::vector<NamedTensor> fresh_like(const std::vector<NamedTensor>& params) {
  std::vector<NamedTensor> out;
  for (const NamedTensor& p : params) out.push_back({p.name, Tensor::full(p.value.shape(), 7.0, DType::F32)});
  return out;
}

std::vector<OptimizerSlot> fresh_like(const std::vector<OptimizerSlot>& slots) {
  std::vector<OptimizerSlot> out;
  for (const OptimizerSlot& s : slots)
    out.push_back({s.name, Tensor::full(s.m.shape(), 7.0, DType::F32), Tensor::full(s.v.shape(), 7.0, DType::F32)});
  return out;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != DType::F32 || b.dtype() != DType::F32) return false;
  Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

CheckpointMeta make_meta(int64_t step) {
  CheckpointMeta meta;
  meta.step = step;
  meta.tokens_seen = step * 4096;
  meta.data_position = step * 8;
  meta.seed = 0xDEADBEEFCAFEull;
  meta.rng_offset = 123456789012345ull;
  meta.lr = 3e-4;
  meta.layers = "A×12";
  meta.mesh = "dp=2,tp=1,cp=1";
  meta.config_yaml = "run:\n  name: tiny\nmodel:\n  d_model: 6\n";
  return meta;
}

std::string read_text(const std::string& file) {
  std::ifstream in(file);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST_F(CheckpointTest, RoundTripIsBitwiseWithMetaAndConfig) {
  const auto params = make_params(1);
  const auto optim = make_optim(params, 10);
  const CheckpointMeta meta = make_meta(42);
  const std::string file = save_checkpoint(dir_, meta, params, optim, 3);
  EXPECT_EQ(file, path("step-00000042.h5"));
  EXPECT_FALSE(fs::exists(file + ".tmp"));

  const CheckpointMeta got = read_checkpoint_meta(file);
  EXPECT_EQ(got.step, 42);
  EXPECT_EQ(got.tokens_seen, meta.tokens_seen);
  EXPECT_EQ(got.data_position, meta.data_position);
  EXPECT_EQ(got.seed, meta.seed);
  EXPECT_EQ(got.rng_offset, meta.rng_offset);
  EXPECT_EQ(got.lr, meta.lr);
  EXPECT_EQ(got.layers, "A×12");
  EXPECT_EQ(got.mesh, meta.mesh);
  EXPECT_EQ(got.config_yaml, meta.config_yaml);
  EXPECT_EQ(got.format_version, kCheckpointFormatVersion);

  auto loaded = fresh_like(params);
  auto loaded_optim = fresh_like(optim);
  load_checkpoint(file, loaded, loaded_optim);
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_TRUE(bitwise_equal(loaded[i].value, params[i].value)) << params[i].name;
    EXPECT_TRUE(bitwise_equal(loaded_optim[i].m, optim[i].m)) << params[i].name << " m";
    EXPECT_TRUE(bitwise_equal(loaded_optim[i].v, optim[i].v)) << params[i].name << " v";
  }

  // Model-only load, into a different dtype: the f32 values rounded to bf16 on the way in.
  std::vector<NamedTensor> bf16_model;
  for (const NamedTensor& p : params) bf16_model.push_back({p.name, Tensor::zeros(p.value.shape(), DType::BF16)});
  load_checkpoint(file, bf16_model, {});
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_TRUE(bitwise_equal(bf16_model[i].value.to(DType::F32), params[i].value.to(DType::BF16).to(DType::F32)));
}

TEST_F(CheckpointTest, EmptyConfigAndNoOptimizerRoundTrip) {
  CheckpointMeta meta = make_meta(1);
  meta.config_yaml = "";
  const auto params = make_params(2);
  const std::string file = save_checkpoint(dir_, meta, params, {}, 0);
  EXPECT_EQ(read_checkpoint_meta(file).config_yaml, "");
  auto loaded = fresh_like(params);
  EXPECT_ERROR_MENTIONS(load_checkpoint(file, loaded, fresh_like(make_optim(params, 3))), "no optimizer state");
  load_checkpoint(file, loaded, {});
  EXPECT_TRUE(bitwise_equal(loaded[0].value, params[0].value));
}

TEST_F(CheckpointTest, LatestPointerAndKeepLastK) {
  const auto params = make_params(3);
  for (int64_t step : {10, 20, 30, 40}) {
    save_checkpoint(dir_, make_meta(step), params, {}, 2);
    EXPECT_EQ(read_text(path("latest")), "step-" + std::string(step < 100 ? "000000" : "") + std::to_string(step) + ".h5\n");
  }
  EXPECT_FALSE(fs::exists(path("step-00000010.h5")));
  EXPECT_FALSE(fs::exists(path("step-00000020.h5")));
  EXPECT_TRUE(fs::exists(path("step-00000030.h5")));
  EXPECT_TRUE(fs::exists(path("step-00000040.h5")));
  EXPECT_FALSE(fs::exists(path("latest.tmp")));
  EXPECT_EQ(find_latest_checkpoint(dir_), path("step-00000040.h5"));

  // keep <= 0 keeps everything.
  save_checkpoint(dir_, make_meta(50), params, {}, 0);
  EXPECT_TRUE(fs::exists(path("step-00000030.h5")));
}

TEST_F(CheckpointTest, NoCheckpointMeansEmpty) {
  EXPECT_EQ(find_latest_checkpoint(dir_), std::nullopt);
  EXPECT_EQ(find_latest_checkpoint(path("does-not-exist")), std::nullopt);
}

TEST_F(CheckpointTest, LeftoverTmpIsIgnoredAndCleanedByTheNextSave) {
  const auto params = make_params(4);
  save_checkpoint(dir_, make_meta(100), params, {}, 3);
  // An interrupted save of step 200: a complete-looking file that was never renamed.
  fs::copy_file(path("step-00000100.h5"), path("step-00000200.h5.tmp"));
  EXPECT_EQ(find_latest_checkpoint(dir_), path("step-00000100.h5"));
  save_checkpoint(dir_, make_meta(150), params, {}, 3);
  EXPECT_FALSE(fs::exists(path("step-00000200.h5.tmp")));
}

TEST_F(CheckpointTest, TruncatedNewestFileIsSkipped) {
  const auto params = make_params(5, 256);
  save_checkpoint(dir_, make_meta(1), params, make_optim(params, 6), 5);
  const std::string newest = save_checkpoint(dir_, make_meta(2), params, make_optim(params, 7), 5);
  ASSERT_EQ(truncate(newest.c_str(), off_t(fs::file_size(newest) / 2)), 0);
  EXPECT_EQ(find_latest_checkpoint(dir_), path("step-00000001.h5"));
  EXPECT_ERROR_MENTIONS(read_checkpoint_meta(newest), "cannot open checkpoint", "step-00000002.h5");
}

TEST_F(CheckpointTest, FileWithoutCompletionMarkerIsSkipped) {
  const auto params = make_params(8);
  save_checkpoint(dir_, make_meta(1), params, {}, 5);
  const std::string newest = save_checkpoint(dir_, make_meta(2), params, {}, 5);
  {
    const hid_t file = H5Fopen(newest.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    ASSERT_GE(H5Adelete(file, "complete"), 0);
    ASSERT_GE(H5Fclose(file), 0);
  }
  // `latest` still names the unmarked file; the scan falls back to step 1.
  EXPECT_EQ(find_latest_checkpoint(dir_), path("step-00000001.h5"));
  EXPECT_ERROR_MENTIONS(load_checkpoint(newest, fresh_like(params), {}), "incomplete", "step-00000002.h5");
}

TEST_F(CheckpointTest, IncompatibleModelThrowsAndModifiesNothing) {
  const auto params = make_params(9);
  const auto optim = make_optim(params, 10);
  const std::string file = save_checkpoint(dir_, make_meta(5), params, optim, 1);

  auto expect_untouched = [](const std::vector<NamedTensor>& model) {
    for (const NamedTensor& p : model)
      for (double v : p.value.to_vector()) ASSERT_EQ(v, 7.0) << p.name << " was modified";
  };

  // Different width: shapes differ. The first parameter alone would fit; it must stay untouched.
  auto wider = fresh_like(make_params(0, 8));
  wider.insert(wider.begin(), fresh_like(params)[0]);
  wider.erase(wider.begin() + 1);
  EXPECT_ERROR_MENTIONS(load_checkpoint(file, wider, {}), "step-00000005.h5", "blocks.0.norm.weight", "[6]", "[8]",
                        "A×12", "Nothing was loaded");
  expect_untouched(wider);

  // A missing and an extra parameter.
  auto renamed = fresh_like(params);
  renamed[2].name = "final.bias";
  EXPECT_ERROR_MENTIONS(load_checkpoint(file, renamed, {}), "missing from the checkpoint (1): final.bias",
                        "not in the model (1): final.scale");
  expect_untouched(renamed);

  // The optimizer state must fit too; a mismatch there also leaves the parameters alone.
  auto model = fresh_like(params);
  auto slots = fresh_like(optim);
  slots.pop_back();
  EXPECT_ERROR_MENTIONS(load_checkpoint(file, model, slots), "not in the model (1): optim/final.scale");
  expect_untouched(model);
}

TEST_F(CheckpointTest, SaveRejectsBadInputsBeforeWriting) {
  auto params = make_params(11);
  params.push_back(params[0]);
  EXPECT_ERROR_MENTIONS(save_checkpoint(dir_, make_meta(1), params, {}, 1), "appears twice");
  EXPECT_ERROR_MENTIONS(save_checkpoint(dir_, make_meta(1), {{"a/b", Tensor::zeros({1}, DType::F32)}}, {}, 1),
                        "'a/b'");
  EXPECT_EQ(find_latest_checkpoint(dir_), std::nullopt);
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(CheckpointTest, DescribeListsNamesShapesAndMeta) {
  const auto params = make_params(12);
  const std::string file = save_checkpoint(dir_, make_meta(77), params, make_optim(params, 13), 1);
  const std::string text = describe_checkpoint(file);
  for (const char* fragment : {"step           77", "A×12", "dp=2,tp=1,cp=1", "d_model: 6", "blocks.0.attn.qkv.weight",
                               "[4, 6]", "blocks.0.norm.weight", "final.scale", "AdamW m, v for 3 of 3"})
    EXPECT_NE(text.find(fragment), std::string::npos) << "missing '" << fragment << "' in:\n" << text;
  // Declaration order, not alphabetical.
  EXPECT_LT(text.find("blocks.0.norm.weight"), text.find("final.scale"));
}

TEST_F(CheckpointTest, ReadParameterSliceMatchesTheFullTensor) {
  const auto params = make_params(14);
  const std::string file = save_checkpoint(dir_, make_meta(3), params, {}, 1);
  const Tensor& w = params[0].value;  // [4, 6]
  for (int64_t dim : {0, 1}) {
    const Tensor slice = read_parameter_slice(file, "blocks.0.attn.qkv.weight", dim, 1, 2);
    EXPECT_TRUE(bitwise_equal(slice, w.slice(dim, 1, 3))) << "dim " << dim;
  }
  EXPECT_EQ(read_parameter_slice(file, "blocks.0.norm.weight", 0, 6, 0).numel(), 0);
  EXPECT_ERROR_MENTIONS(read_parameter_slice(file, "blocks.0.norm.weight", 0, 4, 3), "outside", "[6]");
  EXPECT_ERROR_MENTIONS(read_parameter_slice(file, "nope", 0, 0, 1), "no parameter 'nope'");
}

TEST_F(CheckpointTest, H5dumpReadsTheFile) {
  if (std::system("command -v h5dump > /dev/null 2>&1") != 0) GTEST_SKIP() << "h5dump not installed (hdf5-tools)";
  const std::string file = save_checkpoint(dir_, make_meta(9), make_params(15), {}, 1);
  const std::string out = path("dump.txt");
  ASSERT_EQ(std::system(("h5dump -H '" + file + "' > '" + out + "' 2>&1").c_str()), 0) << read_text(out);
  const std::string dump = read_text(out);
  EXPECT_NE(dump.find("blocks.0.attn.qkv.weight"), std::string::npos) << dump;
  EXPECT_NE(dump.find("\"complete\""), std::string::npos) << dump;
}

}  // namespace
}  // namespace seqtrain::train
