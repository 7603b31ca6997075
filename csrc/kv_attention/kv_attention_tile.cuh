// Device side of the packed attention segment kernel (kv_attention.cu): the shape and
// shared memory of a block and the phases it runs per tile. Included by kv_attention.cu only.
#pragma once

#include <cstdint>

#include "common/cuda_utils.cuh"
#include "common/dtype.h"
#include "kv_attention/kv_attention.h"
#include "kv_quant/kv_quant_math.h"

namespace vidllm::kv_attention::detail {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 32;  // a lane per tile row
constexpr unsigned int kFullWarp = 0xffffffffu;
static_assert(kTile == kMaxTile, "score and softmax give each row of a tile its own lane");

// =============================== device helpers ===============================

// v < 2^23 as float32: the bits of 2^23 + v, less 2^23. Exact, and it keeps the hot loops off
// the integer-to-float conversion unit (an eighth of the FMA rate).
__device__ __forceinline__ float small_to_float(unsigned int v) {
  return __uint_as_float(0x4b000000u | v) - 8388608.0f;
}

// The centered level of 2-bit code k of a byte (centered_code2_at: code - 1.5) in one add: the
// bits of 2^22 + code (ulp 0.5 there, so the code goes in shifted by one) less 2^22 + 1.5. Exact.
__device__ __forceinline__ float centered_level(unsigned int byte, int k) {
  return __uint_as_float(0x4a800000u | (((byte >> (2 * k)) & 3u) << 1)) - 4194305.5f;
}

// A 1-bit key code: +1 where bit k of the byte is set, -1 where it is clear.
__device__ __forceinline__ float sign_of_bit(unsigned int byte, int k) {
  return __uint_as_float(0x3f800000u | ((~byte << (31 - k)) & 0x80000000u));
}

// The butterflies give every lane the same value; the broadcast makes a NaN's payload agree too.
__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    value = nan_max(value, __shfl_xor_sync(kFullWarp, value, offset));
  return __shfl_sync(kFullWarp, value, 0);
}

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullWarp, value, offset);
  return __shfl_sync(kFullWarp, value, 0);
}

__device__ __forceinline__ float4 load_float4(const float* shared) {
  return *reinterpret_cast<const float4*>(shared);
}

// Copies n bytes from global memory to dst + (src % 16), so that both sides of the middle are
// 16-byte aligned and it moves in 16-byte vectors; the first and last few bytes go one by one.
// dst must be 16-byte aligned with room for n + 15 bytes. Returns the offset of src[0] in dst.
__device__ __forceinline__ int stage_bytes(uint8_t* dst, const uint8_t* src, int n) {
  const int lead = static_cast<int>(reinterpret_cast<uintptr_t>(src) % 16);
  const int head = min(n, (16 - lead) % 16);
  const int vectors = (n - head) / 16;
  uint8_t* out = dst + lead;
  for (int i = threadIdx.x; i < head; i += kThreads) out[i] = src[i];
  const uint4* in_vectors = reinterpret_cast<const uint4*>(src + head);
  uint4* out_vectors = reinterpret_cast<uint4*>(out + head);
  for (int i = threadIdx.x; i < vectors; i += kThreads) out_vectors[i] = in_vectors[i];
  for (int i = head + vectors * 16 + threadIdx.x; i < n; i += kThreads) out[i] = src[i];
  return lead;
}

// =============================== a block and its tiles ===============================

// Byte offsets into a block's dynamic shared memory, each 16-byte aligned.
struct SharedLayout {
  int query, acc, partial, prob, bias, correction, prob_sum, out_row, query_index, token;
  int key2, key1, values;
};

// Sizes the launcher derives once from the params.
struct Shape {
  int64_t group;         // query heads per KV head
  int64_t rows;          // query rows per KV head: group * q_len
  int64_t query_tiles;   // ceil(rows / QT)
  int64_t splits;        // of this segment
  int64_t key_groups;    // packed keys: ceil(keys.tokens / keys.group_size)
  int64_t value_groups;  // kChannel2/kTrit: ceil(segment.rows / group_size); kToken2: ceil(D / ..)
  int key2_bytes;        // packed keys: code bytes per token, ceil(D2 / 4) and ceil(D1 / 8)
  int key1_bytes;
  int value_bytes;     // packed values: code bytes per row
  int query_stride;    // floats per prepared query row (a multiple of 4)
  int one_bit_offset;  // packed keys: first 1-bit channel of a prepared row, 4 * key2_bytes
  SharedLayout smem;
};

// A block's view of its shared memory.
struct Shared {
  float* query;          // [QT, query_stride]: q, key scales folded in, zero past the channels
  float* acc;            // [QT, D]
  float* partial;        // [kWarps, QT, kTile]: each warp's share of the tile's scores
  float* prob;           // [QT, kTile]: the tile's probabilities, 0 past the tile
  float* bias;           // [QT]: q2 . zero2 of the key group (0 for full keys)
  float* correction;     // [QT]: 2^(old max - new max) of the tile
  float* prob_sum;       // [QT]: the tile's sum of probabilities
  int64_t* out_row;      // [QT]: (b * Hq + head) * Lq + i, or -1 past the KV head's last row
  int64_t* query_index;  // [QT]: i
  int64_t* token;        // [kTile]: the key token each tile row reads
  uint8_t* key2;         // staged code rows of the tile
  uint8_t* key1;
  uint8_t* values;
};

__device__ __forceinline__ Shared carve(unsigned char* base, const SharedLayout& l) {
  return {reinterpret_cast<float*>(base + l.query),
          reinterpret_cast<float*>(base + l.acc),
          reinterpret_cast<float*>(base + l.partial),
          reinterpret_cast<float*>(base + l.prob),
          reinterpret_cast<float*>(base + l.bias),
          reinterpret_cast<float*>(base + l.correction),
          reinterpret_cast<float*>(base + l.prob_sum),
          reinterpret_cast<int64_t*>(base + l.out_row),
          reinterpret_cast<int64_t*>(base + l.query_index),
          reinterpret_cast<int64_t*>(base + l.token),
          base + l.key2,
          base + l.key1,
          base + l.values};
}

struct Item {
  int64_t batch, kv_head, split, query_tile;
};

// Where the code rows of the current tile start in shared memory.
struct Staged {
  int key2, key1, values;
};

// tile_end(p, batch, start, stop), uniform over the block. Without a token map the groups grow
// with the row, so the tile stops where the next key or value group begins; with one, lane i
// compares row start + i with the first row and a ballot finds the first that differs.
__device__ __forceinline__ int64_t tile_stop(const SegmentParams& p, int64_t batch, int64_t start,
                                             int64_t stop) {
  const int64_t limit = min(start + kMaxTile, stop);
  if (p.segment.token_map == nullptr && p.segment.key_start >= 0) {
    int64_t end = limit;
    if (p.keys.format == KeyFormat::kPacked) {
      const int64_t first = p.segment.key_start + start;
      const int64_t next_group = (first / p.keys.group_size + 1) * p.keys.group_size;
      end = min(end, next_group - p.segment.key_start);
    }
    if (value_group_of(p, start) != -1)
      end = min(end, (start / p.values.group_size + 1) * p.values.group_size);
    return end;
  }
  const int lane = threadIdx.x % 32;
  const int64_t row = start + lane;
  const bool differs = lane > 0 && row < limit &&
                       (key_group_of(p, batch, row) != key_group_of(p, batch, start) ||
                        value_group_of(p, row) != value_group_of(p, start));
  const unsigned int ballot = __ballot_sync(kFullWarp, differs);
  return ballot == 0 ? limit : start + __ffs(ballot) - 1;
}

// Query rows of the block: row r is the KV head's row query_tile * QT + r.
template <int QT>
__device__ void init_rows(const SegmentParams& p, const Shape& shape, const Item& item,
                          const Shared& s) {
  const int r = threadIdx.x;
  if (r < QT) {
    const int64_t row = item.query_tile * QT + r;
    const int64_t head = item.kv_head * shape.group + row / p.q.q_len;
    const int64_t i = row % p.q.q_len;
    s.out_row[r] = row < shape.rows ? (item.batch * p.q.q_heads + head) * p.q.q_len + i : -1;
    s.query_index[r] = row < shape.rows ? i : 0;
  }
  for (int i = threadIdx.x; i < QT * p.q.head_dim; i += kThreads) s.acc[i] = 0.0f;
}

// Loads q (full keys) or folds the key group's scales into q and computes the bias q2 . (zero +
// 1.5 scale) (packed keys, centered_zero), as prepare_queries of the CPU twin. Packed rows hold the
// 2-bit channels at [0, D2) and the 1-bit ones from one_bit_offset, zeros elsewhere, so the score
// loops need no bounds.
template <int QT, bool kPackedKeys>
__device__ void prepare_queries(const SegmentParams& p, const Shape& shape, const Item& item,
                                int64_t key_group, const Shared& s,
                                cuda::BlockSum<kThreads, QT>& block_sum) {
  const KeySource& k = p.keys;
  const int64_t dim = p.q.head_dim;
  const float* queries = kPackedKeys ? p.q.packed : p.q.full;
  const int64_t stats = ((item.batch * p.q.kv_heads + item.kv_head) * shape.key_groups + key_group);
  float bias[QT];
#pragma unroll
  for (int r = 0; r < QT; ++r) bias[r] = 0.0f;
  for (int j = threadIdx.x; j < shape.query_stride; j += kThreads) {
    int64_t channel = -1;  // the query channel at slot j, if any
    float scale = 1.0f;
    float zero = 0.0f;
    if (!kPackedKeys) {
      channel = j < dim ? j : -1;
    } else if (j < shape.one_bit_offset) {
      if (j < k.two_bit) {
        channel = j;
        scale = load_stat(k.scale2, stats * k.two_bit + j, k.scale_type);
        zero = load_stat(k.zero2, stats * k.two_bit + j, k.scale_type);
      }
    } else if (j - shape.one_bit_offset < k.one_bit) {
      channel = k.two_bit + (j - shape.one_bit_offset);
      scale = load_stat(k.alpha1, stats * k.one_bit + (j - shape.one_bit_offset), k.scale_type);
    }
#pragma unroll
    for (int r = 0; r < QT; ++r) {
      const int64_t row = s.out_row[r];
      float value = 0.0f;
      if (channel >= 0 && row >= 0) {
        const float q = queries[row * dim + channel];
        value = kPackedKeys ? q * scale : q;
        if (kPackedKeys && channel < k.two_bit) bias[r] += q * centered_zero(zero, scale);
      }
      s.query[r * shape.query_stride + j] = value;
    }
  }
  if (kPackedKeys) block_sum(bias);  // every thread of the block calls it (uniform branch)
  if (threadIdx.x == 0) {
#pragma unroll
    for (int r = 0; r < QT; ++r) s.bias[r] = kPackedKeys ? bias[r] : 0.0f;
  }
}

// Key tokens of the tile and its code rows in shared memory.
template <bool kPackedKeys, ValueFormat kValues>
__device__ Staged stage_tile(const SegmentParams& p, const Shape& shape, const Item& item,
                             int64_t tile, int count, const Shared& s) {
  const int thread = static_cast<int>(threadIdx.x);
  if (thread < count) s.token[thread] = key_token(p.segment, item.batch, tile + thread);
  Staged staged{0, 0, 0};
  const int64_t head = item.batch * p.q.kv_heads + item.kv_head;
  if constexpr (kPackedKeys) {
    const KeySource& k = p.keys;
    if (p.segment.token_map == nullptr) {
      const int64_t first = head * k.tokens + p.segment.key_start + tile;
      if (shape.key2_bytes > 0)
        staged.key2 =
            stage_bytes(s.key2, k.codes2 + first * shape.key2_bytes, count * shape.key2_bytes);
      if (shape.key1_bytes > 0)
        staged.key1 =
            stage_bytes(s.key1, k.codes1 + first * shape.key1_bytes, count * shape.key1_bytes);
    } else {  // rows of scattered tokens, byte by byte
      const int row_bytes = shape.key2_bytes + shape.key1_bytes;
      for (int i = threadIdx.x; i < count * row_bytes; i += kThreads) {
        const int t = i / row_bytes;
        const int j = i - t * row_bytes;
        const int64_t token = head * k.tokens + key_token(p.segment, item.batch, tile + t);
        if (j < shape.key2_bytes)
          s.key2[t * shape.key2_bytes + j] = k.codes2[token * shape.key2_bytes + j];
        else
          s.key1[t * shape.key1_bytes + j - shape.key2_bytes] =
              k.codes1[token * shape.key1_bytes + j - shape.key2_bytes];
      }
    }
  }
  if constexpr (kValues != ValueFormat::kFull) {
    const int64_t first = head * p.segment.rows + tile;
    staged.values = stage_bytes(s.values, p.values.codes + first * shape.value_bytes,
                                count * shape.value_bytes);
  }
  return staged;
}

// part + q . x over four channels, in channel order.
__device__ __forceinline__ float dot4(const float4 q, const float (&x)[4], float part) {
  part = fmaf(q.x, x[0], part);
  part = fmaf(q.y, x[1], part);
  part = fmaf(q.z, x[2], part);
  return fmaf(q.w, x[3], part);
}

// The scores' partial dot products: lane t owns tile row t, warp w the channel quads w,
// w + kWarps, ... of it; quad_at(u, key) decodes quad u (channels 4u .. 4u + 3 of a prepared
// query row) of the lane's row. The query quads are broadcast reads of shared memory.
template <int QT, typename QuadAt>
__device__ __forceinline__ void score_quads(const Shape& shape, int quads, int count,
                                            const Shared& s, const QuadAt& quad_at) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane >= count) return;
  float part[QT];
#pragma unroll
  for (int r = 0; r < QT; ++r) part[r] = 0.0f;
  for (int u = warp; u < quads; u += kWarps) {
    float key[4];
    quad_at(u, key);
#pragma unroll
    for (int r = 0; r < QT; ++r)
      part[r] = dot4(load_float4(s.query + r * shape.query_stride + 4 * u), key, part[r]);
  }
#pragma unroll
  for (int r = 0; r < QT; ++r) s.partial[(warp * QT + r) * kTile + lane] = part[r];
}

// Packed keys: a 2-bit code byte is one quad (centered levels -1.5 .. 1.5), a 1-bit byte two
// (signs -1 / +1).
template <int QT>
__device__ void score_packed(const Shape& shape, int count, const Staged& staged, const Shared& s) {
  const int lane = threadIdx.x % 32;
  const uint8_t* codes2 = s.key2 + staged.key2 + lane * shape.key2_bytes;
  const uint8_t* codes1 = s.key1 + staged.key1 + lane * shape.key1_bytes;
  const int quads = shape.key2_bytes + 2 * shape.key1_bytes;
  score_quads<QT>(shape, quads, count, s, [&](int u, float (&key)[4]) {
    if (u < shape.key2_bytes) {
      const unsigned int byte = codes2[u];
#pragma unroll
      for (int k = 0; k < 4; ++k) key[k] = centered_level(byte, k);
    } else {
      const int half = u - shape.key2_bytes;
      const unsigned int byte = codes1[half / 2];
#pragma unroll
      for (int k = 0; k < 4; ++k) key[k] = sign_of_bit(byte, (half % 2) * 4 + k);
    }
  });
}

// Full-precision keys (the window): the token's row, zeros past head_dim.
template <int QT, typename KeyT>
__device__ void score_full(const SegmentParams& p, const Shape& shape, const Item& item, int count,
                           const Shared& s) {
  const KeySource& k = p.keys;
  const int dim = static_cast<int>(p.q.head_dim);
  const int lane = threadIdx.x % 32;
  const int64_t token = lane < count ? s.token[lane] : 0;
  const KeyT* row = full_row<KeyT>(k, k.keys, item.batch, item.kv_head, token);
  score_quads<QT>(shape, shape.query_stride / 4, count, s, [&](int u, float (&key)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) key[i] = 4 * u + i < dim ? to_float(row[4 * u + i]) : 0.0f;
  });
}

template <int QT, bool kPackedKeys>
__device__ void score_tile(const SegmentParams& p, const Shape& shape, const Item& item, int count,
                           const Staged& staged, const Shared& s) {
  if constexpr (kPackedKeys) {
    score_packed<QT>(shape, count, staged, s);
  } else {
    switch (p.keys.dtype) {
      case DType::kFloat16:
        score_full<QT, Half>(p, shape, item, count, s);
        break;
      case DType::kBFloat16:
        score_full<QT, BFloat16>(p, shape, item, count, s);
        break;
      default:
        score_full<QT, float>(p, shape, item, count, s);
    }
  }
}

__device__ __forceinline__ bool visible(const SegmentParams& p, int64_t batch, int64_t query,
                                        int64_t position) {
  if (position > p.q.query_start + query) return false;
  const Mask& m = p.mask;
  return m.data == nullptr ||
         m.data[batch * m.stride_batch + query * m.stride_query + position * m.stride_key] != 0;
}

// Online softmax of the tile, as softmax_tile of the CPU twin: warp w owns rows w, w + kWarps,
// ... for the whole split (running max and sum in registers, the same in every lane).
template <int QT>
__device__ void softmax_tile(const SegmentParams& p, const Item& item, int count, const Shared& s,
                             float (&running_max)[QT / kWarps], float (&running_sum)[QT / kWarps]) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t position = lane < count ? p.keys.position_start + s.token[lane] : 0;
#pragma unroll
  for (int k = 0; k < QT / kWarps; ++k) {
    const int r = warp + kWarps * k;
    float score = -INFINITY;
    if (lane < count && visible(p, item.batch, s.query_index[r], position)) {
      score = s.bias[r];
#pragma unroll
      for (int w = 0; w < kWarps; ++w) score += s.partial[(w * QT + r) * kTile + lane];
    }
    const float new_max = nan_max(running_max[k], warp_max(score));
    const float correction = exp2_diff(running_max[k], new_max);
    const float prob = exp2_diff(score, new_max);
    const float total = warp_sum(prob);
    running_sum[k] = running_sum[k] * correction + total;
    running_max[k] = new_max;
    s.prob[r * kTile + lane] = prob;
    if (lane == 0) {
      s.correction[r] = correction;
      s.prob_sum[r] = total;
    }
  }
}

// sum[r] += sum over the tile's rows t of prob[r][t] * value_at(t), four rows at a time (the
// probabilities past the tile are 0; so are the values, which are never read there).
template <int QT, typename ValueAt>
__device__ __forceinline__ void weigh_values(const Shared& s, int count, float (&sum)[QT],
                                             const ValueAt& value_at) {
  for (int t0 = 0; t0 < count; t0 += 4) {
    float value[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) value[i] = t0 + i < count ? value_at(t0 + i) : 0.0f;
#pragma unroll
    for (int r = 0; r < QT; ++r) {
      sum[r] = dot4(load_float4(s.prob + r * kTile + t0), value, sum[r]);
    }
  }
}

// acc = acc * correction + the tile's values, as softmax_tile and accumulate_values of the CPU
// twin: kChannel2 adds scale * sum + zero * prob_sum, kTrit gamma * sum, the others sum.
template <int QT, ValueFormat kValues, typename ValueT>
__device__ void accumulate_tile(const SegmentParams& p, const Shape& shape, const Item& item,
                                int64_t tile, int count, const Staged& staged, const Shared& s) {
  constexpr bool kChannelStats = kValues == ValueFormat::kChannel2 || kValues == ValueFormat::kTrit;
  constexpr int kPerByte = kValues == ValueFormat::kTrit ? 5 : 4;  // packed codes
  const ValueSource& v = p.values;
  const int dim = static_cast<int>(p.q.head_dim);
  const int64_t head = item.batch * p.q.kv_heads + item.kv_head;
  const uint8_t* codes = s.values + staged.values;
  const int64_t channel_stats =
      kChannelStats ? (head * shape.value_groups + tile / v.group_size) * dim : 0;
  const int64_t token_stats = (head * p.segment.rows + tile) * shape.value_groups;  // kToken2
  for (int c = threadIdx.x; c < dim; c += kThreads) {
    float sum[QT];
#pragma unroll
    for (int r = 0; r < QT; ++r) sum[r] = 0.0f;
    const uint8_t* column = codes + c / kPerByte;
    const int slot = c % kPerByte;
    if constexpr (kValues == ValueFormat::kTrit) {
      weigh_values<QT>(s, count, sum, [&](int t) {
        const unsigned int digit =
            kv_quant::digit_at<kv_quant::Packing::kTrits>(column[t * shape.value_bytes], slot);
        return __uint_as_float(0x4b000000u | digit) - 8388609.0f;  // digit - 1, exactly
      });
    } else if constexpr (kValues == ValueFormat::kChannel2) {
      weigh_values<QT>(s, count, sum, [&](int t) {
        return small_to_float((column[t * shape.value_bytes] >> (2 * slot)) & 3u);
      });
    } else if constexpr (kValues == ValueFormat::kToken2) {  // per-token statistics
      const int64_t stats = token_stats + c / v.group_size;
      weigh_values<QT>(s, count, sum, [&](int t) {
        const float level = small_to_float((column[t * shape.value_bytes] >> (2 * slot)) & 3u);
        const int64_t index = stats + t * shape.value_groups;
        return level * load_stat(v.scale, index, v.scale_type) +
               load_stat(v.zero, index, v.scale_type);
      });
    } else {
      const ValueT* values = full_row<ValueT>(v, v.values, item.batch, item.kv_head, tile) + c;
      weigh_values<QT>(s, count, sum, [&](int t) { return to_float(values[t * v.stride_token]); });
    }
    float scale = 1.0f;
    float zero = 0.0f;
    if constexpr (kChannelStats) scale = load_stat(v.scale, channel_stats + c, v.scale_type);
    if constexpr (kValues == ValueFormat::kChannel2)
      zero = load_stat(v.zero, channel_stats + c, v.scale_type);
#pragma unroll
    for (int r = 0; r < QT; ++r) {
      float* acc = s.acc + r * dim + c;
      const float rescaled = *acc * s.correction[r];
      if constexpr (kValues == ValueFormat::kChannel2)
        *acc = rescaled + (scale * sum[r] + zero * s.prob_sum[r]);
      else if constexpr (kChannelStats)
        *acc = rescaled + scale * sum[r];
      else
        *acc = rescaled + sum[r];
    }
  }
}

template <int QT, ValueFormat kValues>
__device__ void accumulate_values(const SegmentParams& p, const Shape& shape, const Item& item,
                                  int64_t tile, int count, const Staged& staged, const Shared& s) {
  if constexpr (kValues != ValueFormat::kFull) {
    accumulate_tile<QT, kValues, float>(p, shape, item, tile, count, staged, s);
  } else {
    switch (p.values.dtype) {
      case DType::kFloat16:
        accumulate_tile<QT, kValues, Half>(p, shape, item, tile, count, staged, s);
        break;
      case DType::kBFloat16:
        accumulate_tile<QT, kValues, BFloat16>(p, shape, item, tile, count, staged, s);
        break;
      default:
        accumulate_tile<QT, kValues, float>(p, shape, item, tile, count, staged, s);
    }
  }
}

// The block's partials at split index split_offset + split. Each thread writes acc entries it
// owns, and lane 0 of a softmax warp its rows' max and sum, so no barrier is needed.
template <int QT>
__device__ void write_partials(const SegmentParams& p, const Item& item, const Shared& s,
                               const float (&running_max)[QT / kWarps],
                               const float (&running_sum)[QT / kWarps]) {
  const Partials& out = p.partials;
  const int64_t dim = p.q.head_dim;
  const int64_t split = p.segment.split_offset + item.split;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < QT / kWarps; ++k) {
    const int64_t row = s.out_row[warp + kWarps * k];
    if (lane == 0 && row >= 0) {
      out.max[row * out.splits + split] = running_max[k];
      out.sum[row * out.splits + split] = running_sum[k];
    }
  }
  for (int64_t c = threadIdx.x; c < dim; c += kThreads) {
#pragma unroll
    for (int r = 0; r < QT; ++r) {
      const int64_t row = s.out_row[r];
      if (row >= 0) out.acc[(row * out.splits + split) * dim + c] = s.acc[r * dim + c];
    }
  }
}

}  // namespace vidllm::kv_attention::detail
