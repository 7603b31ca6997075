// float32 -> float16 / bfloat16 with round to nearest even, the one narrowing every kernel family
// uses, so the CPU and CUDA twins store bitwise the same values. Overflow becomes infinity and
// subnormals are kept, as tensor.to(dtype) does. NaN becomes one canonical NaN per type, float16
// 0x7e00 and bfloat16 0x7fc0 (torch's quiet NaNs), whatever its sign and payload: the GPU's
// conversion instructions would write 0x7fff, and float arithmetic leaves different NaNs on the
// two twins (the GPU makes 0x7fffffff, x86 keeps an operand's sign and payload or makes
// 0xffc00000), so only a NaN rule that ignores them keeps the twins equal.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/macros.h"

namespace vidllm {

VIDLLM_HOST_DEVICE BFloat16 bfloat16_from_float(float value) {
  if (value != value) return BFloat16{0x7fc0u};
  const uint32_t bits = float_to_bits(value);
  const uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return BFloat16{static_cast<uint16_t>((bits + rounding_bias) >> 16)};
}

// The device uses the conversion instruction (IEEE round to nearest even); the host the same
// rounding in integer arithmetic only, independent of the floating-point environment.
VIDLLM_HOST_DEVICE Half half_from_float(float value) {
  if (value != value) return Half{0x7e00u};  // NaN, whatever its sign
#if defined(__CUDA_ARCH__)
  return Half{__half_as_ushort(__float2half_rn(value))};
#else
  const uint32_t bits = float_to_bits(value);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t magnitude = bits & 0x7fffffffu;
  // 65520 and above (the midpoint between 65504, the largest half, and 65536) round to infinity.
  if (magnitude >= 0x477ff000u) return Half{static_cast<uint16_t>(sign | 0x7c00u)};
  // At most 2^-25 (half of the smallest subnormal, 2^-24): rounds to zero, ties to even.
  if (magnitude <= 0x33000000u) return Half{static_cast<uint16_t>(sign)};
  uint32_t result;
  uint32_t remainder;
  uint32_t halfway;
  if (magnitude < 0x38800000u) {
    // Below 2^-14: a subnormal half, the significand (hidden bit included) in units of 2^-24.
    const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - (magnitude >> 23);  // 14 .. 24
    result = significand >> shift;
    remainder = significand & ((1u << shift) - 1u);
    halfway = 1u << (shift - 1u);
  } else {
    // Normal: rebias the exponent (127 -> 15) and drop 13 mantissa bits.
    result = (magnitude - 0x38000000u) >> 13;
    remainder = magnitude & 0x1fffu;
    halfway = 0x1000u;
  }
  if (remainder > halfway || (remainder == halfway && (result & 1u))) ++result;  // may carry up
  return Half{static_cast<uint16_t>(sign | result)};
#endif
}

// from_float<T>: float -> T, the inverse of to_float up to rounding.
template <typename T>
VIDLLM_HOST_DEVICE T from_float(float value);

template <>
VIDLLM_HOST_DEVICE float from_float<float>(float value) {
  return value;
}

template <>
VIDLLM_HOST_DEVICE Half from_float<Half>(float value) {
  return half_from_float(value);
}

template <>
VIDLLM_HOST_DEVICE BFloat16 from_float<BFloat16>(float value) {
  return bfloat16_from_float(value);
}

}  // namespace vidllm
