// CPU twin of kv_quant.cu: the same per-element math (kv_quant_math.h) and the same order of
// every float32 reduction (a group's values in token or channel order), so both twins agree
// bitwise. Work items are (row, group) pairs for channel groups and tokens otherwise, split
// across threads with OpenMP; inner loops run over contiguous channels.
//
// Contraction of a multiply and an add into an FMA would change roundings the CUDA twin does not
// make (x^ = code * s + m has two): it is off for this whole translation unit.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "kv_quant/kv_quant.h"

namespace vidllm::kv_quant {
namespace {

// Below this many elements of work a launcher runs on the calling thread: waking a thread team
// costs more than the work (and far more on an oversubscribed machine).
constexpr int64_t kSerialElements = int64_t{1} << 16;

// parallel_for, or a plain loop when items * elements_per_item is below kSerialElements.
template <typename Body>
void parallel_for_work(int64_t items, int64_t elements_per_item, const Body& body) {
  if (items * elements_per_item < kSerialElements) {
    for (int64_t i = 0; i < items; ++i) body(i);
  } else {
    parallel_for(items, body);
  }
}

// Packed bytes per work item of pack/unpack: long rows are split so one row still uses every
// thread, short rows are grouped.
constexpr int64_t kBytesPerItem = 4096;

// Packs (PackParams) or unpacks (UnpackParams) bytes [first_byte, end_byte) of one row's packed
// bytes; returns the invalid codes (pack) or bytes (unpack) it met.
template <Packing kPacking>
int64_t convert_bytes(const PackParams& p, int64_t row, int64_t first_byte, int64_t end_byte) {
  using Traits = PackingTraits<kPacking>;
  using Code = typename Traits::Code;
  const Code* codes = static_cast<const Code*>(p.codes) + row * p.codes_row_stride;
  uint8_t* packed = p.packed + row * packed_bytes(p.n, kPacking);
  int invalid = 0;
  for (int64_t j = first_byte; j < end_byte; ++j) {
    const Code* src = codes + j * Traits::kPerByte;
    const int count =
        static_cast<int>(std::min<int64_t>(Traits::kPerByte, p.n - j * Traits::kPerByte));
    packed[j] = pack_digits<kPacking>(
        count, [src](int k) { return code_digit<kPacking>(src[k]); }, invalid);
  }
  return invalid;
}

template <Packing kPacking>
int64_t convert_bytes(const UnpackParams& p, int64_t row, int64_t first_byte, int64_t end_byte) {
  using Traits = PackingTraits<kPacking>;
  using Code = typename Traits::Code;
  const uint8_t* packed = p.packed + row * p.packed_row_stride;
  Code* codes = static_cast<Code*>(p.codes) + row * p.n;
  int64_t invalid = 0;
  for (int64_t j = first_byte; j < end_byte; ++j) {
    Code* dst = codes + j * Traits::kPerByte;
    const int count =
        static_cast<int>(std::min<int64_t>(Traits::kPerByte, p.n - j * Traits::kPerByte));
    invalid += unpack_digits<kPacking>(packed[j], count, [dst](int k, unsigned int digit) {
      dst[k] = digit_code<kPacking>(digit);
    });
  }
  return invalid;
}

// Runs work(row, first_byte, end_byte) -> invalid count over every row's packed bytes in items
// of at most kBytesPerItem bytes, and returns the total.
template <typename Work>
int64_t for_each_byte_range(int64_t rows, int64_t bytes_per_row, const Work& work) {
  if (rows == 0 || bytes_per_row == 0) return 0;
  const int64_t items_per_row = (bytes_per_row + kBytesPerItem - 1) / kBytesPerItem;
  std::atomic<int64_t> invalid{0};
  parallel_for_work(
      rows * items_per_row, std::min(bytes_per_row, kBytesPerItem) * 8, [&](int64_t item) {
        const int64_t row = item / items_per_row;
        const int64_t first = (item - row * items_per_row) * kBytesPerItem;
        const int64_t found = work(row, first, std::min(first + kBytesPerItem, bytes_per_row));
        if (found != 0) invalid.fetch_add(found, std::memory_order_relaxed);
      });
  return invalid.load();
}

// pack_cpu and unpack_cpu: convert_bytes over every row's packed bytes, the invalid count to
// *p.invalid.
template <typename Params>
Status convert_all_bytes(const Params& p) {
  const int64_t bytes = packed_bytes(p.n, p.packing);
  VIDLLM_KV_DISPATCH_PACKING(p.packing, *p.invalid = for_each_byte_range(
                                            p.rows, bytes, [&](int64_t r, int64_t b, int64_t e) {
                                              return convert_bytes<kPacking>(p, r, b, e);
                                            }));
  return Status::ok();
}

// Ok when every entry of channels [heads, count] lies in [0, limit) and, with require_distinct,
// no row of it lists a channel twice.
Status check_channels(const int64_t* channels, int64_t heads, int64_t count, int64_t limit,
                      bool require_distinct) {
  if (channels == nullptr) return Status::ok();
  std::vector<char> seen(require_distinct ? static_cast<size_t>(limit) : 0);
  for (int64_t h = 0; h < heads; ++h) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t c = 0; c < count; ++c) {
      const int64_t channel = channels[h * count + c];
      if (channel < 0 || channel >= limit)
        return Status::invalid("channels: every entry must lie in [0, channels of x or out)");
      if (require_distinct) {
        if (seen[channel]) return Status::invalid("channels: a row lists the same channel twice");
        seen[channel] = 1;
      }
    }
  }
  return Status::ok();
}

template <typename T, Mode kMode>
void quantize_channel_group(const ChannelGroupQuantParams& p, int64_t groups, int64_t row,
                            int64_t group) {
  constexpr Packing kPacking = ModeTraits<kMode>::kPacking;
  constexpr int kPerByte = PackingTraits<kPacking>::kPerByte;
  const int64_t count = p.quantized_channels;
  const int64_t* map = head_channel_map(p.channels, p.heads, count, row);
  const T* x = static_cast<const T*>(p.x) + row * p.x_stride_row;
  const int64_t first_token = group * p.group_size;
  const int64_t end_token = std::min(first_token + p.group_size, p.tokens);

  std::vector<GroupAccumulator<kMode>> accumulators(static_cast<size_t>(count));
  for (auto& accumulator : accumulators) accumulator.start();
  for (int64_t t = first_token; t < end_token; ++t) {
    const T* token = x + t * p.x_stride_token;
    if (map == nullptr) {
      for (int64_t c = 0; c < count; ++c) accumulators[c].add(to_float(token[c]));
    } else {
      for (int64_t c = 0; c < count; ++c) accumulators[c].add(to_float(token[map[c]]));
    }
  }
  float* scale = p.scale + (row * groups + group) * count;
  float* zero = p.zero == nullptr ? nullptr : p.zero + (row * groups + group) * count;
  for (int64_t c = 0; c < count; ++c) {
    float zero_value = 0.0f;
    accumulators[c].finish(end_token - first_token, scale[c], zero_value);
    if (zero != nullptr) zero[c] = zero_value;
  }

  const int64_t bytes = packed_bytes(count, kPacking);
  for (int64_t t = first_token; t < end_token; ++t) {
    const T* token = x + t * p.x_stride_token;
    uint8_t* codes = p.codes + (row * p.tokens + t) * bytes;
    int unused = 0;  // digits from encode are always in range
    for (int64_t b = 0; b < bytes; ++b) {
      const int64_t first = b * kPerByte;
      const int in_byte = static_cast<int>(std::min<int64_t>(kPerByte, count - first));
      codes[b] = pack_digits<kPacking>(
          in_byte,
          [&](int k) {
            const int64_t c = first + k;
            const float value = to_float(token[mapped_channel(map, c)]);
            return encode<kMode>(value, scale[c], zero == nullptr ? 0.0f : zero[c]);
          },
          unused);
    }
  }
}

template <typename T, Mode kMode>
void dequantize_channel_token(const ChannelGroupDequantParams& p, int64_t groups, int64_t row,
                              int64_t t) {
  constexpr Packing kPacking = ModeTraits<kMode>::kPacking;
  const int64_t count = p.quantized_channels;
  const int64_t* map = head_channel_map(p.channels, p.heads, count, row);
  const uint8_t* codes = p.codes + (row * p.tokens + t) * packed_bytes(count, kPacking);
  const int64_t stats = (row * groups + t / p.group_size) * count;
  T* out = static_cast<T*>(p.out) + row * p.out_stride_row + t * p.out_stride_token;
  for (int64_t c = 0; c < count; ++c) {
    const unsigned int digit = digit_in_row<kPacking>(codes, c);
    const float zero = p.zero == nullptr ? 0.0f : p.zero[stats + c];
    const float value = decode<kMode>(digit, p.scale[stats + c], zero);
    out[mapped_channel(map, c) * p.out_stride_channel] = from_float<T>(value);
  }
}

template <typename T>
void quantize_token(const TokenGroupQuantParams& p, int64_t groups, int64_t row, int64_t t) {
  const T* x = static_cast<const T*>(p.x) + row * p.x_stride_row + t * p.x_stride_token;
  float* scale = p.scale + (row * p.tokens + t) * groups;
  float* zero = p.zero + (row * p.tokens + t) * groups;
  for (int64_t g = 0; g < groups; ++g) {
    GroupAccumulator<Mode::kMinMax2> accumulator;
    accumulator.start();
    const int64_t end = std::min((g + 1) * p.group_size, p.channels);
    for (int64_t c = g * p.group_size; c < end; ++c) accumulator.add(to_float(x[c]));
    accumulator.finish(end - g * p.group_size, scale[g], zero[g]);
  }
  uint8_t* codes = p.codes + (row * p.tokens + t) * packed_bytes(p.channels, Packing::kBits2);
  int unused = 0;
  for (int64_t b = 0; b * 4 < p.channels; ++b) {
    const int in_byte = static_cast<int>(std::min<int64_t>(4, p.channels - b * 4));
    codes[b] = pack_digits<Packing::kBits2>(
        in_byte,
        [&](int k) {
          const int64_t c = b * 4 + k;
          const int64_t g = c / p.group_size;
          return encode<Mode::kMinMax2>(to_float(x[c]), scale[g], zero[g]);
        },
        unused);
  }
}

template <typename T>
void dequantize_token(const TokenGroupDequantParams& p, int64_t groups, int64_t token) {
  const uint8_t* codes = p.codes + token * packed_bytes(p.channels, Packing::kBits2);
  const float* scale = p.scale + token * groups;
  const float* zero = p.zero + token * groups;
  T* out = static_cast<T*>(p.out) + token * p.channels;
  for (int64_t c = 0; c < p.channels; ++c) {
    const unsigned int digit = digit_in_row<Packing::kBits2>(codes, c);
    const int64_t g = c / p.group_size;
    out[c] = from_float<T>(decode<Mode::kMinMax2>(digit, scale[g], zero[g]));
  }
}

}  // namespace

Status pack_cpu(const PackParams& p) { return convert_all_bytes(p); }

Status unpack_cpu(const UnpackParams& p) { return convert_all_bytes(p); }

Status quantize_channel_groups_cpu(const ChannelGroupQuantParams& p) {
  const Status channels_ok = check_channels(p.channels, p.heads, p.quantized_channels, p.x_channels,
                                            /*require_distinct=*/false);
  if (!channels_ok.is_ok()) return channels_ok;
  if (p.group_size < 1) return Status::invalid("group_size must be at least 1");
  const int64_t groups = ceil_groups(p.tokens, p.group_size);
  if (p.rows == 0 || groups == 0 || p.quantized_channels == 0) return Status::ok();
  VIDLLM_DISPATCH_FLOAT_TYPES(
      p.dtype, VIDLLM_KV_DISPATCH_MODE(
                   p.mode, parallel_for_work(p.rows * groups, p.group_size * p.quantized_channels,
                                             [&](int64_t item) {
                                               quantize_channel_group<scalar_t, kMode>(
                                                   p, groups, item / groups, item % groups);
                                             })));
  return Status::ok();
}

Status dequantize_channel_groups_cpu(const ChannelGroupDequantParams& p) {
  const Status channels_ok = check_channels(p.channels, p.heads, p.quantized_channels,
                                            p.out_channels, /*require_distinct=*/true);
  if (!channels_ok.is_ok()) return channels_ok;
  if (p.group_size < 1) return Status::invalid("group_size must be at least 1");
  const int64_t groups = ceil_groups(p.tokens, p.group_size);
  if (p.rows == 0 || p.tokens == 0 || p.quantized_channels == 0) return Status::ok();
  VIDLLM_DISPATCH_FLOAT_TYPES(
      p.out_dtype,
      VIDLLM_KV_DISPATCH_MODE(
          p.mode, parallel_for_work(p.rows * p.tokens, p.quantized_channels, [&](int64_t item) {
            dequantize_channel_token<scalar_t, kMode>(p, groups, item / p.tokens, item % p.tokens);
          })));
  return Status::ok();
}

Status quantize_token_groups_cpu(const TokenGroupQuantParams& p) {
  if (p.group_size < 1) return Status::invalid("group_size must be at least 1");
  const int64_t groups = ceil_groups(p.channels, p.group_size);
  if (p.rows == 0 || p.tokens == 0 || p.channels == 0) return Status::ok();
  VIDLLM_DISPATCH_FLOAT_TYPES(
      p.dtype, parallel_for_work(p.rows * p.tokens, p.channels, [&](int64_t item) {
        quantize_token<scalar_t>(p, groups, item / p.tokens, item % p.tokens);
      }));
  return Status::ok();
}

Status dequantize_token_groups_cpu(const TokenGroupDequantParams& p) {
  if (p.group_size < 1) return Status::invalid("group_size must be at least 1");
  const int64_t groups = ceil_groups(p.channels, p.group_size);
  if (p.rows == 0 || p.tokens == 0 || p.channels == 0) return Status::ok();
  VIDLLM_DISPATCH_FLOAT_TYPES(p.out_dtype,
                              parallel_for_work(p.rows * p.tokens, p.channels, [&](int64_t token) {
                                dequantize_token<scalar_t>(p, groups, token);
                              }));
  return Status::ok();
}

}  // namespace vidllm::kv_quant
