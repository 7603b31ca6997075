// Argument checks shared by the kv_quant bindings; each throws ValueError or TypeError naming the
// argument, what was expected and what came.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "dispatch.h"
#include "kv_quant/kv_quant.h"
#include "tensor_arg.h"

namespace vidllm::binding {

// "bits1", "bits2" or "trits".
kv_quant::Packing parse_packing(const std::string& packing);
// "minmax2", "sign1" or "trit".
kv_quant::Mode parse_kv_mode(const std::string& mode);
void check_group_size(int64_t group_size);

// A 3-D tensor of `dtype` on primary's device, contiguous, of shape [d0, d1, d2].
void check_buffer(const TensorArg& tensor, DLDataTypeCode code, int bits, const char* dtype_name,
                  const TensorArg& primary, int64_t d0, int64_t d1, int64_t d2, const char* layout);

// The map of quantized channels, int64 [heads, C], contiguous, on primary's device; heads must
// divide rows. On the CPU its values are checked too: each in [0, limit) and, with
// require_distinct, no row listing a channel twice (on CUDA that would cost a synchronization;
// the kernels skip out-of-range channels instead, as kv_quant.h documents).
struct ChannelMap {
  const int64_t* data = nullptr;
  int64_t heads = 1;
  int64_t count = 0;  // C
};
ChannelMap check_channel_map(const std::optional<TensorArg>& channels, const TensorArg& primary,
                             int64_t rows, int64_t limit, const char* limit_name,
                             bool require_distinct);

}  // namespace vidllm::binding
