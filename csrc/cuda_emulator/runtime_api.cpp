// The CUDA runtime API calls the kernels' launchers make, for the emulator: one emulated device
// with sm_90's limits; memory is host memory, streams are ignored (every launch completes before
// it returns), errors land in a per-thread slot like the runtime's.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "cuda_emulator/cuda_emulator.h"
#include "cuda_emulator/internal.h"

namespace cuda_emulator {
namespace {

constexpr int kMultiprocessors = 132;  // an H100 SXM's count, for launchers that size grids by it
constexpr int kRuntimeVersion = 12080;

struct ErrorSlot {
  cudaError_t code = cudaSuccess;
  bool unread = false;
  // The latest recorded error's description, for cudaGetErrorString(message_code): it outlives
  // cudaGetLastError and stays valid until the next recorded error.
  cudaError_t message_code = cudaSuccess;
  std::string message;
};
thread_local ErrorSlot error_slot;

std::mutex attributes_mutex;
std::unordered_map<const void*, int>& shared_limits() {
  static auto* limits = new std::unordered_map<const void*, int>();
  return *limits;
}

}  // namespace

void record_error(cudaError_t code, std::string message) {
  if (error_slot.unread) return;  // the first error stays until it is read
  error_slot.code = code;
  error_slot.message_code = code;
  error_slot.message = std::move(message);
  error_slot.unread = true;
}

bool launches_blocked() { return error_slot.unread && error_slot.code == cudaErrorLaunchFailure; }
cudaError_t pending_error() { return error_slot.code; }

int dynamic_shared_limit(const void* kernel) {
  std::lock_guard<std::mutex> lock(attributes_mutex);
  const auto found = shared_limits().find(kernel);
  return found == shared_limits().end() ? kSharedDefaultBytes : found->second;
}

cudaError_t func_get_attributes(cudaFuncAttributes* attributes, const void* kernel) {
  if (attributes == nullptr || kernel == nullptr) return cudaErrorInvalidValue;
  std::memset(attributes, 0, sizeof(*attributes));
  attributes->maxThreadsPerBlock = 1024;
  attributes->ptxVersion = 90;
  attributes->binaryVersion = 90;
  // Static shared memory is not measured: reported as 0 bytes.
  attributes->maxDynamicSharedSizeBytes = dynamic_shared_limit(kernel);
  attributes->preferredShmemCarveout = -1;
  return cudaSuccess;
}

cudaError_t func_set_attribute(const void* kernel, cudaFuncAttribute attribute, int value) {
  if (kernel == nullptr) return cudaErrorInvalidDeviceFunction;
  if (attribute == cudaFuncAttributePreferredSharedMemoryCarveout) return cudaSuccess;
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      value > kSharedOptinBytes) {
    record_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: invalid value " +
                                            std::to_string(value) + " (the sm_90 opt-in limit is " +
                                            std::to_string(kSharedOptinBytes) + " bytes)");
    return cudaErrorInvalidValue;
  }
  std::lock_guard<std::mutex> lock(attributes_mutex);
  shared_limits()[kernel] = value;
  return cudaSuccess;
}

cudaError_t occupancy(int* blocks, int block_size, std::size_t shared_bytes) {
  if (blocks == nullptr || block_size <= 0 || block_size > 1024) return cudaErrorInvalidValue;
  int by_threads = 2048 / block_size;
  const int by_shared =
      static_cast<int>(233472 / (shared_bytes + 1024));  // 228 KiB per SM, 1 KiB reserved
  *blocks = std::max(0, std::min({by_threads, by_shared, 32}));
  return cudaSuccess;
}

}  // namespace cuda_emulator

using cuda_emulator::error_slot;

cudaError_t cudaGetLastError() {
  const cudaError_t code = error_slot.code;
  error_slot.code = cudaSuccess;
  error_slot.unread = false;
  return code;
}

cudaError_t cudaPeekAtLastError() { return error_slot.code; }

const char* cudaGetErrorString(cudaError_t error) {
  if (error != cudaSuccess && error == error_slot.message_code) return error_slot.message.c_str();
  return cudaGetErrorName(error);
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction:
      return "cudaErrorInvalidDeviceFunction";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorNoKernelImageForDevice:
      return "cudaErrorNoKernelImageForDevice";
    case cudaErrorUnsupportedPtxVersion:
      return "cudaErrorUnsupportedPtxVersion";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
  }
  return "unknown emulated CUDA error";
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  if (version == nullptr) return cudaErrorInvalidValue;
  *version = cuda_emulator::kRuntimeVersion;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* version) { return cudaRuntimeGetVersion(version); }

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return cudaErrorInvalidValue;
  *count = 1;
  return cudaSuccess;
}

// The emulator serves every device index a binding passes (CPU tensors say device 0).
cudaError_t cudaSetDevice(int device) { return device >= 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return cudaErrorInvalidValue;
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int) {
  if (value == nullptr) return cudaErrorInvalidValue;
  switch (attribute) {
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = cuda_emulator::kSharedDefaultBytes;
      return cudaSuccess;
    case cudaDevAttrWarpSize:
      *value = 32;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = cuda_emulator::kMultiprocessors;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      *value = 233472;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = cuda_emulator::kSharedOptinBytes;
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

cudaError_t cudaMemsetAsync(void* pointer, int value, std::size_t bytes, cudaStream_t) {
  if (bytes != 0 && pointer == nullptr) return cudaErrorInvalidValue;
  if (bytes != 0) std::memset(pointer, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* destination, const void* source, std::size_t bytes,
                            cudaMemcpyKind, cudaStream_t) {
  if (bytes != 0 && (destination == nullptr || source == nullptr)) return cudaErrorInvalidValue;
  if (bytes != 0) std::memmove(destination, source, bytes);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
