#include "train/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "train/hdf5_io.h"

namespace seqtrain::train {
namespace {

namespace fs = std::filesystem;

constexpr const char* kFormatName = "seqtrain-checkpoint";
constexpr const char* kLatestName = "latest";
constexpr size_t kListedNames = 5;  // how many missing / unexpected names an error spells out

// ---------------------------------------------------------------------------------------------
// Checkpoint attributes and strings (the shared HDF5 access is in train/hdf5_io.h)
// ---------------------------------------------------------------------------------------------

using namespace hdf5;

void write_attr_i64(hid_t obj, const char* name, int64_t v, const std::string& file) {
  write_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v, {file, str_cat("attribute '", name, "'")});
}

void write_attr_u64(hid_t obj, const char* name, uint64_t v, const std::string& file) {
  write_attr(obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v, {file, str_cat("attribute '", name, "'")});
}

void write_attr_f64(hid_t obj, const char* name, double v, const std::string& file) {
  write_attr(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v, {file, str_cat("attribute '", name, "'")});
}

H5Id open_attr(hid_t obj, const char* name, const H5Site& at) {
  if (H5_CALL(at, H5Aexists, obj, name) <= 0) ST_THROW(at.file, " has no attribute '", name, "'");
  return {H5_CALL(at, H5Aopen, obj, name, H5P_DEFAULT), H5Aclose};
}

// Read through a native memory type; HDF5 converts, and fails on a non-numeric attribute.
template <typename T>
T read_attr_number(hid_t obj, const char* name, hid_t mem_type, const std::string& file) {
  const H5Site at{file, str_cat("attribute '", name, "'")};
  H5Id attr = open_attr(obj, name, at);
  T v{};
  H5_CALL(at, H5Aread, attr, mem_type, &v);
  return v;
}

std::string read_text(hid_t obj, bool is_dataset, const H5Site& at) {
  std::optional<std::string> s = hdf5::read_string(obj, is_dataset, at);
  if (!s) ST_THROW(at.object, " in ", at.file, " is not a string");
  return *s;
}

std::string read_attr_str(hid_t obj, const char* name, const std::string& file) {
  const H5Site at{file, str_cat("attribute '", name, "'")};
  H5Id attr = open_attr(obj, name, at);
  return read_text(attr, false, at);
}

// Fixed-length (NUL-padded) UTF-8: the text can exceed the attribute size limit, and fixed-length
// strings stay writable by a later parallel-HDF5 writer (ecosystem.md §3.5).
void write_text_dataset(hid_t parent, const char* name, const std::string& text, const std::string& file) {
  const H5Site at{file, str_cat("dataset '/", name, "'")};
  std::string padded = text.empty() ? std::string(1, '\0') : text;
  H5Id type = utf8_string_type(padded.size(), at);
  H5_CALL(at, H5Tset_strpad, type, H5T_STR_NULLPAD);
  H5Id space = scalar_space(at);
  H5Id dset(H5_CALL(at, H5Dcreate2, parent, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
            H5Dclose);
  H5_CALL(at, H5Dwrite, dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, padded.data());
}

// ---------------------------------------------------------------------------------------------
// Files: names, POSIX durability, opening and validating
// ---------------------------------------------------------------------------------------------

std::string step_file_name(int64_t step) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "step-%08lld.h5", static_cast<long long>(step));
  return buf;
}

// The step of a committed checkpoint's file name "step-<digits>.h5"; empty for anything else
// (including *.tmp and names with a folder part).
std::optional<int64_t> parse_step_file_name(const std::string& name) {
  const std::string prefix = "step-", suffix = ".h5";
  if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return std::nullopt;
  const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoll(digits);
}

// Committed checkpoints of `dir`, newest step first.
std::vector<std::pair<int64_t, std::string>> committed_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (auto step = parse_step_file_name(name); step && entry.is_regular_file(ec)) found.emplace_back(*step, name);
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return found;
}

std::string errno_text() { return std::strerror(errno); }

// HDF5 has no fsync; the data reaches the disk only through the closed file's descriptor.
void fsync_path(const std::string& path, bool is_dir) {
  const int fd = ::open(path.c_str(), is_dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) ST_THROW("cannot open ", path, " to fsync it: ", errno_text());
  const int rc = ::fsync(fd);
  const std::string why = rc != 0 ? errno_text() : "";
  ::close(fd);
  if (rc != 0) ST_THROW("fsync of ", path, " failed: ", why);
}

void rename_durably(const std::string& from, const std::string& to, const std::string& dir) {
  if (std::rename(from.c_str(), to.c_str()) != 0)
    ST_THROW("cannot rename ", from, " to ", to, ": ", errno_text());
  fsync_path(dir, true);
}

// Writes `text` to `path` with the same tmp + fsync + rename protocol as the checkpoint itself.
void write_text_durably(const std::string& path, const std::string& text, const std::string& dir) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) ST_THROW("cannot create ", tmp, ": ", errno_text());
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string why = errno_text();
      ::close(fd);
      ST_THROW("cannot write ", tmp, ": ", why);
    }
    done += size_t(n);
  }
  if (::fsync(fd) != 0) {
    const std::string why = errno_text();
    ::close(fd);
    ST_THROW("fsync of ", tmp, " failed: ", why);
  }
  if (::close(fd) != 0) ST_THROW("cannot close ", tmp, ": ", errno_text());
  rename_durably(tmp, path, dir);
}

// Opens a checkpoint read-only and checks that it is a complete seqtrain checkpoint this build
// can read; throws naming the file and what is wrong.
H5Id open_checkpoint(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) ST_THROW("checkpoint ", path, " does not exist or is not a file");
  const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) ST_THROW("cannot open checkpoint ", path, " as HDF5 (truncated or not HDF5?): ", hdf5_reason());
  H5Id file(id, H5Fclose);
  const H5Site at{path, "/"};
  if (H5_CALL(at, H5Aexists, file, "format") <= 0)
    ST_THROW(path, " is not a seqtrain checkpoint: the root group has no 'format' attribute");
  const std::string format = read_attr_str(file, "format", path);
  if (format != kFormatName)
    ST_THROW(path, " is not a seqtrain checkpoint: format is '", format, "', expected '", kFormatName, "'");
  if (H5_CALL(at, H5Aexists, file, "complete") <= 0 ||
      read_attr_number<int64_t>(file, "complete", H5T_NATIVE_INT64, path) != 1)
    ST_THROW("checkpoint ", path, " is incomplete (no completion marker): its write was interrupted");
  const auto version = read_attr_number<int64_t>(file, "format_version", H5T_NATIVE_INT64, path);
  if (version < 1 || version > kCheckpointFormatVersion)
    ST_THROW("checkpoint ", path, " has format version ", version, "; this build reads versions 1..",
             kCheckpointFormatVersion);
  return file;
}

bool is_complete_checkpoint(const std::string& path) {
  try {
    open_checkpoint(path);
    return true;
  } catch (const Error&) {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Save
// ---------------------------------------------------------------------------------------------

void check_name(const std::string& name, const char* what) {
  ST_CHECK(!name.empty() && name != "." && name.find('/') == std::string::npos, "save_checkpoint: ", what,
           " name '", name, "' must be non-empty and contain no '/'");
}

void check_savable(const Tensor& t, const std::string& label) {
  ST_CHECK(t.defined(), "save_checkpoint: ", label, " is an undefined tensor");
  ST_CHECK(is_floating(t.dtype()), "save_checkpoint: ", label, " is ", t.desc(), ", expected a floating dtype");
}

// Everything a save could reject is rejected before a file is created.
void validate_for_save(const CheckpointMeta& meta, const std::vector<NamedTensor>& params,
                       const std::vector<OptimizerSlot>& optim) {
  ST_CHECK(meta.step >= 0, "save_checkpoint: step is ", meta.step, ", expected >= 0");
  std::map<std::string, Shape> shapes;
  for (const NamedTensor& p : params) {
    check_name(p.name, "parameter");
    check_savable(p.value, "parameter '" + p.name + "'");
    ST_CHECK(shapes.emplace(p.name, p.value.shape()).second, "save_checkpoint: parameter '", p.name,
             "' appears twice");
  }
  std::set<std::string> slots;
  for (const OptimizerSlot& s : optim) {
    check_name(s.name, "optimizer slot");
    ST_CHECK(slots.insert(s.name).second, "save_checkpoint: optimizer slot '", s.name, "' appears twice");
    auto it = shapes.find(s.name);
    ST_CHECK(it != shapes.end(), "save_checkpoint: optimizer slot '", s.name, "' names no parameter");
    check_savable(s.m, "optimizer m of '" + s.name + "'");
    check_savable(s.v, "optimizer v of '" + s.name + "'");
    ST_CHECK(s.m.shape() == it->second && s.v.shape() == it->second, "save_checkpoint: optimizer slot '", s.name,
             "' has m ", shape_str(s.m.shape()), " and v ", shape_str(s.v.shape()), ", expected the parameter's ",
             shape_str(it->second));
  }
}

void write_checkpoint_file(const std::string& path, const CheckpointMeta& meta,
                           const std::vector<NamedTensor>& params, const std::vector<OptimizerSlot>& optim) {
  const H5Site root{path, "/"};
  // CLOSE_SEMI: H5Fclose fails (instead of silently deferring the flush) if an object were left
  // open, so a returned close means the file is complete on the page cache.
  H5Id fapl(H5_CALL(root, H5Pcreate, H5P_FILE_ACCESS), H5Pclose);
  H5_CALL(root, H5Pset_fclose_degree, fapl, H5F_CLOSE_SEMI);
  H5Id file(H5_CALL(root, H5Fcreate, path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl), H5Fclose);

  write_attr_str(file, "format", kFormatName, path);
  write_attr_i64(file, "format_version", kCheckpointFormatVersion, path);
  write_attr_i64(file, "step", meta.step, path);
  write_attr_i64(file, "tokens_seen", meta.tokens_seen, path);
  write_attr_i64(file, "data_position", meta.data_position, path);
  write_attr_u64(file, "rng_seed", meta.seed, path);
  write_attr_u64(file, "rng_offset", meta.rng_offset, path);
  write_attr_f64(file, "lr", meta.lr, path);
  write_attr_str(file, "layers", meta.layers, path);
  write_attr_str(file, "mesh", meta.mesh, path);
  write_text_dataset(file, "config", meta.config_yaml, path);
  {
    H5Id model = create_group(file, "model", {path, "group '/model'"});
    for (const NamedTensor& p : params)
      write_tensor(model, p.name, p.value, DType::F32, {path, "dataset '/model/" + p.name + "'"});
  }
  if (!optim.empty()) {
    H5Id group = create_group(file, "optim", {path, "group '/optim'"});
    for (const OptimizerSlot& s : optim) {
      const std::string object = "/optim/" + s.name;
      H5Id slot = create_group(group, s.name, {path, "group '" + object + "'"});
      write_tensor(slot, "m", s.m, DType::F32, {path, "dataset '" + object + "/m'"});
      write_tensor(slot, "v", s.v, DType::F32, {path, "dataset '" + object + "/v'"});
    }
  }
  write_attr_i64(file, "complete", 1, path);  // the completion marker: always the last write
  file.close(root, "H5Fclose");
}

// Deletes all but the newest `keep` committed checkpoints (never `just_written`), and leftover
// step-*.h5.tmp from interrupted writes: only after the new checkpoint is committed.
void prune_checkpoints(const std::string& dir, int64_t keep, const std::string& just_written) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0 &&
        parse_step_file_name(name.substr(0, name.size() - 4))) {
      std::error_code rm;
      fs::remove(entry.path(), rm);
      if (rm) ST_THROW("cannot delete the leftover ", entry.path().string(), ": ", rm.message());
    }
  }
  if (ec) ST_THROW("cannot list checkpoint folder ", dir, ": ", ec.message());
  if (keep <= 0) return;
  const auto committed = committed_checkpoints(dir);
  for (size_t i = size_t(keep); i < committed.size(); ++i) {
    if (committed[i].second == just_written) continue;
    const fs::path old = fs::path(dir) / committed[i].second;
    std::error_code rm;
    fs::remove(old, rm);
    if (rm) ST_THROW("cannot delete old checkpoint ", old.string(), " (keep = ", keep, "): ", rm.message());
  }
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

std::string list_names(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < kListedNames; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > kListedNames) out += str_cat(", ... (", names.size() - kListedNames, " more)");
  return out;
}

// One destination tensor and where it lives in the file.
struct LoadTarget {
  std::string object;  // e.g. "/optim/blocks.0.w/v"
  Tensor dest;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

std::string save_checkpoint(const std::string& dir, const CheckpointMeta& meta,
                            const std::vector<NamedTensor>& params, const std::vector<OptimizerSlot>& optim,
                            int64_t keep) {
  QuietHdf5 quiet;
  validate_for_save(meta, params, optim);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) ST_THROW("cannot create checkpoint folder ", dir, ": ", ec.message());

  const std::string name = step_file_name(meta.step);
  const std::string path = (fs::path(dir) / name).string();
  const std::string tmp = path + ".tmp";
  try {
    write_checkpoint_file(tmp, meta, params, optim);
    fsync_path(tmp, false);
  } catch (...) {
    std::remove(tmp.c_str());  // a partial file helps nobody; the previous checkpoint stays latest
    throw;
  }
  rename_durably(tmp, path, dir);
  write_text_durably((fs::path(dir) / kLatestName).string(), name + "\n", dir);
  prune_checkpoints(dir, keep, name);
  return path;
}

std::optional<std::string> find_latest_checkpoint(const std::string& dir) {
  QuietHdf5 quiet;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return std::nullopt;
  std::ifstream pointer(fs::path(dir) / kLatestName);
  std::string named;
  if (pointer && std::getline(pointer, named) && parse_step_file_name(named)) {
    const std::string path = (fs::path(dir) / named).string();
    if (is_complete_checkpoint(path)) return path;
  }
  for (const auto& [step, name] : committed_checkpoints(dir)) {
    const std::string path = (fs::path(dir) / name).string();
    if (is_complete_checkpoint(path)) return path;
  }
  return std::nullopt;
}

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  QuietHdf5 quiet;
  H5Id file = open_checkpoint(path);
  CheckpointMeta meta;
  meta.format_version = int(read_attr_number<int64_t>(file, "format_version", H5T_NATIVE_INT64, path));
  meta.step = read_attr_number<int64_t>(file, "step", H5T_NATIVE_INT64, path);
  meta.tokens_seen = read_attr_number<int64_t>(file, "tokens_seen", H5T_NATIVE_INT64, path);
  meta.data_position = read_attr_number<int64_t>(file, "data_position", H5T_NATIVE_INT64, path);
  meta.seed = read_attr_number<uint64_t>(file, "rng_seed", H5T_NATIVE_UINT64, path);
  meta.rng_offset = read_attr_number<uint64_t>(file, "rng_offset", H5T_NATIVE_UINT64, path);
  meta.lr = read_attr_number<double>(file, "lr", H5T_NATIVE_DOUBLE, path);
  meta.layers = read_attr_str(file, "layers", path);
  meta.mesh = read_attr_str(file, "mesh", path);
  const H5Site at{path, "dataset '/config'"};
  H5Id config = open_dataset(file, "config", at);
  meta.config_yaml = read_text(config, true, at);
  return meta;
}

void load_checkpoint(const std::string& path, const std::vector<NamedTensor>& params,
                     const std::vector<OptimizerSlot>& optim) {
  QuietHdf5 quiet;
  H5Id file = open_checkpoint(path);
  const H5Site root{path, "/"};

  // Pass 1: check every name and shape; nothing is modified until all of them fit.
  std::vector<LoadTarget> targets;
  std::vector<std::string> mismatched, missing, unexpected;
  auto expect = [&](hid_t group, const std::string& name, const std::string& object, const Tensor& dest,
                    const std::string& label) {
    const H5Site at{path, "dataset '" + object + "'"};
    if (!has_link(group, name, at)) {
      missing.push_back(label);
      return;
    }
    H5Id dset = open_dataset(group, name, at);
    const Shape saved = dataset_shape(dset, at);
    if (!is_float_dataset(dset, at)) {
      mismatched.push_back(label + " is not a float dataset");
    } else if (saved != dest.shape()) {
      mismatched.push_back(str_cat(label, " is ", shape_str(saved), " in the checkpoint but ",
                                   shape_str(dest.shape()), " in the model"));
    } else {
      targets.push_back({object, dest});
    }
  };

  std::set<std::string> param_names;
  if (!has_link(file, "model", root)) ST_THROW("checkpoint ", path, " has no /model group");
  {
    H5Id model = open_group(file, "model", {path, "group '/model'"});
    for (const NamedTensor& p : params) {
      ST_CHECK(p.value.defined(), "load_checkpoint: parameter '", p.name, "' is an undefined tensor");
      param_names.insert(p.name);
      expect(model, p.name, "/model/" + p.name, p.value, p.name);
    }
    for (const std::string& name : link_names(model, LinkOrder::CreationWhereTracked, {path, "group '/model'"}))
      if (!param_names.count(name)) unexpected.push_back(name);
  }
  if (!optim.empty()) {
    if (!has_link(file, "optim", root))
      ST_THROW("checkpoint ", path, " holds no optimizer state (/optim); load the model only, or resume from a "
               "checkpoint written during training");
    H5Id group = open_group(file, "optim", {path, "group '/optim'"});
    std::set<std::string> slot_names;
    for (const OptimizerSlot& s : optim) {
      ST_CHECK(s.m.defined() && s.v.defined(), "load_checkpoint: optimizer slot '", s.name,
               "' has an undefined tensor");
      slot_names.insert(s.name);
      const std::string object = "/optim/" + s.name;
      const H5Site at{path, "group '" + object + "'"};
      if (!has_link(group, s.name, at)) {
        missing.push_back("optim/" + s.name);
        continue;
      }
      H5Id slot = open_group(group, s.name, at);
      expect(slot, "m", object + "/m", s.m, "optim/" + s.name + "/m");
      expect(slot, "v", object + "/v", s.v, "optim/" + s.name + "/v");
    }
    for (const std::string& name : link_names(group, LinkOrder::CreationWhereTracked, {path, "group '/optim'"}))
      if (!slot_names.count(name)) unexpected.push_back("optim/" + name);
  }

  if (!mismatched.empty() || !missing.empty() || !unexpected.empty()) {
    std::string problems;
    auto add = [&](const std::string& part) { problems += (problems.empty() ? "" : "; ") + part; };
    if (!mismatched.empty()) add(str_cat("shape mismatch (", mismatched.size(), "): ", list_names(mismatched)));
    if (!missing.empty()) add(str_cat("missing from the checkpoint (", missing.size(), "): ", list_names(missing)));
    if (!unexpected.empty()) add(str_cat("not in the model (", unexpected.size(), "): ", list_names(unexpected)));
    ST_THROW("checkpoint ", path, " does not fit this model (it was written for layers '",
             read_attr_str(file, "layers", path), "'): ", problems,
             ". Nothing was loaded; resume with the config it was written with, or use a fresh run folder");
  }

  // Pass 2: read each tensor as f32 on the host and convert into its destination.
  for (const LoadTarget& t : targets) {
    const H5Site at{path, "dataset '" + t.object + "'"};
    H5Id dset(H5_CALL(at, H5Dopen2, file, t.object.c_str(), H5P_DEFAULT), H5Dclose);
    Tensor dest = t.dest;
    dest.copy_(read_tensor(dset, DType::F32, at));
  }
}

std::string describe_checkpoint(const std::string& path) {
  const CheckpointMeta meta = read_checkpoint_meta(path);
  QuietHdf5 quiet;
  H5Id file = open_checkpoint(path);

  struct Row {
    std::string name, shape;
    int64_t numel;
    double rms;
  };
  std::vector<Row> rows;
  int64_t total = 0;
  {
    H5Id model = open_group(file, "model", {path, "group '/model'"});
    for (const std::string& name : link_names(model, LinkOrder::CreationWhereTracked, {path, "group '/model'"})) {
      const H5Site at{path, "dataset '/model/" + name + "'"};
      H5Id dset = open_dataset(model, name, at);
      Tensor t = read_tensor(dset, DType::F32, at);
      double sum_sq = 0;
      const float* p = t.data<float>();
      for (int64_t i = 0; i < t.numel(); ++i) sum_sq += double(p[i]) * p[i];
      rows.push_back({name, shape_str(t.shape()), t.numel(), t.numel() ? std::sqrt(sum_sq / double(t.numel())) : 0.0});
      total += t.numel();
    }
  }
  size_t optim_slots = 0;
  if (has_link(file, "optim", {path, "/"})) {
    H5Id optim = open_group(file, "optim", {path, "group '/optim'"});
    optim_slots = link_names(optim, LinkOrder::CreationWhereTracked, {path, "group '/optim'"}).size();
  }

  std::ostringstream os;
  os << "checkpoint     " << path << "\n"
     << "format         " << kFormatName << " v" << meta.format_version << " (complete)\n"
     << "step           " << meta.step << "\n"
     << "tokens seen    " << meta.tokens_seen << "\n"
     << "data position  " << meta.data_position << " samples\n"
     << "rng            seed " << meta.seed << ", offset " << meta.rng_offset << "\n"
     << "lr             " << std::scientific << std::setprecision(4) << meta.lr << std::defaultfloat << "\n"
     << "layers         " << meta.layers << "\n"
     << "mesh           " << meta.mesh << "\n"
     << "optimizer      "
     << (optim_slots ? str_cat("AdamW m, v for ", optim_slots, " of ", rows.size(), " parameters") : "none")
     << "\n";
  os << "config\n";
  std::istringstream config(meta.config_yaml);
  for (std::string line; std::getline(config, line);) os << "  " << line << "\n";

  size_t name_w = 4, shape_w = 5;
  for (const Row& r : rows) {
    name_w = std::max(name_w, r.name.size());
    shape_w = std::max(shape_w, r.shape.size());
  }
  os << "parameters     " << rows.size() << " tensors, " << total << " values ("
     << std::fixed << std::setprecision(2) << double(total) * 4 / (1 << 20) << " MiB as f32)\n"
     << std::defaultfloat;
  os << "  " << std::left << std::setw(int(name_w)) << "name" << "  " << std::setw(int(shape_w)) << "shape"
     << "  " << std::right << std::setw(12) << "numel" << "  " << std::setw(11) << "rms" << "\n";
  for (const Row& r : rows)
    os << "  " << std::left << std::setw(int(name_w)) << r.name << "  " << std::setw(int(shape_w)) << r.shape
       << "  " << std::right << std::setw(12) << r.numel << "  " << std::setw(11) << std::scientific
       << std::setprecision(4) << r.rms << std::defaultfloat << "\n";
  return os.str();
}

Tensor read_parameter_slice(const std::string& path, const std::string& name, int64_t dim, int64_t start,
                            int64_t count) {
  QuietHdf5 quiet;
  H5Id file = open_checkpoint(path);
  const H5Site at{path, "dataset '/model/" + name + "'"};
  H5Id model = open_group(file, "model", {path, "group '/model'"});
  if (name.find('/') != std::string::npos || !has_link(model, name, at))
    ST_THROW("checkpoint ", path, " has no parameter '", name, "'");
  H5Id dset = open_dataset(model, name, at);
  const Shape full = dataset_shape(dset, at);
  ST_CHECK(dim >= 0 && dim < int64_t(full.size()), "read_parameter_slice: dim ", dim, " is out of range for '",
           name, "' of shape ", shape_str(full), " in ", path);
  ST_CHECK(start >= 0 && count >= 0 && start + count <= full[size_t(dim)], "read_parameter_slice: rows [", start,
           ", ", start + count, ") of dim ", dim, " are outside '", name, "' of shape ", shape_str(full), " in ",
           path);
  Shape shape = full;
  shape[size_t(dim)] = count;
  Tensor out = Tensor::empty(shape, DType::F32);
  if (out.numel() == 0) return out;

  std::vector<hsize_t> offset(full.size(), 0), extent(full.begin(), full.end());
  offset[size_t(dim)] = hsize_t(start);
  extent[size_t(dim)] = hsize_t(count);
  H5Id file_space(H5_CALL(at, H5Dget_space, dset), H5Sclose);
  H5_CALL(at, H5Sselect_hyperslab, file_space, H5S_SELECT_SET, offset.data(), nullptr, extent.data(), nullptr);
  H5Id mem_space = simple_space(shape, at);
  H5_CALL(at, H5Dread, dset, H5T_NATIVE_FLOAT, mem_space, file_space, H5P_DEFAULT, out.data<float>());
  return out;
}

}  // namespace seqtrain::train
