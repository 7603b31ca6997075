// What the emulator's <cuda_fp16.h> and <cuda_bf16.h> share: a 16-bit float storage type, its bit
// casts, and __float2<type> as the round-to-nearest-even conversion. Each header defines its own
// conversions to and from float.
#pragma once

// Declares `type` (its bits in __x), __ushort_as_<suffix>, __<suffix>_as_ushort and
// __float2<suffix>, which calls __float2<suffix>_rn (declared here, defined by the header).
#define CUDA_EMULATOR_16_BIT_FLOAT(type, suffix)                                 \
  struct type {                                                                  \
    unsigned short __x;                                                          \
  };                                                                             \
  inline type __ushort_as_##suffix(unsigned short bits) { return type{bits}; }   \
  inline unsigned short __##suffix##_as_ushort(type value) { return value.__x; } \
  inline type __float2##suffix##_rn(float value);                                \
  inline type __float2##suffix(float value) { return __float2##suffix##_rn(value); }
