// CUDA runtime plumbing: checked calls, the per-device compute stream, the stream-ordered memory
// pool, events and the cuBLASLt handle. Only included by .cu/.cpp files of the CUDA backend.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "core/error.h"

namespace seqtrain::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line);

// CUDA_CHECK(cudaMemcpyAsync(...)) throws "CUDA error <name> (<text>) in <call> at file:line".
#define CUDA_CHECK(call)                                                               \
  do {                                                                                 \
    cudaError_t err_ = (call);                                                         \
    if (err_ != cudaSuccess) ::seqtrain::cuda::throw_cuda_error(err_, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: reports launch-configuration errors with the kernel's name.
#define CUDA_CHECK_LAUNCH(kernel_name) CUDA_CHECK(cudaGetLastError())

// The device's compute stream (non-blocking, created on first use). Every kernel of the CUDA
// backend runs on it, so ops are ordered without synchronisation.
cudaStream_t compute_stream(int device);
// Sets the current device and returns its compute stream.
cudaStream_t stream_for(int device);

// Stream-ordered allocation from the device's default memory pool, whose release threshold is
// raised so freed blocks are kept for reuse instead of being returned to the driver.
void* pool_alloc(size_t nbytes, int device);
void pool_free(void* p, int device);

// Bytes the device's memory pool currently holds (in use or cached for reuse).
size_t pool_reserved_bytes(int device);

// Blocks the host until all work queued on the device's compute stream is done.
void synchronize(int device);

// Number of SMs of the device (cached).
int sm_count(int device);

inline unsigned grid_for(size_t n, unsigned block, unsigned max_blocks = 1u << 20) {
  size_t g = (n + block - 1) / block;
  if (g > max_blocks) g = max_blocks;
  return unsigned(g < 1 ? 1 : g);
}

class Event {
 public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(cudaStream_t s);
  void wait(cudaStream_t s) const;  // s waits for this event (no host block)
  void synchronize() const;
  float elapsed_ms(const Event& start) const;
  cudaEvent_t get() const { return ev_; }

 private:
  cudaEvent_t ev_;
};

}  // namespace seqtrain::cuda
