// Dispatch of a token-merge stage to its CPU, CUDA or emulated CUDA launcher, without the GIL.
#pragma once

#include "dispatch.h"
#include "token_merge/token_merge.h"

namespace vidllm::binding {

#define TOKEN_MERGE_LAUNCH(stage, params, backend, stream) \
  VIDLLM_LAUNCHER(token_merge, stage, params, backend, stream)

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
