// Activation recompute: run a block without keeping its intermediate activations, and run it
// again during backward to get them. Trades one extra forward of the block for its activations'
// memory. The block must be a deterministic function of its inputs and of the parameters it
// captures (random draws must come from Philox with explicit offsets, which makes them so).
#pragma once
#include <functional>
#include <vector>

#include "core/tensor.h"

namespace seqtrain::autograd {

using BlockFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;

// Returns block(inputs). When recording, only `inputs` are saved; backward recomputes block on
// detached copies of them with recording on, back-propagates through that, sends the parameter
// gradients to the parameters' .grad and returns the input gradients.
std::vector<Tensor> checkpoint(const BlockFn& block, const std::vector<Tensor>& inputs);

}  // namespace seqtrain::autograd
