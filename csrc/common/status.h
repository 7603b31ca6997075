// Launchers report failures as a Status instead of throwing: csrc/ knows nothing of Python, and
// the binding layer turns a non-ok Status into an exception that names the kernel.
#pragma once

namespace vidllm {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,  // the caller broke a documented precondition
  kCudaError = 2,        // the CUDA runtime refused a launch or a query
  kNotCompiled = 3,      // the build has no kernel for this device
};

struct Status {
  StatusCode code = StatusCode::kOk;
  // Always points at static storage (a literal or cudaGetErrorString), never at a temporary.
  const char* message = "";

  static Status ok() { return {}; }
  static Status invalid(const char* message) { return {StatusCode::kInvalidArgument, message}; }
  bool is_ok() const { return code == StatusCode::kOk; }
};

}  // namespace vidllm

// Declares a kernel family's launchers for one kernel, inside the family's namespace:
// `name_cpu(params)`, and in a CUDA build `name_cuda(params, stream)`, which runs on `stream` (a
// cudaStream_t), never allocates and never synchronizes.
#if defined(VIDLLM_WITH_CUDA)
#define VIDLLM_LAUNCHERS(name, Params)     \
  Status name##_cpu(const Params& params); \
  Status name##_cuda(const Params& params, void* stream)
#else
#define VIDLLM_LAUNCHERS(name, Params) Status name##_cpu(const Params& params)
#endif
