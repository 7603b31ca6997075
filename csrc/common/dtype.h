// Element types that cross the kernel boundary, their conversion to float32 (all accumulation is
// float32), and the switch that turns a runtime DType into a template parameter.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/macros.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace vidllm {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Storage-only 16-bit types: the same layout on host and device, converted with to_float().
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

// The bits of `value` read as a To of the same size (memcpy: no aliasing violation; host and
// device compilers both turn it into a register move).
template <typename To, typename From>
VIDLLM_HOST_DEVICE To bit_cast(From value) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs types of one size");
  To result;
  memcpy(&result, &value, sizeof(result));
  return result;
}

VIDLLM_HOST_DEVICE float bits_to_float(uint32_t bits) { return bit_cast<float>(bits); }

VIDLLM_HOST_DEVICE uint32_t float_to_bits(float value) { return bit_cast<uint32_t>(value); }

VIDLLM_HOST_DEVICE float to_float(float value) { return value; }

VIDLLM_HOST_DEVICE float to_float(BFloat16 value) {
  return bits_to_float(static_cast<uint32_t>(value.bits) << 16);
}

VIDLLM_HOST_DEVICE float to_float(Half value) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(value.bits));
#else
  const uint32_t sign = static_cast<uint32_t>(value.bits & 0x8000u) << 16;
  const uint32_t exponent = (value.bits >> 10) & 0x1fu;
  const uint32_t mantissa = value.bits & 0x3ffu;
  if (exponent == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float32.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
#endif
}

inline int64_t element_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

}  // namespace vidllm

// Runs the statement with `scalar_t` bound to the element type of `dtype`; returns an invalid
// Status from the enclosing function for a type it does not know.
#define VIDLLM_DISPATCH_FLOAT_TYPES(dtype, ...)                      \
  switch (dtype) {                                                   \
    case ::vidllm::DType::kFloat32: {                                \
      using scalar_t = float;                                        \
      __VA_ARGS__;                                                   \
      break;                                                         \
    }                                                                \
    case ::vidllm::DType::kFloat16: {                                \
      using scalar_t = ::vidllm::Half;                               \
      __VA_ARGS__;                                                   \
      break;                                                         \
    }                                                                \
    case ::vidllm::DType::kBFloat16: {                               \
      using scalar_t = ::vidllm::BFloat16;                           \
      __VA_ARGS__;                                                   \
      break;                                                         \
    }                                                                \
    default:                                                         \
      return ::vidllm::Status::invalid("unsupported element dtype"); \
  }
