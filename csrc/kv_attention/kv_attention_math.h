// Per-element math of the packed attention kernels, shared by the CPU and CUDA twins: loading a
// stored statistic, decoding one code, the tile rule and the softmax bookkeeping.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/dtype.h"
#include "common/macros.h"
#include "kv_quant/kv_quant_math.h"

namespace vidllm::kv_attention {

// How the cache stores its statistics (KVQuantConfig.scale_dtype; float32 for tests).
enum class ScaleType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat8E4M3 = 3 };

VIDLLM_HOST_DEVICE int64_t scale_type_size(ScaleType type) {
  return type == ScaleType::kFloat32 ? 4 : type == ScaleType::kFloat8E4M3 ? 1 : 2;
}

// float8_e4m3fn: bias 7, no infinities, S.1111.111 is NaN, subnormals man * 2^-9. Exact.
VIDLLM_HOST_DEVICE float float8_e4m3_to_float(uint8_t byte) {
  const uint32_t sign = static_cast<uint32_t>(byte & 0x80u) << 24;
  const uint32_t exponent = (byte >> 3) & 0xfu;
  const uint32_t mantissa = byte & 0x7u;
  if (exponent == 0xfu && mantissa == 0x7u) return bits_to_float(0x7fc00000u);
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * 0.001953125f;  // 2^-9
    return sign ? -magnitude : magnitude;
  }
  return bits_to_float(sign | ((exponent + 120u) << 23) | (mantissa << 20));
}

// Element `index` of a statistics tensor stored as `type`, in float32 (exact).
VIDLLM_HOST_DEVICE float load_stat(const void* base, int64_t index, ScaleType type) {
  switch (type) {
    case ScaleType::kFloat16:
      return to_float(static_cast<const Half*>(base)[index]);
    case ScaleType::kBFloat16:
      return to_float(static_cast<const BFloat16*>(base)[index]);
    case ScaleType::kFloat8E4M3:
      return float8_e4m3_to_float(static_cast<const uint8_t*>(base)[index]);
    default:
      return static_cast<const float*>(base)[index];
  }
}

// ---- codes of one token's packed row ----------------------------------------------------------

VIDLLM_HOST_DEVICE float code2_at(const uint8_t* row, int64_t channel) {
  return static_cast<float>((row[channel >> 2] >> ((channel & 3) * 2)) & 3u);
}

// Keys are scored with centered levels, code * s + m = (code - 1.5) * s + (m + 1.5 * s): the
// folded bias q . (m + 1.5 s) and the code terms then stay within the group's range instead of
// cancelling each other (m can be far below zero while code * s is far above it).
VIDLLM_HOST_DEVICE float centered_code2_at(const uint8_t* row, int64_t channel) {
  return code2_at(row, channel) - 1.5f;
}

VIDLLM_HOST_DEVICE float centered_zero(float zero, float scale) { return zero + 1.5f * scale; }

VIDLLM_HOST_DEVICE bool bit_at(const uint8_t* row, int64_t channel) {
  return (row[channel >> 3] >> (channel & 7)) & 1u;
}

VIDLLM_HOST_DEVICE float trit_at(const uint8_t* row, int64_t channel) {
  const unsigned int digit = kv_quant::digit_at<kv_quant::Packing::kTrits>(
      row[channel / 5], static_cast<int>(channel % 5));
  return static_cast<float>(static_cast<int>(digit) - 1);
}

VIDLLM_HOST_DEVICE int64_t value_code_bytes(int64_t head_dim, bool trits) {
  return trits ? (head_dim + 4) / 5 : (head_dim + 3) / 4;
}

// ---- softmax bookkeeping ----------------------------------------------------------------------

// max that propagates NaN (a NaN score makes the row NaN, as torch's softmax does).
VIDLLM_HOST_DEVICE float nan_max(float a, float b) { return (b != b || b > a) ? b : a; }

// 2^(x - m) with 2^(-inf - -inf) taken as 0 (nothing seen yet, or a masked score).
VIDLLM_HOST_DEVICE float exp2_diff(float x, float m) {
  return x == -INFINITY ? 0.0f : exp2f(x - m);
}

// Merges the partials of one query row: out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s
// with M = max_s m_s; zeros when no split saw a visible token (M = -inf).
VIDLLM_HOST_DEVICE float combined_max(const float* max, int64_t splits) {
  float m = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) m = nan_max(m, max[s]);
  return m;
}

VIDLLM_HOST_DEVICE float combined_channel(const float* max, const float* sum, const float* acc,
                                          int64_t splits, int64_t head_dim, int64_t channel,
                                          float overall_max) {
  if (overall_max == -INFINITY) return 0.0f;
  float numerator = 0.0f;
  float denominator = 0.0f;
  for (int64_t s = 0; s < splits; ++s) {
    const float weight = exp2_diff(max[s], overall_max);
    numerator += weight * acc[s * head_dim + channel];
    denominator += weight * sum[s];
  }
  return numerator / denominator;
}

}  // namespace vidllm::kv_attention
