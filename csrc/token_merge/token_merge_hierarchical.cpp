// The hierarchical merge's schedule and workspace layout, and its CPU entry point.
#include "token_merge/token_merge_hierarchical.h"

#include <algorithm>
#include <vector>

#include "common/dtype.h"

namespace vidllm::token_merge {
namespace detail {
namespace {

constexpr int64_t kAlignment = 256;

std::vector<int64_t> schedule(int64_t tokens, int64_t target) {
  std::vector<int64_t> merges;
  while (tokens > target) {
    const int64_t r = std::min(tokens - target, tokens / 2);
    merges.push_back(r);
    tokens -= r;
  }
  return merges;
}

// Output tokens of a round over all segments.
int64_t round_outputs(const HierarchicalParams& p, const Round& round) {
  return (p.segments - 1) * (round.tokens - round.merges) + round.last_tokens - round.last_merges;
}

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

std::vector<Round> hierarchical_rounds(const HierarchicalParams& p) {
  if (p.segments <= 0 || p.segment_tokens <= 0) return {};
  const std::vector<int64_t> full = schedule(p.segment_tokens, p.target);
  const std::vector<int64_t> last = schedule(p.last_tokens, p.target);
  if (full.empty()) return {Round{p.segment_tokens, p.last_tokens, 0, 0}};
  std::vector<Round> rounds;
  int64_t tokens = p.segment_tokens;
  int64_t last_tokens = p.last_tokens;
  for (size_t k = 0; k < full.size(); ++k) {
    const int64_t last_merges = k < last.size() ? last[k] : 0;
    rounds.push_back(Round{tokens, last_tokens, full[k], last_merges});
    tokens -= full[k];
    last_tokens -= last_merges;
  }
  return rounds;
}

WorkspaceLayout workspace_layout(const HierarchicalParams& p, const std::vector<Round>& rounds) {
  WorkspaceLayout layout;
  if (rounds.empty()) return layout;
  const Round& first = rounds.front();  // every plan buffer shrinks from round to round
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
  // Round k (all but the last) writes buffer k % 2; the outputs shrink, so rounds 1 and 2 size
  // the two buffers.
  for (int buffer = 0; buffer < 2; ++buffer) {
    const size_t k = static_cast<size_t>(buffer);
    const int64_t tokens = k + 1 < rounds.size() ? round_outputs(p, rounds[k]) : 0;
    layout.x[buffer] = carver.take(tokens * p.dim * element_size(p.dtype));
    layout.size[buffer] = carver.take(tokens * 4);
    layout.index[buffer] = carver.take(tokens * 8);
  }
  layout.bytes = carver.end();
  return layout;
}

}  // namespace detail

int64_t hierarchical_merged_tokens(const HierarchicalParams& p) {
  if (p.segments <= 0) return 0;
  return (p.segments - 1) * std::min(p.segment_tokens, p.target) +
         std::min(p.last_tokens, p.target);
}

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
