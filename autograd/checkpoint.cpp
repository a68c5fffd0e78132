#include "autograd/checkpoint.h"

#include "autograd/grad_mode.h"
#include "autograd/node.h"

namespace seqtrain::autograd {

std::vector<Tensor> checkpoint(const BlockFn& block, const std::vector<Tensor>& inputs) {
  std::vector<Tensor> outputs;
  {
    NoGradGuard no_grad;
    outputs = block(inputs);
  }
  if (!grad_enabled()) return outputs;
  // The block may capture parameters that require grad even when no input does: record whenever
  // recording is on, with the inputs as the node's edges.
  std::vector<Tensor> saved;
  for (const Tensor& t : inputs) saved.push_back(t.defined() ? t.detach() : t);
  std::vector<bool> input_requires;
  for (const Tensor& t : inputs) input_requires.push_back(t.defined() && t.requires_grad());
  // Outputs are fresh tensors made under NoGradGuard; give each an independent impl to attach to.
  std::vector<Tensor> attached;
  for (const Tensor& o : outputs) attached.push_back(o.detach());
  BackwardFn backward = [block, saved, input_requires](const std::vector<Tensor>& grad_outputs) {
    std::vector<Tensor> replay_inputs;
    for (size_t i = 0; i < saved.size(); ++i) {
      Tensor t = saved[i].defined() ? saved[i].detach() : saved[i];
      if (t.defined() && input_requires[i]) t.set_requires_grad(true);
      replay_inputs.push_back(t);
    }
    std::vector<Tensor> roots, grads;
    {
      EnableGradGuard enable;
      std::vector<Tensor> replay = block(replay_inputs);
      for (size_t i = 0; i < replay.size(); ++i) {
        if (!replay[i].requires_grad()) continue;
        roots.push_back(replay[i]);
        grads.push_back(grad_outputs[i]);
      }
    }
    if (!roots.empty()) run_backward(roots, grads);
    std::vector<Tensor> grad_inputs;
    for (const Tensor& t : replay_inputs) grad_inputs.push_back(t.defined() ? t.grad() : Tensor());
    return grad_inputs;
  };
  // Recorded even when no input requires grad: parameters inside the block may.
  attach(std::make_shared<FunctionNode>("checkpoint", std::move(backward)), inputs, attached);
  return attached;
}

}  // namespace seqtrain::autograd
