// Bindings of the token merging kernels (csrc/token_merge): metric, matching and plan here, the
// merge in token_merge_wavg_bindings.cpp, the whole hierarchical merge in
// token_merge_hierarchical_bindings.cpp. Every entry point walks the same phases: import,
// devices, dtypes, geometry, layout and shapes, then params, then dispatch.
#include <algorithm>
#include <cstdint>
#include <optional>

#include "dispatch.h"
#include "tensor_arg.h"
#include "token_merge/token_merge.h"
#include "token_merge_checks.h"

namespace vidllm::binding {
namespace {

using token_merge::Rows;
using token_merge::set_a_size;
using token_merge::set_b_size;

void token_merge_metric(py::handle x_obj, py::handle metric_obj, int64_t rows, int64_t tokens,
                        int64_t last_tokens, int64_t chunks, uintptr_t stream) {
  const TensorArg x(x_obj, "x");
  const TensorArg metric(metric_obj, "metric");
  const Launch launch = select_launch(x, stream, {&metric});
  const DType dtype = x.expect_float();
  check_rows(rows, tokens, last_tokens);
  const Rows geometry{rows, tokens, last_tokens};
  const int64_t dim = feature_dim(x);
  check_count(chunks, dim, "chunks", "a channel chunk count");
  if (chunks == 0 || dim % chunks != 0) {
    throw py::value_error("chunks: expected a divisor of the feature dimension " +
                          std::to_string(dim) + ", got " + std::to_string(chunks));
  }
  const TokenLayout layout = check_tokens(x, geometry, dim, false);
  metric.expect_dtype(kDLFloat, 32, "float32");
  expect_compact(metric);
  metric.expect_ndim(3, "[rows, tokens, dim / chunks]");
  metric.expect_size(0, rows, "rows");
  metric.expect_size(1, tokens, "tokens per row");
  metric.expect_size(2, dim / chunks, "dim / chunks");

  token_merge::MetricParams params;
  params.x = x.data();
  params.x_row_stride = layout.row_stride;
  params.x_token_stride = layout.token_stride;
  params.metric = static_cast<float*>(metric.data());
  params.dim = dim;
  params.chunks = chunks;
  params.dtype = dtype;
  params.rows = geometry;
  VIDLLM_RUN_KERNEL(token_merge, metric, params, launch);
}

void token_merge_match(py::handle metric_obj, py::handle partner_obj, py::handle score_obj,
                       int64_t last_tokens, int64_t protected_tokens, uintptr_t stream) {
  const TensorArg metric(metric_obj, "metric");
  const TensorArg partner(partner_obj, "partner");
  const TensorArg score(score_obj, "score");
  const Launch launch = select_launch(metric, stream, {&partner, &score});
  const DType dtype = metric.expect_float();
  metric.expect_ndim(3, "[rows, tokens, channels]");
  const int64_t channels = feature_dim(metric);
  metric.expect_last_dim_contiguous();
  const int64_t rows = metric.size(0);
  const int64_t tokens = metric.size(1);
  check_rows(rows, tokens, last_tokens);
  check_count(protected_tokens, tokens, "protected", "a protected token count");
  const int64_t a_capacity = set_a_size(tokens, protected_tokens);
  check_table(partner, rows, a_capacity, kDLInt, 64, "int64", "[rows, A tokens]");
  check_table(score, rows, a_capacity, kDLFloat, 32, "float32", "[rows, A tokens]");

  token_merge::MatchParams params;
  params.metric = metric.data();
  params.metric_row_stride = metric.stride(0);
  params.metric_token_stride = metric.stride(1);
  params.channels = channels;
  params.dtype = dtype;
  params.partner = static_cast<int64_t*>(partner.data());
  params.score = static_cast<float*>(score.data());
  params.rows = Rows{rows, tokens, last_tokens, protected_tokens};
  VIDLLM_RUN_KERNEL(token_merge, match, params, launch);
}

// Checks merges and last_merges against the caps and the output capacity.
Rows plan_geometry(int64_t rows, int64_t tokens, int64_t last_tokens, int64_t protected_tokens,
                   int64_t merges, int64_t last_merges) {
  check_rows(rows, tokens, last_tokens);
  check_count(protected_tokens, tokens, "protected", "a protected token count");
  check_count(merges, set_b_size(tokens, protected_tokens), "r", "a merge count per row");
  const int64_t last_cap = std::min(merges, set_b_size(last_tokens, protected_tokens));
  check_count(last_merges, last_cap, "last_r", "the last row's merge count");
  if (last_tokens - last_merges > tokens - merges) {
    throw py::value_error("last_r: the last row keeps " +
                          std::to_string(last_tokens - last_merges) + " tokens, more than the " +
                          std::to_string(tokens - merges) + " of the other rows");
  }
  return Rows{rows, tokens, last_tokens, protected_tokens, merges, last_merges};
}

void token_merge_plan(py::handle score_obj, py::handle partner_obj, py::handle slot_obj,
                      py::handle kept_index_obj, py::handle source_offsets_obj,
                      py::handle source_index_obj, py::handle cursor_obj, int64_t last_tokens,
                      int64_t protected_tokens, int64_t merges, int64_t last_merges,
                      uintptr_t stream) {
  const TensorArg score(score_obj, "score");
  const TensorArg partner(partner_obj, "partner");
  const TensorArg slot(slot_obj, "slot");
  const TensorArg kept_index(kept_index_obj, "kept_index");
  const TensorArg source_offsets(source_offsets_obj, "source_offsets");
  const TensorArg source_index(source_index_obj, "source_index");
  const TensorArg cursor(cursor_obj, "cursor");
  const Launch launch = select_launch(
      slot, stream, {&score, &partner, &kept_index, &source_offsets, &source_index, &cursor});
  slot.expect_ndim(2, "[rows, tokens]");
  const Rows geometry =
      plan_geometry(slot.size(0), slot.size(1), last_tokens, protected_tokens, merges, last_merges);
  const int64_t rows = geometry.count;
  const int64_t a_capacity = set_a_size(geometry.tokens, protected_tokens);
  const int64_t out_capacity = geometry.tokens - merges;
  check_table(slot, rows, geometry.tokens, kDLInt, 64, "int64", "[rows, tokens]");
  check_table(score, rows, a_capacity, kDLFloat, 32, "float32", "[rows, A tokens]");
  check_table(partner, rows, a_capacity, kDLInt, 64, "int64", "[rows, A tokens]");
  check_table(kept_index, rows, out_capacity, kDLInt, 64, "int64", "[rows, tokens - r]");
  check_table(source_offsets, rows, out_capacity + 1, kDLInt, 64, "int64",
              "[rows, tokens - r + 1]");
  check_table(source_index, rows, merges, kDLInt, 64, "int64", "[rows, r]");
  check_table(cursor, rows, out_capacity, kDLInt, 64, "int64", "[rows, tokens - r]");

  token_merge::PlanParams params;
  params.score = static_cast<const float*>(score.data());
  params.partner = static_cast<const int64_t*>(partner.data());
  params.slot = static_cast<int64_t*>(slot.data());
  params.kept_index = static_cast<int64_t*>(kept_index.data());
  params.source_offsets = static_cast<int64_t*>(source_offsets.data());
  params.source_index = static_cast<int64_t*>(source_index.data());
  params.cursor = static_cast<int64_t*>(cursor.data());
  params.rows = geometry;
  VIDLLM_RUN_KERNEL(token_merge, plan, params, launch);
}

}  // namespace

void register_token_merge_wavg(py::module_& m);
void register_token_merge_hierarchical(py::module_& m);

void register_token_merge(py::module_& m) {
  m.def("token_merge_metric", &token_merge_metric, py::arg("x"), py::arg("metric"), py::arg("rows"),
        py::arg("tokens"), py::arg("last_tokens"), py::arg("chunks"), py::arg("stream") = 0,
        "Writes the float32 chunk-mean metric [rows, tokens, dim / chunks] of x.");
  m.def("token_merge_match", &token_merge_match, py::arg("metric"), py::arg("partner"),
        py::arg("score"), py::arg("last_tokens"), py::arg("protected"), py::arg("stream") = 0,
        "Writes each A token's most similar B token (int64) and that cosine (float32).");
  m.def("token_merge_plan", &token_merge_plan, py::arg("score"), py::arg("partner"),
        py::arg("slot"), py::arg("kept_index"), py::arg("source_offsets"), py::arg("source_index"),
        py::arg("cursor"), py::arg("last_tokens"), py::arg("protected"), py::arg("r"),
        py::arg("last_r"), py::arg("stream") = 0,
        "Selects the r best A tokens of every row and writes the merge plan.");
  register_token_merge_wavg(m);
  register_token_merge_hierarchical(m);
}

}  // namespace vidllm::binding
