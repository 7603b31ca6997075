// Rounded float32 operations shared by the CPU and CUDA twins of every kernel family.
// On the device the _rn intrinsics are never contracted into FMA; the CPU sources compile without
// contraction, so both sides round every step alike and agree bitwise.
#pragma once

#include "common/macros.h"

namespace vidllm {

VIDLLM_HOST_DEVICE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

VIDLLM_HOST_DEVICE float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

VIDLLM_HOST_DEVICE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

VIDLLM_HOST_DEVICE float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

}  // namespace vidllm
