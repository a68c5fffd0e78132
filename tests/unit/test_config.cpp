// Config: defaults, presets, --set overrides, strict errors (file, line, key), YAML round trip, the
// resolved layer list and its code, and per-layer overrides (model.overrides) down to the model.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <map>
#include <vector>

#include "models/language_model.h"
#include "test_util.h"
#include "train/config.h"

namespace seqtrain::train {
namespace {

namespace fs = std::filesystem;

// A fresh folder under /tmp, removed with everything in it at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "seqtrain-config-XXXXXX").string();
    EXPECT_NE(mkdtemp(pattern.data()), nullptr);
    path_ = pattern;
  }
  ~TempDir() { fs::remove_all(path_); }
  // Writes `text` to <dir>/<name> (creating folders) and returns the path.
  std::string write(const std::string& name, const std::string& text) const {
    fs::path file = path_ / name;
    fs::create_directories(file.parent_path());
    std::ofstream(file) << text;
    return file.string();
  }

 private:
  fs::path path_;
};

// The example from the issue, verbatim: every value in it is the default.
const char* kIssueExample = R"(run:        {name: kjv-small, dir: runs/kjv-small, seed: 1234, device: auto}   # auto | cpu | cuda
model:
  preset: null            # or gpt2-124m, llama-small, ...; explicit keys override the preset
  vocab_size: 256
  d_model: 256
  n_layers: 4
  pattern: [attn]         # tiled over n_layers; or `layers: [...]` with one entry per layer
  norm: rmsnorm
  mlp: {type: swiglu, mult: 4}
  attn: {n_heads: 4, n_kv_heads: 4, pos: rope, window: 0}
  tie_embeddings: true
data:       {train: data/kjv/train.bin, val: data/kjv/val.bin}
optimizer:  {name: adamw, lr: 3.0e-4, betas: [0.9, 0.95], eps: 1.0e-8, weight_decay: 0.1, grad_clip: 1.0}
schedule:   {warmup_steps: 100, decay: cosine, min_lr_ratio: 0.1}   # cosine | linear | constant
training:   {seq_len: 256, micro_batch: 16, batch_tokens: 16384, steps: 2000, precision: bf16,
             eval_every: 200, eval_steps: 20}
checkpoint: {every: 500, keep: 3, resume: auto}                     # auto | none | <path>
logging:    {every: 10}
parallel:   {dp: -1, tp: 1, cp: 1}
)";

TEST(Config, DefaultsMatchTheIssueExample) {
  Config empty = parse_config("", "empty.yaml");
  EXPECT_EQ(empty, Config{});
  EXPECT_EQ(empty.source, "empty.yaml");
  Config example = parse_config(kIssueExample, "example.yaml");
  EXPECT_EQ(example, Config{});
  EXPECT_EQ(example.model.resolved_layers(), std::vector<std::string>(4, "attn"));
  EXPECT_EQ(example.model.preset, "");
  EXPECT_EQ(example.optimizer.lr, 3.0e-4);
  EXPECT_EQ(example.run.seed, 1234u);
}

// config_differences names every differing key by its dotted path, with both values, in key order.
TEST(Config, DifferencesNameTheDottedKeys) {
  const Config a = parse_config(kIssueExample, "a.yaml");
  EXPECT_TRUE(config_differences(a, a).empty());
  const Config b = parse_config(kIssueExample, "b.yaml", {"optimizer.lr=1.0e-3", "model.pattern=[mamba, attn]"});
  const std::vector<std::string> diff = config_differences(a, b);
  ASSERT_EQ(diff.size(), 2u) << ::testing::PrintToString(diff);
  EXPECT_EQ(diff[0].rfind("model.pattern: ", 0), 0u) << diff[0];
  EXPECT_NE(diff[0].find("[mamba, attn]"), std::string::npos) << diff[0];
  EXPECT_EQ(diff[1], "optimizer.lr: 0.0003 vs 0.001");
}

TEST(Config, PresetExpandsAndExplicitKeysOverrideKeyByKey) {
  Config c = parse_config("model:\n  preset: gpt2-124m\n  n_layers: 2\n  attn: {n_heads: 6, n_kv_heads: 0}\n", "run.yaml");
  EXPECT_EQ(c.model.preset, "gpt2-124m");
  EXPECT_EQ(c.model.d_model, 768);
  EXPECT_EQ(c.model.n_layers, 2);
  EXPECT_EQ(c.model.attn.n_heads, 6);
  EXPECT_EQ(c.model.attn.pos, "learned");  // the rest of the preset's attn survives
  EXPECT_EQ(c.model.norm, "layernorm");
  EXPECT_EQ(c.model.mlp.type, "gelu");
  EXPECT_TRUE(c.model.bias);
  EXPECT_EQ(c.model.vocab_size, 50257);
  EXPECT_EQ(c.model.padded_vocab_size(), 50304);

  Config llama = parse_config("", "run.yaml", {"model.preset=llama-small"});
  EXPECT_EQ(llama.model.mlp.hidden, 1408);
  EXPECT_EQ(llama.model.kv_heads(), 4);
  EXPECT_FALSE(llama.model.tie_embeddings);
}

TEST(Config, PresetBesideTheRunFolderIsFoundFirst) {
  TempDir dir;
  std::string preset = dir.write("models/tiny.yaml",
                                 "model:\n  d_model: 64\n  n_layers: 3\n  layers: [attn, attn, attn]\n"
                                 "  mlp: {type: gelu, hidden: 100}\n  attn: {n_heads: 2, n_kv_heads: 0}\n");
  std::string run = dir.write("runs/r.yaml", "model:\n  preset: tiny\n  pattern: [attn]\n  mlp: {mult: 2}\n");
  Config c = load_config(run);
  EXPECT_EQ(c.model.d_model, 64);
  EXPECT_EQ(c.model.attn.n_heads, 2);
  EXPECT_EQ(c.model.mlp.type, "gelu");
  // Giving `pattern` (`mult`) drops the preset's `layers` (`hidden`), which would otherwise win.
  EXPECT_TRUE(c.model.layers.empty());
  EXPECT_EQ(c.model.mlp.hidden, 0);
  EXPECT_EQ(c.model.mlp.mult, 2.0);

  // Errors in the preset name the preset file and its line.
  dir.write("models/bad.yaml", "model:\n  d_model: 64\n  n_heads: 2\n");
  std::string bad_run = dir.write("runs/bad.yaml", "model: {preset: bad}\n");
  EXPECT_ERROR_MENTIONS(load_config(bad_run), "bad.yaml:3: model.n_heads: unknown key");
  EXPECT_ERROR_MENTIONS(load_config(run, {"model.preset=tinny"}), "--set model.preset=tinny: model.preset: ",
                        "unknown preset 'tinny'", "tiny", "gpt2-124m");
}

TEST(Config, SetOverridesScalarsListsAndNestedKeys) {
  Config c = parse_config(kIssueExample, "x.yaml",
                          {"model.d_model=512", "model.pattern=[attn,attn]", "model.attn.n_heads=8",
                           "run.name=my run", "optimizer.betas=[0.8, 0.99]", "model.layers=[attn, attn, attn, attn]"});
  EXPECT_EQ(c.model.d_model, 512);
  EXPECT_EQ(c.model.pattern, (std::vector<std::string>{"attn", "attn"}));
  EXPECT_EQ(c.model.attn.n_heads, 8);
  EXPECT_EQ(c.model.attn.n_kv_heads, 4);
  EXPECT_EQ(c.run.name, "my run");
  EXPECT_EQ(c.optimizer.betas[1], 0.99);
  EXPECT_EQ(c.model.layers.size(), 4u);
  // The later of two overrides of one key wins.
  EXPECT_EQ(parse_config("", "x.yaml", {"training.steps=300", "training.steps=400"}).training.steps, 400);
}

TEST(Config, UnknownKeysNameFileLineAndSuggest) {
  TempDir dir;
  std::string path = dir.write("x.yaml", "run: {name: a}\nmodel:\n  d_modle: 128\n");
  EXPECT_ERROR_MENTIONS(load_config(path), (path + ":3: model.d_modle: unknown key; did you mean 'd_model'?").c_str());
  EXPECT_ERROR_MENTIONS(parse_config("modle: {}\n", "x.yaml"), "x.yaml:1: modle: unknown key; did you mean 'model'?");
  EXPECT_ERROR_MENTIONS(parse_config("model:\n  attn:\n    n_head: 2\n", "x.yaml"),
                        "x.yaml:3: model.attn.n_head: unknown key; did you mean 'n_heads'?");
  EXPECT_ERROR_MENTIONS(parse_config("training: {zzzzzzzz: 1}\n", "x.yaml"), "training.zzzzzzzz: unknown key; expected one of",
                        "seq_len");
  EXPECT_ERROR_MENTIONS(parse_config("", "x.yaml", {"model.foo=1"}), "--set model.foo=1: model.foo: unknown key");
  EXPECT_ERROR_MENTIONS(parse_config("", "x.yaml", {"model.d_modl=1"}),
                        "--set model.d_modl=1: model.d_modl: unknown key; did you mean 'd_model'?");
}

TEST(Config, WrongTypesNameFileLineAndKey) {
  EXPECT_ERROR_MENTIONS(parse_config("training:\n  steps: abc\n", "x.yaml"),
                        "x.yaml:2: training.steps: expected an integer, got 'abc'");
  EXPECT_ERROR_MENTIONS(parse_config("training: {steps: 1.5}\n", "x.yaml"), "x.yaml:1: training.steps: expected an integer");
  EXPECT_ERROR_MENTIONS(parse_config("training: {steps: \"100\"}\n", "x.yaml"), "training.steps: expected an integer");
  EXPECT_ERROR_MENTIONS(parse_config("optimizer: {lr: fast}\n", "x.yaml"), "optimizer.lr: expected a number, got 'fast'");
  EXPECT_ERROR_MENTIONS(parse_config("model: {bias: yes}\n", "x.yaml"), "model.bias: expected true or false");
  EXPECT_ERROR_MENTIONS(parse_config("model: {pattern: attn}\n", "x.yaml"), "model.pattern: expected a list");
  EXPECT_ERROR_MENTIONS(parse_config("optimizer: {betas: [0.9]}\n", "x.yaml"), "optimizer.betas: expected a list of 2 numbers");
  EXPECT_ERROR_MENTIONS(parse_config("model: {attn: 4}\n", "x.yaml"), "model.attn: expected a mapping");
  EXPECT_ERROR_MENTIONS(parse_config("run: {seed: -1}\n", "x.yaml"), "run.seed: expected a non-negative integer");
  EXPECT_ERROR_MENTIONS(parse_config("", "x.yaml", {"model.d_model=abc"}),
                        "--set model.d_model=abc: model.d_model: expected an integer, got 'abc'");
}

TEST(Config, DuplicateKeysNameBothLines) {
  TempDir dir;
  std::string path = dir.write("dup.yaml", "optimizer:\n  lr: 1.0e-3\n  eps: 1.0e-8\n  lr: 2.0e-3\n");
  EXPECT_ERROR_MENTIONS(load_config(path), (path + ":4: optimizer.lr: duplicate key (first at line 2)").c_str());
  EXPECT_ERROR_MENTIONS(parse_config("model: {d_model: 8, d_model: 16}\n", "x.yaml"),
                        "x.yaml:1: model.d_model: duplicate key (first at line 1)");
  EXPECT_ERROR_MENTIONS(parse_config("run: {}\nmodel: {}\nrun: {}\n", "x.yaml"), "x.yaml:3: run: duplicate key (first at line 1)");
}

TEST(Config, FileAndSyntaxErrors) {
  EXPECT_ERROR_MENTIONS(load_config("/nonexistent/run.yaml"), "cannot open config file '/nonexistent/run.yaml'");
  EXPECT_ERROR_MENTIONS(parse_config("model:\n  pattern: [attn\n  d_model: 3\n", "x.yaml"), "x.yaml:");
  EXPECT_ERROR_MENTIONS(parse_config("- a\n- b\n", "x.yaml"), "x.yaml:1: expected a mapping of sections");
  EXPECT_ERROR_MENTIONS(parse_config("", "x.yaml", {"model.d_model"}), "--set model.d_model: expected section.key=value");
  EXPECT_ERROR_MENTIONS(parse_config("", "x.yaml", {"model..x=1"}), "expected section.key=value");
}

TEST(Config, SyntaxErrorsGiveLineAndColumn) {
  try {
    parse_config("run:\n  name: a\n   dir: b\n", "x.yaml");
    ADD_FAILURE() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("x.yaml:3:", 0), 0u) << e.what();
  }
}

TEST(Config, InconsistentValuesNameTheKeys) {
  auto parse = [](const std::string& text) { return parse_config(text, "x.yaml"); };
  EXPECT_ERROR_MENTIONS(parse("model:\n  d_model: 250\n"), "x.yaml: model.attn.n_heads: 4 does not divide model.d_model = 250");
  EXPECT_ERROR_MENTIONS(parse("model:\n  attn: {n_heads: 4, n_kv_heads: 3}\n"),
                        "x.yaml:2: model.attn.n_kv_heads: 3 does not divide model.attn.n_heads = 4");
  EXPECT_ERROR_MENTIONS(parse("training:\n  batch_tokens: 1000\n"), "x.yaml:2: training.batch_tokens: 1000 is not a multiple");
  EXPECT_ERROR_MENTIONS(parse("training: {batch_tokens: 4096, micro_batch: 8, seq_len: 256}\nparallel: {dp: 4}\n"),
                        "training.batch_tokens", "parallel.dp");
  EXPECT_ERROR_MENTIONS(parse("schedule: {decay: cosin}\n"), "x.yaml:1: schedule.decay: unknown value 'cosin'; did you mean 'cosine'?");
  EXPECT_ERROR_MENTIONS(parse("training: {precision: fp16}\n"), "training.precision: unknown value 'fp16'");
  EXPECT_ERROR_MENTIONS(parse("run: {device: gpu}\n"), "run.device: unknown device 'gpu'");
  EXPECT_EQ(parse("run: {device: cuda:1}\n").run.device, "cuda:1");
  EXPECT_ERROR_MENTIONS(parse("optimizer: {betas: [0.9, 1.0]}\n"), "x.yaml:1: optimizer.betas[1]: got 1; expected a value in [0, 1)");
  EXPECT_ERROR_MENTIONS(parse("training: {steps: 50}\n"), "x.yaml: schedule.warmup_steps: 100 exceeds training.steps = 50");
  EXPECT_ERROR_MENTIONS(parse("checkpoint: {resume: ''}\n"), "checkpoint.resume: is empty");
  EXPECT_EQ(parse("checkpoint: {resume: runs/a/checkpoints/step-00000100.h5}\n").checkpoint.resume,
            "runs/a/checkpoints/step-00000100.h5");
  EXPECT_ERROR_MENTIONS(parse("training: {eval_every: -1}\n"), "training.eval_every: got -1");
  EXPECT_ERROR_MENTIONS(parse("model: {attn: {pos: learned}, max_seq_len: 128}\n"),
                        "training.seq_len: 256 exceeds model.max_seq_len = 128");
  EXPECT_ERROR_MENTIONS(parse("model: {vocab_size: 0}\n"), "model.vocab_size: got 0; expected a positive value");
  EXPECT_EQ(parse("parallel: {bucket_mb: 0.5}\n").parallel.bucket_mb, 0.5);
  EXPECT_ERROR_MENTIONS(parse("parallel: {bucket_mb: 0}\n"), "parallel.bucket_mb: got 0; expected a positive value");
  EXPECT_ERROR_MENTIONS(parse("model: {layers: [attn, attn]}\n"),
                        "x.yaml:1: model.layers: has 2 entries but model.n_layers is 4");
  EXPECT_ERROR_MENTIONS(parse("model:\n  pattern:\n    - attn\n    - atn\n"),
                        "x.yaml:4: model.pattern[1]: unknown mixer type 'atn'; did you mean 'attn'?");
  EXPECT_ERROR_MENTIONS(parse("model: {preset: nope}\n"), "x.yaml:1: model.preset: unknown preset 'nope'");
}

TEST(Config, Mamba2SettingsAreChecked) {
  auto parse = [](const std::string& text) { return parse_config(text, "x.yaml"); };
  const Config c = parse("model: {pattern: [mamba2], d_model: 64, mamba2: {d_state: 16, headdim: 32, ngroups: 2, "
                         "chunk_size: 48, A_init_range: [2, 8]}}\n");
  EXPECT_EQ(c.model.mamba2.d_state, 16);
  EXPECT_EQ(c.model.mamba2.ngroups, 2);
  EXPECT_EQ(c.model.mamba2.chunk_size, 48);
  EXPECT_EQ(c.model.mamba2.A_init_range[1], 8);
  EXPECT_EQ(c.model.layers_code(), "D×4");
  EXPECT_EQ(parse_config(to_yaml(c), "resolved.yaml"), c);
  EXPECT_ERROR_MENTIONS(parse("model: {pattern: [mamba2], d_model: 64, mamba2: {headdim: 48}}\n"),
                        "x.yaml:1: model.mamba2.headdim: 48 does not divide the inner width expand * d_model = 128");
  EXPECT_ERROR_MENTIONS(parse("model: {pattern: [mamba2], d_model: 64, mamba2: {headdim: 32, ngroups: 3}}\n"),
                        "model.mamba2.ngroups: 3 does not divide the 4 heads");
  // Divisibility matters only where mamba2 is used; the other checks always apply.
  EXPECT_EQ(parse("model: {d_model: 64, mamba2: {headdim: 48}}\n").model.mamba2.headdim, 48);
  EXPECT_ERROR_MENTIONS(parse("model: {mamba2: {A_init_range: [0, 16]}}\n"), "model.mamba2.A_init_range: [0, 16]",
                        "expected 0 < lo <= hi");
  EXPECT_ERROR_MENTIONS(parse("model: {mamba2: {dt_min: 0.1, dt_max: 0.01}}\n"),
                        "model.mamba2.dt_max: 0.01 is below model.mamba2.dt_min = 0.1");
  EXPECT_ERROR_MENTIONS(parse("model: {mamba2: {chunk_size: 0}}\n"), "model.mamba2.chunk_size: got 0");
  EXPECT_ERROR_MENTIONS(parse("model: {mamba2: {head_dim: 32}}\n"), "model.mamba2.head_dim: unknown key; did you mean 'headdim'?");
  EXPECT_EQ(parse("model: {code: AD, n_layers: 2, overrides: {1: {mamba2: {d_state: 8}}}}\n").model.for_layer(1).mamba2.d_state,
            8);
}

TEST(Config, ToYamlParsesBackToAnEqualConfig) {
  std::vector<Config> configs = {
      Config{},
      parse_config("model: {preset: gpt2-124m, n_layers: 3}\n", "a.yaml", {"optimizer.lr=0.0001234567"}),
      parse_config("", "b.yaml", {"model.preset=llama-small", "model.layers=[attn, attn, attn, attn, attn, attn, attn, attn]"}),
  };
  Config odd;
  odd.run.name = "null";
  odd.run.dir = "a: b # c";
  odd.run.seed = 18446744073709551615ull;
  odd.data.val = "123";
  odd.optimizer.lr = 1.0 / 3.0;
  odd.optimizer.eps = 1e-300;
  odd.schedule.min_lr_ratio = 0.0;
  odd.model.attn.rope_theta = 500000;
  odd.training.recompute = true;
  odd.parallel = {2, 2, 2};
  odd.training.batch_tokens = 16 * 256 * 2;
  configs.push_back(odd);
  for (const Config& c : configs) {
    std::string text = to_yaml(c);
    Config back = parse_config(text, "resolved.yaml");
    EXPECT_EQ(back, c) << text;
    EXPECT_EQ(to_yaml(back), text);
  }
  EXPECT_NE(to_yaml(configs[1]).find("preset: gpt2-124m"), std::string::npos);
  EXPECT_NE(to_yaml(configs[0]).find("recompute: false"), std::string::npos);
}

// The example of model.overrides: a Mamba layer with a larger state and one windowed attention layer.
const char* kOverridesExample = R"(model:
  n_layers: 4
  code: MMHA
  attn: {window: 0}
  overrides:
    3: {attn: {window: 64}}
    0: {mamba: {d_state: 32}}
)";

TEST(Config, OverridesApplyToTheirLayerOnly) {
  Config c = parse_config(kOverridesExample, "x.yaml");
  const ModelConfig& m = c.model;
  EXPECT_EQ(m.overrides, (std::map<int64_t, std::string>{{0, "{mamba: {d_state: 32}}"}, {3, "{attn: {window: 64}}"}}));
  EXPECT_EQ(m.for_layer(0).mamba.d_state, 32);
  EXPECT_EQ(m.for_layer(0).attn.window, 0);
  EXPECT_EQ(m.for_layer(3).attn.window, 64);
  EXPECT_EQ(m.for_layer(3).mamba.d_state, 16);
  // A layer without an override is the base model; no layer config carries the overrides on.
  ModelConfig base = m;
  base.overrides.clear();
  EXPECT_EQ(m.for_layer(1), base);
  EXPECT_EQ(m.for_layer(2), base);
  EXPECT_TRUE(m.for_layer(3).overrides.empty());
  // Only the keys given are overridden: the rest of the section stays the base model's.
  Config nested = parse_config("model: {attn: {n_heads: 8, n_kv_heads: 2}, overrides: {1: {attn: {n_kv_heads: 4}}}}\n", "x.yaml");
  EXPECT_EQ(nested.model.for_layer(1).attn.n_heads, 8);
  EXPECT_EQ(nested.model.for_layer(1).attn.n_kv_heads, 4);
  EXPECT_EQ(nested.model.for_layer(0).attn.n_kv_heads, 2);
  EXPECT_ERROR_MENTIONS(m.for_layer(4), "model.overrides.4: layer 4 is out of range; expected 0 to 3");
}

TEST(Config, OverridesAreStoredCanonically) {
  // A string index, a block mapping, another key order and "064" all mean the same override.
  Config flow = parse_config("model:\n  overrides: {2: {norm_eps: 1.0e-6, mlp: {hidden: 64, type: gelu}}}\n", "x.yaml");
  Config block = parse_config(
      "model:\n  overrides:\n    \"2\":\n      mlp:\n        type: gelu\n        hidden: 064\n      norm_eps: 0.000001\n",
      "x.yaml");
  EXPECT_EQ(flow, block);
  EXPECT_EQ(flow.model.overrides.at(2), "{mlp: {type: gelu, hidden: 64}, norm_eps: 1e-06}");
  EXPECT_EQ(flow.model.for_layer(2).mlp.type, "gelu");
  EXPECT_EQ(flow.model.for_layer(2).norm_eps, 1e-6);
  EXPECT_EQ(parse_config("model: {overrides: {1: }}\n", "x.yaml").model.overrides.at(1), "{}");
}

TEST(Config, OverridesRoundTripThroughToYaml) {
  std::vector<Config> configs = {
      parse_config(kOverridesExample, "a.yaml"),
      parse_config("model: {preset: llama-small, overrides: {0: {attn: {pos: none, rope_theta: 500000}, swa: {window: 32}}}}\n",
                   "b.yaml"),
  };
  for (const Config& c : configs) {
    std::string text = to_yaml(c);
    Config back = parse_config(text, "resolved.yaml");
    EXPECT_EQ(back, c) << text;
    EXPECT_EQ(to_yaml(back), text);
  }
  EXPECT_NE(to_yaml(configs[0]).find("  overrides:\n    0:\n      mamba:\n        d_state: 32\n"), std::string::npos)
      << to_yaml(configs[0]);
  EXPECT_NE(to_yaml(Config{}).find("\n  overrides: {}\n"), std::string::npos);
  EXPECT_NE(configs[0], parse_config("model: {n_layers: 4, code: MMHA}\n", "a.yaml"));
}

TEST(Config, SetCreatesAndReplacesOverrides) {
  // --set builds the path it names, so it can add a layer's override or one key of an existing one.
  Config c = parse_config(kOverridesExample, "x.yaml",
                          {"model.overrides.1.attn.window=8", "model.overrides.3.attn.n_kv_heads=2"});
  EXPECT_EQ(c.model.for_layer(1).attn.window, 8);
  EXPECT_EQ(c.model.for_layer(3).attn.window, 64);
  EXPECT_EQ(c.model.for_layer(3).attn.n_kv_heads, 2);
  EXPECT_EQ(c.model.for_layer(0).mamba.d_state, 32);
  EXPECT_EQ(parse_config("", "x.yaml", {"model.overrides={2: {mamba: {d_state: 8}}}"}).model.for_layer(2).mamba.d_state, 8);
  EXPECT_ERROR_MENTIONS(parse_config("", "x.yaml", {"model.overrides.1.atn.window=8"}),
                        "--set model.overrides.1.atn.window=8: model.overrides.1.atn: unknown key; did you mean 'attn'?");
}

TEST(Config, OverrideErrorsNameTheKey) {
  auto parse = [](const std::string& text) { return parse_config(text, "x.yaml"); };
  EXPECT_ERROR_MENTIONS(parse("model:\n  overrides:\n    3:\n      d_model: 128\n"),
                        "x.yaml:4: model.overrides.3.d_model: cannot be overridden per layer; expected one of attn, swa, "
                        "mamba, mamba2, hedgehog, aaren, titans, mlp, norm_eps");
  EXPECT_ERROR_MENTIONS(parse("model: {overrides: {0: {overrides: {}}}}\n"), "model.overrides.0.overrides: cannot be overridden");
  EXPECT_ERROR_MENTIONS(parse("model:\n  n_layers: 4\n  overrides:\n    4: {attn: {window: 8}}\n"),
                        "x.yaml:4: model.overrides.4: layer 4 is out of range; expected 0 to 3 (model.n_layers is 4)");
  EXPECT_ERROR_MENTIONS(parse("model: {overrides: {-1: {}}}\n"), "model.overrides.-1: expected a layer index");
  EXPECT_ERROR_MENTIONS(parse("model: {overrides: {last: {}}}\n"), "model.overrides.last: expected a layer index");
  EXPECT_ERROR_MENTIONS(parse("model: {overrides: {1: {}, \"01\": {}}}\n"), "model.overrides.01: a second override of layer 1");
  EXPECT_ERROR_MENTIONS(parse("model: {overrides: [1, 2]}\n"), "model.overrides: expected a mapping from layer index");
  EXPECT_ERROR_MENTIONS(parse("model: {overrides: {1: 5}}\n"), "model.overrides.1: expected a mapping of layer settings");
  EXPECT_ERROR_MENTIONS(parse("model:\n  overrides:\n    1:\n      mamba: {d_stat: 32}\n"),
                        "x.yaml:4: model.overrides.1.mamba.d_stat: unknown key; did you mean 'd_state'?");
  EXPECT_ERROR_MENTIONS(parse("model:\n  overrides:\n    1: {norm_ep: 1}\n"),
                        "x.yaml:3: model.overrides.1.norm_ep: unknown key; did you mean 'norm_eps'?");
  EXPECT_ERROR_MENTIONS(parse("model: {overrides: {1: {attn: {window: wide}}}}\n"),
                        "model.overrides.1.attn.window: expected an integer, got 'wide'");
  // Per-layer values get the base model's consistency checks, named by the override's key.
  EXPECT_ERROR_MENTIONS(parse("model:\n  overrides:\n    2:\n      attn: {n_kv_heads: 3}\n"),
                        "x.yaml:4: model.overrides.2.attn.n_kv_heads: 3 does not divide model.overrides.2.attn.n_heads = 4");
  EXPECT_ERROR_MENTIONS(parse("model:\n  overrides:\n    0:\n      attn:\n        n_heads: 3\n"),
                        "x.yaml:5: model.overrides.0.attn.n_heads: 3 does not divide model.d_model = 256");
  EXPECT_ERROR_MENTIONS(parse("model: {overrides: {1: {mamba: {d_state: 0}}}}\n"),
                        "model.overrides.1.mamba.d_state: got 0; expected a positive value");
  EXPECT_ERROR_MENTIONS(parse("model: {overrides: {1: {attn: {pos: learned}}}}\n"),
                        "model.overrides.1.attn.pos: 'learned' with model.attn.pos = 'rope'; learned positions are model-wide");
  // Divisibility of a mixer's heads matters only where that mixer is the layer's.
  EXPECT_ERROR_MENTIONS(parse("model: {code: AH, n_layers: 2, overrides: {1: {hedgehog: {n_heads: 3}}}}\n"),
                        "model.overrides.1.hedgehog.n_heads: 3 does not divide model.d_model = 256");
  EXPECT_EQ(parse("model: {code: AH, n_layers: 2, overrides: {0: {hedgehog: {n_heads: 3}}}}\n").model.for_layer(0).hedgehog.n_heads, 3);
}

TEST(Config, ModelBuildsEachBlockFromItsLayerSettings) {
  Config c = parse_config(R"(model:
  d_model: 32
  n_layers: 3
  code: MMA
  attn: {n_heads: 4, n_kv_heads: 4}
  overrides:
    0: {mamba: {d_state: 32}}
    2: {attn: {n_kv_heads: 2}, mlp: {hidden: 48}}
)",
                          "x.yaml");
  LanguageModel model(c.model);
  std::map<std::string, Shape> shapes;
  for (auto& [name, p] : model.named_parameters()) shapes[name] = p->value.shape();
  const int64_t E = 2 * 32;  // mamba.expand * d_model
  EXPECT_EQ(shapes.at("blocks.0.mixer.A_log"), (Shape{E, 32}));
  EXPECT_EQ(shapes.at("blocks.1.mixer.A_log"), (Shape{E, 16}));
  // Layer 2: 4 query heads and 2 key/value heads of size 8; an explicit MLP width.
  EXPECT_EQ(shapes.at("blocks.2.mixer.c_attn.weight"), (Shape{(4 + 2 * 2) * 8, 32}));
  EXPECT_EQ(shapes.at("blocks.2.mlp.w1.weight"), (Shape{48, 32}));
  EXPECT_EQ(shapes.at("blocks.1.mlp.w1.weight"), (Shape{128, 32}));
}

TEST(Config, ResolvedLayersTileAndTruncateThePattern) {
  ModelConfig m;
  m.n_layers = 7;
  m.pattern = {"mamba", "mamba", "attn"};
  EXPECT_EQ(m.resolved_layers(),
            (std::vector<std::string>{"mamba", "mamba", "attn", "mamba", "mamba", "attn", "mamba"}));
  m.layers = {"attn", "mamba"};
  EXPECT_ERROR_MENTIONS(m.resolved_layers(), "model.layers", "2 entries", "n_layers is 7");
  m.n_layers = 2;
  EXPECT_EQ(m.resolved_layers(), (std::vector<std::string>{"attn", "mamba"}));
}

TEST(Config, LayersCodeCompressesRepeats) {
  auto code = [](std::vector<std::string> pattern, int64_t n_layers) {
    ModelConfig m;
    m.pattern = std::move(pattern);
    m.n_layers = n_layers;
    return m.layers_code();
  };
  EXPECT_EQ(code({"attn"}, 4), "A×4");
  EXPECT_EQ(code({"attn"}, 1), "A");
  EXPECT_EQ(code({"mamba", "mamba", "attn"}, 6), "MMA×2");
  EXPECT_EQ(code({"mamba", "mamba", "attn"}, 7), "MMA×2+M");
  EXPECT_EQ(code({"attn", "mamba", "mamba", "mamba"}, 4), "A+M×3");
  EXPECT_EQ(code({"hedgehog", "attn", "titans"}, 3), "HAT");
  EXPECT_EQ(code({"mamba", "mamba", "mamba", "attn"}, 8), "MMMA×2");
}

}  // namespace
}  // namespace seqtrain::train
