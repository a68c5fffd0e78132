#include "core/device.h"

#include "core/error.h"

#ifdef SEQTRAIN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace seqtrain {

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    const std::string idx = s.substr(5);
    if (!idx.empty() && idx.find_first_not_of("0123456789") == std::string::npos)
      return Device::cuda(std::stoi(idx));
  }
  ST_THROW("unknown device '", s, "': expected cpu, cuda or cuda:N");
}

int cuda_device_count() {
#ifdef SEQTRAIN_WITH_CUDA
  // Cached: a machine without a driver answers with an error, which means "no GPU" here.
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return count;
#else
  return 0;
#endif
}

}  // namespace seqtrain
