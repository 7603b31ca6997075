// CUDA entry point of the hierarchical merge: the shared host driver (token_merge_hierarchical.h)
// launching the CUDA stages on one stream, four launches per round for all segments, no
// synchronization.
#include "common/status.h"
#include "token_merge/token_merge.h"
#include "token_merge/token_merge_hierarchical.h"

namespace vidllm::token_merge {
namespace {

struct CudaStages {
  void* stream;
  Status metric(const MetricParams& params) const { return metric_cuda(params, stream); }
  Status match(const MatchParams& params) const { return match_cuda(params, stream); }
  Status plan(const PlanParams& params) const { return plan_cuda(params, stream); }
  Status wavg(const MergeParams& params) const { return wavg_cuda(params, stream); }
};

}  // namespace

Status hierarchical_cuda(const HierarchicalParams& params, void* stream) {
  return detail::run_hierarchical(params, CudaStages{stream});
}

}  // namespace vidllm::token_merge
