// Config loading: YAML text -> Tree (our own node type: every node keeps its file and line) ->
// merge preset, run file and --set overrides -> typed structs, strictly -> consistency checks.
// Merging trees before typing lets every error name the file and line the offending value came from,
// whichever of the three it was. One field list per struct (fields() below) drives reading, writing
// and the set of valid keys, so they cannot drift apart.
#include "train/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <tuple>
#include <type_traits>
#include <utility>

#include "data/synthetic_tasks.h"
#include "layers/mixer.h"

namespace seqtrain::train {
namespace {

namespace fs = std::filesystem;

// Where a value came from: a line of a file, or a --set override (which has no lines).
struct Origin {
  std::string source;
  int line = 0;  // 1-based; 0 = the source as a whole
  std::string str() const { return line > 0 ? str_cat(source, ":", line) : source; }
};

[[noreturn]] void fail(const Origin& at, const std::string& key, const std::string& message) {
  throw ConfigError(str_cat(at.str(), ": ", key, ": ", message));
}

std::string join_key(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string join_list(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}


// "; did you mean 'x'?" for a near miss, else the whole list.
std::string suggestion(const std::string& name, const std::vector<std::string>& valid) {
  const std::string* best = nullptr;
  size_t best_distance = 0;
  for (const std::string& v : valid) {
    size_t d = edit_distance(name, v);
    if (!best || d < best_distance) best = &v, best_distance = d;
  }
  if (best && (best_distance <= 2 || best_distance * 3 <= name.size())) return "; did you mean '" + *best + "'?";
  return "; expected one of " + join_list(valid);
}

// A YAML node with the origin of every node and mapping key.
struct Tree {
  enum class Kind { Null, Scalar, Sequence, Map };
  struct Entry;

  Kind kind = Kind::Null;
  std::string scalar;
  bool plain = true;  // unquoted; a quoted "123" is a string, never a number
  std::vector<Tree> items;
  std::vector<Entry> entries;  // in file order
  Origin origin;

  const Entry* find(const std::string& key) const;
  Entry* find(const std::string& key) { return const_cast<Entry*>(std::as_const(*this).find(key)); }
};

struct Tree::Entry {
  std::string key;
  Origin key_origin;
  Tree value;
};

const Tree::Entry* Tree::find(const std::string& key) const {
  for (const Entry& e : entries)
    if (e.key == key) return &e;
  return nullptr;
}

std::string describe(const Tree& v) {
  switch (v.kind) {
    case Tree::Kind::Null: return "null";
    case Tree::Kind::Scalar: return v.plain ? "'" + v.scalar + "'" : "the quoted string \"" + v.scalar + "\"";
    case Tree::Kind::Sequence: return "a list";
    case Tree::Kind::Map: return "a mapping";
  }
  return "";
}

// `fallback` is where a node without a position (an empty value) is reported. Mapping keys are
// checked for duplicates here: yaml-cpp 0.7 keeps every entry of a repeated key in the node (a
// lookup returns the first), so walking each mapping's entries sees all of them.
Tree from_yaml(const YAML::Node& node, const Origin& fallback, const std::string& path) {
  Tree tree;
  tree.origin = fallback;
  if (fallback.line > 0 && node.Mark().line >= 0) tree.origin.line = node.Mark().line + 1;
  switch (node.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null:
      break;
    case YAML::NodeType::Scalar:
      tree.kind = Tree::Kind::Scalar;
      tree.scalar = node.Scalar();
      tree.plain = node.Tag() == "?";
      break;
    case YAML::NodeType::Sequence:
      tree.kind = Tree::Kind::Sequence;
      for (size_t i = 0; i < node.size(); ++i)
        tree.items.push_back(from_yaml(node[i], tree.origin, str_cat(path, "[", i, "]")));
      break;
    case YAML::NodeType::Map:
      tree.kind = Tree::Kind::Map;
      for (const auto& kv : node) {
        Tree key = from_yaml(kv.first, tree.origin, path);
        if (key.kind != Tree::Kind::Scalar)
          fail(key.origin, path.empty() ? "(top level)" : path, "mapping keys must be names, got " + describe(key));
        std::string key_path = join_key(path, key.scalar);
        if (const Tree::Entry* first = tree.find(key.scalar)) {
          fail(key.origin, key_path,
               first->key_origin.line > 0 ? str_cat("duplicate key (first at line ", first->key_origin.line, ")")
                                          : "duplicate key");
        }
        tree.entries.push_back({key.scalar, key.origin, from_yaml(kv.second, key.origin, key_path)});
      }
      break;
  }
  return tree;
}

Tree parse_yaml_file_text(const std::string& text, const std::string& source) {
  YAML::Node node;
  try {
    node = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(str_cat(source, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg));
  }
  Tree tree = from_yaml(node, Origin{source, 1}, "");
  if (tree.kind == Tree::Kind::Null) tree.kind = Tree::Kind::Map;  // an empty file: all defaults
  if (tree.kind != Tree::Kind::Map)
    throw ConfigError(str_cat(tree.origin.str(), ": expected a mapping of sections (run, model, ...), got ",
                              describe(tree)));
  return tree;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  if (!in || fs::is_directory(path, ec)) throw ConfigError("cannot open config file '" + path + "'");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Overlays `top` on `base`: mappings merge key by key (recursively), anything else replaces. An
// empty value over a mapping keeps the mapping: `model:` with nothing under it is an empty section.
void merge(Tree& base, Tree top) {
  if (base.kind == Tree::Kind::Map && top.kind == Tree::Kind::Map) {
    for (Tree::Entry& e : top.entries) {
      if (Tree::Entry* existing = base.find(e.key)) {
        existing->key_origin = e.key_origin;
        merge(existing->value, std::move(e.value));
      } else {
        base.entries.push_back(std::move(e));
      }
    }
  } else if (!(base.kind == Tree::Kind::Map && top.kind == Tree::Kind::Null)) {
    base = std::move(top);
  }
}

// "section.key=value" -> {section: {key: value}}, every node reporting the override itself.
Tree override_tree(const std::string& text) {
  Origin origin{"--set " + text, 0};
  size_t eq = text.find('=');
  std::vector<std::string> path;
  if (eq != std::string::npos) {
    std::string key = text.substr(0, eq);
    for (size_t start = 0;;) {
      size_t dot = key.find('.', start);
      path.push_back(key.substr(start, dot - start));
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
  }
  bool valid = !path.empty();
  for (const std::string& part : path)
    valid = valid && !part.empty() && std::all_of(part.begin(), part.end(), [](unsigned char c) {
              return std::isalnum(c) || c == '_';
            });
  if (!valid) throw ConfigError(origin.str() + ": expected section.key=value, e.g. --set model.d_model=512");

  YAML::Node value;
  try {
    value = YAML::Load(text.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    throw ConfigError(str_cat(origin.str(), ": cannot parse the value as YAML: ", e.msg));
  }
  Tree tree = from_yaml(value, origin, text.substr(0, eq));
  for (size_t i = path.size(); i-- > 0;) {
    Tree parent;
    parent.kind = Tree::Kind::Map;
    parent.origin = origin;
    parent.entries.push_back({path[i], origin, std::move(tree)});
    tree = std::move(parent);
  }
  return tree;
}

// ---- field lists: one per struct, in the order to_yaml writes them --------------------------------

// model.preset: YAML null (no preset) or a name; stored as an empty or non-empty string.
struct NullableString {
  std::string& value;
};

// model.overrides: layer index -> canonical override text (config.h).
struct LayerOverrides {
  std::map<int64_t, std::string>& value;
};

// The part of ModelConfig that model.overrides.<i> may set.
struct LayerSettings {
  ModelConfig& model;
};

template <typename V>
void fields(V& v, RunConfig& c) {
  v("name", c.name);
  v("dir", c.dir);
  v("seed", c.seed);
  v("device", c.device);
}
template <typename V>
void fields(V& v, MlpConfig& c) {
  v("type", c.type);
  v("mult", c.mult);
  v("hidden", c.hidden);
}
template <typename V>
void fields(V& v, AttnConfig& c) {
  v("n_heads", c.n_heads);
  v("n_kv_heads", c.n_kv_heads);
  v("pos", c.pos);
  v("window", c.window);
  v("rope_theta", c.rope_theta);
}
template <typename V>
void fields(V& v, SwaConfig& c) {
  v("window", c.window);
}
template <typename V>
void fields(V& v, MambaConfig& c) {
  v("d_state", c.d_state);
  v("d_conv", c.d_conv);
  v("expand", c.expand);
  v("dt_rank", c.dt_rank);
  v("dt_min", c.dt_min);
  v("dt_max", c.dt_max);
  v("dt_init_floor", c.dt_init_floor);
  v("conv_bias", c.conv_bias);
}
template <typename V>
void fields(V& v, Mamba2Config& c) {
  v("d_state", c.d_state);
  v("d_conv", c.d_conv);
  v("expand", c.expand);
  v("headdim", c.headdim);
  v("ngroups", c.ngroups);
  v("chunk_size", c.chunk_size);
  v("A_init_range", c.A_init_range);
  v("dt_min", c.dt_min);
  v("dt_max", c.dt_max);
  v("dt_init_floor", c.dt_init_floor);
  v("conv_bias", c.conv_bias);
}
template <typename V>
void fields(V& v, HedgehogConfig& c) {
  v("n_heads", c.n_heads);
  v("feature_dim", c.feature_dim);
  v("chunk", c.chunk);
  v("window", c.window);
}
template <typename V>
void fields(V& v, AarenConfig& c) {
  v("n_heads", c.n_heads);
}
template <typename V>
void fields(V& v, TitansConfig& c) {
  v("n_heads", c.n_heads);
  v("chunk", c.chunk);
  v("memory_depth", c.memory_depth);
  v("memory_expand", c.memory_expand);
  v("d_conv", c.d_conv);
  v("max_lr", c.max_lr);
  v("max_grad_norm", c.max_grad_norm);
  v("qk_norm", c.qk_norm);
  v("segment", c.segment);
  v("persistent_tokens", c.persistent_tokens);
}
template <typename V>
void fields(V& v, ModelConfig& c) {
  v("preset", NullableString{c.preset});
  v("vocab_size", c.vocab_size);
  v("vocab_pad_to", c.vocab_pad_to);
  v("d_model", c.d_model);
  v("n_layers", c.n_layers);
  v("max_seq_len", c.max_seq_len);
  v("pattern", c.pattern);
  v("layers", c.layers);
  v("code", c.code);
  v("norm", c.norm);
  v("norm_eps", c.norm_eps);
  v("mlp", c.mlp);
  v("attn", c.attn);
  v("swa", c.swa);
  v("mamba", c.mamba);
  v("mamba2", c.mamba2);
  v("hedgehog", c.hedgehog);
  v("aaren", c.aaren);
  v("titans", c.titans);
  v("tie_embeddings", c.tie_embeddings);
  v("bias", c.bias);
  v("init_std", c.init_std);
  v("overrides", LayerOverrides{c.overrides});
}
template <typename V>
void fields(V& v, LayerSettings& c) {
  v("attn", c.model.attn);
  v("swa", c.model.swa);
  v("mamba", c.model.mamba);
  v("mamba2", c.model.mamba2);
  v("hedgehog", c.model.hedgehog);
  v("aaren", c.model.aaren);
  v("titans", c.model.titans);
  v("mlp", c.model.mlp);
  v("norm_eps", c.model.norm_eps);
}
template <typename V>
void fields(V& v, MqarConfig& c) {
  v("num_kv_pairs", c.num_kv_pairs);
  v("power_a", c.power_a);
  v("random_non_queries", c.random_non_queries);
}
template <typename V>
void fields(V& v, SelectiveCopyConfig& c) {
  v("num_tokens", c.num_tokens);
}
template <typename V>
void fields(V& v, AssocRecallConfig& c) {
  v("train_labels", c.train_labels);
}
template <typename V>
void fields(V& v, PasskeyConfig& c) {
  v("digits", c.digits);
  v("depth", c.depth);
}
template <typename V>
void fields(V& v, TaskConfig& c) {
  v("name", c.name);
  v("vocab_size", c.vocab_size);
  v("eval_lengths", c.eval_lengths);
  v("mqar", c.mqar);
  v("selective_copy", c.selective_copy);
  v("assoc_recall", c.assoc_recall);
  v("passkey", c.passkey);
}
template <typename V>
void fields(V& v, DataConfig& c) {
  v("train", c.train);
  v("val", c.val);
  v("task", c.task);
}
template <typename V>
void fields(V& v, OptimizerConfig& c) {
  v("name", c.name);
  v("lr", c.lr);
  v("betas", c.betas);
  v("eps", c.eps);
  v("weight_decay", c.weight_decay);
  v("grad_clip", c.grad_clip);
}
template <typename V>
void fields(V& v, ScheduleConfig& c) {
  v("warmup_steps", c.warmup_steps);
  v("decay", c.decay);
  v("min_lr_ratio", c.min_lr_ratio);
}
template <typename V>
void fields(V& v, TrainingConfig& c) {
  v("seq_len", c.seq_len);
  v("micro_batch", c.micro_batch);
  v("batch_tokens", c.batch_tokens);
  v("steps", c.steps);
  v("precision", c.precision);
  v("eval_every", c.eval_every);
  v("eval_steps", c.eval_steps);
  v("recompute", c.recompute);
}
template <typename V>
void fields(V& v, CheckpointConfig& c) {
  v("every", c.every);
  v("keep", c.keep);
  v("resume", c.resume);
}
template <typename V>
void fields(V& v, LoggingConfig& c) {
  v("every", c.every);
}
template <typename V>
void fields(V& v, ParallelConfig& c) {
  v("dp", c.dp);
  v("tp", c.tp);
  v("cp", c.cp);
  v("zero", c.zero);
  v("bucket_mb", c.bucket_mb);
}
template <typename V>
void fields(V& v, Config& c) {
  v("run", c.run);
  v("model", c.model);
  v("data", c.data);
  v("optimizer", c.optimizer);
  v("schedule", c.schedule);
  v("training", c.training);
  v("checkpoint", c.checkpoint);
  v("logging", c.logging);
  v("parallel", c.parallel);
}

struct KeyLister {
  std::vector<std::string> keys;
  template <typename T>
  void operator()(const char* key, T&&) {
    keys.push_back(key);
  }
};

// A section is a struct with a field list; everything else is a value.
template <typename T, typename = void>
struct IsSection : std::false_type {};
template <typename T>
struct IsSection<T, std::void_t<decltype(fields(std::declval<KeyLister&>(), std::declval<T&>()))>>
    : std::true_type {};

// ---- writing -------------------------------------------------------------------------------------

// The shortest text that reads back to the same double; integral values keep a ".0" so they read
// as the numbers they are rather than as "1e+04".
std::string format_double(double x) {
  char text[40];
  if (x == std::trunc(x) && std::abs(x) < 1e15) {
    std::snprintf(text, sizeof text, "%.1f", x);
    return text;
  }
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, x);
    if (std::strtod(text, nullptr) == x) break;
  }
  return text;
}

struct Writer {
  YAML::Emitter& out;

  template <typename T>
  void operator()(const char* key, T&& value) {
    out << YAML::Key << key << YAML::Value;
    if constexpr (IsSection<std::decay_t<T>>::value) {
      out << YAML::BeginMap;
      fields(*this, value);
      out << YAML::EndMap;
    } else {
      write(value);
    }
  }

  void write(int64_t v) { out << std::to_string(v); }
  void write(int v) { out << std::to_string(v); }
  void write(uint64_t v) { out << std::to_string(v); }
  void write(double v) { out << format_double(v); }
  void write(bool v) { out << (v ? "true" : "false"); }
  void write(const std::string& v) { out << v; }
  void write(const NullableString& v) {
    if (v.value.empty()) out << YAML::Null;
    else out << v.value;
  }
  void write(const std::array<double, 2>& v) {
    out << YAML::Flow << YAML::BeginSeq << format_double(v[0]) << format_double(v[1]) << YAML::EndSeq;
  }
  void write(const std::vector<std::string>& v) {
    out << YAML::Flow << YAML::BeginSeq;
    for (const std::string& s : v) out << s;
    out << YAML::EndSeq;
  }
  void write(const std::vector<int64_t>& v) {
    out << YAML::Flow << YAML::BeginSeq;
    for (int64_t i : v) out << std::to_string(i);
    out << YAML::EndSeq;
  }
  void write(const LayerOverrides& v);  // with the overrides, below
};

// ---- reading values ------------------------------------------------------------------------------

// Where each value was set ("model.d_model" -> run.yaml:7); values left at their default report the
// run file as a whole.
struct Context {
  std::string source;
  std::map<std::string, Origin> origins;

  Origin where(const std::string& key) const {
    auto it = origins.find(key);
    return it == origins.end() ? Origin{source, 0} : it->second;
  }
};

template <typename T>
bool parse_integer(const Tree& v, T& out) {
  if (v.kind != Tree::Kind::Scalar || !v.plain) return false;
  const char* end = v.scalar.data() + v.scalar.size();
  auto [stop, ec] = std::from_chars(v.scalar.data(), end, out);
  return ec == std::errc() && stop == end;
}

void convert(const Tree& v, const std::string& key, int64_t& out) {
  if (!parse_integer(v, out)) fail(v.origin, key, "expected an integer, got " + describe(v));
}
void convert(const Tree& v, const std::string& key, int& out) {
  if (!parse_integer(v, out)) fail(v.origin, key, "expected an integer, got " + describe(v));
}
void convert(const Tree& v, const std::string& key, uint64_t& out) {
  if (!parse_integer(v, out)) fail(v.origin, key, "expected a non-negative integer, got " + describe(v));
}
void convert(const Tree& v, const std::string& key, double& out) {
  const std::string& s = v.scalar;
  bool ok = v.kind == Tree::Kind::Scalar && v.plain && !s.empty() &&
            (std::isdigit(static_cast<unsigned char>(s[0])) || s[0] == '-' || s[0] == '+' || s[0] == '.');
  if (ok) {
    char* end = nullptr;
    out = std::strtod(s.c_str(), &end);
    ok = end == s.c_str() + s.size() && std::isfinite(out);
  }
  if (!ok) fail(v.origin, key, "expected a number, got " + describe(v));
}
void convert(const Tree& v, const std::string& key, bool& out) {
  const std::string& s = v.scalar;
  bool is_true = s == "true" || s == "True" || s == "TRUE";
  bool is_false = s == "false" || s == "False" || s == "FALSE";
  if (v.kind != Tree::Kind::Scalar || !v.plain || !(is_true || is_false))
    fail(v.origin, key, "expected true or false, got " + describe(v));
  out = is_true;
}
void convert(const Tree& v, const std::string& key, std::string& out) {
  if (v.kind != Tree::Kind::Scalar) fail(v.origin, key, "expected a string, got " + describe(v));
  out = v.scalar;
}
void convert(const Tree& v, const std::string& key, NullableString out) {
  if (v.kind == Tree::Kind::Null) {
    out.value.clear();
    return;
  }
  if (v.kind != Tree::Kind::Scalar || v.scalar.empty())
    fail(v.origin, key, "expected a name or null, got " + describe(v));
  out.value = v.scalar;
}
void convert(const Tree& v, const std::string& key, std::array<double, 2>& out, Context& ctx) {
  if (v.kind != Tree::Kind::Sequence || v.items.size() != 2)
    fail(v.origin, key, "expected a list of 2 numbers like [0.9, 0.95], got " + describe(v));
  for (size_t i = 0; i < 2; ++i) {
    std::string item_key = str_cat(key, "[", i, "]");
    ctx.origins[item_key] = v.items[i].origin;
    convert(v.items[i], item_key, out[i]);
  }
}
void convert(const Tree& v, const std::string& key, std::vector<std::string>& out, Context& ctx) {
  if (v.kind != Tree::Kind::Sequence) fail(v.origin, key, "expected a list like [attn, mamba], got " + describe(v));
  out.clear();
  for (size_t i = 0; i < v.items.size(); ++i) {
    std::string item_key = str_cat(key, "[", i, "]");
    ctx.origins[item_key] = v.items[i].origin;
    convert(v.items[i], item_key, out.emplace_back());
  }
}
void convert(const Tree& v, const std::string& key, std::vector<int64_t>& out, Context& ctx) {
  if (v.kind != Tree::Kind::Sequence) fail(v.origin, key, "expected a list of integers like [512, 1024], got " + describe(v));
  out.clear();
  for (size_t i = 0; i < v.items.size(); ++i) {
    std::string item_key = str_cat(key, "[", i, "]");
    ctx.origins[item_key] = v.items[i].origin;
    convert(v.items[i], item_key, out.emplace_back());
  }
}
template <typename T>
void convert(const Tree& v, const std::string& key, T&& out, Context&) {
  convert(v, key, std::forward<T>(out));
}

void convert(const Tree& v, const std::string& key, LayerOverrides out, Context& ctx);

template <typename T>
void read_section(const Tree& map, const std::string& path, Context& ctx, T& out);

struct Reader {
  const Tree& map;
  const std::string& path;
  Context& ctx;

  template <typename T>
  void operator()(const char* key, T&& out) {
    const Tree::Entry* entry = map.find(key);
    if (!entry) return;
    std::string key_path = join_key(path, key);
    const Tree& value = entry->value;
    if constexpr (IsSection<std::decay_t<T>>::value) {
      if (value.kind == Tree::Kind::Null) return;  // `attn:` with nothing under it
      if (value.kind != Tree::Kind::Map) fail(value.origin, key_path, "expected a mapping of keys, got " + describe(value));
      read_section(value, key_path, ctx, out);
    } else {
      ctx.origins[key_path] = value.origin;
      convert(value, key_path, std::forward<T>(out), ctx);
    }
  }
};

// Unknown keys are reported before any value is read, so a misspelt key is named as such rather
// than as a missing value elsewhere.
template <typename T>
void read_section(const Tree& map, const std::string& path, Context& ctx, T& out) {
  KeyLister valid;
  fields(valid, out);
  for (const Tree::Entry& e : map.entries)
    if (std::find(valid.keys.begin(), valid.keys.end(), e.key) == valid.keys.end())
      fail(e.key_origin, join_key(path, e.key), "unknown key" + suggestion(e.key, valid.keys));
  Reader reader{map, path, ctx};
  fields(reader, out);
}

// ---- per-layer overrides -------------------------------------------------------------------------
// Each layer's override is read into a copy of the model with the same field lists as the model
// itself, so it gets the same strict conversion and did-you-mean; it is stored as the text that
// write_override makes of it (config.h) and re-read when a layer is built or the config written.

std::string override_key(int64_t layer) { return str_cat("model.overrides.", layer); }

// Reads an override mapping into `layer`. A model key outside the per-layer sections is named as
// such; any other unknown key gets the usual suggestion.
void read_layer_settings(const Tree& map, const std::string& path, Context& ctx, ModelConfig& layer) {
  LayerSettings settings{layer};
  KeyLister per_layer, model_keys;
  fields(per_layer, settings);
  fields(model_keys, layer);
  auto listed = [](const KeyLister& list, const std::string& key) {
    return std::find(list.keys.begin(), list.keys.end(), key) != list.keys.end();
  };
  for (const Tree::Entry& e : map.entries)
    if (!listed(per_layer, e.key) && listed(model_keys, e.key))
      fail(e.key_origin, join_key(path, e.key),
           "cannot be overridden per layer; expected one of " + join_list(per_layer.keys));
  read_section(map, path, ctx, settings);
}

// Writes the keys `given` sets, in field order, with the values read from it into the struct: any
// spelling of one override ("064", a block mapping, keys in another order) writes the same text.
struct GivenWriter {
  YAML::Emitter& out;
  const Tree& given;

  template <typename T>
  void operator()(const char* key, T&& value) {
    const Tree::Entry* entry = given.find(key);
    if (!entry) return;
    out << YAML::Key << key << YAML::Value;
    if constexpr (IsSection<std::decay_t<T>>::value) {
      out << YAML::BeginMap;
      if (entry->value.kind == Tree::Kind::Map) {
        GivenWriter inner{out, entry->value};
        fields(inner, value);
      }
      out << YAML::EndMap;
    } else {
      Writer{out}.write(value);
    }
  }
};

// `map` was read into `layer` by read_layer_settings.
void write_override(YAML::Emitter& out, const Tree& map, ModelConfig& layer) {
  LayerSettings settings{layer};
  GivenWriter writer{out, map};
  out << YAML::BeginMap;
  fields(writer, settings);
  out << YAML::EndMap;
}

void convert(const Tree& v, const std::string& key, LayerOverrides out, Context& ctx) {
  out.value.clear();
  if (v.kind == Tree::Kind::Null) return;
  if (v.kind != Tree::Kind::Map)
    fail(v.origin, key,
         "expected a mapping from layer index to settings like {3: {attn: {window: 64}}}, got " + describe(v));
  for (const Tree::Entry& e : v.entries) {
    // An index is written as an integer key or a string of digits; both read as the same layer.
    std::string given_key = join_key(key, e.key);
    int64_t layer = 0;
    bool digits = !e.key.empty() &&
                  std::all_of(e.key.begin(), e.key.end(), [](unsigned char c) { return std::isdigit(c); });
    if (!digits || std::from_chars(e.key.data(), e.key.data() + e.key.size(), layer).ec != std::errc())
      fail(e.key_origin, given_key, "expected a layer index (a non-negative integer), got '" + e.key + "'");
    if (out.value.count(layer))
      fail(e.key_origin, given_key, str_cat("a second override of layer ", layer, "; expected one"));
    ctx.origins[override_key(layer)] = e.key_origin;

    Tree map = e.value;
    if (map.kind == Tree::Kind::Null) map.kind = Tree::Kind::Map;  // `3:` with nothing under it
    if (map.kind != Tree::Kind::Map)
      fail(map.origin, given_key,
           "expected a mapping of layer settings like {attn: {window: 64}}, got " + describe(map));
    ModelConfig values;
    read_layer_settings(map, override_key(layer), ctx, values);
    YAML::Emitter text;
    text << YAML::Flow;
    write_override(text, map, values);
    out.value[layer] = text.c_str();
  }
}

// Stored override text -> its mapping (the text is ours, or a ModelConfig built in code).
Tree parse_override(int64_t layer, const std::string& text) {
  std::string key = override_key(layer);
  YAML::Node node;
  try {
    node = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(str_cat(key, ": cannot parse '", text, "' as YAML: ", e.msg));
  }
  Tree map = from_yaml(node, Origin{key, 0}, key);
  if (map.kind == Tree::Kind::Null) map.kind = Tree::Kind::Map;
  if (map.kind != Tree::Kind::Map)
    throw ConfigError(str_cat(key, ": expected a mapping of layer settings, got ", describe(map)));
  return map;
}

// The base model with layer `layer`'s override applied, unchecked; the copy has no overrides.
ModelConfig apply_override(const ModelConfig& base, int64_t layer) {
  ModelConfig out = base;
  out.overrides.clear();
  auto it = base.overrides.find(layer);
  if (it == base.overrides.end()) return out;
  Context ctx{override_key(layer), {}};
  read_layer_settings(parse_override(layer, it->second), override_key(layer), ctx, out);
  return out;
}

void Writer::write(const LayerOverrides& v) {
  if (v.value.empty()) out << YAML::Flow;  // "overrides: {}" on one line
  out << YAML::BeginMap;
  for (const auto& [layer, text] : v.value) {
    Tree map = parse_override(layer, text);
    ModelConfig values;
    Context ctx{override_key(layer), {}};
    read_layer_settings(map, override_key(layer), ctx, values);
    out << YAML::Key << std::to_string(layer) << YAML::Value;
    write_override(out, map, values);
  }
  out << YAML::EndMap;
}

// ---- presets -------------------------------------------------------------------------------------

std::vector<fs::path> preset_dirs(const std::optional<fs::path>& config_dir) {
  std::vector<fs::path> dirs;
  if (config_dir) dirs.push_back((*config_dir / ".." / "models").lexically_normal());
  dirs.push_back(fs::path("configs") / "models");
  dirs.push_back(fs::path(SEQTRAIN_SOURCE_DIR) / "configs" / "models");
  return dirs;
}

// Keys that say one thing two ways, the first winning when set: a run that gives the second must
// drop the preset's first, or the preset would silently override the run.
const std::pair<std::vector<std::string>, std::vector<std::string>> kPresetAlternatives[] = {
    {{"layers"}, {"pattern"}},
    {{"code"}, {"pattern"}},
    {{"code"}, {"layers"}},
    {{"mlp", "hidden"}, {"mlp", "mult"}},
};

const Tree* lookup(const Tree& map, const std::vector<std::string>& path) {
  const Tree* node = &map;
  for (const std::string& key : path) {
    const Tree::Entry* e = node->kind == Tree::Kind::Map ? node->find(key) : nullptr;
    if (!e) return nullptr;
    node = &e->value;
  }
  return node;
}

void erase(Tree& map, const std::vector<std::string>& path) {
  Tree* parent = const_cast<Tree*>(lookup(map, std::vector<std::string>(path.begin(), path.end() - 1)));
  if (!parent || parent->kind != Tree::Kind::Map) return;
  auto& entries = parent->entries;
  entries.erase(std::remove_if(entries.begin(), entries.end(), [&](const Tree::Entry& e) { return e.key == path.back(); }),
                entries.end());
}

// Replaces root.model by the named preset's model keys overlaid with root.model's.
void expand_preset(Tree& root, const std::optional<fs::path>& config_dir) {
  Tree::Entry* model = root.find("model");
  const Tree::Entry* preset = model && model->value.kind == Tree::Kind::Map ? model->value.find("preset") : nullptr;
  if (!preset || preset->value.kind == Tree::Kind::Null) return;
  const Tree& name = preset->value;
  bool valid_name = name.kind == Tree::Kind::Scalar && !name.scalar.empty() &&
                    std::all_of(name.scalar.begin(), name.scalar.end(), [](unsigned char c) {
                      return std::isalnum(c) || c == '-' || c == '_' || c == '.';
                    });
  if (!valid_name) fail(name.origin, "model.preset", "expected a preset name like gpt2-124m or null, got " + describe(name));

  std::vector<std::string> searched, available;
  std::optional<fs::path> file;
  for (const fs::path& dir : preset_dirs(config_dir)) {
    std::error_code ec;
    fs::path candidate = dir / (name.scalar + ".yaml");
    searched.push_back(dir.string());
    if (!file && fs::is_regular_file(candidate, ec)) file = candidate;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
      if (it->path().extension() == ".yaml") available.push_back(it->path().stem().string());
  }
  if (!file) {
    std::sort(available.begin(), available.end());
    available.erase(std::unique(available.begin(), available.end()), available.end());
    fail(name.origin, "model.preset",
         str_cat("unknown preset '", name.scalar, "'; expected one of ", join_list(available), " (searched ",
                 join_list(searched), ")"));
  }

  std::string source = file->string();
  Tree preset_root = parse_yaml_file_text(read_text_file(source), source);
  for (const Tree::Entry& e : preset_root.entries)
    if (e.key != "model") fail(e.key_origin, e.key, "a preset file holds only model: keys; expected model");
  const Tree::Entry* preset_model = preset_root.find("model");
  if (!preset_model || preset_model->value.kind != Tree::Kind::Map)
    throw ConfigError(source + ": expected a model: mapping");

  Tree merged = preset_model->value;
  for (const auto& [first, second] : kPresetAlternatives)
    if (lookup(model->value, second)) erase(merged, first);
  merge(merged, std::move(model->value));
  model->value = std::move(merged);
}

// ---- consistency checks --------------------------------------------------------------------------

class Validator {
 public:
  explicit Validator(const Context& ctx) : ctx_(ctx) {}

  void check(bool ok, const std::string& key, const std::string& message) const {
    if (!ok) fail(ctx_.where(key), key, message);
  }
  template <typename T>
  void positive(const std::string& key, T value) const {
    check(value > 0, key, str_cat("got ", value, "; expected a positive value"));
  }
  template <typename T>
  void non_negative(const std::string& key, T value) const {
    check(value >= 0, key, str_cat("got ", value, "; expected a non-negative value"));
  }
  void one_of(const std::string& key, const std::string& value, const std::vector<std::string>& allowed) const {
    bool ok = std::find(allowed.begin(), allowed.end(), value) != allowed.end();
    check(ok, key, "unknown value '" + value + "'" + suggestion(value, allowed));
  }

 private:
  const Context& ctx_;
};

bool is_device_name(const std::string& d) {
  if (d == "auto" || d == "cpu" || d == "cuda") return true;
  return d.size() > 5 && d.compare(0, 5, "cuda:") == 0 &&
         std::all_of(d.begin() + 5, d.end(), [](unsigned char c) { return std::isdigit(c); });
}

void validate_mixers(const Validator& check, const std::string& key, const std::vector<std::string>& types) {
  std::vector<std::string> known;
  for (const auto& entry : mixer_registry()) known.push_back(entry.first);
  for (size_t i = 0; i < types.size(); ++i) {
    bool ok = mixer_registry().count(types[i]) > 0;
    check.check(ok, str_cat(key, "[", i, "]"), "unknown mixer type '" + types[i] + "'" + suggestion(types[i], known));
  }
}

// The mixer and block settings of `m`, as the base model ("model") or one layer's override
// ("model.overrides.3"); divisibility matters only for the mixer types in `used`.
void validate_layer(const Validator& check, const ModelConfig& m, const std::string& prefix,
                    const std::vector<std::string>& used) {
  auto key = [&](const char* name) { return prefix + "." + name; };
  check.positive(key("norm_eps"), m.norm_eps);
  check.one_of(key("mlp.type"), m.mlp.type, {"gelu", "swiglu"});
  check.positive(key("mlp.mult"), m.mlp.mult);
  check.non_negative(key("mlp.hidden"), m.mlp.hidden);
  check.positive(key("attn.n_heads"), m.attn.n_heads);
  check.non_negative(key("attn.n_kv_heads"), m.attn.n_kv_heads);
  check.check(m.d_model % m.attn.n_heads == 0, key("attn.n_heads"),
              str_cat(m.attn.n_heads, " does not divide model.d_model = ", m.d_model, "; expected a divisor of it"));
  check.check(m.attn.n_heads % m.kv_heads() == 0, key("attn.n_kv_heads"),
              str_cat(m.attn.n_kv_heads, " does not divide ", key("attn.n_heads"), " = ", m.attn.n_heads,
                      "; expected a divisor of it (or 0 for n_heads)"));
  check.one_of(key("attn.pos"), m.attn.pos, {"rope", "learned", "none"});
  if (m.attn.pos == "rope") {
    check.check((m.d_model / m.attn.n_heads) % 2 == 0, key("attn.pos"),
                str_cat("rope needs an even head size, got d_model / n_heads = ", m.d_model / m.attn.n_heads,
                        "; expected an even number"));
  }
  check.non_negative(key("attn.window"), m.attn.window);
  check.positive(key("swa.window"), m.swa.window);
  check.positive(key("mamba.d_state"), m.mamba.d_state);
  check.positive(key("mamba.d_conv"), m.mamba.d_conv);
  check.positive(key("mamba.expand"), m.mamba.expand);
  check.non_negative(key("mamba.dt_rank"), m.mamba.dt_rank);
  check.positive(key("mamba.dt_min"), m.mamba.dt_min);
  check.check(m.mamba.dt_max >= m.mamba.dt_min, key("mamba.dt_max"),
              str_cat(m.mamba.dt_max, " is below ", key("mamba.dt_min"), " = ", m.mamba.dt_min,
                      "; expected dt_min <= dt_max"));
  auto uses = [&](const char* type) { return std::find(used.begin(), used.end(), type) != used.end(); };
  const Mamba2Config& m2 = m.mamba2;
  check.positive(key("mamba2.d_state"), m2.d_state);
  check.positive(key("mamba2.d_conv"), m2.d_conv);
  check.positive(key("mamba2.expand"), m2.expand);
  check.positive(key("mamba2.headdim"), m2.headdim);
  check.positive(key("mamba2.ngroups"), m2.ngroups);
  check.positive(key("mamba2.chunk_size"), m2.chunk_size);
  // fail() throws, so each check below may assume the ones above it passed.
  const int64_t inner = m2.expand * m.d_model;
  check.check(!uses("mamba2") || inner % m2.headdim == 0, key("mamba2.headdim"),
              str_cat(m2.headdim, " does not divide the inner width expand * d_model = ", inner,
                      "; expected a divisor of it"));
  check.check(!uses("mamba2") || (inner / m2.headdim) % m2.ngroups == 0, key("mamba2.ngroups"),
              str_cat(m2.ngroups, " does not divide the ", inner / m2.headdim,
                      " heads (expand * d_model / headdim); expected a divisor of them"));
  check.check(m2.A_init_range[0] > 0 && m2.A_init_range[1] >= m2.A_init_range[0], key("mamba2.A_init_range"),
              str_cat("[", m2.A_init_range[0], ", ", m2.A_init_range[1], "]; expected 0 < lo <= hi"));
  check.positive(key("mamba2.dt_min"), m2.dt_min);
  check.check(m2.dt_max >= m2.dt_min, key("mamba2.dt_max"),
              str_cat(m2.dt_max, " is below ", key("mamba2.dt_min"), " = ", m2.dt_min, "; expected dt_min <= dt_max"));
  check.positive(key("mamba2.dt_init_floor"), m2.dt_init_floor);
  check.positive(key("hedgehog.n_heads"), m.hedgehog.n_heads);
  check.check(!uses("hedgehog") || m.d_model % m.hedgehog.n_heads == 0, key("hedgehog.n_heads"),
              str_cat(m.hedgehog.n_heads, " does not divide model.d_model = ", m.d_model, "; expected a divisor of it"));
  check.positive(key("hedgehog.feature_dim"), m.hedgehog.feature_dim);
  check.positive(key("hedgehog.chunk"), m.hedgehog.chunk);
  check.non_negative(key("hedgehog.window"), m.hedgehog.window);
  check.positive(key("aaren.n_heads"), m.aaren.n_heads);
  check.check(!uses("aaren") || m.d_model % m.aaren.n_heads == 0, key("aaren.n_heads"),
              str_cat(m.aaren.n_heads, " does not divide model.d_model = ", m.d_model, "; expected a divisor of it"));
  check.positive(key("titans.n_heads"), m.titans.n_heads);
  const bool titans = uses("titans") || uses("titans_mac") || uses("titans_mag") || uses("titans_mal");
  check.check(!titans || m.d_model % m.titans.n_heads == 0, key("titans.n_heads"),
              str_cat(m.titans.n_heads, " does not divide model.d_model = ", m.d_model, "; expected a divisor of it"));
  check.positive(key("titans.chunk"), m.titans.chunk);
  check.positive(key("titans.memory_depth"), m.titans.memory_depth);
  check.positive(key("titans.memory_expand"), m.titans.memory_expand);
  check.positive(key("titans.d_conv"), m.titans.d_conv);
  check.positive(key("titans.max_lr"), m.titans.max_lr);
  check.non_negative(key("titans.max_grad_norm"), m.titans.max_grad_norm);
  check.positive(key("titans.segment"), m.titans.segment);
  check.non_negative(key("titans.persistent_tokens"), m.titans.persistent_tokens);
  check.positive(key("attn.rope_theta"), m.attn.rope_theta);
}

// Layer `layer` of the (already checked) base model with its override applied and checked.
ModelConfig checked_layer(const Validator& check, const ModelConfig& base, int64_t layer) {
  std::string key = override_key(layer);
  check.check(layer >= 0 && layer < base.n_layers, key,
              str_cat("layer ", layer, " is out of range; expected 0 to ", base.n_layers - 1, " (model.n_layers is ",
                      base.n_layers, ")"));
  ModelConfig out = apply_override(base, layer);
  if (!base.overrides.count(layer)) return out;
  validate_layer(check, out, key, {base.resolved_layers()[static_cast<size_t>(layer)]});
  // The position table is built once for the whole model.
  check.check((out.attn.pos == "learned") == (base.attn.pos == "learned"), key + ".attn.pos",
              str_cat("'", out.attn.pos, "' with model.attn.pos = '", base.attn.pos,
                      "'; learned positions are model-wide, expected learned in every layer or in none"));
  return out;
}

// data.task: the task's own settings, its vocabulary against the model's, and every length it is
// trained or evaluated at against what the task can be laid out in.
void validate_task(const Validator& check, const Config& c) {
  const TaskConfig& t = c.data.task;
  check.one_of("data.task.name", t.name, data::task_names());
  check.check(t.vocab_size == c.model.vocab_size, "data.task.vocab_size",
              str_cat(t.vocab_size, " differs from model.vocab_size = ", c.model.vocab_size,
                      "; expected the same vocabulary in both"));
  check.positive("data.task.mqar.num_kv_pairs", t.mqar.num_kv_pairs);
  check.positive("data.task.mqar.power_a", t.mqar.power_a);
  check.positive("data.task.selective_copy.num_tokens", t.selective_copy.num_tokens);
  check.one_of("data.task.assoc_recall.train_labels", t.assoc_recall.train_labels, {"query", "repeats"});
  check.positive("data.task.passkey.digits", t.passkey.digits);
  check.check(t.passkey.depth == -1 || (t.passkey.depth >= 0 && t.passkey.depth <= 1), "data.task.passkey.depth",
              str_cat("got ", t.passkey.depth, "; expected a fraction in [0, 1], or -1 for a random depth per sample"));
  const std::string vocab_problem = data::task_vocab_problem(t);
  check.check(vocab_problem.empty(), "data.task.vocab_size", vocab_problem);
  auto check_length = [&](const std::string& key, int64_t length) {
    const std::string problem = data::task_length_problem(t, length);
    check.check(problem.empty(), key, str_cat(length, ": ", problem));
  };
  check_length("training.seq_len", c.training.seq_len);
  for (size_t i = 0; i < t.eval_lengths.size(); ++i) {
    const std::string key = str_cat("data.task.eval_lengths[", i, "]");
    const int64_t length = t.eval_lengths[i];
    check.check(length != c.training.seq_len &&
                    std::count(t.eval_lengths.begin(), t.eval_lengths.begin() + static_cast<std::ptrdiff_t>(i), length) == 0,
                key, str_cat(length, " is training.seq_len or repeats an earlier entry; expected each extra length once"));
    check_length(key, length);
    check.check(c.model.attn.pos != "learned" || length <= c.model.max_seq_len, key,
                str_cat(length, " exceeds model.max_seq_len = ", c.model.max_seq_len,
                        " (the learned position table); expected at most that"));
  }
}

void validate(const Config& c, const Context& ctx) {
  Validator check(ctx);

  check.check(!c.run.name.empty(), "run.name", "is empty; expected a name");
  check.check(!c.run.dir.empty(), "run.dir", "is empty; expected a folder");
  check.check(is_device_name(c.run.device), "run.device",
              "unknown device '" + c.run.device + "'; expected auto, cpu, cuda or cuda:N");

  const ModelConfig& m = c.model;
  check.positive("model.vocab_size", m.vocab_size);
  check.positive("model.vocab_pad_to", m.vocab_pad_to);
  check.positive("model.d_model", m.d_model);
  check.positive("model.n_layers", m.n_layers);
  check.positive("model.max_seq_len", m.max_seq_len);
  if (!m.code.empty()) {
    check.check(m.layers.empty(), "model.code", "given together with model.layers; expected one of the two");
    try {
      std::vector<std::string> from_code = parse_mixer_code(m.code);
      check.check(static_cast<int64_t>(from_code.size()) == m.n_layers, "model.code",
                  str_cat("'", m.code, "' has ", from_code.size(), " layers but model.n_layers is ", m.n_layers,
                          "; expected one letter per layer"));
    } catch (const ConfigError&) {
      throw;
    } catch (const Error& e) {
      check.check(false, "model.code", e.what());
    }
  } else if (m.layers.empty()) {
    check.check(!m.pattern.empty(), "model.pattern", "is empty; expected at least one mixer type");
    validate_mixers(check, "model.pattern", m.pattern);
  } else {
    check.check(static_cast<int64_t>(m.layers.size()) == m.n_layers, "model.layers",
                str_cat("has ", m.layers.size(), " entries but model.n_layers is ", m.n_layers,
                        "; expected one mixer type per layer"));
    validate_mixers(check, "model.layers", m.layers);
  }
  check.one_of("model.norm", m.norm, {"rmsnorm", "layernorm"});
  check.positive("model.init_std", m.init_std);
  validate_layer(check, m, "model", m.resolved_layers());
  if (m.attn.pos == "learned") {
    check.check(c.training.seq_len <= m.max_seq_len, "training.seq_len",
                str_cat(c.training.seq_len, " exceeds model.max_seq_len = ", m.max_seq_len,
                        " (the learned position table); expected at most that"));
  }
  for (const auto& entry : m.overrides) checked_layer(check, m, entry.first);

  if (c.data.task.enabled()) {
    validate_task(check, c);
  } else {
    check.check(!c.data.train.empty(), "data.train", "is empty; expected a token file");
    check.check(c.training.eval_every == 0 || !c.data.val.empty(), "data.val",
                "is empty but training.eval_every > 0; expected a token file");
    check.check(c.data.task.eval_lengths.empty(), "data.task.eval_lengths",
                "given but data.task.name is none; expected a task (mqar, induction, ...) or no eval_lengths");
  }

  const OptimizerConfig& o = c.optimizer;
  check.one_of("optimizer.name", o.name, {"adamw"});
  check.positive("optimizer.lr", o.lr);
  for (size_t i = 0; i < 2; ++i) {
    check.check(o.betas[i] >= 0 && o.betas[i] < 1, str_cat("optimizer.betas[", i, "]"),
                str_cat("got ", o.betas[i], "; expected a value in [0, 1)"));
  }
  check.positive("optimizer.eps", o.eps);
  check.non_negative("optimizer.weight_decay", o.weight_decay);
  check.non_negative("optimizer.grad_clip", o.grad_clip);

  const TrainingConfig& t = c.training;
  check.positive("training.seq_len", t.seq_len);
  check.positive("training.micro_batch", t.micro_batch);
  check.positive("training.batch_tokens", t.batch_tokens);
  check.positive("training.steps", t.steps);
  check.one_of("training.precision", t.precision, {"bf16", "f32"});
  check.non_negative("training.eval_every", t.eval_every);
  if (t.eval_every > 0) check.positive("training.eval_steps", t.eval_steps);
  // With an explicit dp every rank must run the same number of micro-batches per step.
  int64_t tokens_per_round = t.micro_batch * t.seq_len * std::max(c.parallel.dp, 1);
  check.check(t.batch_tokens % tokens_per_round == 0, "training.batch_tokens",
              str_cat(t.batch_tokens, " is not a multiple of micro_batch * seq_len",
                      c.parallel.dp > 1 ? " * parallel.dp" : "", " = ", tokens_per_round,
                      "; expected a multiple of it (each step accumulates whole micro-batches)"));

  const ScheduleConfig& s = c.schedule;
  check.non_negative("schedule.warmup_steps", s.warmup_steps);
  check.check(s.warmup_steps <= t.steps, "schedule.warmup_steps",
              str_cat(s.warmup_steps, " exceeds training.steps = ", t.steps, "; expected at most that"));
  check.one_of("schedule.decay", s.decay, {"cosine", "linear", "constant"});
  check.check(s.min_lr_ratio >= 0 && s.min_lr_ratio <= 1, "schedule.min_lr_ratio",
              str_cat("got ", s.min_lr_ratio, "; expected a value in [0, 1]"));

  check.non_negative("checkpoint.every", c.checkpoint.every);
  check.non_negative("checkpoint.keep", c.checkpoint.keep);
  check.check(!c.checkpoint.resume.empty(), "checkpoint.resume", "is empty; expected auto, none or a checkpoint path");

  check.positive("logging.every", c.logging.every);

  check.check(c.parallel.dp == -1 || c.parallel.dp >= 1, "parallel.dp",
              str_cat("got ", c.parallel.dp, "; expected -1 (the rest of the world) or a positive size"));
  check.positive("parallel.tp", c.parallel.tp);
  check.positive("parallel.cp", c.parallel.cp);
  check.check(c.parallel.zero == 0 || c.parallel.zero == 1, "parallel.zero",
              str_cat("got ", c.parallel.zero, "; expected 0 (off) or 1 (ZeRO-1: optimizer state sharded over dp)"));
  check.positive("parallel.bucket_mb", c.parallel.bucket_mb);
}

Config build_config(Tree root, const std::string& source, const std::optional<fs::path>& config_dir,
                    const std::vector<std::string>& overrides) {
  for (const std::string& text : overrides) merge(root, override_tree(text));
  expand_preset(root, config_dir);
  Config config;
  Context ctx{source, {}};
  read_section(root, "", ctx, config);
  validate(config, ctx);
  config.source = source;
  return config;
}

}  // namespace

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  fs::path dir = fs::path(path).parent_path();
  return build_config(parse_yaml_file_text(read_text_file(path), path), path, dir.empty() ? fs::path(".") : dir,
                      overrides);
}

Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides) {
  return build_config(parse_yaml_file_text(yaml_text, source_name), source_name, std::nullopt, overrides);
}

std::string to_yaml(const Config& config) {
  Config copy = config;  // the field lists take mutable references
  YAML::Emitter out;
  out << YAML::BeginMap;
  Writer writer{out};
  fields(writer, copy);
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

namespace {

std::string flow(const YAML::Node& n) {
  if (!n.IsDefined()) return "(absent)";
  YAML::Emitter out;
  out << YAML::Flow << n;
  return out.c_str();
}

void collect_differences(const YAML::Node& a, const YAML::Node& b, const std::string& prefix,
                         std::vector<std::string>& out) {
  if (a.IsMap() && b.IsMap()) {
    std::vector<std::string> keys;
    for (const auto& kv : a) keys.push_back(kv.first.Scalar());
    for (const auto& kv : b)
      if (!a[kv.first.Scalar()]) keys.push_back(kv.first.Scalar());
    for (const std::string& k : keys) collect_differences(a[k], b[k], prefix.empty() ? k : prefix + "." + k, out);
    return;
  }
  const std::string fa = flow(a), fb = flow(b);
  if (fa != fb) out.push_back(prefix + ": " + fa + " vs " + fb);
}

}  // namespace

std::vector<std::string> config_differences(const Config& a, const Config& b) {
  std::vector<std::string> out;
  if (a == b) return out;
  collect_differences(YAML::Load(to_yaml(a)), YAML::Load(to_yaml(b)), "", out);
  return out;
}

// ---- ModelConfig ---------------------------------------------------------------------------------

std::vector<std::string> ModelConfig::resolved_layers() const {
  if (!code.empty()) {
    std::vector<std::string> out = parse_mixer_code(code);
    if (static_cast<int64_t>(out.size()) != n_layers)
      throw ConfigError(str_cat("model.code: '", code, "' has ", out.size(), " layers but model.n_layers is ", n_layers,
                                "; expected one letter per layer"));
    return out;
  }
  if (!layers.empty()) {
    if (static_cast<int64_t>(layers.size()) != n_layers)
      throw ConfigError(str_cat("model.layers: has ", layers.size(), " entries but model.n_layers is ", n_layers,
                                "; expected one mixer type per layer"));
    return layers;
  }
  if (pattern.empty()) throw ConfigError("model.pattern: is empty; expected at least one mixer type");
  std::vector<std::string> out;
  for (int64_t i = 0; i < n_layers; ++i) out.push_back(pattern[static_cast<size_t>(i) % pattern.size()]);
  return out;
}

std::string ModelConfig::layers_code() const {
  std::string letters;
  for (const std::string& type : resolved_layers())
    letters += mixer_letter(type);

  // Greedy from the left: at each position take the period whose repeats cover the most layers
  // (the shortest such period on ties); letters that start no repeat are kept as they are.
  std::vector<std::string> runs;
  std::string unrepeated;
  for (size_t i = 0, n = letters.size(); i < n;) {
    size_t best_period = 0, best_count = 1;
    for (size_t period = 1; i + 2 * period <= n; ++period) {
      size_t count = 1;
      while (i + (count + 1) * period <= n && letters.compare(i + count * period, period, letters, i, period) == 0)
        ++count;
      if (count >= 2 && period * count > best_period * best_count) best_period = period, best_count = count;
    }
    if (best_count < 2) {
      unrepeated += letters[i++];
      continue;
    }
    if (!unrepeated.empty()) runs.push_back(std::move(unrepeated)), unrepeated.clear();
    runs.push_back(str_cat(letters.substr(i, best_period), "×", best_count));
    i += best_period * best_count;
  }
  if (!unrepeated.empty()) runs.push_back(unrepeated);
  std::string code;
  for (const std::string& run : runs) code += (code.empty() ? "" : "+") + run;
  return code;
}

int64_t ModelConfig::padded_vocab_size() const {
  int64_t pad = std::max<int64_t>(vocab_pad_to, 1);
  return (vocab_size + pad - 1) / pad * pad;
}

int64_t ModelConfig::kv_heads() const { return attn.n_kv_heads == 0 ? attn.n_heads : attn.n_kv_heads; }

ModelConfig ModelConfig::for_layer(int64_t i) const {
  Context ctx{"model config", {}};  // a config built in code has no file to point to
  return checked_layer(Validator(ctx), *this, i);
}

// ---- equality ------------------------------------------------------------------------------------

bool operator==(const RunConfig& a, const RunConfig& b) {
  return std::tie(a.name, a.dir, a.seed, a.device) == std::tie(b.name, b.dir, b.seed, b.device);
}
bool operator==(const MlpConfig& a, const MlpConfig& b) {
  return std::tie(a.type, a.mult, a.hidden) == std::tie(b.type, b.mult, b.hidden);
}
bool operator==(const AttnConfig& a, const AttnConfig& b) {
  return std::tie(a.n_heads, a.n_kv_heads, a.pos, a.window, a.rope_theta) ==
         std::tie(b.n_heads, b.n_kv_heads, b.pos, b.window, b.rope_theta);
}
bool operator==(const SwaConfig& a, const SwaConfig& b) { return a.window == b.window; }
bool operator==(const MambaConfig& a, const MambaConfig& b) {
  return std::tie(a.d_state, a.d_conv, a.expand, a.dt_rank, a.dt_min, a.dt_max, a.dt_init_floor, a.conv_bias) ==
         std::tie(b.d_state, b.d_conv, b.expand, b.dt_rank, b.dt_min, b.dt_max, b.dt_init_floor, b.conv_bias);
}
bool operator==(const Mamba2Config& a, const Mamba2Config& b) {
  return std::tie(a.d_state, a.d_conv, a.expand, a.headdim, a.ngroups, a.chunk_size, a.A_init_range, a.dt_min,
                  a.dt_max, a.dt_init_floor, a.conv_bias) ==
         std::tie(b.d_state, b.d_conv, b.expand, b.headdim, b.ngroups, b.chunk_size, b.A_init_range, b.dt_min,
                  b.dt_max, b.dt_init_floor, b.conv_bias);
}
bool operator==(const HedgehogConfig& a, const HedgehogConfig& b) {
  return std::tie(a.n_heads, a.feature_dim, a.chunk, a.window) == std::tie(b.n_heads, b.feature_dim, b.chunk, b.window);
}
bool operator==(const AarenConfig& a, const AarenConfig& b) { return a.n_heads == b.n_heads; }
bool operator==(const TitansConfig& a, const TitansConfig& b) {
  return std::tie(a.n_heads, a.chunk, a.memory_depth, a.memory_expand, a.d_conv, a.max_lr, a.max_grad_norm, a.qk_norm,
                  a.segment, a.persistent_tokens) ==
         std::tie(b.n_heads, b.chunk, b.memory_depth, b.memory_expand, b.d_conv, b.max_lr, b.max_grad_norm, b.qk_norm,
                  b.segment, b.persistent_tokens);
}
bool operator==(const ModelConfig& a, const ModelConfig& b) {
  return std::tie(a.preset, a.vocab_size, a.vocab_pad_to, a.d_model, a.n_layers, a.max_seq_len, a.pattern, a.layers,
                  a.code, a.norm, a.norm_eps, a.mlp, a.attn, a.swa, a.mamba, a.mamba2, a.hedgehog, a.aaren, a.titans,
                  a.tie_embeddings, a.bias, a.init_std, a.overrides) ==
         std::tie(b.preset, b.vocab_size, b.vocab_pad_to, b.d_model, b.n_layers, b.max_seq_len, b.pattern, b.layers,
                  b.code, b.norm, b.norm_eps, b.mlp, b.attn, b.swa, b.mamba, b.mamba2, b.hedgehog, b.aaren, b.titans,
                  b.tie_embeddings, b.bias, b.init_std, b.overrides);
}
bool operator==(const MqarConfig& a, const MqarConfig& b) {
  return std::tie(a.num_kv_pairs, a.power_a, a.random_non_queries) ==
         std::tie(b.num_kv_pairs, b.power_a, b.random_non_queries);
}
bool operator==(const SelectiveCopyConfig& a, const SelectiveCopyConfig& b) { return a.num_tokens == b.num_tokens; }
bool operator==(const AssocRecallConfig& a, const AssocRecallConfig& b) { return a.train_labels == b.train_labels; }
bool operator==(const PasskeyConfig& a, const PasskeyConfig& b) {
  return std::tie(a.digits, a.depth) == std::tie(b.digits, b.depth);
}
bool operator==(const TaskConfig& a, const TaskConfig& b) {
  return std::tie(a.name, a.vocab_size, a.eval_lengths, a.mqar, a.selective_copy, a.assoc_recall, a.passkey) ==
         std::tie(b.name, b.vocab_size, b.eval_lengths, b.mqar, b.selective_copy, b.assoc_recall, b.passkey);
}
bool operator==(const DataConfig& a, const DataConfig& b) {
  return std::tie(a.train, a.val, a.task) == std::tie(b.train, b.val, b.task);
}
bool operator==(const OptimizerConfig& a, const OptimizerConfig& b) {
  return std::tie(a.name, a.lr, a.betas, a.eps, a.weight_decay, a.grad_clip) ==
         std::tie(b.name, b.lr, b.betas, b.eps, b.weight_decay, b.grad_clip);
}
bool operator==(const ScheduleConfig& a, const ScheduleConfig& b) {
  return std::tie(a.warmup_steps, a.decay, a.min_lr_ratio) == std::tie(b.warmup_steps, b.decay, b.min_lr_ratio);
}
bool operator==(const TrainingConfig& a, const TrainingConfig& b) {
  return std::tie(a.seq_len, a.micro_batch, a.batch_tokens, a.steps, a.precision, a.eval_every, a.eval_steps,
                  a.recompute) == std::tie(b.seq_len, b.micro_batch, b.batch_tokens, b.steps, b.precision,
                                           b.eval_every, b.eval_steps, b.recompute);
}
bool operator==(const CheckpointConfig& a, const CheckpointConfig& b) {
  return std::tie(a.every, a.keep, a.resume) == std::tie(b.every, b.keep, b.resume);
}
bool operator==(const LoggingConfig& a, const LoggingConfig& b) { return a.every == b.every; }
bool operator==(const ParallelConfig& a, const ParallelConfig& b) {
  return std::tie(a.dp, a.tp, a.cp, a.zero, a.bucket_mb) == std::tie(b.dp, b.tp, b.cp, b.zero, b.bucket_mb);
}
bool operator==(const Config& a, const Config& b) {
  return std::tie(a.run, a.model, a.data, a.optimizer, a.schedule, a.training, a.checkpoint, a.logging, a.parallel) ==
         std::tie(b.run, b.model, b.data, b.optimizer, b.schedule, b.training, b.checkpoint, b.logging, b.parallel);
}

// Levenshtein distance, for "did you mean" suggestions.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t substitute = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      diagonal = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, substitute});
    }
  }
  return row[b.size()];
}

}  // namespace seqtrain::train
