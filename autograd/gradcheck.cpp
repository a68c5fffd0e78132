#include "autograd/gradcheck.h"

#include <cmath>

#include "autograd/grad_mode.h"
#include "autograd/node.h"

namespace seqtrain::autograd {

namespace {

// <w, f(x)> summed over all outputs, in double, without recording.
double weighted_sum(const GradcheckFn& fn, const std::vector<Tensor>& inputs, const std::vector<Tensor>& weights) {
  NoGradGuard no_grad;
  std::vector<Tensor> outs = fn(inputs);
  double total = 0;
  for (size_t i = 0; i < outs.size(); ++i) {
    std::vector<double> o = outs[i].to_vector(), w = weights[i].to_vector();
    for (size_t j = 0; j < o.size(); ++j) total += o[j] * w[j];
  }
  return total;
}

// Address of element `linear` (row-major over the view's shape) inside the view's storage.
double* element_ptr(const Tensor& t, int64_t linear) {
  int64_t offset = 0;
  for (int64_t d = t.dim(); d-- > 0;) {
    int64_t size = t.size(d);
    offset += (linear % size) * t.stride(d);
    linear /= size;
  }
  return t.data<double>() + offset;
}

}  // namespace

GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs, const GradcheckOptions& opt) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (!t.defined() || !t.requires_grad()) continue;
    ST_CHECK(t.dtype() == DType::F64 && t.device().is_cpu(), "gradcheck: input ", i, " is ", t.desc(),
             "; expected f64 on cpu");
    ST_CHECK(t.is_leaf(), "gradcheck: input ", i, " must be a leaf");
  }
  // Analytic: backward of <w, f(x)>.
  std::vector<Tensor> outs = fn(inputs);
  std::vector<Tensor> weights, roots, grads;
  for (size_t i = 0; i < outs.size(); ++i) {
    Tensor w = Tensor::uniform(outs[i].shape(), -1.0, 1.0, opt.seed, i, DType::F64);
    weights.push_back(w);
    if (outs[i].requires_grad()) {
      roots.push_back(outs[i]);
      grads.push_back(w.to(outs[i].dtype()));
    }
  }
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) const_cast<Tensor&>(t).zero_grad();
  if (!roots.empty()) run_backward(roots, grads);

  GradcheckResult result;
  int reported = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& x = inputs[i];
    if (!x.defined() || !x.requires_grad()) continue;
    std::vector<double> analytic = x.grad().defined() ? x.grad().to_vector() : std::vector<double>(size_t(x.numel()), 0.0);
    for (int64_t j = 0; j < x.numel(); ++j) {
      double* p = element_ptr(x, j);
      const double saved = *p;
      *p = saved + opt.eps;
      double plus = weighted_sum(fn, inputs, weights);
      *p = saved - opt.eps;
      double minus = weighted_sum(fn, inputs, weights);
      *p = saved;
      double numeric = (plus - minus) / (2 * opt.eps);
      double err = std::abs(analytic[size_t(j)] - numeric);
      bool bad = !(err <= opt.atol + opt.rtol * std::abs(numeric));  // NaN fails too
      result.max_abs_error = std::max(result.max_abs_error, std::isnan(err) ? INFINITY : err);
      if (bad) {
        result.ok = false;
        if (reported++ < 8)
          result.report += str_cat("input ", i, " ", x.desc(), " element ", j, ": analytic ", analytic[size_t(j)],
                                   " numeric ", numeric, "\n");
      }
    }
  }
  return result;
}

}  // namespace seqtrain::autograd
