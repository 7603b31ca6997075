// Queries of the statically linked CUDA runtime (see cuda_runtime.h). Every failing call is
// cleared from the runtime's last-error slot, so it cannot be blamed on a later launch.
#include "common/cuda_device.h"

#include <cuda_runtime_api.h>

#include <atomic>

namespace vidllm::cuda {
namespace {

// Never launched. Asking for its attributes makes the runtime load this build's code for the
// current device, which fails exactly when the fatbinary has neither SASS nor PTX it can run
// (every .cu is compiled for the same architectures).
__global__ void probe_kernel() {}

// Devices beyond this are queried on every call instead of cached.
constexpr int kCachedDevices = 64;
// 0 = not queried yet. Relaxed atomics: racing threads store the same value.
std::atomic<int> g_multiprocessor_count[kCachedDevices] = {};

Status error_status(StatusCode code, cudaError_t err) {
  cudaGetLastError();
  return {code, cudaGetErrorString(err)};
}

// The int a runtime query writes through its pointer argument, or 0 when the query fails.
template <typename Query>
int int_or_zero(const Query& query) {
  int value = 0;
  if (query(&value) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return value;
}

}  // namespace

int runtime_version() {
  return int_or_zero([](int* version) { return cudaRuntimeGetVersion(version); });
}

int device_count() {
  return int_or_zero([](int* count) { return cudaGetDeviceCount(count); });
}

Status set_device(int device) {
  const cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return error_status(StatusCode::kCudaError, err);
  return Status::ok();
}

Status check_device_supported(int device) {
  const Status status = set_device(device);
  if (!status.is_ok()) return status;
  cudaFuncAttributes attributes;
  const cudaError_t err = cudaFuncGetAttributes(&attributes, probe_kernel);
  switch (err) {
    case cudaSuccess:
      return Status::ok();
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInvalidDeviceFunction:
    case cudaErrorUnsupportedPtxVersion:
      return error_status(StatusCode::kNotCompiled, err);
    default:
      return error_status(StatusCode::kCudaError, err);
  }
}

int multiprocessor_count(int device) {
  const bool cacheable = device >= 0 && device < kCachedDevices;
  if (cacheable) {
    const int cached = g_multiprocessor_count[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  if (cacheable) g_multiprocessor_count[device].store(count, std::memory_order_relaxed);
  return count;
}

}  // namespace vidllm::cuda
