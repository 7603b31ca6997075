// Dynamic shared memory above 48 KiB per block: a kernel must opt in with cudaFuncSetAttribute,
// which sets state every host thread shares. Raising it per launch to that launch's need races
// once the bindings release the GIL: another thread can lower the limit between this thread's
// raise and its launch, which then fails. Instead the limit is raised once per (kernel, device),
// under a lock, to the most the kernel can have; launches only compare their need with it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "common/cuda_utils.cuh"
#include "common/status.h"

namespace vidllm::cuda {

// Writes the most dynamic shared memory `kernel` may launch with on `device` (the device's opt-in
// maximum per block less the kernel's static shared memory) to *bytes; the first call for a
// (kernel, device) raises the kernel's limit to it. `device` must be the current device.
inline Status max_dynamic_shared_bytes(const void* kernel, int device, int64_t* bytes) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int64_t> raised;  // guarded by mutex
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(kernel, device);
  const auto found = raised.find(key);
  if (found != raised.end()) {
    *bytes = found->second;
    return Status::ok();
  }
  int optin = 0;
  VIDLLM_RETURN_IF_CUDA_ERROR(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes attributes;
  VIDLLM_RETURN_IF_CUDA_ERROR(cudaFuncGetAttributes(&attributes, kernel));
  const int limit = optin - static_cast<int>(attributes.sharedSizeBytes);
  VIDLLM_RETURN_IF_CUDA_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit));
  raised.emplace(key, limit);
  *bytes = limit;
  return Status::ok();
}

}  // namespace vidllm::cuda
