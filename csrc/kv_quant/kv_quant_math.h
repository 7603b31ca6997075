// Per-element math of the sub-2-bit KV cache kernels, shared by the CPU and CUDA twins so that
// both produce bitwise the same codes, statistics and dequantized values. Device branches use
// the explicitly rounded intrinsics (__fadd_rn, __fmul_rn, ...) so nvcc cannot contract a
// multiply and an add into an FMA; the CPU twin turns contraction off for its translation unit.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/dtype.h"
#include "common/exact_math.h"
#include "common/macros.h"
#include "common/narrow.h"

namespace vidllm::kv_quant {

// ---- packed layouts ----------------------------------------------------------------------

// How codes are packed into bytes (DESIGN.md, "Packed bit layouts"). Every layout is a base-radix
// number per byte, its first element least significant: byte = sum_j digit_j * radix^j, where
// digit = code (bits) or trit + 1 (trits). A row's trailing partial byte is padded with the digit
// of code 0 (0 for bits, 1 for trits, i.e. t = 0).
enum class Packing : int {
  kBits1 = 0,  // 8 codes in {0, 1} per byte
  kBits2 = 1,  // 4 codes in {0, 1, 2, 3} per byte
  kTrits = 2,  // 5 trits in {-1, 0, 1} per byte; bytes above 242 = 3^5 - 1 are invalid
};

// A packing's code type, radix, codes per byte, and the offset from code to digit.
template <typename CodeType, unsigned int kRadixValue, int kPerByteValue, int kCodeOffsetValue>
struct PackingTraitsOf {
  using Code = CodeType;
  static constexpr unsigned int kRadix = kRadixValue;
  static constexpr int kPerByte = kPerByteValue;
  static constexpr int kCodeOffset = kCodeOffsetValue;  // digit = code + offset
};

template <Packing kPacking>
struct PackingTraits;
template <>
struct PackingTraits<Packing::kBits1> : PackingTraitsOf<uint8_t, 2, 8, 0> {};
template <>
struct PackingTraits<Packing::kBits2> : PackingTraitsOf<uint8_t, 4, 4, 0> {};
template <>
struct PackingTraits<Packing::kTrits> : PackingTraitsOf<int8_t, 3, 5, 1> {};

VIDLLM_HOST_DEVICE int codes_per_byte(Packing packing) {
  return packing == Packing::kBits1 ? 8 : packing == Packing::kBits2 ? 4 : 5;
}

// Bytes holding n codes: ceil(n / codes per byte).
VIDLLM_HOST_DEVICE int64_t packed_bytes(int64_t n, Packing packing) {
  const int64_t per_byte = codes_per_byte(packing);
  return (n + per_byte - 1) / per_byte;
}

// The digit stored for one code; a valid code gives a digit below the radix, an invalid one
// (bits: code >= 2^bits; trits: t outside {-1, 0, 1}) a digit at or above it.
template <Packing kPacking>
VIDLLM_HOST_DEVICE unsigned int code_digit(typename PackingTraits<kPacking>::Code code) {
  return static_cast<unsigned int>(static_cast<int>(code) + PackingTraits<kPacking>::kCodeOffset);
}

template <Packing kPacking>
VIDLLM_HOST_DEVICE typename PackingTraits<kPacking>::Code digit_code(unsigned int digit) {
  using Code = typename PackingTraits<kPacking>::Code;
  return static_cast<Code>(static_cast<int>(digit) - PackingTraits<kPacking>::kCodeOffset);
}

// One byte from digit(0), ..., digit(count - 1) (count <= kPerByte), padded. Adds the number of
// digits that are out of range to `invalid`; the byte is then meaningless.
template <Packing kPacking, typename DigitFn>
VIDLLM_HOST_DEVICE uint8_t pack_digits(int count, const DigitFn& digit, int& invalid) {
  using Traits = PackingTraits<kPacking>;
  unsigned int value = 0;  // Horner's rule from the most significant digit; wraps harmlessly
  for (int j = Traits::kPerByte - 1; j >= 0; --j) {
    const unsigned int d = j < count ? digit(j) : static_cast<unsigned int>(Traits::kCodeOffset);
    invalid += d >= Traits::kRadix ? 1 : 0;
    value = value * Traits::kRadix + d;
  }
  return static_cast<uint8_t>(value);
}

// Splits a byte into its digits, calling emit(j, digit) for j < count. Returns true when the byte
// is invalid: a padding digit (j >= count) other than the digit of code 0, or a value of
// radix^kPerByte or more (trits: a byte above 242).
template <Packing kPacking, typename EmitFn>
VIDLLM_HOST_DEVICE bool unpack_digits(uint8_t byte, int count, const EmitFn& emit) {
  using Traits = PackingTraits<kPacking>;
  unsigned int value = byte;
  bool invalid = false;
  for (int j = 0; j < Traits::kPerByte; ++j) {
    const unsigned int d = value % Traits::kRadix;
    value /= Traits::kRadix;
    if (j < count) {
      emit(j, d);
    } else {
      invalid |= d != static_cast<unsigned int>(Traits::kCodeOffset);
    }
  }
  return invalid || value != 0;
}

// The digit in position `slot` (0 = least significant) of a byte. Trits divide by 3^slot with a
// multiply and a shift (floor(b * ceil(2^16 / 3^slot) / 2^16) == floor(b / 3^slot) for every byte
// b), so neither twin pays for a division by a runtime value.
template <Packing kPacking>
VIDLLM_HOST_DEVICE unsigned int digit_at(uint8_t byte, int slot) {
  if constexpr (kPacking == Packing::kTrits) {
    const unsigned int reciprocal = slot == 0   ? 65536u
                                    : slot == 1 ? 21846u
                                    : slot == 2 ? 7282u
                                    : slot == 3 ? 2428u
                                                : 810u;
    return ((byte * reciprocal) >> 16) % 3u;
  } else {
    constexpr int kBits = kPacking == Packing::kBits1 ? 1 : 2;
    return (static_cast<unsigned int>(byte) >> (kBits * slot)) & ((1u << kBits) - 1u);
  }
}

// The digit of code `index` of a packed row of codes.
template <Packing kPacking>
VIDLLM_HOST_DEVICE unsigned int digit_in_row(const uint8_t* packed, int64_t index) {
  constexpr int kPerByte = PackingTraits<kPacking>::kPerByte;
  return digit_at<kPacking>(packed[index / kPerByte], static_cast<int>(index % kPerByte));
}

// ---- quantizers --------------------------------------------------------------------------

// Statistics and codes of a group of values (float32 math, IEEE rounding, no FMA):
//   kMinMax2: zero m = min, scale s = (max - m) / 3, code = clamp(round_half_even((x - m) / s),
//             0, 3), 0 where s == 0 or the quotient is NaN; x^ = code * s + m.
//   kSign1:   scale alpha = sum |x| / count (sequential float32 sum in group order); code = x >= 0;
//             x^ = code ? alpha : -alpha.
//   kTrit:    scale gamma = sum |x| / count; t = +1 where x > gamma / 2, -1 where x < -gamma / 2,
//             else 0 (NaN: 0); x^ = gamma * t.
// A NaN anywhere in a group makes its statistics NaN (min and max included).
enum class Mode : int { kMinMax2 = 0, kSign1 = 1, kTrit = 2 };

template <Mode kMode>
struct ModeTraits;
template <>
struct ModeTraits<Mode::kMinMax2> {
  static constexpr Packing kPacking = Packing::kBits2;
};
template <>
struct ModeTraits<Mode::kSign1> {
  static constexpr Packing kPacking = Packing::kBits1;
};
template <>
struct ModeTraits<Mode::kTrit> {
  static constexpr Packing kPacking = Packing::kTrits;
};

inline Packing mode_packing(Mode mode) {
  return mode == Mode::kMinMax2 ? Packing::kBits2
         : mode == Mode::kSign1 ? Packing::kBits1
                                : Packing::kTrits;
}

// NaN made canonical (0x7fc00000): arithmetic on NaN keeps an operand's payload and sign on the
// CPU (or makes a negative default NaN) but gives 0x7fffffff on the GPU; statistics and decoded
// values pass through this so both twins agree bitwise.
VIDLLM_HOST_DEVICE float canonical_nan(float value) { return value != value ? NAN : value; }

// Running statistics of one group, fed value by value in the group's order; start() first. The
// running min and max ignore NaN (x < low ? x : low compiles to a branch-free min) and a flag
// records it instead, so a NaN anywhere in the group makes both NaN at the end.
template <Mode kMode>
struct GroupAccumulator {
  float low;   // minmax2: running min; sign1/trit: running sum of |x| (from 0, in order)
  float high;  // minmax2: running max
  bool saw_nan;

  VIDLLM_HOST_DEVICE void start() {
    low = kMode == Mode::kMinMax2 ? INFINITY : 0.0f;
    high = -INFINITY;
    saw_nan = false;
  }
  VIDLLM_HOST_DEVICE void add(float x) {
    if constexpr (kMode == Mode::kMinMax2) {
      low = x < low ? x : low;
      high = x > high ? x : high;
      saw_nan |= x != x;
    } else {
      low = add_rn(low, fabsf(x));  // NaN propagates through the sum
    }
  }
  // scale and (minmax2) zero of the `count` values added.
  VIDLLM_HOST_DEVICE void finish(int64_t count, float& scale, float& zero) const {
    if constexpr (kMode == Mode::kMinMax2) {
      scale = saw_nan ? NAN : canonical_nan(div_rn(sub_rn(high, low), 3.0f));  // inf - inf
      zero = saw_nan ? NAN : low;
    } else {
      scale = canonical_nan(div_rn(low, static_cast<float>(count)));
      zero = 0.0f;
    }
  }
};

// The digit stored for x (minmax2: the code; sign1: the bit; trit: t + 1), branch-free: the
// signs and levels of real data are unpredictable. For minmax2, with q = (x - m) / s,
// clamp(round_half_even(q), 0, 3) == (q > 0.5) + (q >= 1.5) + (q > 2.5) for every float q
// (NaN: 0), since 0.5, 1.5 and 2.5 are exact.
template <Mode kMode>
VIDLLM_HOST_DEVICE unsigned int encode(float x, float scale, float zero) {
  if constexpr (kMode == Mode::kMinMax2) {
    const float q = div_rn(sub_rn(x, zero), scale);
    const unsigned int level = (q > 0.5f ? 1u : 0u) + (q >= 1.5f ? 1u : 0u) + (q > 2.5f ? 1u : 0u);
    return scale != 0.0f ? level : 0u;
  } else if constexpr (kMode == Mode::kSign1) {
    (void)scale;
    (void)zero;
    return x >= 0.0f ? 1u : 0u;
  } else {
    (void)zero;
    const float half = mul_rn(scale, 0.5f);
    return 1u + (x > half ? 1u : 0u) - (x < -half ? 1u : 0u);
  }
}

// sign1's -alpha is a sign flip of alpha's bits (what negation does), so no branch either.
template <Mode kMode>
VIDLLM_HOST_DEVICE float decode(unsigned int digit, float scale, float zero) {
  if constexpr (kMode == Mode::kMinMax2) {
    return canonical_nan(add_rn(mul_rn(static_cast<float>(digit), scale), zero));
  } else if constexpr (kMode == Mode::kSign1) {
    (void)zero;
    return canonical_nan(bits_to_float(float_to_bits(scale) ^ ((~digit & 1u) << 31)));
  } else {
    (void)zero;
    return canonical_nan(mul_rn(scale, static_cast<float>(static_cast<int>(digit) - 1)));
  }
}

// ---- float32 -> storage type, round to nearest even (bitwise like torch's .to(dtype)) -------

// The one narrowing of every kernel family (common/narrow.h): NaN becomes torch's NaN of the
// type (float16 0x7e00, bfloat16 0x7fc0, whatever its sign).
using ::vidllm::from_float;

}  // namespace vidllm::kv_quant
