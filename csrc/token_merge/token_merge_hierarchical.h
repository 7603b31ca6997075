// The host driver of the hierarchical merge, shared by the CPU and CUDA entry points: the
// schedule, the workspace layout, and the rounds, each one launch per stage for all segments.
#pragma once

#include <cstdint>

#include "common/status.h"
#include "token_merge/token_merge.h"

namespace vidllm::token_merge::detail {

// The rounds the longest segment takes (merge_round); every other segment is done by then and
// copies its tokens through the remaining rounds. Segments that need no merging get one round of
// no merges, which copies; no tokens at all get none.
int64_t hierarchical_rounds(const HierarchicalParams& params);

// The rows of round `round`: capacities from the longest segment, lengths per segment.
Rows round_rows(const HierarchicalParams& params, int64_t round);

// Byte offsets into the workspace (multiples of 256, so buffers keep the base's alignment) and
// the total. Plan buffers are sized
// for the first round (the largest); intermediate features alternate between two buffers.
struct WorkspaceLayout {
  int64_t metric = 0;
  int64_t partner = 0;
  int64_t score = 0;
  int64_t slot = 0;
  int64_t kept_index = 0;
  int64_t cursor = 0;
  int64_t source_offsets = 0;
  int64_t source_index = 0;
  int64_t x[2] = {0, 0};
  int64_t size[2] = {0, 0};
  int64_t index[2] = {0, 0};
  int64_t bytes = 0;
};

WorkspaceLayout workspace_layout(const HierarchicalParams& params, int64_t rounds);

// Runs every round through `stages` (metric, match, plan, merge: the CPU or CUDA launchers).
template <typename Stages>
Status run_hierarchical(const HierarchicalParams& p, const Stages& stages) {
  const int64_t rounds = hierarchical_rounds(p);
  const WorkspaceLayout layout = workspace_layout(p, rounds);
  if (rounds == 0) return Status::ok();
  if (p.workspace_bytes < layout.bytes)
    return Status::invalid("hierarchical merge: the workspace is smaller than required");
  char* base = static_cast<char*>(p.workspace);
  auto at = [base](int64_t offset) { return static_cast<void*>(base + offset); };
  const int64_t channels = p.dim / p.chunks;

  const void* x = p.tokens;
  int64_t token_stride = p.token_stride;
  int64_t row_stride = token_stride;  // round 1: rows back to back at the segment offsets
  const float* size = nullptr;        // round 1: every size is 1
  const int64_t* index = nullptr;     // round 1: the flat position
  for (int64_t k = 0; k < rounds; ++k) {
    const Rows rows = round_rows(p, k);
    const bool first_round = k == 0;
    const bool last_round = k + 1 == rounds;
    float* metric = static_cast<float*>(at(layout.metric));
    int64_t* partner = static_cast<int64_t*>(at(layout.partner));
    float* score = static_cast<float*>(at(layout.score));
    const auto read_features = [&](FeatureInput& input) {
      input.x = x;
      input.x_row_stride = row_stride;
      input.x_token_stride = token_stride;
      input.x_flat = first_round;
      input.dim = p.dim;
      input.dtype = p.dtype;
      input.rows = rows;
      input.device = p.device;
    };
    if (rows.merges > 0) {
      MetricParams metric_params;
      read_features(metric_params);
      metric_params.metric = metric;
      metric_params.chunks = p.chunks;
      if (const Status status = stages.metric(metric_params); !status.is_ok()) return status;
      MatchParams match_params;
      match_params.metric = metric;
      match_params.metric_row_stride = rows.tokens * channels;
      match_params.metric_token_stride = channels;
      match_params.channels = channels;
      match_params.dtype = DType::kFloat32;
      match_params.partner = partner;
      match_params.score = score;
      match_params.rows = rows;
      match_params.device = p.device;
      if (const Status status = stages.match(match_params); !status.is_ok()) return status;
    }
    PlanParams plan;
    plan.score = score;
    plan.partner = partner;
    plan.slot = static_cast<int64_t*>(at(layout.slot));
    plan.kept_index = static_cast<int64_t*>(at(layout.kept_index));
    plan.source_offsets = static_cast<int64_t*>(at(layout.source_offsets));
    plan.source_index = static_cast<int64_t*>(at(layout.source_index));
    plan.cursor = static_cast<int64_t*>(at(layout.cursor));
    plan.rows = rows;
    plan.device = p.device;
    if (const Status status = stages.plan(plan); !status.is_ok()) return status;

    MergeParams merge;
    read_features(merge);
    merge.out_flat = last_round;
    merge.size = size;
    merge.size_row_stride = rows.tokens;
    merge.index = index;
    merge.index_row_stride = rows.tokens;
    merge.kept_index = plan.kept_index;
    merge.source_offsets = plan.source_offsets;
    merge.source_index = plan.source_index;
    merge.out = last_round ? p.out : at(layout.x[k % 2]);
    merge.size_out = last_round ? p.sizes : static_cast<float*>(at(layout.size[k % 2]));
    merge.index_out = last_round ? p.source_index : static_cast<int64_t*>(at(layout.index[k % 2]));
    if (const Status status = stages.wavg(merge); !status.is_ok()) return status;
    x = merge.out;
    token_stride = p.dim;
    row_stride = (rows.tokens - rows.merges) * p.dim;
    size = merge.size_out;
    index = merge.index_out;
  }
  return Status::ok();
}

}  // namespace vidllm::token_merge::detail
