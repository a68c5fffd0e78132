// HDF5 checkpoints (DESIGN.md §6): one file per checkpoint, every tensor stored with its GLOBAL
// (unsharded) shape as f32, so a run can resume on another dp/tp/cp layout by reading hyperslabs.
//
// File layout (readable with h5dump and h5py; names are the parameter names, dots included):
//   /                      attrs: format="seqtrain-checkpoint", format_version, step, tokens_seen,
//                                 data_position (global sample count), rng_seed, rng_offset, lr,
//                                 layers, mesh, and complete=1 (written last: the completion marker)
//   /config                the resolved config text (a string dataset: it can exceed the 64 KiB
//                          attribute limit)
//   /model/<param>         f32, global shape, in declaration order (creation order is tracked)
//   /optim/<param>/m, v    f32 AdamW moments, same shape as the parameter
//
// Commit protocol (reference/ecosystem.md §3.4): write <name>.tmp, close, fsync, rename, fsync the
// folder; then the one-line `latest` pointer the same way; only then delete older checkpoints. A
// file killed mid-write is either still named *.tmp, fails to open (truncated), or lacks the
// completion marker, and is never chosen. One writer per folder.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace seqtrain::train {

inline constexpr int kCheckpointFormatVersion = 1;

struct CheckpointMeta {
  int64_t step = 0;
  int64_t tokens_seen = 0;
  int64_t data_position = 0;  // global sample counter: independent of the dp size
  uint64_t seed = 0;          // counter-based RNG state is (seed, offset)
  uint64_t rng_offset = 0;
  double lr = 0;              // schedule state at save time (informational: lr is a function of step)
  std::string layers;         // canonical mixer list code, e.g. "A×12"
  std::string mesh = "dp=1,tp=1,cp=1";
  std::string config_yaml;    // resolved config, stored as the dataset /config
  int format_version = kCheckpointFormatVersion;  // set on read; save always writes the current one
};

// A parameter by name; the tensor may live on any device in any floating dtype.
struct NamedTensor {
  std::string name;
  Tensor value;
};

// AdamW moments of one parameter (same shape as the parameter).
struct OptimizerSlot {
  std::string name;
  Tensor m, v;
};

// Writes <dir>/step-<step, 8 digits>.h5 with the commit protocol above (creating `dir` if needed),
// points <dir>/latest at it, then deletes all but the newest `keep` committed checkpoints (keep <= 0
// keeps all) and any leftover *.h5.tmp. Returns the path written. Names must be unique, non-empty
// and free of '/'.
std::string save_checkpoint(const std::string& dir, const CheckpointMeta& meta,
                            const std::vector<NamedTensor>& params,
                            const std::vector<OptimizerSlot>& optim, int64_t keep);

// The checkpoint to resume from: the file `latest` names if it opens and carries the completion
// marker, else the highest-step step-*.h5 that does. *.tmp, truncated and unmarked files are
// skipped. Empty when the folder holds none (or does not exist).
std::optional<std::string> find_latest_checkpoint(const std::string& dir);

CheckpointMeta read_checkpoint_meta(const std::string& path);

// Loads into existing tensors (any device and floating dtype; converted from f32). Every parameter
// (and, when `optim` is non-empty, every optimizer slot) must exist with exactly the tensor's shape,
// and the checkpoint must hold no parameter the model lacks; otherwise throws one seqtrain::Error
// naming the file, each mismatched shape, and the missing / unexpected names, before any tensor is
// modified. Pass an empty `optim` to load the model only.
void load_checkpoint(const std::string& path, const std::vector<NamedTensor>& params,
                     const std::vector<OptimizerSlot>& optim);

// Human-readable summary for `seqtrain inspect`: meta, config, and a parameter table
// (name, shape, numel, rms).
std::string describe_checkpoint(const std::string& path);

// Rows [start, start + count) along `dim` of /model/<name>, every other dimension whole, as a CPU
// f32 tensor: one rank's shard when resuming on a different layout.
Tensor read_parameter_slice(const std::string& path, const std::string& name, int64_t dim,
                            int64_t start, int64_t count);

}  // namespace seqtrain::train
