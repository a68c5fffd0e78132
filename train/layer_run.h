// `seqtrain layer-run`: one layer forward (and backward) on weights and inputs given in an HDF5
// file, so that seqtrain's layers can be checked against independent implementations (PyTorch
// references written with scripts/export_layer_case.py) and weights moved between the two.
//
// CASE.h5 (as h5py writes it):
//   /                  attrs: layer  = a mixer type ("attn", "mamba", ...) or "block"
//                             dtype  = f32 | f64 (the compute dtype; parameters are used in it too)
//                             device = cpu | cuda | cuda:N
//   /config            string: YAML of the model settings, either a run config's `model:` section
//                      ("model: {d_model: 8, ...}") or the bare mapping ("{d_model: 8, ...}")
//   /params/<name>     one float dataset per parameter of the layer, named and shaped as in
//                      docs/layers.md (PyTorch conventions: Linear weight [out, in]), no others
//   /inputs/x          [B, T, D]
//   /inputs/grad_y     optional, the shape of y: runs the backward from it
//
// OUT.h5:
//   /                  attrs: layer, dtype, device (copied from the case)
//   /outputs/y         [B, T, D]: the mixer's output (no residual) for a mixer, the block's for "block"
//   /grads/x           with grad_y: dL/dx for L = sum(y * grad_y)
//   /grads/params/<name>  with grad_y: every parameter (zeros where no gradient arrived)
// Every dataset of OUT.h5 is in the case's dtype.
#pragma once
#include <cstdint>
#include <string>

#include "core/device.h"
#include "core/dtype.h"

namespace seqtrain::train {

struct LayerRunSummary {
  std::string layer;       // as the case names it
  std::string mixer;       // the mixer type (for "block", the first entry of model.layers / pattern)
  DType dtype = DType::F32;
  Device device;
  int64_t parameters = 0;  // parameter tensors loaded
  bool backward = false;   // whether the case held inputs/grad_y
};

// Reads `case_path`, runs the layer and writes `out_path` (replaced if it exists). Any problem with
// the case (missing attribute or dataset, unknown layer, bad config, missing, extra or misshapen
// parameter, wrong input shape, CUDA requested but absent) throws one seqtrain::Error naming the
// file and what is wrong, before anything is written.
LayerRunSummary run_layer_case(const std::string& case_path, const std::string& out_path);

}  // namespace seqtrain::train
