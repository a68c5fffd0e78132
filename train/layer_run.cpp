// `seqtrain layer-run`: reading a case, running the layer, writing its outputs (format in layer_run.h).
#include "train/layer_run.h"

#include <hdf5.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "layers/mixer.h"
#include "models/language_model.h"
#include "train/config.h"
#include "train/hdf5_io.h"

namespace seqtrain::train {
namespace {

namespace fs = std::filesystem;

constexpr size_t kListedNames = 5;  // how many missing / unexpected names an error spells out

// ---------------------------------------------------------------------------------------------
// Case strings (the shared HDF5 access is in train/hdf5_io.h)
// ---------------------------------------------------------------------------------------------

using namespace hdf5;

std::string read_text(hid_t obj, bool is_dataset, const H5Site& at) {
  std::optional<std::string> s = hdf5::read_string(obj, is_dataset, at);
  if (!s) ST_THROW(at.file, ": ", at.object, " is not a string");
  return *s;
}

std::string read_attr_str(hid_t obj, const char* name, const std::string& file) {
  const H5Site at{file, str_cat("attribute '", name, "'")};
  if (H5_CALL(at, H5Aexists, obj, name) <= 0) ST_THROW(file, ": the root group has no attribute '", name, "'");
  H5Id attr(H5_CALL(at, H5Aopen, obj, name, H5P_DEFAULT), H5Aclose);
  return read_text(attr, false, at);
}

std::string list_names(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < kListedNames; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > kListedNames) out += str_cat(", ... (", names.size() - kListedNames, " more)");
  return out;
}

// ---------------------------------------------------------------------------------------------
// The case
// ---------------------------------------------------------------------------------------------

H5Id open_case(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) ST_THROW("case ", path, " does not exist or is not a file");
  const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) ST_THROW("cannot open case ", path, " as HDF5: ", hdf5_reason());
  return {id, H5Fclose};
}

// The case's config as a whole run config: text with a top-level `model:` key is one already; a
// bare mapping of model settings is parsed and re-emitted under `model:`, which is valid whatever
// the text's style (indenting the text would not be: e.g. a `---` document marker). Line numbers in
// messages then count in the re-emitted text; the key path names the culprit either way.
Config parse_case_config(const std::string& text, const std::string& source) {
  YAML::Node node;
  try {
    node = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    ST_THROW(source, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg);
  }
  const YAML::Node& root = node;  // const: operator[] must not insert the key it looks up
  if (root.IsMap() && root["model"]) return parse_config(text, source);
  if (!root.IsNull() && !root.IsMap())
    ST_THROW(source, ": expected a mapping of model settings (e.g. {d_model: 8, pattern: [attn]}) or a `model:` "
             "section, got a ", root.IsSequence() ? "sequence" : "scalar");
  YAML::Emitter out;
  out << YAML::BeginMap << YAML::Key << "model" << YAML::Value;
  if (root.IsNull()) {
    out << YAML::Flow << YAML::BeginMap << YAML::EndMap;
  } else {
    out << root;
  }
  out << YAML::EndMap;
  return parse_config(std::string(out.c_str()) + "\n", source + " (read as the model: section)");
}

DType parse_case_dtype(const std::string& name, const std::string& path) {
  if (name == "f32") return DType::F32;
  if (name == "f64") return DType::F64;
  ST_THROW(path, ": attribute 'dtype' is '", name, "'; expected f32 or f64");
}

Device parse_case_device(const std::string& name, const std::string& path) {
  Device d;
  try {
    d = parse_device(name);
  } catch (const Error&) {
    ST_THROW(path, ": attribute 'device' is '", name, "'; expected cpu or cuda (or cuda:N)");
  }
  if (d.is_cuda() && d.index >= cuda_device_count())
    ST_THROW(path, ": attribute 'device' is '", name, "' but ", cuda_device_count(),
             " CUDA device(s) are available (a CPU-only build, or no GPU visible); write the case with device cpu");
  return d;
}

// The layer under test and how to call it.
struct Layer {
  std::shared_ptr<Module> module;
  std::function<Tensor(const Tensor&)> forward;
  std::string mixer;
};

Layer build_layer(const std::string& layer, const ModelConfig& model, const std::string& path) {
  if (layer == "block") {
    const std::vector<std::string>& types = model.layers.empty() ? model.pattern : model.layers;
    ST_CHECK(!types.empty(), path, ": a block case needs a mixer type in the config's pattern or layers");
    auto block = std::make_shared<Block>(model, types.front(), 0);
    return {block, [block](const Tensor& x) { return block->forward(x); }, types.front()};
  }
  if (!mixer_registry().count(layer)) {
    std::string known;
    for (const auto& [name, factory] : mixer_registry()) known += ", " + name;
    ST_THROW(path, ": attribute 'layer' is '", layer, "'; expected block", known);
  }
  // out_std only sets an init that the loaded weights replace.
  std::shared_ptr<Mixer> mixer = make_mixer(layer, MixerArgs{model, 0, model.init_std});
  return {mixer, [mixer](const Tensor& x) { return mixer->forward(x); }, layer};
}

// Replaces every parameter with the case's value as a leaf of `dtype` on `device`: for f64 the
// parameters themselves are f64 (the f32 master weights would round them), and the layers' casts
// to the compute dtype are then no-ops. Checks every name and shape before reading any value.
int64_t load_parameters(hid_t file, const std::string& path, const std::string& layer, Module& module, DType dtype,
                        Device device) {
  if (!has_link(file, "params", {path, "/"})) ST_THROW(path, " has no group /params (one dataset per parameter)");
  const H5Site group_site{path, "group '/params'"};
  H5Id params = open_group(file, "params", group_site);
  std::vector<NamedParameter> named = module.named_parameters();
  std::vector<std::string> mismatched, missing, unexpected;
  std::set<std::string> names;
  for (const NamedParameter& np : named) {
    names.insert(np.name);
    const H5Site at{path, "dataset '/params/" + np.name + "'"};
    if (!has_link(params, np.name, at)) {
      missing.push_back(np.name);
      continue;
    }
    H5Id dset = open_dataset(params, np.name, at);
    const Shape stored = dataset_shape(dset, at);
    if (!is_float_dataset(dset, at)) {
      mismatched.push_back(np.name + " is not a float dataset");
    } else if (stored != np.param->value.shape()) {
      mismatched.push_back(str_cat(np.name, " is ", shape_str(stored), " in the case but ",
                                   shape_str(np.param->value.shape()), " in the layer"));
    }
  }
  for (const std::string& name : link_names(params, LinkOrder::Name, group_site))
    if (!names.count(name)) unexpected.push_back(name);
  if (!mismatched.empty() || !missing.empty() || !unexpected.empty()) {
    std::string problems;
    auto add = [&](const std::string& part) { problems += (problems.empty() ? "" : "; ") + part; };
    if (!mismatched.empty()) add(str_cat("wrong shape (", mismatched.size(), "): ", list_names(mismatched)));
    if (!missing.empty()) add(str_cat("missing from /params (", missing.size(), "): ", list_names(missing)));
    if (!unexpected.empty()) add(str_cat("not parameters of the layer (", unexpected.size(), "): ", list_names(unexpected)));
    ST_THROW("case ", path, " does not fit layer '", layer, "' as its config builds it: ", problems,
             " (names and shapes: docs/layers.md)");
  }
  for (const NamedParameter& np : named) {
    const H5Site at{path, "dataset '/params/" + np.name + "'"};
    H5Id dset = open_dataset(params, np.name, at);
    Tensor value = read_tensor(dset, DType::F64, at).to(dtype).to(device);
    value.set_requires_grad(true);
    np.param->value = value;
  }
  return int64_t(named.size());
}

// inputs/<name> as a tensor of `dtype` on `device`; undefined when absent and optional.
Tensor read_input(hid_t file, const std::string& path, const std::string& name, bool required, DType dtype,
                  Device device) {
  const std::string object = "/inputs/" + name;
  if (!has_link(file, "inputs", {path, "/"})) {
    if (required) ST_THROW(path, " has no group /inputs (with dataset x [B, T, D])");
    return Tensor();
  }
  const H5Site group_site{path, "group '/inputs'"};
  H5Id inputs = open_group(file, "inputs", group_site);
  const H5Site at{path, "dataset '" + object + "'"};
  if (!has_link(inputs, name, at)) {
    if (required) ST_THROW(path, " has no dataset ", object);
    return Tensor();
  }
  H5Id dset = open_dataset(inputs, name, at);
  if (!is_float_dataset(dset, at)) ST_THROW(path, ": ", object, " is not a float dataset");
  return read_tensor(dset, DType::F64, at).to(dtype).to(device);
}

void write_outputs(const std::string& out_path, const LayerRunSummary& s, const Tensor& y, const Tensor& grad_x,
                   const std::vector<NamedParameter>& params) {
  const H5Site root{out_path, "/"};
  H5Id file(H5Fcreate(out_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
  if (file < 0) ST_THROW("cannot create ", out_path, ": ", hdf5_reason());
  write_attr_str(file, "layer", s.layer, out_path);
  write_attr_str(file, "dtype", dtype_name(s.dtype), out_path);
  write_attr_str(file, "device", s.device.str(), out_path);
  {
    H5Id outputs = create_group(file, "outputs", {out_path, "group '/outputs'"});
    write_tensor(outputs, "y", y, s.dtype, {out_path, "dataset '/outputs/y'"});
  }
  if (s.backward) {
    H5Id grads = create_group(file, "grads", {out_path, "group '/grads'"});
    write_tensor(grads, "x", grad_x, s.dtype, {out_path, "dataset '/grads/x'"});
    H5Id group = create_group(grads, "params", {out_path, "group '/grads/params'"});
    for (const NamedParameter& np : params) {
      const Tensor& value = np.param->value;
      // No gradient reached it (e.g. a bias the upstream gradient does not depend on): zeros.
      const Tensor grad = value.grad().defined() ? value.grad() : Tensor::zeros(value.shape(), s.dtype);
      write_tensor(group, np.name, grad, s.dtype, {out_path, "dataset '/grads/params/" + np.name + "'"});
    }
  }
  file.close(root, "H5Fclose");
}

}  // namespace

LayerRunSummary run_layer_case(const std::string& case_path, const std::string& out_path) {
  QuietHdf5 quiet;
  H5Id file = open_case(case_path);
  LayerRunSummary s;
  s.layer = read_attr_str(file, "layer", case_path);
  s.dtype = parse_case_dtype(read_attr_str(file, "dtype", case_path), case_path);
  s.device = parse_case_device(read_attr_str(file, "device", case_path), case_path);

  const H5Site config_site{case_path, "dataset '/config'"};
  if (!has_link(file, "config", {case_path, "/"}))
    ST_THROW(case_path, " has no dataset /config (the layer's YAML settings, e.g. 'model: {d_model: 8}')");
  H5Id config_dset = open_dataset(file, "config", config_site);
  const Config config = parse_case_config(read_text(config_dset, true, config_site), case_path + ":/config");

  Layer layer = build_layer(s.layer, config.model, case_path);
  s.mixer = layer.mixer;
  s.parameters = load_parameters(file, case_path, s.layer, *layer.module, s.dtype, s.device);

  Tensor x = read_input(file, case_path, "x", true, s.dtype, s.device);
  const int64_t D = config.model.d_model;
  if (x.dim() != 3 || x.size(2) != D)
    ST_THROW(case_path, ": /inputs/x is ", shape_str(x.shape()), "; expected [B, T, ", D, "] (d_model ", D, ")");
  Tensor grad_y = read_input(file, case_path, "grad_y", false, s.dtype, s.device);
  s.backward = grad_y.defined();
  if (s.backward && grad_y.shape() != x.shape())
    ST_THROW(case_path, ": /inputs/grad_y is ", shape_str(grad_y.shape()), "; expected the shape of y, ",
             shape_str(x.shape()));
  if (s.backward) x.set_requires_grad(true);

  Tensor y = layer.forward(x);
  if (s.backward) y.backward(grad_y);
  Tensor grad_x = s.backward && x.grad().defined() ? x.grad() : Tensor::zeros(x.shape(), s.dtype);

  const std::vector<NamedParameter> params = layer.module->named_parameters();
  try {
    write_outputs(out_path, s, y, grad_x, params);
  } catch (...) {
    std::remove(out_path.c_str());  // a partial output would pass for a result
    throw;
  }
  return s;
}

}  // namespace seqtrain::train
