// Bindings of the hierarchical merge driver (csrc/token_merge/token_merge_hierarchical.h): one call
// runs every round; the caller allocates the outputs and a workspace of the size it is told.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "dispatch.h"
#include "tensor_arg.h"
#include "token_merge/token_merge.h"
#include "token_merge_checks.h"

namespace vidllm::binding {
namespace {

constexpr int64_t kWorkspaceAlignment = 16;  // the widest vector access

// The segment offsets as the host reads them: int64 [segments + 1] on the CPU, from 0 up to
// `total`, never decreasing (empty segments allowed).
const int64_t* host_offsets(const TensorArg& offsets, int64_t total) {
  offsets.expect_dtype(kDLInt, 64, "int64");
  offsets.expect_ndim(1, "[segments + 1]");
  expect_compact(offsets);
  if (offsets.is_cuda()) {
    throw py::value_error(
        "segment_offsets: expected a CPU tensor (the host sizes the merge from it), got a tensor "
        "on " +
        offsets.device_string());
  }
  if (offsets.size(0) < 1)
    throw py::value_error("segment_offsets: expected [segments + 1] values, got none");
  const int64_t* values = static_cast<const int64_t*>(offsets.data());
  const int64_t segments = offsets.size(0) - 1;
  if (values[0] != 0 || values[segments] != total) {
    throw py::value_error("segment_offsets: expected offsets from 0 to the " +
                          std::to_string(total) + " tokens, got " + std::to_string(values[0]) +
                          " .. " + std::to_string(values[segments]));
  }
  for (int64_t s = 0; s < segments; ++s) {
    if (values[s + 1] < values[s]) {
      throw py::value_error("segment_offsets: expected non-decreasing offsets, got " +
                            std::to_string(values[s + 1]) + " after " + std::to_string(values[s]));
    }
  }
  return values;
}

// Checks tokens, the offsets and the merge's knobs; fills everything but the device offsets, the
// outputs, the workspace and the device (VIDLLM_RUN_KERNEL sets it).
token_merge::HierarchicalParams geometry(const TensorArg& tokens, const TensorArg& offsets_arg,
                                         int64_t chunks, int64_t target) {
  token_merge::HierarchicalParams params;
  params.dtype = tokens.expect_float();
  tokens.expect_ndim(2, "[total tokens, dim]");
  tokens.expect_last_dim_contiguous();
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
  const int64_t total = tokens.size(0);
  const int64_t* offsets = host_offsets(offsets_arg, total);
  params.segments = offsets_arg.size(0) - 1;
  for (int64_t s = 0; s < params.segments; ++s) {
    const int64_t length = offsets[s + 1] - offsets[s];
    params.longest = std::max(params.longest, length);
    params.merged += std::min(length, target);
  }
  check_count(params.longest, std::numeric_limits<int32_t>::max(), "segment_offsets",
              "a segment length");
  params.tokens = tokens.data();
  params.token_stride = tokens.stride(0);
  params.total = total;
  params.dim = dim;
  params.chunks = chunks;
  params.target = target;
  return params;
}

int64_t token_merge_hierarchical_workspace(py::handle tokens_obj, py::handle offsets_obj,
                                           int64_t chunks, int64_t target) {
  const TensorArg tokens(tokens_obj, "tokens");
  const TensorArg offsets(offsets_obj, "segment_offsets");
  return token_merge::hierarchical_workspace_bytes(geometry(tokens, offsets, chunks, target));
}

// device_offsets: int64 [2, segments + 1] on the tokens' device, the segment offsets and the
// prefix sums of min(n_s, target); on the CPU checked against segment_offsets, on a GPU read with
// clamps (a mismatch cannot address outside the buffers).
void check_device_offsets(const TensorArg& device_offsets, const TensorArg& offsets,
                          const token_merge::HierarchicalParams& params) {
  check_table(device_offsets, 2, params.segments + 1, kDLInt, 64, "int64",
              "[2, segments + 1] (segment offsets, merged offsets)");
  if (device_offsets.is_cuda()) return;
  const int64_t* host = static_cast<const int64_t*>(offsets.data());
  const int64_t* device = static_cast<const int64_t*>(device_offsets.data());
  int64_t merged = 0;
  for (int64_t s = 0; s <= params.segments; ++s) {
    if (s > 0) merged += std::min(host[s] - host[s - 1], params.target);
    if (device[s] != host[s] || device[params.segments + 1 + s] != merged) {
      throw py::value_error(
          "device_offsets: expected segment_offsets and the prefix sums of min(segment "
          "length, tokens_per_segment), differing at entry " +
          std::to_string(s));
    }
  }
}

void token_merge_hierarchical(py::handle tokens_obj, py::handle offsets_obj,
                              py::handle device_offsets_obj, py::handle workspace_obj,
                              py::handle out_obj, py::handle sizes_obj, py::handle source_index_obj,
                              int64_t chunks, int64_t target, uintptr_t stream) {
  const TensorArg tokens(tokens_obj, "tokens");
  const TensorArg offsets(offsets_obj, "segment_offsets");
  const TensorArg device_offsets(device_offsets_obj, "device_offsets");
  const TensorArg workspace(workspace_obj, "workspace");
  const TensorArg out(out_obj, "out");
  const TensorArg sizes(sizes_obj, "sizes");
  const TensorArg source_index(source_index_obj, "source_index");
  const Launch launch =
      select_launch(tokens, stream, {&device_offsets, &workspace, &out, &sizes, &source_index});
  token_merge::HierarchicalParams params = geometry(tokens, offsets, chunks, target);
  check_device_offsets(device_offsets, offsets, params);
  out.expect_float_like(tokens);
  const token_merge::Rows out_rows{1, params.merged, params.merged};
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

  const int64_t* device = static_cast<const int64_t*>(device_offsets.data());
  params.segment_offsets = device;
  params.merged_offsets = device + params.segments + 1;
  params.out = out.data();
  params.sizes = static_cast<float*>(sizes.data());
  params.source_index = static_cast<int64_t*>(source_index.data());
  params.workspace = workspace.data();
  params.workspace_bytes = workspace.size(0);
  VIDLLM_RUN_KERNEL(token_merge, hierarchical, params, launch);
}

}  // namespace

void register_token_merge_hierarchical(py::module_& m) {
  m.def("token_merge_hierarchical_workspace", &token_merge_hierarchical_workspace,
        py::arg("tokens"), py::arg("segment_offsets"), py::arg("metric_chunks"),
        py::arg("tokens_per_segment"),
        "Workspace bytes token_merge_hierarchical needs for these tokens and segment offsets "
        "(int64 [segments + 1] on the CPU).");
  m.def("token_merge_hierarchical", &token_merge_hierarchical, py::arg("tokens"),
        py::arg("segment_offsets"), py::arg("device_offsets"), py::arg("workspace"), py::arg("out"),
        py::arg("sizes"), py::arg("source_index"), py::arg("metric_chunks"),
        py::arg("tokens_per_segment"), py::arg("stream") = 0,
        "Merges every segment of tokens [total, dim] (segment s: tokens [segment_offsets[s], "
        "segment_offsets[s + 1])) down to tokens_per_segment tokens, writing out [merged, dim], "
        "sizes and source_index. device_offsets: int64 [2, segments + 1] on the tokens' device, "
        "the segment offsets and the prefix sums of min(segment length, tokens_per_segment).");
}

}  // namespace vidllm::binding
