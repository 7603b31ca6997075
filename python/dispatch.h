// Choosing the CPU or CUDA twin of a kernel for a call, and turning launcher Status into Python
// exceptions that name the kernel.
#pragma once

#include <string>

#include "common/status.h"
#include "tensor_arg.h"

namespace vidllm::binding {

enum class Backend { kCpu, kCuda };

// The backend for tensors on `primary`'s device. Raises RuntimeError for a CUDA tensor when the
// build has no CUDA kernels or none for that GPU (naming the compiled archs), and ValueError for
// any other device type. For CUDA it also makes the device current in our runtime.
Backend select_backend(const TensorArg& primary);

// Raises ValueError (invalid argument) or RuntimeError (launch or runtime failure) unless ok.
void throw_if_failed(const Status& status, const char* kernel);

// The compiled CUDA architectures as CMake spelled them ("80-real,90"), or "" without CUDA.
std::string compiled_cuda_archs();

}  // namespace vidllm::binding

// Runs family::<name>_cpu or family::<name>_cuda without the GIL and raises on a failed Status
// naming `label`.
#if defined(VIDLLM_WITH_CUDA)
#define VIDLLM_RUN_KERNEL(family, name, label, params, backend, stream)                         \
  do {                                                                                          \
    ::vidllm::Status status_;                                                                   \
    {                                                                                           \
      ::pybind11::gil_scoped_release no_gil_;                                                   \
      status_ = (backend) == ::vidllm::binding::Backend::kCuda                                  \
                    ? family::name##_cuda((params), ::vidllm::binding::stream_from_int(stream)) \
                    : family::name##_cpu(params);                                               \
    }                                                                                           \
    ::vidllm::binding::throw_if_failed(status_, label);                                         \
  } while (0)
#else
#define VIDLLM_RUN_KERNEL(family, name, label, params, backend, stream) \
  do {                                                                  \
    (void)(backend);                                                    \
    (void)(stream);                                                     \
    ::vidllm::Status status_;                                           \
    {                                                                   \
      ::pybind11::gil_scoped_release no_gil_;                           \
      status_ = family::name##_cpu(params);                             \
    }                                                                   \
    ::vidllm::binding::throw_if_failed(status_, label);                 \
  } while (0)
#endif
