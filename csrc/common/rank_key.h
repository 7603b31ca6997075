// Total order used by every top-k selection in the package (DTD relative mode, routing top-k):
// higher value first, ties to the lower index, NaN below everything. Packing (value, index) into
// one unique 64-bit key lets the CPU use nth_element and the GPU a radix select, with identical
// results and no separate tie handling.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/macros.h"

namespace vidllm {

// Monotone map from float to uint32: a < b (as floats) implies key(a) < key(b). -0.0 and +0.0
// map to one key (they compare equal), and NaN maps to 0, below -inf's key 0x007fffff.
VIDLLM_HOST_DEVICE uint32_t orderable_key(float value) {
  if (value != value) return 0u;
  if (value == 0.0f) value = 0.0f;
  const uint32_t bits = float_to_bits(value);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Larger key = ranks first. Indices must be below 2^32.
VIDLLM_HOST_DEVICE uint64_t rank_key(float value, uint32_t index) {
  return (static_cast<uint64_t>(orderable_key(value)) << 32) |
         static_cast<uint64_t>(0xffffffffu - index);
}

}  // namespace vidllm
