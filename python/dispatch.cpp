#include "dispatch.h"

#include <atomic>
#include <cstdint>
#include <string>

#if defined(VIDLLM_WITH_CUDA)
#include "common/cuda_device.h"
#endif
#if defined(VIDLLM_CUDA_EMULATION)
#include "cuda_emulator/control.h"
#endif

#ifndef VIDLLM_CUDA_ARCHS
#define VIDLLM_CUDA_ARCHS ""
#endif

namespace vidllm::binding {
namespace {

// Process-wide, like a device: every thread's ops follow vidllm_ext.testing.emulated_cuda().
std::atomic<bool> emulation_enabled{false};

#if defined(VIDLLM_WITH_CUDA)
// Per-device answer of check_device_supported: 0 unknown, 1 supported, 2 not compiled.
constexpr int kMaxDevices = 64;
std::atomic<int> device_support[kMaxDevices];

void require_supported_device(int device) {
  if (device < 0 || device >= kMaxDevices) {
    throw py::value_error("CUDA device index " + std::to_string(device) + " is out of range");
  }
  int known = device_support[device].load();
  if (known == 0) {
    const Status status = cuda::check_device_supported(device);
    if (status.code == StatusCode::kCudaError) {
      throw std::runtime_error("cannot use CUDA device cuda:" + std::to_string(device) + ": " +
                               status.message + " (this build compiled CUDA archs " +
                               compiled_cuda_archs() + ")");
    }
    known = status.is_ok() ? 1 : 2;
    device_support[device].store(known);
  }
  if (known == 2) {
    throw std::runtime_error(
        "vidllm_ext has no CUDA kernels for the GPU cuda:" + std::to_string(device) +
        "; this build compiled CUDA archs " + compiled_cuda_archs() +
        ". Rebuild with VIDLLM_CUDA_ARCHS naming this GPU's architecture.");
  }
  throw_if_failed(cuda::set_device(device), "set_device");
}
#endif

}  // namespace

std::string compiled_cuda_archs() { return VIDLLM_CUDA_ARCHS; }

bool cuda_emulation_compiled() {
#if defined(VIDLLM_CUDA_EMULATION)
  return true;
#else
  return false;
#endif
}

bool cuda_emulation_enabled() { return emulation_enabled.load(); }

void set_cuda_emulation(bool enabled, int schedule, uint64_t seed) {
#if defined(VIDLLM_CUDA_EMULATION)
  if (schedule < 0 || schedule > 2)
    throw py::value_error("schedule: expected 0 (forward), 1 (reverse) or 2 (random), got " +
                          std::to_string(schedule));
  cuda_emulator::configure(static_cast<cuda_emulator::Schedule>(schedule), seed);
  emulation_enabled.store(enabled);
#else
  (void)schedule;
  (void)seed;
  if (enabled)
    throw std::runtime_error(
        "this build of vidllm_ext has no CUDA emulation; reinstall with VIDLLM_CUDA_EMULATION=1");
#endif
}

Status missing_launcher() {
  return {StatusCode::kCudaError, "this build of vidllm_ext has no launcher for this backend"};
}

Backend select_backend(const TensorArg& primary) {
  if (!primary.is_cuda()) {
    if (primary.device_string() == "cpu")
      return emulation_enabled.load() ? Backend::kEmulatedCuda : Backend::kCpu;
    throw py::value_error(std::string(primary.name()) +
                          ": expected a CPU or CUDA tensor, got one on " + primary.device_string());
  }
#if defined(VIDLLM_WITH_CUDA)
  require_supported_device(primary.device_id());
  return Backend::kCuda;
#else
  throw std::runtime_error(std::string(primary.name()) +
                           " is a CUDA tensor, but this build of vidllm_ext has no CUDA kernels "
                           "(compiled CUDA archs: none). Reinstall with nvcc available, or with "
                           "VIDLLM_CUDA=1 to make a missing CUDA compiler an error.");
#endif
}

Launch select_launch(const TensorArg& primary, uintptr_t stream,
                     std::initializer_list<const TensorArg*> same_device) {
  const Launch launch{select_backend(primary), primary.device_id(), stream};
  for (const TensorArg* tensor : same_device)
    if (tensor != nullptr) tensor->expect_same_device(primary);
  return launch;
}

void throw_if_failed(const Status& status, const char* kernel) {
  switch (status.code) {
    case StatusCode::kOk:
      return;
    case StatusCode::kInvalidArgument:
      throw py::value_error(std::string(kernel) + ": " + status.message);
    case StatusCode::kNotCompiled:
      throw std::runtime_error(std::string("vidllm kernel ") + kernel +
                               " has no code for this GPU (compiled CUDA archs " +
                               compiled_cuda_archs() + "): " + status.message);
    case StatusCode::kCudaError:
    default:
      throw std::runtime_error(std::string("vidllm kernel ") + kernel +
                               " failed: " + status.message);
  }
}

}  // namespace vidllm::binding
