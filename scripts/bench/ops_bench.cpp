// Microbenchmarks of the CUDA backend's hot ops against the chip's ceilings, measured in one
// process: bf16 GEMM TFLOP/s (compare with PyTorch's a @ b: scripts/bench/torch_ops.py) and the
// bandwidth of the memory-bound kernels as a fraction of a device-to-device copy.
// Usage: seqtrain_ops_bench [--json FILE]   (needs a GPU)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/cuda/runtime.h"
#include "scripts/bench/median_ms.h"
#include "core/ops.h"

using namespace seqtrain;
using bench::median_ms;

namespace {

struct Row {
  std::string name;
  double ms;
  double value;      // TFLOP/s or GB/s
  std::string unit;
  double fraction;   // of the ceiling named in `of`
  std::string of;
  double host_ms = 0;  // host time to enqueue one call (streams of calls only; 0 = not measured)
};

}  // namespace

int main(int argc, char** argv) {
  std::string json_path, only;
  const std::vector<std::string> sections = {"gemm", "cross_entropy", "norm", "elementwise", "adamw"};
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else {
      std::printf("usage: seqtrain_ops_bench [--json FILE] [--only gemm|cross_entropy|norm|elementwise|adamw]\n"
                  "  (the 2 GiB copy ceiling always runs)\n");
      return std::strcmp(argv[i], "--help") ? 2 : 0;
    }
  }
  if (!only.empty() && std::find(sections.begin(), sections.end(), only) == sections.end()) {
    std::fprintf(stderr, "seqtrain_ops_bench: --only %s: expected one of gemm, cross_entropy, norm, elementwise, adamw\n",
                 only.c_str());
    return 2;
  }
  auto want = [&](const char* section) { return only.empty() || only == section; };
  if (!cuda_available()) {
    std::fprintf(stderr, "seqtrain_ops_bench: no CUDA device\n");
    return 1;
  }
  const Device gpu = Device::cuda(0);
  std::vector<Row> rows;

  // ---- ceiling: device-to-device copy of 2 GiB (bytes read + written) ----
  const size_t copy_bytes = size_t(1) << 31;
  Tensor src = Tensor::uniform({int64_t(copy_bytes / 4)}, -1, 1, 1, 0, DType::F32, gpu);
  Tensor dst = Tensor::empty({int64_t(copy_bytes / 4)}, DType::F32, gpu);
  double copy_ms = median_ms([&] {
    CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), copy_bytes, cudaMemcpyDeviceToDevice,
                               cuda::compute_stream(0)));
  });
  const double copy_gbs = 2.0 * copy_bytes / copy_ms / 1e6;
  rows.push_back({"cudaMemcpy D2D 2 GiB", copy_ms, copy_gbs, "GB/s", 1.0, "copy"});
  double kcopy_ms = median_ms([&] { dst.copy_(src); });
  rows.push_back({"copy kernel f32 2 GiB", kcopy_ms, 2.0 * copy_bytes / kcopy_ms / 1e6, "GB/s",
                  2.0 * copy_bytes / kcopy_ms / 1e6 / copy_gbs, "copy"});
  src = Tensor();
  dst = Tensor();

  // ---- bf16 GEMM 8192^3 (fp32 accumulate) ----
  if (want("gemm")) {
    const int64_t n = 8192;
    Tensor a = Tensor::uniform({n, n}, -1, 1, 2, 0, DType::BF16, gpu);
    Tensor b = Tensor::uniform({n, n}, -1, 1, 3, 0, DType::BF16, gpu);
    Tensor c = Tensor::empty({n, n}, DType::BF16, gpu);
    double ms = median_ms([&] { ops::matmul_out(a, b, c, false, false, 1.0, 0.0); }, 5, 20);
    double tflops = 2.0 * n * n * n / ms / 1e9;
    rows.push_back({"gemm bf16 8192^3 NN", ms, tflops, "TFLOP/s", 0, ""});
    ms = median_ms([&] { ops::matmul_out(a, b, c, false, true, 1.0, 0.0); }, 5, 20);
    rows.push_back({"gemm bf16 8192^3 NT", ms, 2.0 * n * n * n / ms / 1e9, "TFLOP/s", 0, ""});
  }

  auto bandwidth_row = [&](const std::string& name, double bytes, const std::function<void()>& fn) {
    double ms = median_ms(fn);
    double gbs = bytes / ms / 1e6;
    rows.push_back({name, ms, gbs, "GB/s", gbs / copy_gbs, "copy"});
  };

  // ---- fused cross-entropy: GPT-2 head, 16K tokens x 50304 classes, bf16 logits ----
  if (want("cross_entropy")) {
    const int64_t N = 16384, V = 50304;
    Tensor logits = Tensor::normal({N, V}, 0, 2, 4, 0, DType::BF16, gpu);
    Tensor targets = Tensor::uniform({N}, 0, double(V), 5, 0, DType::F32, gpu).to(DType::I32);
    ops::CrossEntropyOut o = ops::cross_entropy(logits, targets);
    Tensor dloss = Tensor::full({N}, 1.0 / N, DType::F32, gpu);
    // forward reads the logits once; backward reads them once and writes dlogits once.
    bandwidth_row("cross_entropy fwd bf16 16384x50304", double(N) * V * 2, [&] { ops::cross_entropy(logits, targets); });
    bandwidth_row("cross_entropy bwd bf16 16384x50304", 2.0 * N * V * 2,
                  [&] { ops::cross_entropy_backward(logits, targets, o.lse, dloss); });
  }

  // ---- layernorm / rmsnorm, bf16 ----
  // Timed as a stream of calls (bench::batched_ms) rotating over 4 input sets, so the inputs come
  // from HBM, not L2 (50 MB), and the host's per-call work overlaps the GPU as in training. Each
  // row is also compared with a device-to-device copy of the same number of bytes, timed the same
  // way, since at tens of MB the fixed costs of any kernel (launch, ramp-up, tail) weigh.
  constexpr int kSets = 4;
  using bench::batched_ms;
  auto norm_rows = [&](const std::string& name, double bytes, const std::function<void(int)>& fn) {
    const bench::BatchTiming t = bench::batched_timing(fn);
    const double ms = t.gpu_ms;
    const size_t half = size_t(bytes / 2) / 16 * 16;
    Tensor a = Tensor::empty({int64_t(half * kSets / 4)}, DType::F32, gpu);
    Tensor b = Tensor::empty({int64_t(half * kSets / 4)}, DType::F32, gpu);
    const double copy_same_ms = batched_ms([&](int i) {
      CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(b.data_ptr()) + (i % kSets) * half,
                                 static_cast<const char*>(a.data_ptr()) + (i % kSets) * half, half,
                                 cudaMemcpyDeviceToDevice, cuda::compute_stream(0)));
    });
    const double gbs = bytes / ms / 1e6;
    rows.push_back({name, ms, gbs, "GB/s", gbs / copy_gbs, "copy", t.host_ms});
    rows.push_back({"  (copy of the same bytes)", copy_same_ms, 2.0 * half / copy_same_ms / 1e6, "GB/s",
                    2.0 * half / copy_same_ms / 1e6 / copy_gbs, "copy"});
  };
  for (auto [N, D] : std::vector<std::pair<int64_t, int64_t>>{{16384, 768}, {65536, 768}, {16384, 1024}, {16384, 2048}, {16384, 4096}}) {
    if (!want("norm")) break;
    std::vector<Tensor> x, dy;
    std::vector<ops::NormOut> o;
    for (int i = 0; i < kSets; ++i) {
      x.push_back(Tensor::normal({N, D}, 0, 1, 6 + 10 * i, 0, DType::BF16, gpu));
      dy.push_back(Tensor::normal({N, D}, 0, 1, 9 + 10 * i, 0, DType::BF16, gpu));
    }
    Tensor w = Tensor::normal({D}, 1, 0.1, 7, 0, DType::BF16, gpu);
    Tensor b = Tensor::normal({D}, 0, 0.1, 8, 0, DType::BF16, gpu);
    for (int i = 0; i < kSets; ++i) o.push_back(ops::layernorm(x[i], w, b, 1e-5));
    const std::string shape = std::to_string(N) + "x" + std::to_string(D);
    // forward: read x, write y (+ 8 bytes of statistics per row)
    norm_rows("layernorm fwd bf16 " + shape, 2.0 * N * D * 2 + 8.0 * N,
              [&](int i) { ops::layernorm(x[i % kSets], w, b, 1e-5); });
    // backward: read x, dy, write dx (+ statistics; dw, db partials are a few % more)
    norm_rows("layernorm bwd bf16 " + shape, 3.0 * N * D * 2 + 8.0 * N, [&](int i) {
      const int k = i % kSets;
      ops::layernorm_backward(x[k], w, o[k].mean, o[k].rstd, dy[k], true);
    });
    norm_rows("rmsnorm fwd bf16 " + shape, 2.0 * N * D * 2 + 4.0 * N,
              [&](int i) { ops::rmsnorm(x[i % kSets], w, 1e-5); });
  }

  // ---- elementwise and softmax, for reference ----
  if (want("elementwise")) {
    const int64_t N = int64_t(1) << 28;
    Tensor x = Tensor::normal({N}, 0, 1, 10, 0, DType::BF16, gpu);
    bandwidth_row("gelu bf16 256M", 2.0 * N * 2, [&] { ops::unary(UnaryOp::Gelu, x); });
    Tensor y = Tensor::normal({N}, 0, 1, 11, 0, DType::BF16, gpu);
    bandwidth_row("add bf16 256M", 3.0 * N * 2, [&] { ops::add(x, y); });
  }
  if (want("elementwise")) {
    const int64_t R = 8 * 12 * 1024, C = 1024;
    Tensor x = Tensor::normal({R, C}, 0, 1, 12, 0, DType::BF16, gpu);
    bandwidth_row("softmax fwd bf16 98304x1024", 2.0 * R * C * 2, [&] { ops::softmax(x); });
  }
  if (want("adamw")) {
    const int64_t P = 124 * 1000 * 1000;  // GPT-2 small parameter count
    Tensor p = Tensor::normal({P}, 0, 0.02, 13, 0, DType::F32, gpu);
    Tensor g = Tensor::normal({P}, 0, 0.02, 14, 0, DType::F32, gpu);
    Tensor m = Tensor::zeros({P}, DType::F32, gpu), v = Tensor::zeros({P}, DType::F32, gpu);
    Tensor pb = Tensor::empty({P}, DType::BF16, gpu);
    int64_t step = 0;
    // reads p, g, m, v; writes p, m, v, p_bf16
    bandwidth_row("adamw f32 124M params", double(P) * (4 * 4 + 3 * 4 + 2),
                  [&] { ops::adamw_step(p, g, m, v, {3e-4, 0.9, 0.95, 1e-8, 0.1, ++step}, &pb); });
  }

  cuda::synchronize(0);
  std::printf("| op | ms | rate | of copy | host ms per call |\n|---|---|---|---|---|\n");
  for (const Row& r : rows)
    std::printf("| %s | %.3f | %.1f %s | %s | %s |\n", r.name.c_str(), r.ms, r.value, r.unit.c_str(),
                r.of.empty() ? "" : (std::to_string(int(r.fraction * 100 + 0.5)) + "%").c_str(),
                r.host_ms > 0 ? std::to_string(r.host_ms).substr(0, 5).c_str() : "");
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "seqtrain_ops_bench: cannot write %s\n", json_path.c_str());
      return 1;
    }
    std::fprintf(f, "[\n");
    for (size_t i = 0; i < rows.size(); ++i)
      std::fprintf(f, "  {\"name\": \"%s\", \"ms\": %.5f, \"value\": %.3f, \"unit\": \"%s\", \"fraction_of_copy\": %.4f, \"host_ms\": %.5f}%s\n",
                   rows[i].name.c_str(), rows[i].ms, rows[i].value, rows[i].unit.c_str(), rows[i].fraction, rows[i].host_ms,
                   i + 1 < rows.size() ? "," : "");
    std::fprintf(f, "]\n");
    std::fclose(f);
  }
  return 0;
}
