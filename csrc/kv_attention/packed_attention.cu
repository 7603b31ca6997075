// CUDA twin of packed_attention_cpu.cpp, launched on the caller's stream.
//
// segment_partials: a block of kThreads per (query tile, split, KV head, sample). A query tile is
//   QT (8 or 16) of the KV head's group * q_len query rows, so decode (1..8 rows) is one tile and
//   chunked prefill runs several blocks over the same keys; the block index varies fastest along
//   query tiles, so those blocks run together and share the keys in L2. A block walks its split
//   in the CPU twin's tiles (tile_end: at most 32 rows with one key group and one value group):
//     prepare  (when the key group changes) q times the group's key scales into shared memory,
//              bias = q2 . zero2 by a deterministic block sum;
//     stage    the tile's packed key and value code rows into shared memory, 16-byte loads;
//     score    lane t of every warp owns tile row t, warp w every kWarps-th code byte of it: codes
//              are decoded in registers and dotted with the QT query rows (broadcast reads of
//              shared memory); the warps' partial dot products meet in shared memory;
//     softmax  a warp per query row (rows w, w + kWarps, ...) adds the partials in warp order,
//              masks (causality, mask, rows past the tile) and runs the online softmax in base 2,
//              its running max and sum in registers;
//     values   thread c owns channels c, c + kThreads, ...: decodes that channel of each tile row,
//              accumulates probability * value for the QT rows in registers, then rescales acc
//              (shared memory, [QT, D]) by the tile's correction and folds the value group's
//              statistics in once.
// combine_partials: a warp per query row: the max over splits, the denominator, then per channel
//   the numerator, each in a fixed order.
// No float atomics: every sum runs in a fixed order, so results are reproducible bit for bit.
#include <algorithm>
#include <cstdint>
#include <limits>

#include "common/cuda_device.h"
#include "common/cuda_utils.cuh"
#include "common/dtype.h"
#include "kv_attention/packed_attention.h"
#include "kv_quant/kv_quant_math.h"

namespace vidllm::kv_attention {
namespace {

using cuda::ceil_div;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 32;  // a lane per tile row
constexpr unsigned int kFullWarp = 0xffffffffu;
constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();
constexpr int64_t kDefaultSharedBytes = 48 * 1024;  // dynamic shared memory without opting in
static_assert(kTile == kMaxTile, "score and softmax give each row of a tile its own lane");

// =============================== device helpers ===============================

// v < 2^23 as float32: the bits of 2^23 + v, less 2^23. Exact, and it keeps the hot loops off
// the integer-to-float conversion unit (an eighth of the FMA rate).
__device__ __forceinline__ float small_to_float(unsigned int v) {
  return __uint_as_float(0x4b000000u | v) - 8388608.0f;
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

// =============================== segment partials ===============================

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

// Loads q (full keys) or folds the key group's scales into q and computes the bias (packed
// keys), as prepare_queries of the CPU twin. Packed rows hold the 2-bit channels at [0, D2) and
// the 1-bit ones from one_bit_offset, zeros elsewhere, so the score loops need no bounds.
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

template <int QT>
__device__ __forceinline__ void store_partial_scores(const Shared& s, const float (&part)[QT]) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int r = 0; r < QT; ++r) s.partial[(warp * QT + r) * kTile + lane] = part[r];
}

// Scores against packed keys (2-bit codes as centered levels, see centered_code2_at): lane t
// decodes tile row t, warp w its code bytes w, w + kWarps, ...
// (2-bit bytes hold 4 channels, 1-bit bytes 8) and dots them with the prepared query rows.
template <int QT>
__device__ void score_packed(const Shape& shape, int count, const Staged& staged, const Shared& s) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane >= count) return;
  float part[QT];
#pragma unroll
  for (int r = 0; r < QT; ++r) part[r] = 0.0f;
  const uint8_t* codes2 = s.key2 + staged.key2 + lane * shape.key2_bytes;
  for (int u = warp; u < shape.key2_bytes; u += kWarps) {
    const unsigned int byte = codes2[u];
    float level[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) level[k] = small_to_float((byte >> (2 * k)) & 3u) - 1.5f;
#pragma unroll
    for (int r = 0; r < QT; ++r) {
      const float4 q = load_float4(s.query + r * shape.query_stride + 4 * u);
      part[r] = fmaf(q.x, level[0], part[r]);
      part[r] = fmaf(q.y, level[1], part[r]);
      part[r] = fmaf(q.z, level[2], part[r]);
      part[r] = fmaf(q.w, level[3], part[r]);
    }
  }
  const uint8_t* codes1 = s.key1 + staged.key1 + lane * shape.key1_bytes;
  for (int u = warp; u < shape.key1_bytes; u += kWarps) {
    const unsigned int byte = codes1[u];
    float sign[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) sign[k] = sign_of_bit(byte, k);
#pragma unroll
    for (int r = 0; r < QT; ++r) {
      const float* q = s.query + r * shape.query_stride + shape.one_bit_offset + 8 * u;
      const float4 low = load_float4(q);
      const float4 high = load_float4(q + 4);
      part[r] = fmaf(low.x, sign[0], part[r]);
      part[r] = fmaf(low.y, sign[1], part[r]);
      part[r] = fmaf(low.z, sign[2], part[r]);
      part[r] = fmaf(low.w, sign[3], part[r]);
      part[r] = fmaf(high.x, sign[4], part[r]);
      part[r] = fmaf(high.y, sign[5], part[r]);
      part[r] = fmaf(high.z, sign[6], part[r]);
      part[r] = fmaf(high.w, sign[7], part[r]);
    }
  }
  store_partial_scores<QT>(s, part);
}

// Scores against full-precision keys (the window): lane t reads its token's row, warp w the
// channel quads w, w + kWarps, ... of it.
template <int QT, typename KeyT>
__device__ void score_full(const SegmentParams& p, const Shape& shape, const Item& item, int count,
                           const Shared& s) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane >= count) return;
  const KeySource& k = p.keys;
  const int64_t dim = p.q.head_dim;
  const KeyT* row = static_cast<const KeyT*>(k.keys) + item.batch * k.stride_batch +
                    item.kv_head * k.stride_head + s.token[lane] * k.stride_token;
  float part[QT];
#pragma unroll
  for (int r = 0; r < QT; ++r) part[r] = 0.0f;
  for (int u = warp; u < shape.query_stride / 4; u += kWarps) {
    float key[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) key[i] = 4 * u + i < dim ? to_float(row[4 * u + i]) : 0.0f;
#pragma unroll
    for (int r = 0; r < QT; ++r) {
      const float4 q = load_float4(s.query + r * shape.query_stride + 4 * u);
      part[r] = fmaf(q.x, key[0], part[r]);
      part[r] = fmaf(q.y, key[1], part[r]);
      part[r] = fmaf(q.z, key[2], part[r]);
      part[r] = fmaf(q.w, key[3], part[r]);
    }
  }
  store_partial_scores<QT>(s, part);
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
__device__ __forceinline__ void weigh_values(const Shared& s, int count, const ValueAt& value_at,
                                             float (&sum)[QT]) {
  for (int t0 = 0; t0 < count; t0 += 4) {
    float value[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) value[i] = t0 + i < count ? value_at(t0 + i) : 0.0f;
#pragma unroll
    for (int r = 0; r < QT; ++r) {
      const float4 prob = load_float4(s.prob + r * kTile + t0);
      sum[r] = fmaf(prob.x, value[0], sum[r]);
      sum[r] = fmaf(prob.y, value[1], sum[r]);
      sum[r] = fmaf(prob.z, value[2], sum[r]);
      sum[r] = fmaf(prob.w, value[3], sum[r]);
    }
  }
}

// acc = acc * correction + the tile's values, as softmax_tile and accumulate_values of the CPU
// twin: kChannel2 adds scale * sum + zero * prob_sum, kTrit gamma * sum, the others sum.
template <int QT, ValueFormat kValues, typename ValueT>
__device__ void accumulate_tile(const SegmentParams& p, const Shape& shape, const Item& item,
                                int64_t tile, int count, const Staged& staged, const Shared& s) {
  constexpr bool kChannelStats = kValues == ValueFormat::kChannel2 || kValues == ValueFormat::kTrit;
  const ValueSource& v = p.values;
  const int64_t dim = p.q.head_dim;
  const int64_t head = item.batch * p.q.kv_heads + item.kv_head;
  const uint8_t* codes = s.values + staged.values;
  for (int64_t c = threadIdx.x; c < dim; c += kThreads) {
    float sum[QT];
#pragma unroll
    for (int r = 0; r < QT; ++r) sum[r] = 0.0f;
    if constexpr (kValues == ValueFormat::kTrit) {
      const uint8_t* column = codes + c / 5;
      const int slot = static_cast<int>(c % 5);
      const auto value_at = [&](int t) {
        const uint8_t byte = column[t * shape.value_bytes];
        return small_to_float(kv_quant::digit_at<kv_quant::Packing::kTrits>(byte, slot)) - 1.0f;
      };
      weigh_values<QT>(s, count, value_at, sum);
    } else if constexpr (kValues == ValueFormat::kChannel2) {
      const uint8_t* column = codes + c / 4;
      const int shift = static_cast<int>(c % 4) * 2;
      const auto value_at = [&](int t) {
        return small_to_float((column[t * shape.value_bytes] >> shift) & 3u);
      };
      weigh_values<QT>(s, count, value_at, sum);
    } else if constexpr (kValues == ValueFormat::kToken2) {  // per-token statistics, dequantized
      const uint8_t* column = codes + c / 4;
      const int shift = static_cast<int>(c % 4) * 2;
      const int64_t stats = (head * p.segment.rows + tile) * shape.value_groups + c / v.group_size;
      const auto value_at = [&](int t) {
        const float level = small_to_float((column[t * shape.value_bytes] >> shift) & 3u);
        const int64_t index = stats + t * shape.value_groups;
        return level * load_stat(v.scale, index, v.scale_type) +
               load_stat(v.zero, index, v.scale_type);
      };
      weigh_values<QT>(s, count, value_at, sum);
    } else {
      const ValueT* column = static_cast<const ValueT*>(v.values) + item.batch * v.stride_batch +
                             item.kv_head * v.stride_head + tile * v.stride_token + c;
      const auto value_at = [&](int t) { return to_float(column[t * v.stride_token]); };
      weigh_values<QT>(s, count, value_at, sum);
    }
    float scale = 1.0f;
    float zero = 0.0f;
    if constexpr (kChannelStats) {
      const int64_t stats = (head * shape.value_groups + tile / v.group_size) * dim + c;
      scale = load_stat(v.scale, stats, v.scale_type);
      if constexpr (kValues == ValueFormat::kChannel2)
        zero = load_stat(v.zero, stats, v.scale_type);
    }
#pragma unroll
    for (int r = 0; r < QT; ++r) {
      float* acc = s.acc + r * dim + c;
      const float rescaled = *acc * s.correction[r];
      if constexpr (kValues == ValueFormat::kChannel2)
        *acc = rescaled + (scale * sum[r] + zero * s.prob_sum[r]);
      else if constexpr (kValues == ValueFormat::kTrit)
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

// One block per (query tile, split, KV head, sample); see the top of the file. Four barriers per
// tile: before the stage (the previous tile's readers are done), before the scores, the softmax
// and the values.
template <int QT, bool kPackedKeys, ValueFormat kValues>
__global__ void __launch_bounds__(kThreads)
    segment_partials_kernel(const SegmentParams p, const Shape shape) {
  static_assert(QT % kWarps == 0, "softmax warps own QT / kWarps rows each");
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  __shared__ typename cuda::BlockSum<kThreads, QT>::Storage sum_storage;
  cuda::BlockSum<kThreads, QT> block_sum(sum_storage);
  const Shared s = carve(shared_bytes, shape.smem);

  int64_t block = blockIdx.x;
  Item item;
  item.query_tile = block % shape.query_tiles;
  block /= shape.query_tiles;
  item.split = block % shape.splits;
  block /= shape.splits;
  item.kv_head = block % p.q.kv_heads;
  item.batch = block / p.q.kv_heads;
  init_rows<QT>(p, shape, item, s);

  float running_max[QT / kWarps];
  float running_sum[QT / kWarps];
#pragma unroll
  for (int k = 0; k < QT / kWarps; ++k) {
    running_max[k] = -INFINITY;
    running_sum[k] = 0.0f;
  }
  const int64_t start = item.split * p.segment.split_rows;
  const int64_t stop = min(p.segment.rows, start + p.segment.split_rows);
  int64_t prepared_group = -2;  // key_group_of is -1 for full keys, >= 0 for packed ones
  for (int64_t tile = start; tile < stop;) {
    const int64_t end = tile_stop(p, item.batch, tile, stop);
    const int count = static_cast<int>(end - tile);
    __syncthreads();
    const int64_t key_group = key_group_of(p, item.batch, tile);
    if (key_group != prepared_group) {
      prepare_queries<QT, kPackedKeys>(p, shape, item, key_group, s, block_sum);
      prepared_group = key_group;
    }
    const Staged staged = stage_tile<kPackedKeys, kValues>(p, shape, item, tile, count, s);
    __syncthreads();
    score_tile<QT, kPackedKeys>(p, shape, item, count, staged, s);
    __syncthreads();
    softmax_tile<QT>(p, item, count, s, running_max, running_sum);
    __syncthreads();
    accumulate_values<QT, kValues>(p, shape, item, tile, count, staged, s);
    tile = end;
  }
  write_partials<QT>(p, item, s, running_max, running_sum);
}

int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

// Fills shape.smem; returns its size in bytes.
int64_t lay_out_shared(const SegmentParams& p, int qt, Shape& shape) {
  int64_t offset = 0;
  const auto take = [&offset](int64_t bytes) {
    const int64_t at = offset;
    offset += align16(bytes);
    return static_cast<int>(at);
  };
  SharedLayout& l = shape.smem;
  const int64_t f = sizeof(float);
  l.query = take(int64_t{qt} * shape.query_stride * f);
  l.acc = take(qt * p.q.head_dim * f);
  l.partial = take(int64_t{kWarps} * qt * kTile * f);
  l.prob = take(int64_t{qt} * kTile * f);
  l.bias = take(qt * f);
  l.correction = take(qt * f);
  l.prob_sum = take(qt * f);
  l.out_row = take(qt * sizeof(int64_t));
  l.query_index = take(qt * sizeof(int64_t));
  l.token = take(kTile * sizeof(int64_t));
  l.key2 = take(int64_t{kTile} * shape.key2_bytes + 16);
  l.key1 = take(int64_t{kTile} * shape.key1_bytes + 16);
  l.values = take(int64_t{kTile} * shape.value_bytes + 16);
  return offset;
}

Shape make_shape(const SegmentParams& p, int qt, int64_t splits) {
  const Queries& q = p.q;
  Shape shape{};
  shape.group = q.q_heads / q.kv_heads;
  shape.rows = shape.group * q.q_len;
  shape.query_tiles = ceil_div(shape.rows, int64_t{qt});
  shape.splits = splits;
  if (p.keys.format == KeyFormat::kPacked) {
    shape.key_groups = ceil_div(p.keys.tokens, p.keys.group_size);
    shape.key2_bytes = static_cast<int>(ceil_div(p.keys.two_bit, int64_t{4}));
    shape.key1_bytes = static_cast<int>(ceil_div(p.keys.one_bit, int64_t{8}));
    shape.one_bit_offset = 4 * shape.key2_bytes;
    shape.query_stride = shape.one_bit_offset + 8 * shape.key1_bytes;
  } else {
    shape.query_stride = static_cast<int>(ceil_div(q.head_dim, int64_t{4}) * 4);
  }
  switch (p.values.format) {
    case ValueFormat::kChannel2:
    case ValueFormat::kTrit:
      shape.value_groups = ceil_div(p.segment.rows, p.values.group_size);
      break;
    case ValueFormat::kToken2:
      shape.value_groups = ceil_div(q.head_dim, p.values.group_size);
      break;
    default:
      break;
  }
  if (p.values.format != ValueFormat::kFull)
    shape.value_bytes =
        static_cast<int>(value_code_bytes(q.head_dim, p.values.format == ValueFormat::kTrit));
  return shape;
}

template <int QT, bool kPackedKeys, ValueFormat kValues>
Status launch_segment(const SegmentParams& p, const Shape& shape, int64_t shared_bytes,
                      cudaStream_t stream) {
  const auto kernel = segment_partials_kernel<QT, kPackedKeys, kValues>;
  const int64_t static_bytes = sizeof(typename cuda::BlockSum<kThreads, QT>::Storage);
  if (shared_bytes + static_bytes > kDefaultSharedBytes) {
    int max_shared = 0;
    VIDLLM_RETURN_IF_CUDA_ERROR(
        cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, p.device));
    cudaFuncAttributes attributes;
    VIDLLM_RETURN_IF_CUDA_ERROR(cudaFuncGetAttributes(&attributes, kernel));
    if (shared_bytes + static_cast<int64_t>(attributes.sharedSizeBytes) > max_shared)
      return Status::invalid(
          "packed attention: head_dim too large for the shared memory of a block on this device");
    VIDLLM_RETURN_IF_CUDA_ERROR(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)));
  }
  const int64_t blocks = shape.query_tiles * shape.splits * p.q.kv_heads * p.q.batch;
  kernel<<<static_cast<unsigned int>(blocks), kThreads, static_cast<size_t>(shared_bytes),
           stream>>>(p, shape);
  return cuda::launch_status();
}

template <int QT, bool kPackedKeys>
Status dispatch_values(const SegmentParams& p, const Shape& shape, int64_t shared_bytes,
                       cudaStream_t stream) {
  switch (p.values.format) {
    case ValueFormat::kFull:
      return launch_segment<QT, kPackedKeys, ValueFormat::kFull>(p, shape, shared_bytes, stream);
    case ValueFormat::kChannel2:
      return launch_segment<QT, kPackedKeys, ValueFormat::kChannel2>(p, shape, shared_bytes,
                                                                     stream);
    case ValueFormat::kTrit:
      return launch_segment<QT, kPackedKeys, ValueFormat::kTrit>(p, shape, shared_bytes, stream);
    case ValueFormat::kToken2:
      return launch_segment<QT, kPackedKeys, ValueFormat::kToken2>(p, shape, shared_bytes, stream);
  }
  return Status::invalid("packed attention: unknown value format");
}

template <int QT>
Status dispatch_keys(const SegmentParams& p, const Shape& shape, int64_t shared_bytes,
                     cudaStream_t stream) {
  if (p.keys.format == KeyFormat::kPacked)
    return dispatch_values<QT, true>(p, shape, shared_bytes, stream);
  return dispatch_values<QT, false>(p, shape, shared_bytes, stream);
}

bool known_dtype(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16;
}

// =============================== combine ===============================

constexpr int kCombineThreads = 128;
constexpr int kCombineWarps = kCombineThreads / 32;
constexpr int kCombineChannels = 8;  // per lane and pass: 256 channels per pass of a warp

// A warp per query row: lanes stride over the splits for the max and the denominator (warp
// trees), then over channels for the numerators, the splits in order, each weight computed once
// per pass by one lane and broadcast.
template <typename T>
__global__ void __launch_bounds__(kCombineThreads) combine_partials_kernel(const CombineParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kCombineWarps + threadIdx.x / 32;
  if (row >= p.rows) return;  // warp-uniform
  const int64_t splits = p.splits;
  const int64_t dim = p.head_dim;
  const float* max = p.max + row * splits;
  const float* sum = p.sum + row * splits;
  const float* acc = p.acc + row * splits * dim;
  T* out = static_cast<T*>(p.out) + row * dim;

  float overall = -INFINITY;
  for (int64_t s = lane; s < splits; s += 32) overall = nan_max(overall, max[s]);
  overall = warp_max(overall);
  if (overall == -INFINITY) {  // no split saw a visible token
    for (int64_t c = lane; c < dim; c += 32) out[c] = kv_quant::from_float<T>(0.0f);
    return;
  }
  float denominator = 0.0f;
  for (int64_t s = lane; s < splits; s += 32) denominator += exp2_diff(max[s], overall) * sum[s];
  denominator = warp_sum(denominator);

  for (int64_t c0 = 0; c0 < dim; c0 += 32 * kCombineChannels) {
    float numerator[kCombineChannels];
#pragma unroll
    for (int k = 0; k < kCombineChannels; ++k) numerator[k] = 0.0f;
    for (int64_t s0 = 0; s0 < splits; s0 += 32) {
      const float mine = s0 + lane < splits ? exp2_diff(max[s0 + lane], overall) : 0.0f;
      const int count = static_cast<int>(min(int64_t{32}, splits - s0));
      for (int j = 0; j < count; ++j) {
        const float weight = __shfl_sync(kFullWarp, mine, j);
        const float* split_acc = acc + (s0 + j) * dim;
#pragma unroll
        for (int k = 0; k < kCombineChannels; ++k) {
          const int64_t c = c0 + lane + 32 * k;
          if (c < dim) numerator[k] = fmaf(weight, split_acc[c], numerator[k]);
        }
      }
    }
#pragma unroll
    for (int k = 0; k < kCombineChannels; ++k) {
      const int64_t c = c0 + lane + 32 * k;
      if (c < dim) out[c] = kv_quant::from_float<T>(numerator[k] / denominator);
    }
  }
}

}  // namespace

// =============================== launchers ===============================

Status segment_partials_cuda(const SegmentParams& p, void* stream) {
  VIDLLM_RETURN_IF_ERROR(check_segment_params(p));
  const Queries& q = p.q;
  const int64_t splits = ceil_div(p.segment.rows, p.segment.split_rows);
  if (q.batch == 0 || splits == 0) return Status::ok();
  if (p.keys.format == KeyFormat::kFull && !known_dtype(p.keys.dtype))
    return Status::invalid("packed attention: full-precision keys must be float32/16, bfloat16");
  if (p.values.format == ValueFormat::kFull && !known_dtype(p.values.dtype))
    return Status::invalid("packed attention: full-precision values must be float32/16, bfloat16");
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(p.device));

  const int64_t rows = q.q_heads / q.kv_heads * q.q_len;
  const int qt = rows <= 8 || q.head_dim > 256 ? 8 : 16;
  Shape shape = make_shape(p, qt, splits);
  const int64_t shared_bytes = lay_out_shared(p, qt, shape);
  if (shape.query_tiles * splits * q.kv_heads * q.batch > kMaxGridX)
    return Status::invalid("packed attention: too many blocks; raise split_rows");
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  return qt == 8 ? dispatch_keys<8>(p, shape, shared_bytes, cuda_stream)
                 : dispatch_keys<16>(p, shape, shared_bytes, cuda_stream);
}

Status combine_partials_cuda(const CombineParams& p, void* stream) {
  if (p.rows < 0 || p.splits < 1 || p.head_dim < 1)
    return Status::invalid("combine_partials: needs at least one split and one channel");
  if (p.rows == 0) return Status::ok();
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(p.device));
  const int64_t blocks = ceil_div(p.rows, int64_t{kCombineWarps});
  if (blocks > kMaxGridX) return Status::invalid("combine_partials: too many rows");
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  VIDLLM_DISPATCH_FLOAT_TYPES(
      p.out_dtype, combine_partials_kernel<scalar_t>
      <<<static_cast<unsigned int>(blocks), kCombineThreads, 0, cuda_stream>>>(p));
  return cuda::launch_status();
}

}  // namespace vidllm::kv_attention
