// Learning-rate schedule: linear warmup from 0 to lr over warmup_steps, then decay to
// min_lr_ratio * lr at the last step (cosine, linear) or none (constant). A pure function of the
// step, so resuming needs only the step.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "core/error.h"

namespace seqtrain::train {

inline double learning_rate(int64_t step, int64_t total_steps, double lr, int64_t warmup_steps,
                            const std::string& decay, double min_lr_ratio) {
  // `step` is 0-based: the update applied at step s uses learning_rate(s).
  if (warmup_steps > 0 && step < warmup_steps) return lr * double(step + 1) / double(warmup_steps);
  if (decay == "constant") return lr;
  const double min_lr = lr * min_lr_ratio;
  const int64_t span = std::max<int64_t>(total_steps - warmup_steps, 1);
  const double progress = std::min(1.0, double(step - warmup_steps) / double(span));
  if (decay == "linear") return lr - (lr - min_lr) * progress;
  if (decay == "cosine") return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
  ST_THROW("schedule: unknown decay '", decay, "': expected cosine, linear or constant");
}

}  // namespace seqtrain::train
