// The hierarchical merge's rounds and workspace layout, and its CPU entry point.
#include "token_merge/token_merge_hierarchical.h"

#include <algorithm>

#include "common/dtype.h"

namespace vidllm::token_merge {
namespace detail {
namespace {

constexpr int64_t kAlignment = 256;

class Carver {
 public:
  int64_t take(int64_t bytes) {
    const int64_t offset = end_;
    end_ += (bytes + kAlignment - 1) / kAlignment * kAlignment;
    return offset;
  }
  int64_t end() const { return end_; }

 private:
  int64_t end_ = 0;
};

}  // namespace

int64_t hierarchical_rounds(const HierarchicalParams& p) {
  if (p.segments <= 0 || p.longest <= 0) return 0;
  int64_t rounds = 0;
  while (merge_round(p.longest, p.target, rounds).merges > 0) ++rounds;
  return rounds > 0 ? rounds : 1;  // nothing to merge: one round that copies
}

Rows round_rows(const HierarchicalParams& p, int64_t round) {
  const MergeRound longest = merge_round(p.longest, p.target, round);
  Rows rows{p.segments, longest.tokens, longest.tokens, 0, longest.merges, longest.merges};
  rows.uneven.offsets = p.segment_offsets;
  rows.uneven.merged_offsets = p.merged_offsets;
  rows.uneven.total = p.total;
  rows.uneven.merged = p.merged;
  rows.uneven.longest = p.longest;
  rows.uneven.target = p.target;
  rows.uneven.round = round;
  return rows;
}

WorkspaceLayout workspace_layout(const HierarchicalParams& p, int64_t rounds) {
  WorkspaceLayout layout;
  if (rounds == 0) return layout;
  const Rows first = round_rows(p, 0);  // every plan buffer shrinks from round to round
  const int64_t rows = p.segments;
  const int64_t a_size = set_a_size(first.tokens, 0);
  const int64_t outputs = first.tokens - first.merges;
  Carver carver;
  layout.metric = carver.take(rows * first.tokens * (p.dim / p.chunks) * 4);
  layout.partner = carver.take(rows * a_size * 8);
  layout.score = carver.take(rows * a_size * 4);
  layout.slot = carver.take(rows * first.tokens * 8);
  layout.kept_index = carver.take(rows * outputs * 8);
  layout.cursor = carver.take(rows * outputs * 8);
  layout.source_offsets = carver.take(rows * (outputs + 1) * 8);
  layout.source_index = carver.take(rows * first.merges * 8);
  // Round k (all but the last) writes buffer k % 2, padded rows of the round's output capacity;
  // the outputs shrink, so rounds 1 and 2 size the two buffers.
  for (int buffer = 0; buffer < 2; ++buffer) {
    const Rows round = round_rows(p, buffer);
    const int64_t tokens = buffer + 1 < rounds ? rows * (round.tokens - round.merges) : 0;
    layout.x[buffer] = carver.take(tokens * p.dim * element_size(p.dtype));
    layout.size[buffer] = carver.take(tokens * 4);
    layout.index[buffer] = carver.take(tokens * 8);
  }
  layout.bytes = carver.end();
  return layout;
}

}  // namespace detail

int64_t hierarchical_workspace_bytes(const HierarchicalParams& p) {
  return detail::workspace_layout(p, detail::hierarchical_rounds(p)).bytes;
}

namespace {

struct CpuStages {
  Status metric(const MetricParams& params) const { return metric_cpu(params); }
  Status match(const MatchParams& params) const { return match_cpu(params); }
  Status plan(const PlanParams& params) const { return plan_cpu(params); }
  Status wavg(const MergeParams& params) const { return wavg_cpu(params); }
};

}  // namespace

Status hierarchical_cpu(const HierarchicalParams& params) {
  return detail::run_hierarchical(params, CpuStages{});
}

}  // namespace vidllm::token_merge
