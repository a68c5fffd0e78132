// Whether differentiable ops record history (thread-local; on by default).
#pragma once

namespace seqtrain::autograd {

bool grad_enabled();
void set_grad_enabled(bool enabled);

// Disables recording for a scope (evaluation, generation, optimizer updates, backward itself).
class NoGradGuard {
 public:
  NoGradGuard() : prev_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// Re-enables recording inside a NoGradGuard (used by activation recompute).
class EnableGradGuard {
 public:
  EnableGradGuard() : prev_(grad_enabled()) { set_grad_enabled(true); }
  ~EnableGradGuard() { set_grad_enabled(prev_); }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

}  // namespace seqtrain::autograd

namespace seqtrain {
using autograd::NoGradGuard;
}
