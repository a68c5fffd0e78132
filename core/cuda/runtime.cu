#include "core/cuda/runtime.h"

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace seqtrain::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  std::string hint;
  if (err == cudaErrorMemoryAllocation)
    hint = " (out of GPU memory: lower the micro-batch or sequence length, or enable activation recompute)";
  else if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver)
    hint = " (no usable GPU: run with device cpu)";
  detail::throw_error(file, line,
                      str_cat("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
                              ") in ", call, hint));
}

namespace {
constexpr int kMaxDevices = 64;
struct DeviceState {
  std::once_flag once;
  cudaStream_t stream = nullptr;
  int sms = 0;
};
DeviceState g_devices[kMaxDevices];

DeviceState& state(int device) {
  ST_CHECK(device >= 0 && device < kMaxDevices, "CUDA device index ", device, " out of range");
  DeviceState& s = g_devices[device];
  std::call_once(s.once, [&] {
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaDeviceGetAttribute(&s.sms, cudaDevAttrMultiProcessorCount, device));
    // Keep freed blocks in the pool: without this the pool returns memory to the driver at every
    // synchronisation and each step pays for fresh allocations.
    cudaMemPool_t pool;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t threshold = UINT64_MAX;
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  });
  return s;
}
}  // namespace

cudaStream_t compute_stream(int device) { return state(device).stream; }

cudaStream_t stream_for(int device) {
  cudaStream_t s = state(device).stream;
  CUDA_CHECK(cudaSetDevice(device));
  return s;
}

int sm_count(int device) { return state(device).sms; }

void* pool_alloc(size_t nbytes, int device) {
  cudaStream_t s = stream_for(device);
  void* p = nullptr;
  if (nbytes == 0) return nullptr;
  CUDA_CHECK(cudaMallocAsync(&p, nbytes, s));
  return p;
}

void pool_free(void* p, int device) {
  if (!p) return;
  cudaStream_t s = stream_for(device);
  CUDA_CHECK(cudaFreeAsync(p, s));
}

size_t pool_reserved_bytes(int device) {
  state(device);
  cudaMemPool_t pool;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t bytes = 0;
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &bytes));
  return size_t(bytes);
}

void synchronize(int device) { CUDA_CHECK(cudaStreamSynchronize(stream_for(device))); }

Event::Event() { CUDA_CHECK(cudaEventCreate(&ev_)); }
Event::~Event() { cudaEventDestroy(ev_); }
void Event::record(cudaStream_t s) { CUDA_CHECK(cudaEventRecord(ev_, s)); }
void Event::wait(cudaStream_t s) const { CUDA_CHECK(cudaStreamWaitEvent(s, ev_, 0)); }
void Event::synchronize() const { CUDA_CHECK(cudaEventSynchronize(ev_)); }
float Event::elapsed_ms(const Event& start) const {
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start.ev_, ev_));
  return ms;
}

}  // namespace seqtrain::cuda
