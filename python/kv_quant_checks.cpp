#include "kv_quant_checks.h"

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

namespace vidllm::binding {

using kv_quant::Mode;
using kv_quant::Packing;

Packing parse_packing(const std::string& packing) {
  return parse_choice<Packing>(
      "packing", packing,
      {{"bits1", Packing::kBits1}, {"bits2", Packing::kBits2}, {"trits", Packing::kTrits}});
}

Mode parse_kv_mode(const std::string& mode) {
  return parse_choice<Mode>(
      "mode", mode, {{"minmax2", Mode::kMinMax2}, {"sign1", Mode::kSign1}, {"trit", Mode::kTrit}});
}

void check_group_size(int64_t group_size) {
  if (group_size < 1 || group_size > std::numeric_limits<int32_t>::max()) {
    throw py::value_error("group_size: expected an integer in [1, 2147483647], got " +
                          std::to_string(group_size));
  }
}

void check_buffer(const TensorArg& tensor, DLDataTypeCode code, int bits, const char* dtype_name,
                  const TensorArg& primary, int64_t d0, int64_t d1, int64_t d2,
                  const char* layout) {
  tensor.expect_same_device(primary);
  tensor.expect_dtype(code, bits, dtype_name);
  tensor.expect_ndim(3, layout);
  tensor.expect_size(0, d0, layout);
  tensor.expect_size(1, d1, layout);
  tensor.expect_size(2, d2, layout);
  tensor.expect_dense();
}

namespace {

void check_channel_values(const int64_t* values, int64_t heads, int64_t count, int64_t limit,
                          const char* limit_name, bool require_distinct) {
  std::vector<char> seen(require_distinct ? static_cast<size_t>(limit) : 0);
  for (int64_t h = 0; h < heads; ++h) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t c = 0; c < count; ++c) {
      const int64_t channel = values[h * count + c];
      const std::string where = " at [" + std::to_string(h) + ", " + std::to_string(c) + "]";
      if (channel < 0 || channel >= limit) {
        throw py::value_error("channels: expected indices in [0, " + std::to_string(limit) + ") (" +
                              limit_name + "), got " + std::to_string(channel) + where);
      }
      if (require_distinct) {
        if (seen[channel]) {
          throw py::value_error("channels: expected distinct channels in each row, got " +
                                std::to_string(channel) + " twice in row " + std::to_string(h));
        }
        seen[channel] = 1;
      }
    }
  }
}

}  // namespace

ChannelMap check_channel_map(const std::optional<TensorArg>& channels, const TensorArg& primary,
                             int64_t rows, int64_t limit, const char* limit_name,
                             bool require_distinct) {
  ChannelMap map;
  if (!channels) {
    map.count = limit;
    return map;
  }
  channels->expect_same_device(primary);
  channels->expect_dtype(kDLInt, 64, "int64");
  channels->expect_ndim(2, "[heads, C]");
  channels->expect_dense();
  map.heads = channels->size(0);
  map.count = channels->size(1);
  if (map.heads < 1 || rows % map.heads != 0) {
    throw py::value_error("channels: expected a number of heads (dimension 0) that divides the " +
                          std::to_string(rows) + " rows, got shape " + channels->shape_string());
  }
  map.data = static_cast<const int64_t*>(channels->data());
  if (!channels->is_cuda())
    check_channel_values(map.data, map.heads, map.count, limit, limit_name, require_distinct);
  return map;
}

}  // namespace vidllm::binding
