// Queries of the statically linked CUDA runtime. Compiled only when the build has CUDA kernels.
// None of these throws or aborts when there is no driver or no GPU.
#pragma once

#include "common/status.h"

namespace vidllm::cuda {

// CUDA runtime version the module was built against, e.g. 13000.
int runtime_version();

// Number of visible devices; 0 when there is no driver, no device or any other error.
int device_count();

// Makes `device` current for this thread in our (static) runtime; torch's runtime keeps its own.
Status set_device(int device);

// Ok when this build holds machine code or PTX that can run on `device`; otherwise kNotCompiled
// (the caller names the compiled archs in its error).
Status check_device_supported(int device);

// Multiprocessor count of `device` (cached per device); 0 on error.
int multiprocessor_count(int device);

}  // namespace vidllm::cuda
