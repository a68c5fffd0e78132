// The `seqtrain` command line: one binary, one subcommand per task (DESIGN.md §7).
// Exit status 0 only on success; errors are one line on stderr.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "core/philox.h"
#include "data/prepare.h"
#include "distributed/mesh.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/generate.h"
#include "train/layer_run.h"
#include "train/sweep.h"
#include "train/trainer.h"

using namespace seqtrain;

namespace {

const char* kUsage =
    "usage: seqtrain <command> [options]\n"
    "\n"
    "commands:\n"
    "  train CONFIG.yaml [--set key=value ...]   train (resumes from <run.dir>/checkpoints automatically)\n"
    "  generate --checkpoint FILE [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
    "  prepare-data --text FILE --out DIR [--val-fraction F]\n"
    "  inspect CHECKPOINT.h5\n"
    "  bench CONFIG.yaml [--steps N] [--warmup N] [--set key=value ...]\n"
    "  layer-run CASE.h5 OUT.h5                  run one layer on given weights and inputs\n"
    "  sweep SWEEP.yaml [--set key=value ...] [--out DIR] [--timeout S] [--retry-failed] [--rerun-changed] [--jobs N]\n"
    "        [--gpus LIST]\n"
    "\n"
    "Run 'seqtrain <command> --help' for a command's options.\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Parses "--name value" pairs and positional arguments; `repeatable` names may appear many times.
struct Args {
  std::vector<std::string> positional;
  std::multimap<std::string, std::string> options;
  bool help = false;

  Args(int argc, char** argv, int first, const std::vector<std::string>& known) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        help = true;
      } else if (a.rfind("--", 0) == 0) {
        std::string name = a.substr(2), value;
        size_t eq = name.find('=');
        if (eq != std::string::npos && name.rfind("set", 0) != 0) {
          value = name.substr(eq + 1);
          name = name.substr(0, eq);
        } else if (eq != std::string::npos) {  // --set=k=v
          value = name.substr(4);
          name = "set";
        } else {
          if (i + 1 >= argc) throw UsageError("option --" + name + " needs a value");
          value = argv[++i];
        }
        bool ok = false;
        for (const auto& k : known) ok |= k == name;
        if (!ok) throw UsageError("unknown option --" + name);
        options.emplace(name, value);
      } else {
        positional.push_back(a);
      }
    }
  }
  bool has(const std::string& k) const { return options.count(k) > 0; }
  std::string get(const std::string& k, const std::string& fallback = "") const {
    auto it = options.find(k);
    return it == options.end() ? fallback : it->second;
  }
  std::vector<std::string> all(const std::string& k) const {
    std::vector<std::string> out;
    for (auto [it, end] = options.equal_range(k); it != end; ++it) out.push_back(it->second);
    return out;
  }
  double number(const std::string& k, double fallback) const {
    if (!has(k)) return fallback;
    try {
      size_t used = 0;
      double v = std::stod(get(k), &used);
      if (used == get(k).size()) return v;
    } catch (const std::exception&) {
    }
    throw UsageError("--" + k + ": expected a number, got '" + get(k) + "'");
  }
};

int cmd_train(int argc, char** argv) {
  Args a(argc, argv, 2, {"set"});
  if (a.help) {
    std::printf("usage: seqtrain train CONFIG.yaml [--set key=value ...]\n\n"
                "Trains the model the config describes. Resumes from the newest complete checkpoint in\n"
                "<run.dir>/checkpoints (checkpoint.resume: auto | none | PATH). SIGTERM/SIGINT write a\n"
                "checkpoint at the end of the current step and exit 0. --set overrides any key; the value\n"
                "is YAML, e.g. --set training.steps=100 --set model.pattern=[attn].\n\n"
                "Data parallel: mpirun -np N seqtrain train CONFIG.yaml (or scripts/launch.sh -n N -- ...);\n"
                "parallel.dp: -1 takes the world size, training.micro_batch is per rank and\n"
                "training.batch_tokens is global.\n");
    return 0;
  }
  if (a.positional.size() != 1) throw UsageError("train takes exactly one CONFIG.yaml");
  distributed::World world(&argc, &argv);
  try {
    train::Config cfg = train::load_config(a.positional[0], a.all("set"));
    distributed::Mesh mesh(world, cfg.parallel.dp, cfg.parallel.cp, cfg.parallel.tp);
    train::TrainResult r = train::train(cfg, world, mesh);
    if (world.rank() == 0)
      std::printf("trained to step %lld: loss %.4f%s%s\n", (long long)r.step, r.last_loss,
                  r.last_val_bpb >= 0 ? (", val " + std::to_string(r.last_val_bpb) + " bits per byte").c_str() : "",
                  r.last_val_acc >= 0 ? (", val accuracy " + std::to_string(r.last_val_acc)).c_str() : "");
    return 0;
  } catch (const std::exception& e) {
    if (world.size() == 1) throw;  // reported by main() as one line, like every other command
    // The other ranks may be blocked in a collective waiting for this one: name the rank and the
    // cause, then end the whole job instead of leaving them to hang.
    std::fprintf(stderr, "seqtrain train: rank %d of %d: error: %s\n", world.rank(), world.size(), e.what());
    std::fflush(stderr);
    world.abort(1);
  }
}

int cmd_generate(int argc, char** argv) {
  Args a(argc, argv, 2, {"checkpoint", "prompt", "tokens", "temperature", "top-k", "seed", "device"});
  if (a.help) {
    std::printf("usage: seqtrain generate --checkpoint FILE [--prompt TEXT] [--tokens N=200]\n"
                "                         [--temperature T=0.8] [--top-k K=40] [--seed S=1] [--device auto]\n\n"
                "Samples a continuation of the prompt with the model's recurrent step (KV cache).\n"
                "FILE may also be a run folder or its checkpoints folder (the newest checkpoint is used).\n");
    return 0;
  }
  if (!a.has("checkpoint")) throw UsageError("generate needs --checkpoint FILE");
  std::string path = a.get("checkpoint");
  for (const std::string& dir : {path + "/checkpoints", path})
    if (auto latest = train::find_latest_checkpoint(dir)) {
      path = *latest;
      break;
    }
  train::CheckpointMeta meta = train::read_checkpoint_meta(path);
  train::Config cfg = train::parse_config(meta.config_yaml, path + ":/config", {});
  Device device = train::resolve_device(a.get("device", "auto"));
  LanguageModel model(cfg.model);
  model.to(device);
  std::vector<train::NamedTensor> params;
  for (auto& np : model.named_parameters()) params.push_back({np.name, np.param->value});
  train::load_checkpoint(path, params, {});
  train::SampleOptions o;
  o.tokens = int64_t(a.number("tokens", 200));
  o.temperature = a.number("temperature", 0.8);
  o.top_k = int64_t(a.number("top-k", 40));
  o.seed = uint64_t(a.number("seed", 1));
  o.context = cfg.training.seq_len;
  std::string prompt = a.get("prompt", "");
  std::cout << prompt << std::flush;
  train::generate(model, train::compute_dtype(cfg, device), device, prompt, o,
                  [](const std::string& piece) { std::cout << piece << std::flush; });
  std::cout << std::endl;
  return 0;
}

int cmd_prepare(int argc, char** argv) {
  Args a(argc, argv, 2, {"text", "out", "val-fraction"});
  if (a.help) {
    std::printf("usage: seqtrain prepare-data --text FILE --out DIR [--val-fraction F=0.1]\n\n"
                "Byte-tokenises FILE into DIR/train.bin and DIR/val.bin (llm.c shard format, uint16);\n"
                "the last F of the bytes become the validation split.\n");
    return 0;
  }
  if (!a.has("text") || !a.has("out")) throw UsageError("prepare-data needs --text FILE and --out DIR");
  data::PrepareStats s = data::prepare_text_shards(a.get("text"), a.get("out"), a.number("val-fraction", 0.1));
  std::printf("wrote %s (%lld tokens) and %s (%lld tokens)\n", s.train_path.c_str(), (long long)s.train_tokens,
              s.val_path.c_str(), (long long)s.val_tokens);
  return 0;
}

int cmd_inspect(int argc, char** argv) {
  Args a(argc, argv, 2, {});
  if (a.help) {
    std::printf("usage: seqtrain inspect CHECKPOINT.h5\n\nPrints step, layout, config and the parameter table.\n");
    return 0;
  }
  if (a.positional.size() != 1) throw UsageError("inspect takes exactly one CHECKPOINT.h5");
  std::printf("%s", train::describe_checkpoint(a.positional[0]).c_str());
  return 0;
}

int cmd_bench(int argc, char** argv) {
  Args a(argc, argv, 2, {"set", "steps", "warmup"});
  if (a.help) {
    std::printf("usage: seqtrain bench CONFIG.yaml [--steps N=10] [--warmup N=3] [--set key=value ...]\n\n"
                "Times full training steps (forward, backward, clip, AdamW) of the configured model on\n"
                "random tokens and prints steady-state tokens/s, MFU and memory. No data files needed.\n");
    return 0;
  }
  if (a.positional.size() != 1) throw UsageError("bench takes exactly one CONFIG.yaml");
  train::Config cfg = train::load_config(a.positional[0], a.all("set"));
  const int64_t steps = int64_t(a.number("steps", 10)), warmup = int64_t(a.number("warmup", 3));
  Device device = train::resolve_device(cfg.run.device);
  train::TrainState state(cfg, device);
  const auto& tc = cfg.training;
  const int64_t micro = tc.batch_tokens / (tc.micro_batch * tc.seq_len);
  int64_t draw = 0;
  auto next = [&] {
    std::vector<int64_t> v(size_t(tc.micro_batch * (tc.seq_len + 1)));
    for (auto& x : v) x = int64_t(philox::uniform(cfg.run.seed, 77, uint64_t(draw++), 0, double(cfg.model.vocab_size)));
    Tensor all = Tensor::from_ints(v, {tc.micro_batch, tc.seq_len + 1}, DType::I32);
    return std::make_pair(all.slice(1, 0, tc.seq_len).contiguous(), all.slice(1, 1, tc.seq_len + 1).contiguous());
  };
  for (int64_t i = 0; i < warmup; ++i) state.step(i, micro, next);
  auto t0 = std::chrono::steady_clock::now();
  train::TrainState::StepStats s{};
  for (int64_t i = 0; i < steps; ++i) s = state.step(warmup + i, micro, next);
  double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / double(steps);
  double tok_s = double(tc.batch_tokens) / sec;
  double flops = state.model().flops_per_token(tc.seq_len) * tok_s;
  std::printf("bench %s: %s %s, %.1fM params, %lldx%lld tokens/step | %.1f ms/step | %.0f tokens/s | %.1f TFLOP/s"
              " | MFU %.1f%% (of 989 TFLOP/s) | mem %.2f GiB | loss %.3f\n",
              cfg.run.name.c_str(), device.str().c_str(), dtype_name(state.compute()),
              double(state.model().num_parameters()) / 1e6, (long long)tc.micro_batch * micro, (long long)tc.seq_len,
              sec * 1e3, tok_s, flops / 1e12, 100.0 * flops / 989e12, train::memory_in_use_gib(device), s.loss);
  return 0;
}

int cmd_layer_run(int argc, char** argv) {
  Args a(argc, argv, 2, {});
  if (a.help) {
    std::printf("usage: seqtrain layer-run CASE.h5 OUT.h5\n\n"
                "Runs one layer forward, and backward when the case holds an upstream gradient, on the\n"
                "weights and inputs in CASE.h5, and writes OUT.h5. For checking layers against other\n"
                "implementations; scripts/export_layer_case.py writes cases from PyTorch.\n\n"
                "CASE.h5: attributes layer (a mixer type: attn, mamba, mamba2, hedgehog, aaren; or block =\n"
                "norm1, mixer, norm2, mlp with the residuals), dtype (f32 | f64), device (cpu | cuda);\n"
                "dataset config (YAML: a `model:` section, or the bare mapping of model settings);\n"
                "params/<name>, one dataset per parameter as docs/layers.md names and shapes them;\n"
                "inputs/x [B, T, D]; optional inputs/grad_y [B, T, D].\n"
                "OUT.h5: outputs/y (a mixer's output has no residual); with grad_y also grads/x and\n"
                "grads/params/<name> for every parameter (zeros where no gradient arrived).\n");
    return 0;
  }
  if (a.positional.size() != 2) throw UsageError("layer-run takes CASE.h5 and OUT.h5");
  train::LayerRunSummary s = train::run_layer_case(a.positional[0], a.positional[1]);
  const std::string layer = s.layer == "block" ? "block (" + s.mixer + ")" : s.layer;
  std::printf("layer-run %s: %s %s, %lld parameters, %s -> %s\n", layer.c_str(), dtype_name(s.dtype),
              s.device.str().c_str(), (long long)s.parameters, s.backward ? "forward and backward" : "forward",
              a.positional[1].c_str());
  return 0;
}

// "0,1,3" -> {0, 1, 3}; anything but non-negative integers separated by commas is a usage error.
std::vector<int> parse_gpus(const std::string& list) {
  std::vector<int> gpus;
  for (size_t at = 0;;) {
    const size_t comma = list.find(',', at);
    const std::string entry = list.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    if (entry.empty() || entry.size() > 6 || entry.find_first_not_of("0123456789") != std::string::npos)
      throw UsageError("--gpus: expected comma-separated GPU indices (non-negative integers, e.g. 0,1), got '" + list +
                       "'");
    gpus.push_back(std::stoi(entry));
    if (comma == std::string::npos) return gpus;
    at = comma + 1;
  }
}

int cmd_sweep(int argc, char** argv) {
  // --retry-failed and --rerun-changed are flags; Args only knows "--name value" options.
  std::vector<char*> rest(argv, argv + argc);
  bool retry_failed = false, rerun_changed = false;
  rest.erase(std::remove_if(rest.begin() + 2, rest.end(),
                            [&](char* s) {
                              if (std::strcmp(s, "--retry-failed") == 0) return retry_failed = true;
                              if (std::strcmp(s, "--rerun-changed") == 0) return rerun_changed = true;
                              return false;
                            }),
             rest.end());
  Args a(int(rest.size()), rest.data(), 2, {"set", "out", "timeout", "jobs", "gpus"});
  if (a.help) {
    std::printf(
        "usage: seqtrain sweep SWEEP.yaml [--set key=value ...] [--out DIR] [--timeout SECONDS] [--retry-failed]\n"
        "                      [--rerun-changed] [--jobs N] [--gpus LIST]\n\n"
        "Runs one training per point of a hyperparameter sweep, --jobs N at a time (default 1), each as\n"
        "a child 'seqtrain train' in <out>/trials/<id>/ (id: a hash of the point's values and repeat\n"
        "index).\n"
        "The spec (keys: base, out, method, grid | random + samples | list, set, repeats, metric,\n"
        "launcher, nproc) and every trial's config are validated before anything starts:\n\n"
        "  base: configs/runs/smoke.yaml     # every trial = base + set + --set + its axis values\n"
        "  out: sweeps/demo\n"
        "  method: grid                      # grid | random | list\n"
        "  grid: {model.pattern: [[attn], [mamba]], model.d_model: [32, 64]}\n"
        "  # a grouped axis (values are maps) sets several keys in step; its name is only a label:\n"
        "  #   shape: [{training.seq_len: 64, data.task.mqar.num_kv_pairs: 4}, {training.seq_len: 128, ...}]\n"
        "  # random: {optimizer.lr: {dist: log_uniform, min: 1.0e-4, max: 3.0e-3}}   (uniform | log_uniform:\n"
        "  #   min, max; choice: values)\n"
        "  # samples: 20\n"
        "  # list: [{model.pattern: [attn]}, {model.pattern: [hedgehog], model.d_model: 48}]\n"
        "  set: {training.steps: 200}\n"
        "  repeats: 1                        # seeds per point: repeat r trains with run.seed + r\n"
        "  metric: {name: val_loss, goal: minimize}   # val_loss | best_val_loss | val_bpb | best_val_bpb |\n"
        "                                    # val_acc | best_val_acc | val_seq_acc | val_acc@L (tasks) |\n"
        "                                    # tokens_per_s\n"
        "  launcher: null                    # e.g. \"mpirun -np {nproc}\" with nproc: 2\n\n"
        "Each trial leaves summary.json (status ok | nan | crash | timeout | oom, n_params, val loss and\n"
        "bpb, for tasks the answer accuracy val_acc, best_val_acc, val_seq_acc and val_acc@L per\n"
        "data.task.eval_lengths entry, median tokens/s, tokens seen, wall time); <out>/results.csv is\n"
        "rebuilt from them. A re-run skips trials that finished ok and resumes a killed one from its\n"
        "last checkpoint; failed ones re-run only with --retry-failed. A trial folder whose trial.yaml\n"
        "differs from the config the spec gives now (a changed base, set or --set: the id hashes only\n"
        "the axis values) stops the sweep before anything starts, naming the changed keys;\n"
        "--rerun-changed moves such folders aside (trials/<id>.changed-K) and runs them again.\n"
        "--timeout kills a trial (SIGKILL)\n"
        "after SECONDS. --set applies to every trial (e.g. data paths). Plots and report.md:\n"
        "scripts/plot_sweep.py, run at the end when python3 has matplotlib and pandas.\n\n"
        "--jobs N: at most N trials run at once, started in trial order; each trial's line is printed\n"
        "when it ends, and results.csv (in trial order) comes out the same whatever order they end in.\n"
        "--gpus LIST (e.g. 0,1,2,3): job slot s runs its trial with CUDA_VISIBLE_DEVICES=LIST[s %% len],\n"
        "so --jobs 4 --gpus 0,1,2,3 puts one trial on each GPU (without --gpus the environment is\n"
        "untouched: all jobs share the visible GPUs). SIGINT/SIGTERM stop the running trials (they\n"
        "checkpoint; a re-run resumes them) and end the sweep with exit status 128 + signal.\n");
    return 0;
  }
  if (a.positional.size() != 1) throw UsageError("sweep takes exactly one SWEEP.yaml");
  train::SweepOptions options;
  options.set = a.all("set");
  options.out = a.get("out");
  options.timeout_s = a.number("timeout", 0);
  options.retry_failed = retry_failed;
  options.rerun_changed = rerun_changed;
  const std::string jobs = a.get("jobs", "1");
  if (jobs.empty() || jobs.size() > 6 || jobs.find_first_not_of("0123456789") != std::string::npos ||
      std::stoll(jobs) < 1)
    throw UsageError("--jobs: expected an integer >= 1, got '" + jobs + "'");
  options.jobs = std::stoll(jobs);
  if (a.has("gpus")) options.gpus = parse_gpus(a.get("gpus"));
  train::SweepSpec spec = train::load_sweep(a.positional[0], options);
  std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  // Trials that end in nan, crash, timeout or oom are results of the sweep, not its failure.
  try {
    train::run_sweep(spec, options, self);
  } catch (const train::SweepInterrupted& e) {
    std::fprintf(stderr, "seqtrain sweep: %s\n", e.what());
    return 128 + e.signal;
  }

  const std::string script = std::string(SEQTRAIN_SOURCE_DIR) + "/scripts/plot_sweep.py";
  const std::string plot = "/usr/bin/python3 " + script + " " + spec.out + " --metric " + spec.metric +
                           " --goal " + spec.goal;
  std::fflush(stdout);
  if (std::system("/usr/bin/python3 -c 'import matplotlib, pandas' >/dev/null 2>&1") == 0) {
    if (std::system(plot.c_str()) != 0) std::printf("plotting failed; rerun: %s\n", plot.c_str());
  } else {
    std::printf("plots and report.md: install matplotlib and pandas for /usr/bin/python3, then run\n  %s\n",
                plot.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::printf("%s", kUsage);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  const std::map<std::string, int (*)(int, char**)> commands = {
      {"train", cmd_train}, {"generate", cmd_generate}, {"prepare-data", cmd_prepare},
      {"inspect", cmd_inspect}, {"bench", cmd_bench}, {"layer-run", cmd_layer_run},
      {"sweep", cmd_sweep}};
  auto it = commands.find(cmd);
  if (it == commands.end()) {
    std::fprintf(stderr, "seqtrain: unknown command '%s'\n%s", cmd.c_str(), kUsage);
    return 2;
  }
  try {
    return it->second(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "seqtrain %s: %s (see 'seqtrain %s --help')\n", cmd.c_str(), e.what(), cmd.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "seqtrain %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
