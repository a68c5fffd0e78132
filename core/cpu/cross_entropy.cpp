// Cross-entropy over logits [N, V] with targets [N]: loss[n] = lse[n] - logits[n, target[n]],
// lse[n] = log sum_v exp(logits[n, v]); targets < 0 are ignored (loss 0, gradient row 0).
// One row per task, in double. Memory bound: the forward reads the logits twice, the backward
// reads them once and writes dlogits.
#include <cmath>

#include "core/backend.h"
#include "core/cpu/dtype_dispatch.h"

namespace seqtrain::cpu {
namespace {

// Targets as int64, checked against V before the parallel loops (an exception must not escape
// an OpenMP region).
std::vector<int64_t> checked_targets(const Tensor& targets, int64_t vocab, const char* op) {
  std::vector<int64_t> t = to_indices(targets, op);
  for (size_t n = 0; n < t.size(); ++n)
    ST_CHECK(t[n] < vocab, op, ": targets[", n, "] = ", t[n], " is not below the vocabulary size ",
             vocab, " (negative targets are ignored)");
  return t;
}

}  // namespace

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor& losses,
                           Tensor& lse) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const std::vector<int64_t> target = checked_targets(targets, vocab, "cross_entropy");
  std::vector<double> loss_v(static_cast<size_t>(rows)), lse_v(static_cast<size_t>(rows));
  dispatch_floating(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* lp = logits.data<T>();
#pragma omp parallel for schedule(static) if (rows > 1 && rows * vocab >= kParallelGrain)
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = lp + r * vocab;  // (V,)
      double mx = -INFINITY;
      for (int64_t v = 0; v < vocab; ++v) mx = std::max(mx, convert<double>(row[v]));
      double sum = 0.0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(convert<double>(row[v]) - mx);
      const double row_lse = mx + std::log(sum);
      const int64_t t = target[size_t(r)];
      lse_v[size_t(r)] = row_lse;
      loss_v[size_t(r)] = t < 0 ? 0.0 : row_lse - convert<double>(row[t]);
    }
  });
  store_doubles(loss_v, losses);
  store_doubles(lse_v, lse);
}

// dlogits[n, v] = dlosses[n] * (exp(logits[n, v] - lse[n]) - [v == target[n]]).
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            const Tensor& dlosses, Tensor& dlogits) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const std::vector<int64_t> target = checked_targets(targets, vocab, "cross_entropy_backward");
  const std::vector<double> lse_v = to_doubles(lse), dloss = to_doubles(dlosses);
  dispatch_floating(logits.dtype(), "cross_entropy_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* lp = logits.data<T>();
    T* dp = dlogits.data<T>();
#pragma omp parallel for schedule(static) if (rows > 1 && rows * vocab >= kParallelGrain)
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = lp + r * vocab;  // (V,)
      T* drow = dp + r * vocab;
      const int64_t t = target[size_t(r)];
      if (t < 0) {
        for (int64_t v = 0; v < vocab; ++v) drow[v] = convert<T>(0.0);
        continue;
      }
      const double g = dloss[size_t(r)], row_lse = lse_v[size_t(r)];
      for (int64_t v = 0; v < vocab; ++v) {
        const double p = std::exp(convert<double>(row[v]) - row_lse);
        drow[v] = convert<T>(g * (p - (v == t ? 1.0 : 0.0)));
      }
    }
  });
}

}  // namespace seqtrain::cpu
