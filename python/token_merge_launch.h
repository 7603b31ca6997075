// Dispatch of a token-merge stage to its CPU or CUDA launcher, without the GIL.
#pragma once

#include "dispatch.h"
#include "token_merge/token_merge.h"

namespace vidllm::binding {

#if defined(VIDLLM_WITH_CUDA)
#define TOKEN_MERGE_LAUNCH(stage, params, backend, stream)                                  \
  ((backend) == Backend::kCuda ? token_merge::stage##_cuda(params, stream_from_int(stream)) \
                               : token_merge::stage##_cpu(params))
#else
#define TOKEN_MERGE_LAUNCH(stage, params, backend, stream) \
  ((void)(backend), (void)(stream), token_merge::stage##_cpu(params))
#endif

// Runs `launch` without the GIL and turns its Status into an exception naming `kernel`.
template <typename Launch>
void run_merge_stage(const char* kernel, const Launch& launch) {
  Status status;
  {
    py::gil_scoped_release no_gil;
    status = launch();
  }
  throw_if_failed(status, kernel);
}

}  // namespace vidllm::binding
