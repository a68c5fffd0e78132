// Timing helper shared by the CUDA microbenchmarks: the median, in ms, of `reps` runs of `fn`
// after `warmup` runs, each timed with events on device 0's compute stream.
#pragma once
#include <algorithm>
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

}  // namespace seqtrain::bench
