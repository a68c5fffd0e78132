// Causal attention timings (bf16, H = 12, d = 64, 16K tokens per call) for comparison with PyTorch's
// SDPA (scripts/bench/torch_attention.py): median of CUDA-event timings after warmup, forward and
// forward + backward. FLOPs counted as causal: forward 2 * 2 * B * H * T^2 * d / 2, backward 2.5x.
// Usage: seqtrain_attention_bench   (needs a GPU)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <vector>

#include "core/cuda/runtime.h"
#include "scripts/bench/median_ms.h"
#include "layers/attention/attention_op.h"

using namespace seqtrain;
using bench::median_ms;

int main() {
  if (!cuda_available()) {
    std::fprintf(stderr, "seqtrain_attention_bench: no CUDA device\n");
    return 1;
  }
  const int64_t H = 12, d = 64;
  const AttentionConfig cfg;  // causal
  std::printf("| B | T | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (auto [B, T] : std::vector<std::pair<int64_t, int64_t>>{{8, 2048}, {2, 8192}, {1, 32768}}) {
    const Device dev = Device::cuda(0);
    Tensor q = Tensor::normal({B, T, H, d}, 0, 1, 1, 0, DType::BF16, dev);
    Tensor k = Tensor::normal({B, T, H, d}, 0, 1, 2, 0, DType::BF16, dev);
    Tensor v = Tensor::normal({B, T, H, d}, 0, 1, 3, 0, DType::BF16, dev);
    Tensor dout = Tensor::normal({B, T, H, d}, 0, 1, 4, 0, DType::BF16, dev);
    const double fwd_flops = 2.0 * 2.0 * double(B * H) * double(T) * double(T) * double(d) / 2.0;
    const double fwd = median_ms([&] { attention_forward(q, k, v, cfg); });
    const double both = median_ms([&] {
      AttentionOut o = attention_forward(q, k, v, cfg);
      attention_backward(q, k, v, o.o, o.lse, dout, cfg);
    });
    std::printf("| %lld | %lld | %.3f | %.1f | %.3f | %.1f |\n", (long long)B, (long long)T, fwd,
                fwd_flops / fwd * 1e-9, both, 3.5 * fwd_flops / both * 1e-9);
  }
  return 0;
}
