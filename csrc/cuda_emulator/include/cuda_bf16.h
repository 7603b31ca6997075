// Emulation stand-in for <cuda_bf16.h>: the storage type and the conversions the kernels use,
// bit-exact with the device (round to nearest even; NaN becomes the canonical 0x7FFF).
#pragma once
#include "cuda_emulator/cuda_emulator.h"
#include "cuda_emulator/float16_storage.h"

CUDA_EMULATOR_16_BIT_FLOAT(__nv_bfloat16, bfloat16)

inline float __bfloat162float(__nv_bfloat16 value) {
  return __uint_as_float(static_cast<unsigned int>(value.__x) << 16);
}
inline __nv_bfloat16 __float2bfloat16_rn(float value) {
  const unsigned int bits = __float_as_uint(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fffu};
  const unsigned int round_bias = 0x7fffu + ((bits >> 16) & 1u);
  return __nv_bfloat16{static_cast<unsigned short>((bits + round_bias) >> 16)};
}
