// Finite-difference gradient check (f64, CPU): the analytic gradient of <w, f(inputs)> for a fixed
// random cotangent w, against central differences (f(x+h) - f(x-h)) / 2h, element by element.
// Every differentiable op is checked with it (tests/gradcheck/).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace seqtrain::autograd {

struct GradcheckOptions {
  double eps = 1e-6;   // finite-difference step
  double atol = 1e-7;  // pass when |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-5;
  uint64_t seed = 7;   // for the cotangent
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;
  std::string report;  // the first failing elements, with input index and position
};

using GradcheckFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;

// `inputs` must be f64 CPU tensors (views are allowed); those with requires_grad are checked.
GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& options = {});

}  // namespace seqtrain::autograd
