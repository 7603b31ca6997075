// Choosing the CPU twin, the CUDA launcher or the emulated CUDA launcher of a kernel for a call,
// and turning launcher Status into Python exceptions that name the kernel. The one place that
// routes a call to a launcher: VIDLLM_LAUNCHER below.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "common/status.h"
#include "tensor_arg.h"

#if defined(VIDLLM_CUDA_EMULATION)
#include "cuda_emulator/vidllm_launchers.h"
#endif

namespace vidllm::binding {

// kEmulatedCuda: CPU tensors while vidllm_ext.testing.emulated_cuda() is on; the CUDA launcher
// compiled for the host emulator runs on them (csrc/cuda_emulator).
enum class Backend { kCpu, kCuda, kEmulatedCuda };

// The backend for tensors on `primary`'s device. Raises RuntimeError for a CUDA tensor when the
// build has no CUDA kernels or none for that GPU (naming the compiled archs), and ValueError for
// any other device type. For CUDA it also makes the device current in our runtime.
Backend select_backend(const TensorArg& primary);

// Where one call runs: the backend for its primary tensor, that tensor's device (every params
// struct's `device` receives it) and the caller's CUDA stream.
struct Launch {
  Backend backend;
  int device;
  uintptr_t stream;
};

// select_backend(primary), with primary's device and the caller's `stream`; then each tensor of
// `same_device` must be on primary's device (null entries, absent optional tensors, are skipped).
Launch select_launch(const TensorArg& primary, uintptr_t stream,
                     std::initializer_list<const TensorArg*> same_device = {});

// Whether the tensors of a call on `backend` live in host memory (the binding may read them).
inline bool host_memory(Backend backend) { return backend != Backend::kCuda; }

// Raises ValueError (invalid argument) or RuntimeError (launch or runtime failure) unless ok.
void throw_if_failed(const Status& status, const char* kernel);

// The one way a binding runs a kernel: `launch` (returning a Status) without the GIL, then a
// raise for a failed Status naming `kernel`.
template <typename Launch>
void run_kernel(const char* kernel, const Launch& launch) {
  Status status;
  {
    py::gil_scoped_release no_gil;
    status = launch();
  }
  throw_if_failed(status, kernel);
}

// The compiled CUDA architectures as CMake spelled them ("80-real,90"), or "" without CUDA.
std::string compiled_cuda_archs();

// Whether this build compiled the emulated launchers; whether CPU tensors go to them now; and
// the switch (schedule: 0 forward, 1 reverse, 2 random; see cuda_emulator/control.h).
bool cuda_emulation_compiled();
bool cuda_emulation_enabled();
void set_cuda_emulation(bool enabled, int schedule, uint64_t seed);

// Status for a launcher this build does not have (never reached: select_backend refuses first).
Status missing_launcher();

#if defined(VIDLLM_CUDA_EMULATION)
inline Status emulated_status(const emulated_launchers::Result& result) {
  return {static_cast<StatusCode>(result.code), result.message};
}
#endif

}  // namespace vidllm::binding

#if defined(VIDLLM_WITH_CUDA)
#define VIDLLM_CUDA_LAUNCHER(family, name, params, stream) \
  family::name##_cuda((params), ::vidllm::binding::stream_from_int(stream))
#else
#define VIDLLM_CUDA_LAUNCHER(family, name, params, stream) \
  ((void)(stream), ::vidllm::binding::missing_launcher())
#endif
#if defined(VIDLLM_CUDA_EMULATION)
#define VIDLLM_EMULATED_LAUNCHER(family, name, params) \
  ::vidllm::binding::emulated_status(::emulated_launchers::family::name(&(params), sizeof(params)))
#else
#define VIDLLM_EMULATED_LAUNCHER(family, name, params) ::vidllm::binding::missing_launcher()
#endif

// The Status of family::<name>_cpu, family::<name>_cuda or its emulated twin for `backend`.
#define VIDLLM_LAUNCHER(family, name, params, backend, stream)                \
  ((backend) == ::vidllm::binding::Backend::kCpu ? family::name##_cpu(params) \
   : (backend) == ::vidllm::binding::Backend::kCuda                           \
       ? VIDLLM_CUDA_LAUNCHER(family, name, params, stream)                   \
       : VIDLLM_EMULATED_LAUNCHER(family, name, params))

// run_kernel for family::<name>_cpu, <name>_cuda or its emulated twin, as the Launch `launch`
// says, with params.device set to its device; the kernel is named <family>_<name>.
#define VIDLLM_RUN_KERNEL(family, name, params, launch)                              \
  ::vidllm::binding::run_kernel(#family "_" #name, [&] {                             \
    (params).device = (launch).device;                                               \
    return VIDLLM_LAUNCHER(family, name, params, (launch).backend, (launch).stream); \
  })
