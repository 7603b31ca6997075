// Bindings of the size-weighted merge and of unmerge (csrc/token_merge), for the public ops.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include "dispatch.h"
#include "tensor_arg.h"
#include "token_merge/token_merge.h"
#include "token_merge_checks.h"

namespace vidllm::binding {
namespace {

using token_merge::Rows;

void token_merge_wavg(py::handle x_obj, py::handle size_obj, py::handle index_obj,
                      py::handle kept_index_obj, py::handle source_offsets_obj,
                      py::handle source_index_obj, py::handle out_obj, py::handle size_out_obj,
                      py::handle index_out_obj, int64_t tokens, int64_t last_tokens,
                      int64_t last_merges, uintptr_t stream) {
  const TensorArg x(x_obj, "x");
  const std::optional<TensorArg> size = optional_tensor(size_obj, "size");
  const std::optional<TensorArg> index = optional_tensor(index_obj, "index");
  const TensorArg kept_index(kept_index_obj, "kept_index");
  const TensorArg source_offsets(source_offsets_obj, "source_offsets");
  const TensorArg source_index(source_index_obj, "source_index");
  const TensorArg out(out_obj, "out");
  const TensorArg size_out(size_out_obj, "size_out");
  const std::optional<TensorArg> index_out = optional_tensor(index_out_obj, "index_out");
  const Launch launch = select_launch(x, stream,
                                      {&kept_index, &source_offsets, &source_index, &out, &size_out,
                                       if_given(size), if_given(index), if_given(index_out)});
  if (index && !index_out)
    throw py::value_error("index_out: expected a tensor when index is given");
  const DType dtype = out.expect_float_like(x);
  kept_index.expect_ndim(2, "[rows, tokens - r]");
  source_index.expect_ndim(2, "[rows, r]");
  const int64_t rows = kept_index.size(0);
  const int64_t merges = source_index.size(1);
  const Rows geometry = Rows{rows, tokens, last_tokens, 0, merges, last_merges};
  check_rows(rows, tokens, last_tokens);
  check_count(merges, tokens, "source_index", "a merge count (its dimension 1)");
  check_count(last_merges, std::min(merges, last_tokens), "last_r", "the last row's merges");
  const int64_t out_capacity = tokens - merges;
  check_table(kept_index, rows, out_capacity, kDLInt, 64, "int64", "[rows, tokens - r]");
  check_table(source_offsets, rows, out_capacity + 1, kDLInt, 64, "int64",
              "[rows, tokens - r + 1]");
  check_table(source_index, rows, merges, kDLInt, 64, "int64", "[rows, r]");
  check_count(last_tokens - last_merges, out_capacity, "last_r", "the last row's kept tokens");
  const int64_t dim = feature_dim(x);
  const TokenLayout x_layout = check_tokens(x, geometry, dim, false);
  const Rows out_rows{rows, out_capacity, last_tokens - last_merges};
  check_tokens(out, out_rows, dim, true);
  if (size) check_per_token(*size, geometry, kDLFloat, 32, "float32");
  if (index) check_per_token(*index, geometry, kDLInt, 64, "int64");
  check_per_token(size_out, out_rows, kDLFloat, 32, "float32");
  if (index_out) check_per_token(*index_out, out_rows, kDLInt, 64, "int64");

  token_merge::MergeParams params;
  params.x = x.data();
  params.x_row_stride = x_layout.row_stride;
  params.x_token_stride = x_layout.token_stride;
  params.size = size ? static_cast<const float*>(size->data()) : nullptr;
  params.size_row_stride = tokens;
  params.index = index ? static_cast<const int64_t*>(index->data()) : nullptr;
  params.index_row_stride = tokens;
  params.kept_index = static_cast<const int64_t*>(kept_index.data());
  params.source_offsets = static_cast<const int64_t*>(source_offsets.data());
  params.source_index = static_cast<const int64_t*>(source_index.data());
  params.out = out.data();
  params.size_out = static_cast<float*>(size_out.data());
  params.index_out = index_out ? static_cast<int64_t*>(index_out->data()) : nullptr;
  params.dim = dim;
  params.dtype = dtype;
  params.rows = geometry;
  VIDLLM_RUN_KERNEL(token_merge, wavg, params, launch);
}

void token_merge_unmerge(py::handle merged_obj, py::handle slot_obj, py::handle out_obj,
                         uintptr_t stream) {
  const TensorArg merged(merged_obj, "x_merged");
  const TensorArg slot(slot_obj, "slot");
  const TensorArg out(out_obj, "out");
  const Launch launch = select_launch(merged, stream, {&slot, &out});
  const DType dtype = out.expect_float_like(merged);
  slot.expect_ndim(2, "[rows, tokens]");
  merged.expect_ndim(3, "[rows, tokens - r, dim]");
  const int64_t rows = slot.size(0);
  const int64_t tokens = slot.size(1);
  check_rows(rows, tokens, tokens);
  check_table(slot, rows, tokens, kDLInt, 64, "int64", "[rows, tokens]");
  const int64_t outputs = merged.size(1);
  check_count(outputs, tokens, "x_merged", "a kept token count (its dimension 1)");
  if (tokens > 0 && outputs == 0)
    throw py::value_error("x_merged: expected at least one token per row, got shape " +
                          merged.shape_string());
  const int64_t dim = feature_dim(merged);
  const Rows merged_rows{rows, outputs, outputs};
  const TokenLayout layout = check_tokens(merged, merged_rows, dim, false);
  const Rows geometry{rows, tokens, tokens, 0, tokens - outputs, tokens - outputs};
  out.expect_ndim(3, "[rows, tokens, dim]");
  check_tokens(out, geometry, dim, true);

  token_merge::UnmergeParams params;
  params.merged = merged.data();
  params.merged_row_stride = layout.row_stride;
  params.merged_token_stride = layout.token_stride;
  params.slot = static_cast<const int64_t*>(slot.data());
  params.out = out.data();
  params.dim = dim;
  params.dtype = dtype;
  params.rows = geometry;
  VIDLLM_RUN_KERNEL(token_merge, unmerge, params, launch);
}

}  // namespace

void register_token_merge_wavg(py::module_& m) {
  m.def("token_merge_wavg", &token_merge_wavg, py::arg("x"), py::arg("size"), py::arg("index"),
        py::arg("kept_index"), py::arg("source_offsets"), py::arg("source_index"), py::arg("out"),
        py::arg("size_out"), py::arg("index_out"), py::arg("tokens"), py::arg("last_tokens"),
        py::arg("last_r"), py::arg("stream") = 0,
        "Writes the size-weighted merge of x under a plan, the sizes and the carried index.");
  m.def("token_merge_unmerge", &token_merge_unmerge, py::arg("x_merged"), py::arg("slot"),
        py::arg("out"), py::arg("stream") = 0, "Writes out[b, t] = x_merged[b, slot[b, t]].");
}

}  // namespace vidllm::binding
