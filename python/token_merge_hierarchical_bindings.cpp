// Bindings of the hierarchical merge driver (csrc/token_merge/token_merge_hierarchical.h): one call
// runs every round; the caller allocates the outputs and a workspace of the size it is told.
#include <cstdint>
#include <string>

#include "dispatch.h"
#include "tensor_arg.h"
#include "token_merge/token_merge.h"
#include "token_merge_checks.h"

namespace vidllm::binding {
namespace {

constexpr int64_t kWorkspaceAlignment = 16;  // the widest vector access

// Checks tokens and the segment geometry; fills everything but the outputs and the workspace.
token_merge::HierarchicalParams geometry(const TensorArg& tokens, int64_t segments,
                                         int64_t segment_tokens, int64_t last_tokens,
                                         int64_t chunks, int64_t target) {
  token_merge::HierarchicalParams params;
  params.dtype = tokens.expect_float();
  tokens.expect_ndim(2, "[total tokens, dim]");
  check_rows(segments, segment_tokens, last_tokens);
  const int64_t dim = feature_dim(tokens);
  check_count(chunks, dim, "metric_chunks", "a channel chunk count");
  if (chunks == 0 || dim % chunks != 0) {
    throw py::value_error("metric_chunks: expected a divisor of the feature dimension " +
                          std::to_string(dim) + ", got " + std::to_string(chunks));
  }
  if (target < 1) {
    throw py::value_error("tokens_per_segment: expected an int >= 1, got " +
                          std::to_string(target));
  }
  const TokenLayout layout =
      check_tokens(tokens, token_merge::Rows{segments, segment_tokens, last_tokens}, dim, false);
  params.tokens = tokens.data();
  params.token_stride = layout.token_stride;
  params.segments = segments;
  params.segment_tokens = segment_tokens;
  params.last_tokens = last_tokens;
  params.dim = dim;
  params.chunks = chunks;
  params.target = target;
  params.device = tokens.device_id();
  return params;
}

int64_t token_merge_hierarchical_workspace(py::handle tokens_obj, int64_t segments,
                                           int64_t segment_tokens, int64_t last_tokens,
                                           int64_t chunks, int64_t target) {
  const TensorArg tokens(tokens_obj, "tokens");
  return token_merge::hierarchical_workspace_bytes(
      geometry(tokens, segments, segment_tokens, last_tokens, chunks, target));
}

void token_merge_hierarchical(py::handle tokens_obj, py::handle workspace_obj, py::handle out_obj,
                              py::handle sizes_obj, py::handle source_index_obj, int64_t segments,
                              int64_t segment_tokens, int64_t last_tokens, int64_t chunks,
                              int64_t target, uintptr_t stream) {
  const TensorArg tokens(tokens_obj, "tokens");
  const TensorArg workspace(workspace_obj, "workspace");
  const TensorArg out(out_obj, "out");
  const TensorArg sizes(sizes_obj, "sizes");
  const TensorArg source_index(source_index_obj, "source_index");
  const Backend backend = select_backend(tokens);
  for (const TensorArg* arg : {&workspace, &out, &sizes, &source_index})
    arg->expect_same_device(tokens);
  token_merge::HierarchicalParams params =
      geometry(tokens, segments, segment_tokens, last_tokens, chunks, target);
  check_same_float(out, tokens);
  const int64_t merged = token_merge::hierarchical_merged_tokens(params);
  const token_merge::Rows out_rows{1, merged, merged};
  check_tokens(out, out_rows, params.dim, true);
  check_per_token(sizes, out_rows, kDLFloat, 32, "float32");
  check_per_token(source_index, out_rows, kDLInt, 64, "int64");
  workspace.expect_dtype(kDLUInt, 8, "uint8");
  workspace.expect_ndim(1, "[bytes]");
  expect_compact(workspace);
  const int64_t required = token_merge::hierarchical_workspace_bytes(params);
  if (workspace.size(0) < required) {
    throw py::value_error("workspace: expected at least " + std::to_string(required) +
                          " bytes (token_merge_hierarchical_workspace), got " +
                          std::to_string(workspace.size(0)));
  }
  if (required > 0 && reinterpret_cast<uintptr_t>(workspace.data()) % kWorkspaceAlignment != 0)
    throw py::value_error("workspace: expected a 16-byte aligned start (a fresh tensor)");

  params.out = out.data();
  params.sizes = static_cast<float*>(sizes.data());
  params.source_index = static_cast<int64_t*>(source_index.data());
  params.workspace = workspace.data();
  params.workspace_bytes = workspace.size(0);
  VIDLLM_RUN_KERNEL(token_merge, hierarchical, params, backend, stream);
}

}  // namespace

void register_token_merge_hierarchical(py::module_& m) {
  m.def("token_merge_hierarchical_workspace", &token_merge_hierarchical_workspace,
        py::arg("tokens"), py::arg("segments"), py::arg("segment_tokens"), py::arg("last_tokens"),
        py::arg("metric_chunks"), py::arg("tokens_per_segment"),
        "Workspace bytes token_merge_hierarchical needs for these tokens and segments.");
  m.def("token_merge_hierarchical", &token_merge_hierarchical, py::arg("tokens"),
        py::arg("workspace"), py::arg("out"), py::arg("sizes"), py::arg("source_index"),
        py::arg("segments"), py::arg("segment_tokens"), py::arg("last_tokens"),
        py::arg("metric_chunks"), py::arg("tokens_per_segment"), py::arg("stream") = 0,
        "Merges every segment of tokens [total, dim] down to tokens_per_segment tokens, writing "
        "out [merged, dim], sizes and source_index.");
}

}  // namespace vidllm::binding
