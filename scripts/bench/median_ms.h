// Timing helper shared by the CUDA microbenchmarks: the median, in ms, of `reps` runs of `fn`
// after `warmup` runs, each timed with events on device 0's compute stream.
#pragma once
#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

#include "core/cuda/runtime.h"

namespace seqtrain::bench {

inline double median_ms(const std::function<void()>& fn, int warmup = 5, int reps = 30) {
  cudaStream_t s = cuda::compute_stream(0);
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    cuda::Event start, stop;
    start.record(s);
    fn();
    stop.record(s);
    stop.synchronize();
    times.push_back(stop.elapsed_ms(start));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Steady-state time of one call, in ms, when `calls` calls run back to back on the stream (as in
// a training step, where the host enqueues ahead of the GPU): the median over `reps` batches of the
// batch's time divided by `calls`. fn(i) is the i-th call of a batch, so callers can rotate
// through several input buffers (inputs larger than L2 then come from HBM on every call).
// Also reports the host's time to enqueue one call (median over the batches): when it is not well
// below the GPU time, the stream of calls is bound by the host, not by the kernels.
struct BatchTiming {
  double gpu_ms;   // per call, from events around the batch
  double host_ms;  // per call, wall clock of the enqueueing loop
};

inline BatchTiming batched_timing(const std::function<void(int)>& fn, int calls = 20, int reps = 10) {
  cudaStream_t s = cuda::compute_stream(0);
  for (int i = 0; i < calls; ++i) fn(i);
  std::vector<double> gpu, host;
  for (int r = 0; r < reps; ++r) {
    cuda::Event start, stop;
    start.record(s);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) fn(i);
    host.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / calls);
    stop.record(s);
    stop.synchronize();
    gpu.push_back(stop.elapsed_ms(start) / calls);
  }
  std::sort(gpu.begin(), gpu.end());
  std::sort(host.begin(), host.end());
  return {gpu[gpu.size() / 2], host[host.size() / 2]};
}

inline double batched_ms(const std::function<void(int)>& fn, int calls = 20, int reps = 10) {
  return batched_timing(fn, calls, reps).gpu_ms;
}

}  // namespace seqtrain::bench
