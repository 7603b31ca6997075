// CPU twin of the packed attention kernels: the same segment / split / tile decomposition as the
// CUDA kernels, one work item per (sample, KV head, split), every query row of that KV head at
// once (the GQA group times the query length), so each code is decoded once per work item.
// Inner loops run over tokens of a tile (scores) or channels (values) with unit stride, so the
// compiler vectorizes them without reassociating a reduction.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/parallel.h"
#include "kv_attention/kv_attention.h"

namespace vidllm::kv_attention {
namespace {

// Scratch of one work item; R = query rows per KV head, D = head_dim.
struct Scratch {
  std::vector<float> query;     // [R, D]: q for the current key group (scales folded in)
  std::vector<float> bias;      // [R]: sum_c q2[c] * zero2[c] of the current key group
  std::vector<float> keys;      // [D, kMaxTile]: the tile's decoded keys, channel-major
  std::vector<float> values;    // [kMaxTile, D]: the tile's decoded values
  std::vector<float> scores;    // [R, kMaxTile]: scores, then probabilities
  std::vector<float> max, sum;  // [R]
  std::vector<float> acc;       // [R, D]
  std::vector<float> tile_sum;  // [D]
  Scratch(int64_t rows, int64_t dim)
      : query(rows * dim),
        bias(rows),
        keys(dim * kMaxTile),
        values(kMaxTile * dim),
        scores(rows * kMaxTile),
        max(rows, -INFINITY),
        sum(rows, 0.0f),
        acc(rows * dim, 0.0f),
        tile_sum(dim) {}
};

struct Item {
  int64_t batch, kv_head, split;
  int64_t group;  // query heads per KV head
  int64_t head;   // batch * Hkv + kv_head: the KV head's index in the packed [B, Hkv, ...] tensors
};

int64_t query_row_offset(const Queries& q, const Item& item, int64_t row) {
  const int64_t head = item.kv_head * item.group + row / q.q_len;
  return ((item.batch * q.q_heads + head) * q.q_len + row % q.q_len) * q.head_dim;
}

// Loads q (full keys) or folds the key group's statistics into q (packed keys).
void prepare_queries(const SegmentParams& p, const Item& item, int64_t key_group, Scratch& s) {
  const Queries& q = p.q;
  const KeySource& k = p.keys;
  const int64_t rows = item.group * q.q_len;
  const int64_t dim = q.head_dim;
  if (k.format == KeyFormat::kFull) {
    for (int64_t r = 0; r < rows; ++r) {
      std::copy_n(q.full + query_row_offset(q, item, r), dim, &s.query[r * dim]);
      s.bias[r] = 0.0f;
    }
    return;
  }
  const int64_t groups = (k.tokens + k.group_size - 1) / k.group_size;
  const int64_t head_index = item.head * groups + key_group;
  const int64_t base2 = head_index * k.two_bit;
  const int64_t base1 = head_index * k.one_bit;
  for (int64_t r = 0; r < rows; ++r) {
    const float* qp = q.packed + query_row_offset(q, item, r);
    float* out = &s.query[r * dim];
    float bias = 0.0f;
    for (int64_t c = 0; c < k.two_bit; ++c) {
      const float scale = load_stat(k.scale2, base2 + c, k.scale_type);
      out[c] = qp[c] * scale;
      bias += qp[c] * centered_zero(load_stat(k.zero2, base2 + c, k.scale_type), scale);
    }
    for (int64_t c = 0; c < k.one_bit; ++c)
      out[k.two_bit + c] = qp[k.two_bit + c] * load_stat(k.alpha1, base1 + c, k.scale_type);
    s.bias[r] = bias;
  }
}

// Decodes the keys of the tile's rows into s.keys (channel-major): 2-bit codes as centered levels
// -1.5 .. 1.5 and 1-bit codes as -1 / +1 (packed), or the stored floats (full).
template <typename KeyT>
void decode_keys(const SegmentParams& p, const Item& item, int64_t start, int64_t count,
                 Scratch& s) {
  const KeySource& k = p.keys;
  const int64_t dim = p.q.head_dim;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t token = key_token(p.segment, item.batch, start + t);
    if (k.format == KeyFormat::kFull) {
      const KeyT* row = full_row<KeyT>(k, k.keys, item.batch, item.kv_head, token);
      for (int64_t c = 0; c < dim; ++c) s.keys[c * kMaxTile + t] = to_float(row[c]);
      continue;
    }
    const int64_t bytes2 = (k.two_bit + 3) / 4;
    const int64_t bytes1 = (k.one_bit + 7) / 8;
    const uint8_t* row2 = k.codes2 + (item.head * k.tokens + token) * bytes2;
    const uint8_t* row1 = k.codes1 + (item.head * k.tokens + token) * bytes1;
    for (int64_t c = 0; c < k.two_bit; ++c) s.keys[c * kMaxTile + t] = centered_code2_at(row2, c);
    for (int64_t c = 0; c < k.one_bit; ++c)
      s.keys[(k.two_bit + c) * kMaxTile + t] = bit_at(row1, c) ? 1.0f : -1.0f;
  }
}

bool visible(const SegmentParams& p, const Item& item, int64_t query, int64_t position) {
  if (position > p.q.query_start + query) return false;
  const Mask& m = p.mask;
  return !m.data ||
         m.data[item.batch * m.stride_batch + query * m.stride_query + position * m.stride_key] !=
             0;
}

void score_tile(const SegmentParams& p, const Item& item, int64_t start, int64_t count,
                Scratch& s) {
  const int64_t rows = item.group * p.q.q_len;
  const int64_t dim = p.q.head_dim;
  for (int64_t r = 0; r < rows; ++r) {
    float* score = &s.scores[r * kMaxTile];
    std::fill_n(score, kMaxTile, s.bias[r]);
    const float* query = &s.query[r * dim];
    for (int64_t c = 0; c < dim; ++c) {
      const float qc = query[c];
      const float* key = &s.keys[c * kMaxTile];
      for (int64_t t = 0; t < kMaxTile; ++t) score[t] += qc * key[t];
    }
    const int64_t query_index = r % p.q.q_len;
    for (int64_t t = 0; t < count; ++t) {
      const int64_t position = p.keys.position_start + key_token(p.segment, item.batch, start + t);
      if (!visible(p, item, query_index, position)) score[t] = -INFINITY;
    }
    std::fill(score + count, score + kMaxTile, -INFINITY);
  }
}

// Online softmax over the tile: rescales sum and acc to the new running max and turns the
// tile's scores into probabilities relative to it.
void softmax_tile(const Item& item, const Queries& q, int64_t count, Scratch& s) {
  const int64_t rows = item.group * q.q_len;
  for (int64_t r = 0; r < rows; ++r) {
    float* score = &s.scores[r * kMaxTile];
    float tile_max = -INFINITY;
    for (int64_t t = 0; t < count; ++t) tile_max = nan_max(tile_max, score[t]);
    const float new_max = nan_max(s.max[r], tile_max);
    const float correction = exp2_diff(s.max[r], new_max);
    float total = s.sum[r] * correction;
    for (int64_t t = 0; t < count; ++t) {
      score[t] = exp2_diff(score[t], new_max);
      total += score[t];
    }
    s.sum[r] = total;
    s.max[r] = new_max;
    float* acc = &s.acc[r * q.head_dim];
    for (int64_t c = 0; c < q.head_dim; ++c) acc[c] *= correction;
  }
}

// Decodes the tile's values into s.values [t, D]: code levels (kChannel2), trits (kTrit), or
// dequantized floats (kToken2, kFull), whose per-group statistics fold in later.
template <typename ValueT>
void decode_values(const SegmentParams& p, const Item& item, int64_t start, int64_t count,
                   Scratch& s) {
  const ValueSource& v = p.values;
  const int64_t dim = p.q.head_dim;
  const int64_t rows = p.segment.rows;
  const bool trits = v.format == ValueFormat::kTrit;
  const int64_t bytes = value_code_bytes(dim, trits);
  for (int64_t t = 0; t < count; ++t) {
    float* out = &s.values[t * dim];
    const int64_t row = start + t;
    if (v.format == ValueFormat::kFull) {
      const ValueT* in = full_row<ValueT>(v, v.values, item.batch, item.kv_head, row);
      for (int64_t c = 0; c < dim; ++c) out[c] = to_float(in[c]);
      continue;
    }
    const uint8_t* codes = v.codes + (item.head * rows + row) * bytes;
    if (trits) {
      for (int64_t c = 0; c < dim; ++c) out[c] = trit_at(codes, c);
    } else if (v.format == ValueFormat::kChannel2) {
      for (int64_t c = 0; c < dim; ++c) out[c] = code2_at(codes, c);
    } else {  // kToken2: per-token statistics, dequantized here
      const int64_t groups = (dim + v.group_size - 1) / v.group_size;
      const int64_t stats = (item.head * rows + row) * groups;
      for (int64_t c = 0; c < dim; ++c) {
        const int64_t index = stats + c / v.group_size;
        out[c] = code2_at(codes, c) * load_stat(v.scale, index, v.scale_type) +
                 load_stat(v.zero, index, v.scale_type);
      }
    }
  }
}

// acc += the tile's probability-weighted values, the value group's statistics applied once.
void accumulate_values(const SegmentParams& p, const Item& item, int64_t start, int64_t count,
                       Scratch& s) {
  const ValueSource& v = p.values;
  const int64_t rows = item.group * p.q.q_len;
  const int64_t dim = p.q.head_dim;
  const bool channel_stats = v.format == ValueFormat::kChannel2 || v.format == ValueFormat::kTrit;
  int64_t stats = 0;
  if (channel_stats) {
    const int64_t groups = (p.segment.rows + v.group_size - 1) / v.group_size;
    stats = (item.head * groups + start / v.group_size) * dim;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* prob = &s.scores[r * kMaxTile];
    float* tile_sum = s.tile_sum.data();
    std::fill_n(tile_sum, dim, 0.0f);
    float prob_sum = 0.0f;
    for (int64_t t = 0; t < count; ++t) {
      const float weight = prob[t];
      const float* value = &s.values[t * dim];
      for (int64_t c = 0; c < dim; ++c) tile_sum[c] += weight * value[c];
      prob_sum += weight;
    }
    float* acc = &s.acc[r * dim];
    if (!channel_stats) {
      for (int64_t c = 0; c < dim; ++c) acc[c] += tile_sum[c];
    } else if (v.format == ValueFormat::kTrit) {
      for (int64_t c = 0; c < dim; ++c)
        acc[c] += load_stat(v.scale, stats + c, v.scale_type) * tile_sum[c];
    } else {
      for (int64_t c = 0; c < dim; ++c)
        acc[c] += load_stat(v.scale, stats + c, v.scale_type) * tile_sum[c] +
                  load_stat(v.zero, stats + c, v.scale_type) * prob_sum;
    }
  }
}

template <typename KeyT, typename ValueT>
void run_item(const SegmentParams& p, const Item& item) {
  const Queries& q = p.q;
  const int64_t rows = item.group * q.q_len;
  Scratch s(rows, q.head_dim);
  const int64_t start = item.split * p.segment.split_rows;
  const int64_t stop = std::min(p.segment.rows, start + p.segment.split_rows);
  int64_t prepared_group = -2;
  for (int64_t tile = start; tile < stop;) {
    const int64_t end = tile_end(p, item.batch, tile, stop);
    const int64_t key_group = key_group_of(p, item.batch, tile);
    if (key_group != prepared_group) {
      prepare_queries(p, item, key_group, s);
      prepared_group = key_group;
    }
    decode_keys<KeyT>(p, item, tile, end - tile, s);
    score_tile(p, item, tile, end - tile, s);
    softmax_tile(item, q, end - tile, s);
    decode_values<ValueT>(p, item, tile, end - tile, s);
    accumulate_values(p, item, tile, end - tile, s);
    tile = end;
  }
  const Partials& out = p.partials;
  const int64_t split = p.segment.split_offset + item.split;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t head = item.kv_head * item.group + r / q.q_len;
    const int64_t index = ((item.batch * q.q_heads + head) * q.q_len + r % q.q_len) * out.splits;
    out.max[index + split] = s.max[r];
    out.sum[index + split] = s.sum[r];
    std::copy_n(&s.acc[r * q.head_dim], q.head_dim, out.acc + (index + split) * q.head_dim);
  }
}

}  // namespace

Status check_segment_params(const SegmentParams& p) {
  const Queries& q = p.q;
  if (q.batch < 0 || q.q_len < 1 || q.head_dim < 1 || q.kv_heads < 1 || q.q_heads < 1)
    return Status::invalid("packed attention: empty or negative query shape");
  if (q.q_heads % q.kv_heads != 0)
    return Status::invalid("packed attention: query heads must be a multiple of KV heads");
  if (p.segment.rows < 0 || p.segment.split_rows < 1)
    return Status::invalid("packed attention: split_rows must be >= 1");
  if (p.keys.format == KeyFormat::kPacked) {
    if (p.keys.group_size < 1 || p.keys.two_bit + p.keys.one_bit != q.head_dim)
      return Status::invalid("packed attention: key channels must add up to head_dim");
    if (!q.packed) return Status::invalid("packed attention: packed keys need q_packed");
  } else if (!q.full) {
    return Status::invalid("packed attention: full-precision keys need q_full");
  }
  if (p.values.format != ValueFormat::kFull && p.values.group_size < 1)
    return Status::invalid("packed attention: value group_size must be >= 1");
  const int64_t splits = (p.segment.rows + p.segment.split_rows - 1) / p.segment.split_rows;
  if (p.segment.split_offset < 0 || p.segment.split_offset + splits > p.partials.splits)
    return Status::invalid("packed attention: the segment's splits overflow the partials");
  return Status::ok();
}

Status segment_partials_cpu(const SegmentParams& p) {
  const Status status = check_segment_params(p);
  if (!status.is_ok()) return status;
  const Queries& q = p.q;
  const int64_t splits = (p.segment.rows + p.segment.split_rows - 1) / p.segment.split_rows;
  const int64_t group = q.q_heads / q.kv_heads;
  const int64_t items = q.batch * q.kv_heads * splits;
  const auto item_at = [&](int64_t i) {
    return Item{i / (q.kv_heads * splits), (i / splits) % q.kv_heads, i % splits, group,
                i / splits};
  };
  // Key and value element types matter only for full-precision sources.
  const DType key_dtype = p.keys.format == KeyFormat::kFull ? p.keys.dtype : DType::kFloat32;
  const DType value_dtype =
      p.values.format == ValueFormat::kFull ? p.values.dtype : DType::kFloat32;
  VIDLLM_DISPATCH_FLOAT_TYPES(key_dtype, {
    using KeyT = scalar_t;
    VIDLLM_DISPATCH_FLOAT_TYPES(value_dtype, {
      parallel_for(items, [&](int64_t i) { run_item<KeyT, scalar_t>(p, item_at(i)); });
    });
  });
  return Status::ok();
}

Status combine_partials_cpu(const CombineParams& p) {
  if (p.rows < 0 || p.splits < 1 || p.head_dim < 1)
    return Status::invalid("combine_partials: needs at least one split and one channel");
  VIDLLM_DISPATCH_FLOAT_TYPES(p.out_dtype, parallel_for(p.rows, [&](int64_t row) {
                                const float* max = p.max + row * p.splits;
                                const float* sum = p.sum + row * p.splits;
                                const float* acc = p.acc + row * p.splits * p.head_dim;
                                const float overall = combined_max(max, p.splits);
                                scalar_t* out = static_cast<scalar_t*>(p.out) + row * p.head_dim;
                                for (int64_t c = 0; c < p.head_dim; ++c)
                                  out[c] = kv_quant::from_float<scalar_t>(combined_channel(
                                      max, sum, acc, p.splits, p.head_dim, c, overall));
                              }));
  return Status::ok();
}

}  // namespace vidllm::kv_attention
