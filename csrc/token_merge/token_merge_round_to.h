// float32 -> storage type for the merge kernels: from_float<T> of common/narrow.h, the one
// narrowing of every kernel family (round to nearest even, bitwise the same on the CPU and CUDA
// twins and like tensor.to(dtype); NaN becomes float16 0x7e00, bfloat16 0x7fc0).
#pragma once

#include "common/narrow.h"

namespace vidllm::token_merge {

using ::vidllm::from_float;

}  // namespace vidllm::token_merge
