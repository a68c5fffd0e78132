// Rotary position embedding (RoFormer; Llama's "rotate half" layout):
//   out = x * cos(p * f) + rotate_half(x) * sin(p * f),  rotate_half([x1, x2]) = [-x2, x1],
//   f_i = theta^(-2i/d) for i < d/2, repeated over both halves; p = position.
// Applied to q and k of shape [B, T, H, d]; positions start at `offset` (the KV-cache length).
#pragma once
#include "core/tensor.h"

namespace seqtrain {

Tensor apply_rope(const Tensor& x, int64_t offset, double theta);

}  // namespace seqtrain
