// Run configuration (DESIGN.md §6): one YAML file per run with the sections below, read strictly.
// Unknown keys, wrong types, duplicate keys and inconsistent values are errors naming the file, line
// and key. Defaults here are the documented defaults; a model preset (configs/models/<name>.yaml)
// fills `model:` keys the run file does not give; `--set section.key=value` overrides (the value is
// parsed as YAML, so `--set model.pattern=[mamba,attn]` works; a path not in the file is created, so
// `--set model.overrides.1.attn.window=8` adds a layer override). The resolved config is written to
// the run folder and into every checkpoint, and reads back to an equal Config.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"

namespace seqtrain::train {

// One line: "<file>:<line>: <section.key>: <what is wrong>; expected <what>".
class ConfigError : public Error {
 public:
  using Error::Error;
};

struct RunConfig {
  std::string name = "kjv-small";
  std::string dir = "runs/kjv-small";
  uint64_t seed = 1234;
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
};

struct MlpConfig {
  std::string type = "swiglu";  // gelu | swiglu
  double mult = 4;              // hidden = mult * d_model when `hidden` is 0
  int64_t hidden = 0;           // 0 = derived from mult
};

struct AttnConfig {
  int64_t n_heads = 4;
  int64_t n_kv_heads = 4;  // 0 = n_heads; fewer than n_heads is grouped-query attention
  std::string pos = "rope";  // rope | learned | none
  int64_t window = 0;      // 0 = full causal attention; else each token sees the last `window` tokens
  double rope_theta = 10000;
};

// `swa` layers: causal attention (with the attn settings) restricted to the last `window` tokens.
struct SwaConfig {
  int64_t window = 256;
};

// Mamba-1 (mamba_ssm's Mamba module): E = expand * d_model inner channels, N = d_state.
struct MambaConfig {
  int64_t d_state = 16;
  int64_t d_conv = 4;       // width of the causal depthwise convolution
  int64_t expand = 2;
  int64_t dt_rank = 0;      // 0 = ceil(d_model / 16), as mamba_ssm's "auto"
  double dt_min = 0.001;    // dt_proj.bias is initialised so softplus(bias) is log-uniform in [dt_min, dt_max]
  double dt_max = 0.1;
  double dt_init_floor = 1e-4;
  bool conv_bias = true;
};

// Mamba-2 (mamba_ssm's Mamba2 module): E = expand * d_model inner channels in H = E / headdim heads
// of headdim channels, N = d_state, G = ngroups groups of B and C shared by H / G heads each.
struct Mamba2Config {
  int64_t d_state = 128;
  int64_t d_conv = 4;        // width of the causal depthwise convolution over [x, B, C]
  int64_t expand = 2;
  int64_t headdim = 64;
  int64_t ngroups = 1;
  int64_t chunk_size = 256;  // chunk length Q of the chunked SSD
  std::array<double, 2> A_init_range = {1, 16};  // A_log = log U(A_init_range); A = -exp(A_log)
  double dt_min = 0.001;     // dt_bias is initialised so softplus(dt_bias) is log-uniform in [dt_min, dt_max]
  double dt_max = 0.1;
  double dt_init_floor = 1e-4;
  bool conv_bias = true;
};

// Hedgehog linear attention: per head, feature map phi(x) = [softmax(Wx + b), softmax(-(Wx + b))].
struct HedgehogConfig {
  int64_t n_heads = 4;
  int64_t feature_dim = 64;  // size of each softmax half (phi has 2 * feature_dim entries)
  int64_t chunk = 64;        // chunk length of the chunked causal form
  int64_t window = 0;        // > 0: sliding-window softmax attention + linear attention (LoLCATs)
};

// Aaren: attention as an RNN with a learned query per head.
struct AarenConfig {
  int64_t n_heads = 4;
};

// Titans neural memory (`titans`) and its architectures (`titans_mac`, `titans_mag`, `titans_mal`);
// layers/titans/titans.h has the math. MAG and MAL take their sliding window from swa.window.
struct TitansConfig {
  int64_t n_heads = 4;
  int64_t chunk = 16;            // tokens per memory update (gradients at the chunk-start weights); 1 = exact
  int64_t memory_depth = 2;      // 1 = linear memory; >= 2 = MLP (GELU, LayerNorm + residual)
  int64_t memory_expand = 4;     // MLP hidden = memory_expand * head size
  int64_t d_conv = 4;            // width of the causal depthwise convolution on q, k, v
  double max_lr = 0.1;           // theta_t = max_lr * sigmoid(.)
  double max_grad_norm = 1.0;    // per-token soft clamp of the inner gradient's norm; 0 = off
  bool qk_norm = true;           // unit-norm q and k per head
  int64_t segment = 64;          // titans_mac: tokens per segment (attention span)
  int64_t persistent_tokens = 4; // titans_mac: learned tokens prepended to every segment
};

struct ModelConfig {
  std::string preset;  // empty = none; otherwise the preset that filled the unset keys
  int64_t vocab_size = 256;
  int64_t d_model = 256;
  int64_t n_layers = 4;
  int64_t max_seq_len = 1024;  // size of the learned position table
  std::vector<std::string> pattern = {"attn"};  // mixer types, tiled over n_layers
  std::vector<std::string> layers;              // one mixer type per layer; overrides `pattern`
  std::string code;  // compact per-layer code ("MMHA", "MMA×4"; layers/mixer.h); overrides both
  std::string norm = "rmsnorm";                 // rmsnorm | layernorm
  double norm_eps = 1e-5;
  MlpConfig mlp;
  AttnConfig attn;
  SwaConfig swa;
  MambaConfig mamba;
  Mamba2Config mamba2;
  HedgehogConfig hedgehog;
  AarenConfig aaren;
  TitansConfig titans;
  bool tie_embeddings = true;
  bool bias = false;  // biases in linear layers and layernorm
  double init_std = 0.02;
  int64_t vocab_pad_to = 1;  // embedding rows are vocab_size rounded up to a multiple of this
  // Per-layer settings (config key `model.overrides`: {3: {attn: {window: 64}}}): layer index ->
  // the override as canonical flow YAML, "{attn: {window: 64}}" — only the keys given, in field
  // order, each value as its typed reader would write it, so equal overrides compare equal and
  // round-trip through to_yaml. Only the mixer and block sections (attn, swa, mamba, mamba2,
  // hedgehog, aaren, mlp, norm_eps) may appear; for_layer() applies them.
  std::map<int64_t, std::string> overrides;

  // One mixer type per layer: `layers` if given (its length must be n_layers), else `pattern`
  // repeated and cut to n_layers, the way hybrid patterns are written (Jamba: [mamba x7, attn]).
  std::vector<std::string> resolved_layers() const;
  // The resolved layers as a compact code: each mixer's letter (layers/mixer.h), repeats of a
  // period written once with a count, runs joined by '+': "A×12", "MMA×2", "A+M×3".
  std::string layers_code() const;
  // vocab_size rounded up to a multiple of vocab_pad_to.
  int64_t padded_vocab_size() const;
  // n_kv_heads with 0 resolved to n_heads.
  int64_t kv_heads() const;
  // The settings of layer i (0-based): a copy with that layer's override, if any, applied and
  // checked like the base model's mixer and block settings (the copy itself has no overrides).
  // Model-wide keys stay as they are. Throws ConfigError for i outside [0, n_layers) or an
  // inconsistent override; load_config has already run these checks for every override.
  ModelConfig for_layer(int64_t i) const;
};

// Synthetic capability tasks (data/synthetic_tasks.h has the exact definitions). Each task has its
// own section of settings, like the mixers; only the named task's section is used.
struct MqarConfig {
  int64_t num_kv_pairs = 8;         // K key-value pairs in the context, each queried once
  double power_a = 0.01;            // query gaps g are drawn with p(g) proportional to g^(a - 1)
  bool random_non_queries = false;  // fill the query region between queries with random tokens
};

struct SelectiveCopyConfig {
  int64_t num_tokens = 16;  // M tokens to memorise among the noise, recalled after M markers
};

struct AssocRecallConfig {
  // Which positions of a training sample carry a label: `query` (the final query only, as safari's
  // generator) or `repeats` (also every value whose key appeared earlier in the sample: the same
  // lookup, about (T - 2) / 2 - (V - 1) / 2 more labels per sample). Evaluation labels the query only.
  std::string train_labels = "query";
};

struct PasskeyConfig {
  int64_t digits = 5;  // length of the number hidden in the filler text
  double depth = -1;   // where it is hidden, as a fraction of the filler; -1 = uniform per sample
};

struct TaskConfig {
  std::string name = "none";  // none (token shards) | mqar | selective_copy | induction | assoc_recall | passkey
  int64_t vocab_size = 256;   // the task's vocabulary; must equal model.vocab_size
  std::vector<int64_t> eval_lengths;  // extra evaluation lengths beside training.seq_len
  MqarConfig mqar;
  SelectiveCopyConfig selective_copy;
  AssocRecallConfig assoc_recall;
  PasskeyConfig passkey;

  bool enabled() const { return name != "none"; }
};

struct DataConfig {
  std::string train = "data/kjv/train.bin";  // token shards; unused when data.task names a task
  std::string val = "data/kjv/val.bin";
  TaskConfig task;
};

struct OptimizerConfig {
  std::string name = "adamw";
  double lr = 3.0e-4;
  std::array<double, 2> betas = {0.9, 0.95};
  double eps = 1.0e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // max global gradient norm; 0 = no clipping
};

struct ScheduleConfig {
  int64_t warmup_steps = 100;
  std::string decay = "cosine";  // cosine | linear | constant
  double min_lr_ratio = 0.1;     // the final lr as a fraction of optimizer.lr
};

struct TrainingConfig {
  int64_t seq_len = 256;
  int64_t micro_batch = 16;
  // Tokens per optimizer step: each step accumulates batch_tokens / (micro_batch * seq_len)
  // micro-batches, summed over the data-parallel ranks.
  int64_t batch_tokens = 16384;
  int64_t steps = 2000;
  std::string precision = "bf16";  // bf16 | f32
  int64_t eval_every = 200;        // 0 = no periodic evaluation
  int64_t eval_steps = 20;
  bool recompute = false;  // recompute each block's activations in backward instead of storing them
};

struct CheckpointConfig {
  int64_t every = 500;          // 0 = only the final checkpoint
  int64_t keep = 3;             // 0 = keep all
  std::string resume = "auto";  // auto (the newest in the run folder) | none | <checkpoint path>
};

struct LoggingConfig {
  int64_t every = 10;
};

struct ParallelConfig {
  int dp = -1;  // -1 = whatever the world size leaves after tp * cp
  int tp = 1;
  int cp = 1;
  int zero = 0;  // 1: ZeRO-1, AdamW moments sharded over dp (train/adamw.h)
  double bucket_mb = 25;  // MiB per dp gradient all-reduce bucket (distributed/grad_reducer.h)
};

// A new key is a member here, a line in fields() in config.cpp and a term in operator==.
struct Config {
  RunConfig run;
  ModelConfig model;
  DataConfig data;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  TrainingConfig training;
  CheckpointConfig checkpoint;
  LoggingConfig logging;
  ParallelConfig parallel;
  std::string source;  // where it was read from; not part of the configuration (== ignores it)
};

bool operator==(const RunConfig& a, const RunConfig& b);
bool operator==(const MlpConfig& a, const MlpConfig& b);
bool operator==(const AttnConfig& a, const AttnConfig& b);
bool operator==(const SwaConfig& a, const SwaConfig& b);
bool operator==(const MambaConfig& a, const MambaConfig& b);
bool operator==(const Mamba2Config& a, const Mamba2Config& b);
bool operator==(const HedgehogConfig& a, const HedgehogConfig& b);
bool operator==(const AarenConfig& a, const AarenConfig& b);
bool operator==(const TitansConfig& a, const TitansConfig& b);
bool operator==(const ModelConfig& a, const ModelConfig& b);
bool operator==(const MqarConfig& a, const MqarConfig& b);
bool operator==(const SelectiveCopyConfig& a, const SelectiveCopyConfig& b);
bool operator==(const AssocRecallConfig& a, const AssocRecallConfig& b);
bool operator==(const PasskeyConfig& a, const PasskeyConfig& b);
bool operator==(const TaskConfig& a, const TaskConfig& b);
bool operator==(const DataConfig& a, const DataConfig& b);
bool operator==(const OptimizerConfig& a, const OptimizerConfig& b);
bool operator==(const ScheduleConfig& a, const ScheduleConfig& b);
bool operator==(const TrainingConfig& a, const TrainingConfig& b);
bool operator==(const CheckpointConfig& a, const CheckpointConfig& b);
bool operator==(const LoggingConfig& a, const LoggingConfig& b);
bool operator==(const ParallelConfig& a, const ParallelConfig& b);
bool operator==(const Config& a, const Config& b);
inline bool operator!=(const Config& a, const Config& b) { return !(a == b); }

// Reads the YAML file at `path`, expands model.preset, applies `overrides` ("section.key=value" or
// "section.sub.key=value", the value parsed as YAML) and validates. Presets are searched in
// <dir of path>/../models/, then ./configs/models/, then the source tree's configs/models/.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// The same from text; `source_name` stands for the file in messages. Presets are searched in
// ./configs/models/, then the source tree's configs/models/.
Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});

// Every key of the resolved config (preset expanded; `preset` kept for information) as YAML that
// parse_config reads back to an equal Config.
std::string to_yaml(const Config& config);

// The keys whose values differ between two configs, as "dotted.key: <a> vs <b>" (values in flow
// YAML), in to_yaml's key order; empty when a == b.
std::vector<std::string> config_differences(const Config& a, const Config& b);

// Levenshtein distance between two keys (for "did you mean" suggestions).
size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace seqtrain::train
