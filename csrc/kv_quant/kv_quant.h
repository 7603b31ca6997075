// Sub-2-bit KV cache kernels (VidKV, KIVI): packing of 1-bit, 2-bit and ternary codes, and the
// group quantizers the cache composes. Each launcher has a CPU and a CUDA twin that share the
// per-element math of kv_quant_math.h, so CPU tests exercise the GPU's arithmetic bit for bit.
//
//   pack / unpack:              codes [rows, n] <-> packed [rows, ceil(n / codes per byte)]
//   quantize_channel_groups:    x [R, T, Cx] -> codes [R, T, bytes(C)], scale/zero [R, NG, C]
//   dequantize_channel_groups:  codes, scale/zero -> out [R, T, Cx] (mapped channels only)
//   quantize_token_groups:      x [R, T, C] -> codes [R, T, ceil(C / 4)], scale/zero [R, T, NGc]
//   dequantize_token_groups:    codes, scale/zero -> out [R, T, C]
//
// Channel groups are group_size consecutive tokens of one channel (NG = ceil(T / group_size));
// token groups are group_size consecutive channels of one token (NGc = ceil(C / group_size)); a
// last group may be partial. Codes are packed per token along the quantized channels.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/status.h"
#include "kv_quant/kv_quant_math.h"

namespace vidllm::kv_quant {

// Strides are in elements. `invalid` receives a count (overwritten, never accumulated), so the
// caller can validate with one read after the launch.
struct PackShape {
  // [1]: pack: codes >= 2^bits, or trits outside {-1, 0, 1}; unpack: bytes with non-zero
  // padding, or trit bytes above 242
  int64_t* invalid = nullptr;
  int64_t rows = 0;
  int64_t n = 0;
  Packing packing = Packing::kBits2;
  int device = 0;  // CUDA only: the device that owns every pointer
};

struct PackParams : PackShape {
  const void* codes = nullptr;  // [rows, n]: uint8 codes, or int8 trits for kTrits; stride 1 in n
  int64_t codes_row_stride = 0;
  uint8_t* packed = nullptr;  // [rows, packed_bytes(n)], contiguous
};

struct UnpackParams : PackShape {
  const uint8_t* packed = nullptr;  // [rows, packed_bytes(n)], stride 1 along a row
  int64_t packed_row_stride = 0;
  void* codes = nullptr;  // [rows, n], contiguous: uint8 codes, or int8 trits for kTrits
};

// What the four group kernels share: rows of `tokens` tokens, groups of group_size.
struct GroupShape {
  int64_t rows = 0;
  int64_t tokens = 0;
  int64_t group_size = 1;
  int device = 0;
};

// A quantizer's input x [rows, tokens, channels] (channels contiguous) and its outputs: codes
// [rows, tokens, packed bytes] and scale/zero, all contiguous.
struct QuantizeIO {
  const void* x = nullptr;
  int64_t x_stride_row = 0;
  int64_t x_stride_token = 0;
  DType dtype = DType::kFloat32;
  uint8_t* codes = nullptr;
  float* scale = nullptr;
  float* zero = nullptr;
};

// A dequantizer's inputs, as a quantizer wrote them, and its output out [rows, tokens, channels].
struct DequantizeIO {
  const uint8_t* codes = nullptr;
  const float* scale = nullptr;
  const float* zero = nullptr;
  void* out = nullptr;
  DType out_dtype = DType::kFloat32;
};

// Channel groups: row r quantizes C channels, channel channels[r % heads][c] for c < C, or
// channel c when channels is null (then C == x_channels, or out_channels). scale and zero are
// [rows, groups, C]; zero is for minmax2 only (null otherwise).
struct ChannelGroupShape : GroupShape {
  const int64_t* channels = nullptr;  // [heads, C], contiguous, or null
  int64_t heads = 1;
  int64_t quantized_channels = 0;  // C
  Mode mode = Mode::kMinMax2;
};

// Every listed channel must lie in [0, x_channels): the CPU twin checks and returns an invalid
// Status before writing anything; the CUDA twin treats an out-of-range channel as NaN input (NaN
// statistics, code 0) and never reads it.
struct ChannelGroupQuantParams : ChannelGroupShape, QuantizeIO {
  int64_t x_channels = 0;
};

// Writes out[r, t, channel(r, c)] for c < C and nothing else (out has any strides). Listed
// channels must be in range and distinct within a row of `channels` (CPU: checked; CUDA:
// out-of-range ones are skipped).
struct ChannelGroupDequantParams : ChannelGroupShape, DequantizeIO {
  int64_t out_stride_row = 0;
  int64_t out_stride_token = 0;
  int64_t out_stride_channel = 1;
  int64_t out_channels = 0;
};

// KIVI's token-wise 2-bit quantization (minmax2 over group_size consecutive channels of a token):
// scale and zero are [rows, tokens, groups]; out is contiguous.
struct TokenGroupShape : GroupShape {
  int64_t channels = 0;
};

struct TokenGroupQuantParams : TokenGroupShape, QuantizeIO {};

struct TokenGroupDequantParams : TokenGroupShape, DequantizeIO {};

VIDLLM_HOST_DEVICE int64_t ceil_groups(int64_t count, int64_t group_size) {
  return (count + group_size - 1) / group_size;
}

// The channel map of row `row`'s head (row % heads): `count` channel indices, or null when the
// channels are not mapped.
VIDLLM_HOST_DEVICE const int64_t* head_channel_map(const int64_t* channels, int64_t heads,
                                                   int64_t count, int64_t row) {
  return channels == nullptr ? nullptr : channels + (row % heads) * count;
}

// Quantized channel c's channel through a head's map (null: channel c itself).
VIDLLM_HOST_DEVICE int64_t mapped_channel(const int64_t* map, int64_t c) {
  return map == nullptr ? c : map[c];
}

VIDLLM_LAUNCHERS(pack, PackParams);
VIDLLM_LAUNCHERS(unpack, UnpackParams);
VIDLLM_LAUNCHERS(quantize_channel_groups, ChannelGroupQuantParams);
VIDLLM_LAUNCHERS(dequantize_channel_groups, ChannelGroupDequantParams);
VIDLLM_LAUNCHERS(quantize_token_groups, TokenGroupQuantParams);
VIDLLM_LAUNCHERS(dequantize_token_groups, TokenGroupDequantParams);

}  // namespace vidllm::kv_quant

// One case of the switches below: the statement with `name` bound to Enum::value as a
// compile-time constant.
#define VIDLLM_KV_CASE(Enum, value, name, ...)                                 \
  case ::vidllm::kv_quant::Enum::value: {                                      \
    constexpr ::vidllm::kv_quant::Enum name = ::vidllm::kv_quant::Enum::value; \
    __VA_ARGS__;                                                               \
    break;                                                                     \
  }

// A switch over the three enumerators of Enum: the statement with `name` bound to `value` as a
// compile-time constant; returns an invalid Status with `unknown` from the enclosing function for
// any other value.
#define VIDLLM_KV_SWITCH(Enum, value, name, first, second, third, unknown, ...) \
  switch (value) {                                                              \
    VIDLLM_KV_CASE(Enum, first, name, __VA_ARGS__)                              \
    VIDLLM_KV_CASE(Enum, second, name, __VA_ARGS__)                             \
    VIDLLM_KV_CASE(Enum, third, name, __VA_ARGS__)                              \
    default:                                                                    \
      return ::vidllm::Status::invalid(unknown);                                \
  }

// Runs the statement with `kMode` bound to `mode` as a compile-time constant.
#define VIDLLM_KV_DISPATCH_MODE(mode, ...)                                                  \
  VIDLLM_KV_SWITCH(Mode, mode, kMode, kMinMax2, kSign1, kTrit, "unknown quantization mode", \
                   __VA_ARGS__)

// The same for `kPacking` bound to `packing`.
#define VIDLLM_KV_DISPATCH_PACKING(packing, ...)                                          \
  VIDLLM_KV_SWITCH(Packing, packing, kPacking, kBits1, kBits2, kTrits, "unknown packing", \
                   __VA_ARGS__)
