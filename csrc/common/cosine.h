// The one cosine similarity of the package: DTD's feature scores and token merging's
// similarities, in the CPU and the CUDA twins alike.
//
//   cosine(a, b) = dot(a, b) / sqrt(max(|a|^2, eps^2) * max(|b|^2, eps^2)),  eps^2 = 1e-16f
//
// computed from float32 sums. Callers sum dot(a, b), |a|^2 and |b|^2 with the same operations in
// the same order, so for a == b the three sums are one float s, and sqrt(fl(s * s)) == s holds in
// IEEE binary arithmetic: identical vectors (|a| >= eps) score exactly 1 on every twin, and the
// tie rules, not rounding noise, decide among them. Mathematically this is torch's
// cosine_similarity (dot / (max(|a|, eps) max(|b|, eps))); it differs only in rounding.
// Where the product of the clamped squares would overflow, both are scaled by 2^-64 first: exact,
// so the result is the formula's in an unbounded exponent range. A squared norm that is not finite
// (inf or NaN data, or a float32 sum that overflowed) gives NaN.
#pragma once

#include <cfloat>
#include <cmath>
#include <limits>

#include "common/exact_math.h"
#include "common/macros.h"

namespace vidllm {

constexpr float kCosineEpsSquared = 1e-16f;

// Correctly rounded square root (never an approximation on the device).
VIDLLM_HOST_DEVICE float sqrt_rn(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);
#else
  return std::sqrt(x);
#endif
}

// max(sum_sq, eps^2), or NaN when sum_sq is not finite.
VIDLLM_HOST_DEVICE float clamped_sum_sq(float sum_sq) {
  // NaN compares false too.
  if (!(sum_sq <= FLT_MAX)) return std::numeric_limits<float>::quiet_NaN();
  return sum_sq > kCosineEpsSquared ? sum_sq : kCosineEpsSquared;
}

// sqrt(clamped_a * clamped_b) for two values of clamped_sum_sq.
VIDLLM_HOST_DEVICE float cosine_denominator(float clamped_a, float clamped_b) {
  const float product = mul_rn(clamped_a, clamped_b);
  if (!(product > FLT_MAX)) return sqrt_rn(product);  // finite or NaN
  const float scaled = mul_rn(mul_rn(clamped_a, 0x1p-64f), mul_rn(clamped_b, 0x1p-64f));
  return mul_rn(sqrt_rn(scaled), 0x1p64f);
}

VIDLLM_HOST_DEVICE float cosine_from_sums(float dot, float sum_sq_a, float sum_sq_b) {
  return div_rn(dot, cosine_denominator(clamped_sum_sq(sum_sq_a), clamped_sum_sq(sum_sq_b)));
}

}  // namespace vidllm
