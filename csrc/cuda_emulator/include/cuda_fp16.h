// Emulation stand-in for <cuda_fp16.h>: the storage type and the conversions the kernels use,
// bit-exact with the device (round to nearest even; NaN becomes the canonical 0x7FFF).
#pragma once
#include "cuda_emulator/cuda_emulator.h"
#include "cuda_emulator/float16_storage.h"

CUDA_EMULATOR_16_BIT_FLOAT(__half, half)

inline float __half2float(__half value) {
  const unsigned int sign = static_cast<unsigned int>(value.__x & 0x8000u) << 16;
  const unsigned int exponent = (value.__x >> 10) & 0x1fu;
  unsigned int mantissa = value.__x & 0x3ffu;
  if (exponent == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    if (mantissa == 0) return __uint_as_float(sign);
    int shift = 0;  // subnormal half: normalize into float32's range
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    mantissa &= 0x3ffu;
    return __uint_as_float(sign | ((113u - shift) << 23) | (mantissa << 13));
  }
  return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline __half __float2half_rn(float value) {
  const unsigned int bits = __float_as_uint(value);
  const unsigned short sign = static_cast<unsigned short>((bits >> 16) & 0x8000u);
  const unsigned int magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return __half{0x7fffu};  // NaN
  if (magnitude >= 0x477ff000u) return __half{static_cast<unsigned short>(sign | 0x7c00u)};
  if (magnitude >= 0x38800000u) {  // normal half: drop 13 mantissa bits, ties to even
    const unsigned int rounded = magnitude + 0x0fffu + ((magnitude >> 13) & 1u);
    return __half{static_cast<unsigned short>(sign | ((rounded - 0x38000000u) >> 13))};
  }
  // Subnormal half or zero: units of 2^-24, ties to even (exact scaling, then rint).
  const float units = std::nearbyint(__uint_as_float(magnitude) * 16777216.0f);
  return __half{static_cast<unsigned short>(sign | static_cast<unsigned short>(units))};
}
