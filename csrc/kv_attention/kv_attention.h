// Attention that reads the packed KV cache directly (issue 5): no dequantized key or value ever
// reaches memory. The cache is cut into segments, each a run of cached tokens with one key and one
// value layout (the quantized part, per value block and salient subset; the full-precision
// window). Every segment is split along its tokens; a split produces, per query row, the running
// max m, the sum l of exp2(s - m) and the unnormalized output acc[D] (split-KV, as FlashDecoding).
// The combine step merges every split of every segment into the output.
//
//   segment_partials: q, one segment        -> part_max/part_sum [B, Hq, Lq, S], part_acc [.., D]
//   combine_partials: the S partials        -> out [B, Hq, Lq, D]
//
// Scores are computed in base 2: the caller scales q by softmax_scale * log2(e). Packed keys are
// scored against q_packed = [q at the 2-bit channels | T q at the 1-bit channels] (T the
// orthonormal key transform, applied to q once), so no key is ever inverse-transformed; the
// per-group scales fold into q once per key group, the value scales into the sums once per tile.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/status.h"
#include "kv_attention/kv_attention_math.h"

namespace vidllm::kv_attention {

enum class KeyFormat : int { kFull = 0, kPacked = 1 };
// kChannel2: 2-bit min/max per channel and group of tokens; kTrit: gamma * t per channel and
// group of tokens; kToken2: 2-bit min/max per token and group of channels (KIVI); kFull: floats.
enum class ValueFormat : int { kFull = 0, kChannel2 = 1, kTrit = 2, kToken2 = 3 };

// The queries, pre-scaled by softmax_scale * log2(e): float32 [B, Hq, Lq, D], contiguous.
// Query head h reads KV head h / (Hq / Hkv); query i sits at absolute position query_start + i.
struct Queries {
  const float* full = nullptr;    // scored against full-precision keys
  const float* packed = nullptr;  // [q2 | T q1] per head; null when no segment has packed keys
  int64_t batch = 0;
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t q_len = 0;
  int64_t head_dim = 0;
  int64_t query_start = 0;
};

// Element type and strides of a full-precision [B, Hkv, rows, D] tensor whose last dimension is
// contiguous: the kFull keys and values.
struct FullLayout {
  DType dtype = DType::kFloat32;
  int64_t stride_batch = 0;
  int64_t stride_head = 0;
  int64_t stride_token = 0;
};

// Row `row` of (batch, kv_head) in the full-precision tensor `data` laid out as `layout`.
template <typename T>
VIDLLM_HOST_DEVICE const T* full_row(const FullLayout& layout, const void* data, int64_t batch,
                                     int64_t kv_head, int64_t row) {
  return static_cast<const T*>(data) + batch * layout.stride_batch + kv_head * layout.stride_head +
         row * layout.stride_token;
}

// Keys of the tokens a segment reads. Token t of the source holds absolute position
// position_start + t. Packed tensors are contiguous: codes2 uint8 [B, Hkv, tokens, ceil(D2/4)],
// codes1 uint8 [B, Hkv, tokens, ceil(D1/8)], scale2/zero2 [B, Hkv, NG, D2] and alpha1
// [B, Hkv, NG, D1] in scale_type, NG = ceil(tokens / group_size).
struct KeySource : FullLayout {
  KeyFormat format = KeyFormat::kFull;
  int64_t tokens = 0;
  int64_t position_start = 0;
  const void* keys = nullptr;  // kFull: [B, Hkv, tokens, D], laid out as the FullLayout
  // kPacked
  const uint8_t* codes2 = nullptr;
  const void* scale2 = nullptr;
  const void* zero2 = nullptr;
  const uint8_t* codes1 = nullptr;
  const void* alpha1 = nullptr;
  int64_t two_bit = 0;  // D2
  int64_t one_bit = 0;  // D1 = D - D2
  int64_t group_size = 1;
  ScaleType scale_type = ScaleType::kFloat16;
};

// Values of a segment's rows (row r, not token: salient subsets store their rows apart).
// Packed tensors are contiguous: codes uint8 [B, Hkv, rows, bytes], bytes = ceil(D/4) (2-bit) or
// ceil(D/5) (trits); kChannel2/kTrit stats [B, Hkv, ceil(rows / group_size), D]; kToken2 stats
// [B, Hkv, rows, ceil(D / group_size)]; zero is null for kTrit.
struct ValueSource : FullLayout {
  ValueFormat format = ValueFormat::kFull;
  const void* values = nullptr;  // kFull: [B, Hkv, rows, D], laid out as the FullLayout
  const uint8_t* codes = nullptr;
  const void* scale = nullptr;
  const void* zero = nullptr;
  int64_t group_size = 1;
  ScaleType scale_type = ScaleType::kFloat16;
};

// Which key token each row reads, and where the segment's partials go. Row r of sample b reads
// key token token_map[b * rows + r] (int64, ascending per sample, in [0, keys.tokens)), or
// key_start + r without a map. The rows are cut into ceil(rows / split_rows) splits whose partials
// land at split index split_offset + s.
struct Segment {
  int64_t rows = 0;
  const int64_t* token_map = nullptr;
  int64_t key_start = 0;
  int64_t split_rows = 1;
  int64_t split_offset = 0;
};

// Optional mask (bool, nonzero = attend) over absolute key positions, on top of causality:
// element (b, i, position) at mask[b * stride_batch + i * stride_query + position * stride_key].
struct Mask {
  const uint8_t* data = nullptr;
  int64_t stride_batch = 0;
  int64_t stride_query = 0;
  int64_t stride_key = 0;
};

// float32 partials, contiguous: max and sum [B, Hq, Lq, splits], acc [B, Hq, Lq, splits, D].
// A split with no visible token writes max = -inf, sum = 0, acc = 0.
struct Partials {
  float* max = nullptr;
  float* sum = nullptr;
  float* acc = nullptr;
  int64_t splits = 0;
};

struct SegmentParams {
  Queries q;
  KeySource keys;
  ValueSource values;
  Segment segment;
  Mask mask;
  Partials partials;
  int device = 0;
};

// out[b, h, i, :] = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s, M = max_s m_s; a row with
// no visible token at all gets zeros.
struct CombineParams {
  const float* max = nullptr;
  const float* sum = nullptr;
  const float* acc = nullptr;
  int64_t rows = 0;  // B * Hq * Lq
  int64_t splits = 0;
  int64_t head_dim = 0;
  void* out = nullptr;  // [rows, D], contiguous
  DType out_dtype = DType::kFloat32;
  int device = 0;
};

// ---- the tile rule, shared by both twins -----------------------------------------------------
// A split is walked in tiles of at most kMaxTile rows that share one key group (packed keys: the
// group's scales fold into q once per tile) and one value group (channel-grouped values: the
// group's scales fold into the tile's sums once).

constexpr int64_t kMaxTile = 32;

VIDLLM_HOST_DEVICE int64_t key_token(const Segment& segment, int64_t batch, int64_t row) {
  return segment.token_map ? segment.token_map[batch * segment.rows + row]
                           : segment.key_start + row;
}

// The tile key of a row: rows of one tile have equal keys. -1 stands for "no constraint".
VIDLLM_HOST_DEVICE int64_t key_group_of(const SegmentParams& p, int64_t batch, int64_t row) {
  if (p.keys.format != KeyFormat::kPacked) return -1;
  return key_token(p.segment, batch, row) / p.keys.group_size;
}

VIDLLM_HOST_DEVICE int64_t value_group_of(const SegmentParams& p, int64_t row) {
  const bool grouped =
      p.values.format == ValueFormat::kChannel2 || p.values.format == ValueFormat::kTrit;
  return grouped ? row / p.values.group_size : -1;
}

// The end of the tile that starts at `start` (exclusive; start < stop).
VIDLLM_HOST_DEVICE int64_t tile_end(const SegmentParams& p, int64_t batch, int64_t start,
                                    int64_t stop) {
  const int64_t key_group = key_group_of(p, batch, start);
  const int64_t value_group = value_group_of(p, start);
  const int64_t limit = start + kMaxTile < stop ? start + kMaxTile : stop;
  int64_t end = start + 1;
  while (end < limit && key_group_of(p, batch, end) == key_group &&
         value_group_of(p, end) == value_group)
    ++end;
  return end;
}

VIDLLM_LAUNCHERS(segment_partials, SegmentParams);
VIDLLM_LAUNCHERS(combine_partials, CombineParams);

// Shape checks shared by both twins (the binding validates pointers, dtypes and sizes).
Status check_segment_params(const SegmentParams& params);

}  // namespace vidllm::kv_attention
