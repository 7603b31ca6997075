// Token merging (ToMe bipartite soft matching, LongVLM hierarchical segments).
//
// Work comes in rows (the batch of the public ops, the segments of a hierarchical round), each a
// sequence of tokens. Every row holds `tokens` tokens except the last, which may hold fewer
// (`last_tokens`); or, for the hierarchical merge, every row has its own length (UnevenRows) and
// the buffers are padded to the longest. Rows lie `row_stride` elements apart, except the flat
// input of a hierarchical merge's first round and its output, back to back at their offsets.
//
// Five stages, each a launcher with a CPU and a CUDA twin:
//   metric:  features -> float32 metric [rows, tokens, dim / chunks], the mean of the channel
//   chunks match:   metric -> each A token's most similar B token (partner) and that similarity
//   (score) plan:    scores -> the r best A tokens merge: every token's output slot, the kept
//   tokens, and
//            each output's merged sources (CSR, ascending source index)
//   merge:   features (+ sizes, + carried indices) -> size-weighted means, sizes, indices
//   unmerge: merged rows gathered back to every input token
// The per-token math below is shared by both twins: CPU and CUDA results are bitwise equal.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/cosine.h"
#include "common/dtype.h"
#include "common/exact_math.h"
#include "common/macros.h"
#include "common/status.h"

namespace vidllm::token_merge {

// Uneven rows: the segments of the hierarchical merge, each of its own length, at one round of
// the schedule (merge_round). Values read from `offsets` are clamped (see row_first_token), so
// malformed offsets cannot address outside the buffers.
struct UnevenRows {
  // [count + 1]: row r is flat input tokens [offsets[r], offsets[r + 1]).
  const int64_t* offsets = nullptr;
  const int64_t* merged_offsets = nullptr;  // [count + 1]: its outputs after the last round
  int64_t total = 0;                        // flat input tokens
  int64_t merged = 0;                       // output tokens after the last round
  int64_t longest = 0;                      // the longest row's input tokens
  int64_t target = 1;                       // tokens a row is merged down to
  int64_t round = 0;                        // the round these rows are at (from 0)
};

// The geometry of a batch of rows and of the merge in each row. With `uneven.offsets` set, every
// row's tokens and merges come from its length and the schedule; `tokens` and `merges` are then
// the longest row's, the capacities every buffer is laid out with, and the last_* are unused.
struct Rows {
  int64_t count = 0;             // rows
  int64_t tokens = 0;            // tokens of every row but the last
  int64_t last_tokens = 0;       // tokens of the last row (<= tokens)
  int64_t protected_tokens = 0;  // leading tokens of every row that take no part
  int64_t merges = 0;            // r of every row but the last, at most its cap
  int64_t last_merges = 0;       // r of the last row, at most its cap and at most merges
  UnevenRows uneven;
};

// Strides are in elements. Every tensor's innermost dimension is contiguous.

// The features that metric and merge read, and the rows they work on.
struct FeatureInput {
  const void* x = nullptr;  // [rows, tokens, dim] features
  int64_t x_row_stride = 0;
  int64_t x_token_stride = 0;
  // x holds the rows back to back at rows.uneven.offsets (the flat input of the hierarchical
  // merge's first round): x_row_stride is unused.
  bool x_flat = false;
  int64_t dim = 0;
  DType dtype = DType::kFloat32;
  Rows rows;
  int device = 0;
};

// Reads rows.count, tokens and last_tokens.
struct MetricParams : FeatureInput {
  float* metric = nullptr;  // [rows, tokens, dim / chunks], contiguous
  int64_t chunks = 1;       // divides dim
};

struct MatchParams {
  const void* metric = nullptr;  // [rows, tokens, channels]
  int64_t metric_row_stride = 0;
  int64_t metric_token_stride = 0;
  int64_t channels = 0;
  DType dtype = DType::kFloat32;
  int64_t* partner = nullptr;  // [rows, a_capacity], contiguous; -1 where B is empty
  float* score = nullptr;      // [rows, a_capacity], contiguous; NaN where B is empty
  Rows rows;                   // count, tokens, last_tokens, protected_tokens
  int device = 0;
};

// Per-row capacities: a_capacity = set_a_size(tokens), out_capacity = tokens - merges.
struct PlanParams {
  const float* score = nullptr;       // [rows, a_capacity]
  const int64_t* partner = nullptr;   // [rows, a_capacity]
  int64_t* slot = nullptr;            // [rows, tokens]: output slot of every token
  int64_t* kept_index = nullptr;      // [rows, out_capacity]: the token each output slot keeps
  int64_t* source_offsets = nullptr;  // [rows, out_capacity + 1]: CSR offsets into source_index
  int64_t* source_index = nullptr;    // [rows, merges]: merged tokens by slot, then index
  int64_t* cursor = nullptr;          // [rows, out_capacity] workspace (CUDA)
  Rows rows;
  int device = 0;
};

// With x_flat, a null index carries the flat position.
struct MergeParams : FeatureInput {
  const float* size = nullptr;  // [rows, tokens] token sizes; null: every size is 1
  int64_t size_row_stride = 0;
  // [rows, tokens] carried to index_out (the hierarchical merge's representatives). Null: the
  // flat position row * index_row_stride + token.
  const int64_t* index = nullptr;
  int64_t index_row_stride = 0;
  const int64_t* kept_index = nullptr;      // [rows, out_capacity], from plan
  const int64_t* source_offsets = nullptr;  // [rows, out_capacity + 1]
  const int64_t* source_index = nullptr;    // [rows, merges]
  void* out = nullptr;                      // [rows, out_capacity, dim], contiguous
  float* size_out = nullptr;                // [rows, out_capacity], contiguous
  int64_t* index_out = nullptr;             // [rows, out_capacity], contiguous; may be null
  // out, size_out and index_out hold the rows back to back at rows.uneven.merged_offsets (the
  // hierarchical merge's last round) instead of out_capacity apart.
  bool out_flat = false;
};

struct UnmergeParams {
  const void* merged = nullptr;  // [rows, out_capacity, dim]
  int64_t merged_row_stride = 0;
  int64_t merged_token_stride = 0;
  const int64_t* slot = nullptr;  // [rows, tokens], contiguous
  void* out = nullptr;            // [rows, tokens, dim], contiguous
  int64_t dim = 0;
  DType dtype = DType::kFloat32;
  Rows rows;  // count, tokens, last_tokens
  int device = 0;
};

// The whole LongVLM merge of segments of any lengths: rounds of metric, match, plan and merge
// over all segments at once (padded rows, one launch per stage per round), each segment on its
// own schedule (merge_round), until every segment holds `target` tokens (or all it has). Host
// code that only launches the stages: the round count and the buffers come from the longest
// segment, so nothing is read back from the device.
struct HierarchicalParams {
  const void* tokens = nullptr;  // [total, dim]: segment after segment
  int64_t token_stride = 0;
  const int64_t* segment_offsets = nullptr;  // [segments + 1] on the tokens' device, 0 .. total
  const int64_t* merged_offsets = nullptr;   // [segments + 1]: prefix sums of min(n_s, target)
  void* out = nullptr;                       // [merged, dim], contiguous, tokens' dtype
  float* sizes = nullptr;                    // [merged]: input tokens per output token
  int64_t* source_index = nullptr;  // [merged]: flat input index of each output's representative
  void* workspace = nullptr;        // hierarchical_workspace_bytes() bytes, 16-byte aligned
  int64_t workspace_bytes = 0;
  int64_t segments = 0;
  int64_t total = 0;    // input tokens
  int64_t merged = 0;   // output tokens: min(n_s, target) summed over the segments
  int64_t longest = 0;  // the longest segment's tokens
  int64_t dim = 0;
  int64_t chunks = 1;  // metric: the mean of `chunks` channel chunks; divides dim
  int64_t target = 1;  // tokens_per_segment
  DType dtype = DType::kFloat32;
  int device = 0;
};

int64_t hierarchical_workspace_bytes(const HierarchicalParams& params);

// The CPU twin of each stage, and in CUDA builds its launcher on `stream` (a cudaStream_t),
// which never allocates and never synchronizes.
VIDLLM_LAUNCHERS(metric, MetricParams);
VIDLLM_LAUNCHERS(match, MatchParams);
VIDLLM_LAUNCHERS(plan, PlanParams);
VIDLLM_LAUNCHERS(wavg, MergeParams);
VIDLLM_LAUNCHERS(unmerge, UnmergeParams);
VIDLLM_LAUNCHERS(hierarchical, HierarchicalParams);

// ---- the schedule --------------------------------------------------------------------------

struct MergeRound {
  int64_t tokens = 0;  // tokens the row holds at the start of the round
  int64_t merges = 0;  // tokens it merges in the round (0 once it is done)
};

// LongVLM's schedule, the package's one statement of it: a row of `tokens` tokens merges
// r_i = min(T_i - target, T_i / 2) tokens per round until it holds `target` (a row of at most
// `target` tokens merges none). Round `round` (from 0) of that recurrence. T_{i+1} =
// max(target, ceil(T_i / 2)), so a row of fewer than 2^31 tokens is done within 32 rounds, and
// tokens and merges never decrease with the row's length: the longest row sizes every buffer.
VIDLLM_HOST_DEVICE MergeRound merge_round(int64_t tokens, int64_t target, int64_t round) {
  for (int64_t k = 0;; ++k) {
    const int64_t excess = tokens - target;
    const int64_t merges = excess <= 0 ? 0 : (excess < tokens / 2 ? excess : tokens / 2);
    if (k == round) return {tokens, merges};
    if (merges == 0) return {tokens, 0};
    tokens -= merges;
  }
}

// ---- row geometry ----------------------------------------------------------------------------

VIDLLM_HOST_DEVICE int64_t clamp_between(int64_t value, int64_t low, int64_t high) {
  return value < low ? low : (value > high ? high : value);
}

// Row `row`'s first token in the flat input of uneven rows, within [0, total].
VIDLLM_HOST_DEVICE int64_t row_first_token(const UnevenRows& uneven, int64_t row) {
  return clamp_between(uneven.offsets[row], 0, uneven.total);
}

// Row `row`'s input tokens: first + length stays within total, length within longest.
VIDLLM_HOST_DEVICE int64_t row_length(const UnevenRows& uneven, int64_t row) {
  const int64_t first = row_first_token(uneven, row);
  const int64_t end = clamp_between(uneven.offsets[row + 1], first, uneven.total);
  return end - first < uneven.longest ? end - first : uneven.longest;
}

VIDLLM_HOST_DEVICE MergeRound round_of(const Rows& rows, int64_t row) {
  if (rows.uneven.offsets != nullptr)
    return merge_round(row_length(rows.uneven, row), rows.uneven.target, rows.uneven.round);
  return row == rows.count - 1 ? MergeRound{rows.last_tokens, rows.last_merges}
                               : MergeRound{rows.tokens, rows.merges};
}

VIDLLM_HOST_DEVICE int64_t tokens_of(const Rows& rows, int64_t row) {
  return round_of(rows, row).tokens;
}

VIDLLM_HOST_DEVICE int64_t merges_of(const Rows& rows, int64_t row) {
  return round_of(rows, row).merges;
}

// Element offset of row `row`'s first token in a tensor of rows: back to back at the uneven
// rows' offsets when `flat`, `row_stride` apart otherwise.
VIDLLM_HOST_DEVICE int64_t row_start(const Rows& rows, bool flat, int64_t row, int64_t row_stride,
                                     int64_t token_stride) {
  return flat ? row_first_token(rows.uneven, row) * token_stride : row * row_stride;
}

// Where output slot `out_slot` of `row` goes in out, size_out and index_out; -1 when malformed
// merged offsets would put it outside them.
VIDLLM_HOST_DEVICE int64_t output_position(const MergeParams& p, int64_t row, int64_t out_slot) {
  if (!p.out_flat) return row * (p.rows.tokens - p.rows.merges) + out_slot;
  const int64_t position =
      clamp_between(p.rows.uneven.merged_offsets[row], 0, p.rows.uneven.merged) + out_slot;
  return position < p.rows.uneven.merged ? position : -1;
}

// Of the tokens after the protected ones, set A holds the even offsets and set B the odd ones.
VIDLLM_HOST_DEVICE int64_t set_a_size(int64_t tokens, int64_t protected_tokens) {
  const int64_t open = tokens > protected_tokens ? tokens - protected_tokens : 0;
  return (open + 1) / 2;
}

VIDLLM_HOST_DEVICE int64_t set_b_size(int64_t tokens, int64_t protected_tokens) {
  const int64_t open = tokens > protected_tokens ? tokens - protected_tokens : 0;
  return open / 2;
}

VIDLLM_HOST_DEVICE int64_t a_token(int64_t protected_tokens, int64_t i) {
  return protected_tokens + 2 * i;
}

VIDLLM_HOST_DEVICE int64_t b_token(int64_t protected_tokens, int64_t j) {
  return protected_tokens + 2 * j + 1;
}

// Indices read from tensors are clamped into [0, count) before they address memory, so a malformed
// plan handed straight to vidllm_ext._C cannot reach outside its rows. Requires count >= 1.
VIDLLM_HOST_DEVICE int64_t clamp_index(int64_t index, int64_t count) {
  return index < 0 ? 0 : (index >= count ? count - 1 : index);
}

// The index a merge carries from input token `token` of `row` (see MergeParams::index).
VIDLLM_HOST_DEVICE int64_t carried_index(const MergeParams& p, int64_t row, int64_t token) {
  if (p.index != nullptr) return p.index[row * p.index_row_stride + token];
  return row_start(p.rows, p.x_flat, row, p.index_row_stride, 1) + token;
}

// ---- float32 arithmetic shared by both twins ---------------------------------------------------
// Rounded IEEE operations. On the device the _rn intrinsics are never contracted into FMA; the
// CPU sources turn contraction off (see token_merge_cpu.cpp), so both sides round alike.

// acc + a * b with two roundings. Dot products, norms and weighted sums are chains of these in a
// fixed order (ascending channel, ascending source), so every twin computes the same bits.
VIDLLM_HOST_DEVICE float add_product(float acc, float a, float b) {
  return add_rn(acc, mul_rn(a, b));
}

// Similarities are vidllm::cosine_from_sums (common/cosine.h) of a dot product and two sums of
// squares, all three add_product chains over the channels in ascending order.

}  // namespace vidllm::token_merge
