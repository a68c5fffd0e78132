// The two backends behind core/ops.cpp's dispatch. Each declares the same kernel set.
#pragma once
#include "core/ops.h"

namespace seqtrain {
using ops::ReduceOp;
namespace cpu {
#include "core/backend_kernels.inc"
}  // namespace cpu
#ifdef SEQTRAIN_WITH_CUDA
namespace cuda {
#include "core/backend_kernels.inc"
}  // namespace cuda
#endif
}  // namespace seqtrain
