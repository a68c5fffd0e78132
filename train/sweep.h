// Hyperparameter sweeps (`seqtrain sweep SWEEP.yaml`): a spec names a base run config, the axes to
// vary (grid | random | list) and fixed overrides; every trial is base + set + its axis values, run as
// a child `seqtrain train` process in <out>/trials/<id>/. The whole spec, and every trial's resolved
// config, is validated before anything is created. Finished trials (summary.json with status ok) are
// skipped on a re-run, so a killed sweep resumes where it stopped. Up to `jobs` trials run at once,
// each in a job slot (with `gpus`, slot s sees only GPU gpus[s % gpus.size()]). A grid axis whose
// values are maps is a grouped axis: each value sets all of its keys together (e.g. seq_len with
// MQAR's K), and each of those keys is a swept key (a results.csv column). For task runs (data.task) the summaries
// and results.csv add the answer accuracies: val_acc, best_val_acc, val_seq_acc, val_acc@L.
#pragma once
#include <csignal>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "train/config.h"

namespace seqtrain::train {

// One trial: its axis values as ("model.d_model", "64") pairs in spec order (values are YAML, the
// same text `--set key=value` takes), the repeat index, and the id derived from both.
struct Trial {
  std::vector<std::pair<std::string, std::string>> axes;
  int64_t repeat = 0;
  std::string id;      // 12 hex digits: FNV-1a 64 of the sorted "key=value" list and the repeat
  Config config;       // base + set + axes, run.seed + repeat, run.dir = <out>/trials/<id>
};

struct SweepSpec {
  std::string path;    // the spec file
  std::string base;    // the base run config
  std::string out;     // the sweep folder
  std::string method;  // grid | random | list
  std::vector<std::string> swept_keys;  // every axis key, in order of first appearance
  std::vector<Trial> trials;
  std::string metric = "val_loss";
  std::string goal = "minimize";  // minimize | maximize
  std::string launcher;           // empty = run the binary directly; else a prefix with {nproc}
  int64_t nproc = 1;
};

struct SweepOptions {
  std::vector<std::string> set;  // `--set key=value` applied to every trial after the spec's `set`
  std::string out;               // replaces the spec's `out` when not empty
  double timeout_s = 0;          // > 0: a trial running longer is killed (status timeout)
  bool retry_failed = false;     // re-run trials whose summary says nan | crash | timeout | oom
  bool rerun_changed = false;    // set aside (trials/<id>.changed-K) and re-run trials whose folder
                                 // holds a config other than the spec now gives; else that is an error
  int64_t jobs = 1;              // trial processes at once (>= 1)
  std::vector<int> gpus;         // not empty: job slot s runs with CUDA_VISIBLE_DEVICES=gpus[s % size]
};

// The sweep got SIGINT or SIGTERM: the running trials were stopped (SIGTERM, then SIGKILL after a
// grace period or a second signal) and have no summary, so a re-run resumes them.
struct SweepInterrupted : std::runtime_error {
  SweepInterrupted(int sig, size_t stopped)
      : std::runtime_error(std::string("interrupted by ") + (sig == SIGINT ? "SIGINT" : "SIGTERM") + "; stopped " +
                           std::to_string(stopped) + " running trial" + (stopped == 1 ? "" : "s") +
                           " (a re-run resumes them)"),
        signal(sig) {}
  int signal;
};

// Reads and validates the spec and resolves every trial's config. Creates nothing. Throws
// ConfigError ("<file>:<line>: <key>: <what>; expected <what>") on the first problem.
SweepSpec load_sweep(const std::string& path, const SweepOptions& options);

// Runs the trials, options.jobs at a time, started in trial order (skipping finished ones). When a
// trial ends it writes its summary.json, rebuilds <out>/results.csv (in trial order, so the same
// whatever order trials end in) and prints its line. `self` is the seqtrain binary. Returns the number
// of trials whose status is not ok; throws SweepInterrupted on SIGINT/SIGTERM.
int run_sweep(const SweepSpec& spec, const SweepOptions& options, const std::string& self);

}  // namespace seqtrain::train
