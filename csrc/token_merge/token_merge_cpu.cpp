// CPU twin of token_merge.cu for the metric, plan, merge and unmerge stages (matching lives in
// token_merge_match_cpu.cpp). The float32 sums run in the order the header fixes, so CPU and CUDA
// agree bitwise; contraction into FMA is off for this file.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "common/rank_key.h"
#include "token_merge/token_merge.h"
#include "token_merge/token_merge_round_to.h"

namespace vidllm::token_merge {
namespace {

// Output elements a merge worker accumulates at once (on the stack).
constexpr int64_t kMergeChunk = 256;

// Calls body(row, token) for every token of every row, in parallel.
template <typename Body>
void for_each_token(const Rows& rows, int64_t row_capacity, const Body& body) {
  parallel_for(rows.count * row_capacity, [&](int64_t item) {
    const int64_t row = item / row_capacity;
    const int64_t token = item % row_capacity;
    body(row, token);
  });
}

template <typename T>
void metric_token(const T* x, float* metric, int64_t channels, int64_t chunks) {
  // Chunk by chunk, so each channel's sum runs in chunk order and the loop vectorizes.
  for (int64_t c = 0; c < channels; ++c) metric[c] = 0.0f;
  for (int64_t h = 0; h < chunks; ++h) {
    const T* chunk = x + h * channels;
    for (int64_t c = 0; c < channels; ++c) metric[c] = add_rn(metric[c], to_float(chunk[c]));
  }
  const float count = static_cast<float>(chunks);
  for (int64_t c = 0; c < channels; ++c) metric[c] = div_rn(metric[c], count);
}

// The merges of one row: the r A tokens of largest rank key (score, NaN lowest, ties to the lower
// index), every token's output slot, the kept tokens, and the CSR of each slot's sources.
void plan_row(const PlanParams& p, int64_t row) {
  const Rows& rows = p.rows;
  const int64_t tokens = tokens_of(rows, row);
  const int64_t merges = merges_of(rows, row);
  const int64_t prot = std::min(rows.protected_tokens, tokens);
  const int64_t a_size = set_a_size(tokens, rows.protected_tokens);
  const int64_t b_size = set_b_size(tokens, rows.protected_tokens);
  const int64_t a_capacity = set_a_size(rows.tokens, rows.protected_tokens);
  const int64_t out_capacity = rows.tokens - rows.merges;
  const float* score = p.score + row * a_capacity;
  const int64_t* partner = p.partner + row * a_capacity;
  int64_t* slot = p.slot + row * rows.tokens;
  int64_t* kept_index = p.kept_index + row * out_capacity;
  int64_t* offsets = p.source_offsets + row * (out_capacity + 1);
  int64_t* source_index = p.source_index + row * rows.merges;

  std::vector<uint8_t> merged(static_cast<size_t>(a_size), 0);
  if (merges > 0) {
    std::vector<uint64_t> keys(static_cast<size_t>(a_size));
    for (int64_t i = 0; i < a_size; ++i) keys[i] = rank_key(score[i], static_cast<uint32_t>(i));
    std::nth_element(keys.begin(), keys.begin() + (merges - 1), keys.end(),
                     std::greater<uint64_t>());
    for (int64_t k = 0; k < merges; ++k) merged[0xffffffffu - static_cast<uint32_t>(keys[k])] = 1;
  }
  for (int64_t t = 0; t < prot; ++t) slot[t] = kept_index[t] = t;
  // A token i and B token i are neighbours; the survivors before a token are all tokens before
  // it less the merged A tokens before it.
  int64_t merged_before = 0;
  for (int64_t i = 0; i < a_size; ++i) {
    if (merged[i]) {
      ++merged_before;
    } else {
      const int64_t a = a_token(rows.protected_tokens, i);
      slot[a] = a - merged_before;
      kept_index[slot[a]] = a;
    }
    if (i < b_size) {
      const int64_t b = b_token(rows.protected_tokens, i);
      slot[b] = b - merged_before;
      kept_index[slot[b]] = b;
    }
  }
  const int64_t outputs = tokens - merges;
  std::fill(offsets, offsets + outputs + 1, 0);
  for (int64_t i = 0; i < a_size; ++i) {
    if (!merged[i]) continue;
    const int64_t destination = b_token(rows.protected_tokens, clamp_index(partner[i], b_size));
    const int64_t a = a_token(rows.protected_tokens, i);
    slot[a] = slot[destination];
    ++offsets[slot[a] + 1];
  }
  for (int64_t s = 0; s < outputs; ++s) offsets[s + 1] += offsets[s];
  // A stable counting sort: each slot's sources in ascending token order.
  std::vector<int64_t> cursor(offsets, offsets + outputs);
  for (int64_t i = 0; i < a_size; ++i) {
    if (!merged[i]) continue;
    const int64_t a = a_token(rows.protected_tokens, i);
    source_index[cursor[slot[a]]++] = a;
  }
}

template <typename T>
void merge_output(const MergeParams& p, int64_t row, int64_t out_slot) {
  const Rows& rows = p.rows;
  const int64_t tokens = tokens_of(rows, row);
  const int64_t merges = merges_of(rows, row);
  const int64_t out_capacity = rows.tokens - rows.merges;
  const int64_t plan_slot = row * out_capacity + out_slot;
  const int64_t position = output_position(p, row, out_slot);
  if (position < 0) return;
  const int64_t kept = clamp_index(p.kept_index[plan_slot], tokens);
  const int64_t* offsets = p.source_offsets + row * (out_capacity + 1) + out_slot;
  const int64_t begin = clamp_index(offsets[0], merges + 1);
  const int64_t end = std::max(begin, clamp_index(offsets[1], merges + 1));
  const int64_t* sources = p.source_index + row * rows.merges;
  const T* x =
      static_cast<const T*>(p.x) + row_start(rows, p.x_flat, row, p.x_row_stride, p.x_token_stride);
  T* out = static_cast<T*>(p.out) + position * p.dim;
  const float* size = p.size == nullptr ? nullptr : p.size + row * p.size_row_stride;
  auto size_of = [&](int64_t token) { return size == nullptr ? 1.0f : size[token]; };

  if (p.index_out != nullptr) p.index_out[position] = carried_index(p, row, kept);
  const T* kept_row = x + kept * p.x_token_stride;
  if (begin == end) {  // nothing merged into this token: copied unchanged
    std::memcpy(out, kept_row, static_cast<size_t>(p.dim) * sizeof(T));
    p.size_out[position] = size_of(kept);
    return;
  }
  float total = size_of(kept);
  for (int64_t k = begin; k < end; ++k)
    total = add_rn(total, size_of(clamp_index(sources[k], tokens)));
  p.size_out[position] = total;
  float acc[kMergeChunk];
  for (int64_t first = 0; first < p.dim; first += kMergeChunk) {
    const int64_t count = std::min(kMergeChunk, p.dim - first);
    const float kept_size = size_of(kept);
    for (int64_t d = 0; d < count; ++d) acc[d] = mul_rn(kept_size, to_float(kept_row[first + d]));
    for (int64_t k = begin; k < end; ++k) {
      const int64_t source = clamp_index(sources[k], tokens);
      const float source_size = size_of(source);
      const T* source_row = x + source * p.x_token_stride + first;
      for (int64_t d = 0; d < count; ++d)
        acc[d] = add_product(acc[d], source_size, to_float(source_row[d]));
    }
    for (int64_t d = 0; d < count; ++d) out[first + d] = from_float<T>(div_rn(acc[d], total));
  }
}

}  // namespace

Status metric_cpu(const MetricParams& p) {
  const int64_t channels = p.dim / p.chunks;
  VIDLLM_DISPATCH_FLOAT_TYPES(
      p.dtype, for_each_token(p.rows, p.rows.tokens, [&](int64_t row, int64_t token) {
        if (token >= tokens_of(p.rows, row)) return;
        const scalar_t* x = static_cast<const scalar_t*>(p.x) +
                            row_start(p.rows, p.x_flat, row, p.x_row_stride, p.x_token_stride) +
                            token * p.x_token_stride;
        metric_token(x, p.metric + (row * p.rows.tokens + token) * channels, channels, p.chunks);
      }));
  return Status::ok();
}

Status plan_cpu(const PlanParams& p) {
  parallel_for(p.rows.count, [&](int64_t row) { plan_row(p, row); });
  return Status::ok();
}

Status wavg_cpu(const MergeParams& p) {
  const Rows& rows = p.rows;
  const int64_t out_capacity = rows.tokens - rows.merges;
  VIDLLM_DISPATCH_FLOAT_TYPES(
      p.dtype, for_each_token(rows, out_capacity, [&](int64_t row, int64_t out_slot) {
        if (out_slot < tokens_of(rows, row) - merges_of(rows, row))
          merge_output<scalar_t>(p, row, out_slot);
      }));
  return Status::ok();
}

Status unmerge_cpu(const UnmergeParams& p) {
  const Rows& rows = p.rows;
  const int64_t row_bytes = p.dim * element_size(p.dtype);
  const int64_t element_bytes = element_size(p.dtype);
  for_each_token(rows, rows.tokens, [&](int64_t row, int64_t token) {
    if (token >= tokens_of(rows, row)) return;
    const int64_t outputs = tokens_of(rows, row) - merges_of(rows, row);
    const int64_t source = clamp_index(p.slot[row * rows.tokens + token], outputs);
    const char* merged =
        static_cast<const char*>(p.merged) +
        (row * p.merged_row_stride + source * p.merged_token_stride) * element_bytes;
    char* out = static_cast<char*>(p.out) + (row * rows.tokens + token) * row_bytes;
    std::memcpy(out, merged, static_cast<size_t>(row_bytes));
  });
  return Status::ok();
}

}  // namespace vidllm::token_merge
