// Token merging (ToMe bipartite soft matching, LongVLM hierarchical segments).
//
// Work comes in rows (the batch of the public ops, the segments of a hierarchical round), each a
// sequence of tokens. Every row holds `tokens` tokens except the last, which may hold fewer
// (`last_tokens`): a video's last segment may be shorter. Rows lie `row_stride` elements apart, so
// a batch [B, T, D] and the segments of one flat video [total, D] are described alike.
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

// The geometry of a batch of rows and of the merge in each row.
struct Rows {
  int64_t count = 0;             // rows
  int64_t tokens = 0;            // tokens of every row but the last
  int64_t last_tokens = 0;       // tokens of the last row (<= tokens)
  int64_t protected_tokens = 0;  // leading tokens of every row that take no part
  int64_t merges = 0;            // r of every row but the last, at most its cap
  int64_t last_merges = 0;       // r of the last row, at most its cap and at most merges
};

// Strides are in elements. Every tensor's innermost dimension is contiguous.
struct MetricParams {
  const void* x = nullptr;  // [rows, tokens, dim] features
  int64_t x_row_stride = 0;
  int64_t x_token_stride = 0;
  float* metric = nullptr;  // [rows, tokens, dim / chunks], contiguous
  int64_t dim = 0;
  int64_t chunks = 1;  // divides dim
  DType dtype = DType::kFloat32;
  Rows rows;  // count, tokens, last_tokens
  int device = 0;
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

struct MergeParams {
  const void* x = nullptr;  // [rows, tokens, dim]
  int64_t x_row_stride = 0;
  int64_t x_token_stride = 0;
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
  int64_t dim = 0;
  DType dtype = DType::kFloat32;
  Rows rows;
  int device = 0;
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

// The whole LongVLM merge of one video: rounds of metric, match, plan and merge over all segments
// at once, r_i = min(T_i - target, T_i / 2), until every segment holds `target` tokens (or all it
// has). Host code that only launches the stages: the schedule comes from the shapes.
struct HierarchicalParams {
  const void* tokens = nullptr;  // [total, dim]: segment after segment, (frame, position) order
  int64_t token_stride = 0;
  void* out = nullptr;              // [merged, dim], contiguous, tokens' dtype
  float* sizes = nullptr;           // [merged]: input tokens per output token
  int64_t* source_index = nullptr;  // [merged]: flat input index of each output's representative
  void* workspace = nullptr;        // hierarchical_workspace_bytes() bytes, 16-byte aligned
  int64_t workspace_bytes = 0;
  int64_t segments = 0;
  int64_t segment_tokens = 0;  // tokens of every segment but the last
  int64_t last_tokens = 0;     // tokens of the last segment (<= segment_tokens)
  int64_t dim = 0;
  int64_t chunks = 1;  // metric: the mean of `chunks` channel chunks; divides dim
  int64_t target = 1;  // tokens_per_segment
  DType dtype = DType::kFloat32;
  int device = 0;
};

// Output tokens: min(target, segment tokens) summed over the segments.
int64_t hierarchical_merged_tokens(const HierarchicalParams& params);
int64_t hierarchical_workspace_bytes(const HierarchicalParams& params);

// The CPU twin of each stage, and in CUDA builds its launcher on `stream` (a cudaStream_t),
// which never allocates and never synchronizes.
VIDLLM_LAUNCHERS(metric, MetricParams);
VIDLLM_LAUNCHERS(match, MatchParams);
VIDLLM_LAUNCHERS(plan, PlanParams);
VIDLLM_LAUNCHERS(wavg, MergeParams);
VIDLLM_LAUNCHERS(unmerge, UnmergeParams);
VIDLLM_LAUNCHERS(hierarchical, HierarchicalParams);

// ---- row geometry ----------------------------------------------------------------------------

VIDLLM_HOST_DEVICE int64_t tokens_of(const Rows& rows, int64_t row) {
  return row == rows.count - 1 ? rows.last_tokens : rows.tokens;
}

VIDLLM_HOST_DEVICE int64_t merges_of(const Rows& rows, int64_t row) {
  return row == rows.count - 1 ? rows.last_merges : rows.merges;
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
VIDLLM_HOST_DEVICE int64_t carried_index(const int64_t* index, int64_t row_stride, int64_t row,
                                         int64_t token) {
  return index == nullptr ? row * row_stride + token : index[row * row_stride + token];
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
