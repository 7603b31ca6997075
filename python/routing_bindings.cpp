// Bindings of the layer-skip routing kernels (csrc/routing). Every entry point walks the same
// phases: import, devices, dtypes, layout, shapes, then params, then dispatch. On the CPU they
// also check the values the kernels index with (offsets, index entries) and raise ValueError
// describing the first bad one; on CUDA the kernels flag them on the device instead.
#include <cstdint>
#include <limits>
#include <optional>

#include "dispatch.h"
#include "routing/routing.h"
#include "routing_checks.h"
#include "tensor_arg.h"

namespace vidllm::binding {
namespace {

using routing::RowType;

// The fields GatherParams and ScatterParams share: the checked index entries, the optional
// weights, the status flags and the [rows, dim] rows they address.
template <typename Params>
void fill_indexed(Params& params, const int64_t* entries, int64_t count,
                  const std::optional<TensorArg>& weight, const TensorArg& status, int64_t rows,
                  int64_t dim, RowType dtype) {
  params.index = entries;
  params.count = count;
  params.weight = weight ? weight->data() : nullptr;
  params.status = static_cast<int32_t*>(status.data());
  params.rows = rows;
  params.dim = dim;
  params.dtype = dtype;
}

void routing_topk(py::handle scores_obj, py::handle offsets_obj, double keep_ratio,
                  py::handle slot_start_obj, py::handle total_obj, py::handle index_obj,
                  uintptr_t stream) {
  const TensorArg scores(scores_obj, "scores");
  const TensorArg offsets(offsets_obj, "segment_offsets");
  const TensorArg slot_start(slot_start_obj, "slot_start");
  const TensorArg total(total_obj, "total");
  const std::optional<TensorArg> index = optional_tensor(index_obj, "index");
  check_keep_ratio(keep_ratio);
  // devices
  const Launch launch = select_launch(scores, stream, {&offsets});
  // dtypes, layout, shapes
  scores.expect_ndim(1, "[tokens]");
  const DType score_dtype = scores.expect_float();
  offsets.expect_dtype(kDLInt, 64, "int64");
  offsets.expect_ndim(1, "[segments + 1]");
  offsets.expect_dense();
  if (offsets.size(0) < 1) {
    throw py::value_error(
        "segment_offsets: expected at least one entry ([segments + 1]), got "
        "shape " +
        offsets.shape_string());
  }
  if (scores.size(0) > std::numeric_limits<int32_t>::max()) {
    throw py::value_error("scores: at most 2^31 - 1 tokens are supported, got shape " +
                          scores.shape_string());
  }
  const int64_t segments = offsets.size(0) - 1;
  check_scalar_output(slot_start, kDLInt, 64, "int64", segments, "segments", scores);
  check_scalar_output(total, kDLInt, 64, "int64", 1, "a single count", scores);
  if (index) {
    index->expect_same_device(scores);
    index->expect_dtype(kDLInt, 64, "int64");
    index->expect_ndim(1, "[capacity]");
    index->expect_dense();
  }
  // values (host memory only)
  if (host_memory(launch.backend)) {
    check_offset_values(static_cast<const int64_t*>(offsets.data()), offsets.size(0),
                        scores.size(0));
  }

  routing::TopkParams params;
  params.scores = scores.data();
  params.score_stride = scores.stride(0);
  params.score_dtype = score_dtype;
  params.offsets = static_cast<const int64_t*>(offsets.data());
  params.segments = segments;
  params.tokens = scores.size(0);
  params.keep_ratio = keep_ratio;
  params.slot_start = static_cast<int64_t*>(slot_start.data());
  params.total = static_cast<int64_t*>(total.data());
  params.index = index ? static_cast<int64_t*>(index->data()) : nullptr;
  params.capacity = index ? index->size(0) : 0;
  VIDLLM_RUN_KERNEL(routing, topk_plan, params, launch);
  if (index) {
    VIDLLM_RUN_KERNEL(routing, topk_select, params, launch);
  }
}

void routing_gather(py::handle source_obj, py::handle index_obj, py::handle weight_obj,
                    py::handle other_obj, py::handle dot_obj, py::handle out_obj,
                    py::handle status_obj, uintptr_t stream) {
  const TensorArg source(source_obj, "source");
  const TensorArg index(index_obj, "index");
  const std::optional<TensorArg> weight = optional_tensor(weight_obj, "weight");
  const std::optional<TensorArg> other = optional_tensor(other_obj, "other");
  const std::optional<TensorArg> dot = optional_tensor(dot_obj, "dot");
  const std::optional<TensorArg> out = optional_tensor(out_obj, "out");
  const TensorArg status(status_obj, "status");
  // devices
  const Launch launch = select_launch(source, stream);
  // dtypes, layout, shapes
  const RowType dtype = check_rows(source, "[rows, dim]");
  check_index(index, source);
  check_status(status, source);
  const int64_t count = index.size(0);
  const int64_t dim = source.size(1);
  if (weight) check_row_scalars(*weight, dtype, count, source);
  if (other.has_value() != dot.has_value())
    throw py::value_error("other and dot: expected both (a dot product) or neither");
  if (other) {
    other->expect_same_device(source);
    check_rows(*other, "[count, dim]");
    expect_same_row_type(*other, source);
    other->expect_size(0, count, "one row per index entry");
    other->expect_size(1, dim, "dim of source");
    check_row_scalars(*dot, dtype, count, source);
  }
  if (!out && !dot) throw py::value_error("out: expected a tensor (or dot), got None");
  if (out) {
    out->expect_same_device(source);
    check_rows(*out, "[count, dim]");
    expect_same_row_type(*out, source);
    out->expect_dense();
    out->expect_size(0, count, "one row per index entry");
    out->expect_size(1, dim, "dim of source");
  }
  // values (host memory only)
  const auto* entries = static_cast<const int64_t*>(index.data());
  if (host_memory(launch.backend))
    check_index_values(entries, count, source.size(0), false, "source");

  routing::GatherParams params;
  params.source = source.data();
  params.source_stride = source.stride(0);
  params.other = other ? other->data() : nullptr;
  params.other_stride = other ? other->stride(0) : 0;
  params.dot = dot ? dot->data() : nullptr;
  params.out = out ? out->data() : nullptr;
  fill_indexed(params, entries, count, weight, status, source.size(0), dim, dtype);
  VIDLLM_RUN_KERNEL(routing, gather, params, launch);
}

void routing_scatter(py::handle x_obj, py::handle index_obj, py::handle delta_obj,
                     py::handle weight_obj, py::handle y_obj, py::handle row_source_obj,
                     py::handle next_update_obj, py::handle status_obj, bool check_unique,
                     uintptr_t stream) {
  const std::optional<TensorArg> x = optional_tensor(x_obj, "x");
  const TensorArg index(index_obj, "index");
  const TensorArg delta(delta_obj, "delta");
  const std::optional<TensorArg> weight = optional_tensor(weight_obj, "weight");
  const TensorArg y(y_obj, "y");
  const TensorArg row_source(row_source_obj, "row_source");
  const TensorArg next_update(next_update_obj, "next_update");
  const TensorArg status(status_obj, "status");
  // devices
  const Launch launch = select_launch(y, stream, {if_given(x), &delta});
  // dtypes, layout, shapes
  const RowType dtype = check_rows(y, "[rows, dim]");
  y.expect_dense();
  const int64_t rows = y.size(0);
  const int64_t dim = y.size(1);
  if (x) {
    check_rows(*x, "[rows, dim]");
    expect_same_row_type(*x, y);
    x->expect_size(0, rows, "rows of y");
    x->expect_size(1, dim, "dim of y");
  }
  check_index(index, y);
  const int64_t count = index.size(0);
  check_rows(delta, "[count, dim]");
  expect_same_row_type(delta, y);
  delta.expect_size(0, count, "one row per index entry");
  delta.expect_size(1, dim, "dim of y");
  if (weight) check_row_scalars(*weight, dtype, count, y);
  check_scalar_output(row_source, kDLInt, 64, "int64", rows, "rows of y", y);
  check_scalar_output(next_update, kDLInt, 64, "int64", count, "one per index entry", y);
  check_status(status, y);
  // values (host memory only)
  const auto* entries = static_cast<const int64_t*>(index.data());
  if (host_memory(launch.backend)) check_index_values(entries, count, rows, check_unique, "x");

  routing::ScatterParams params;
  params.x = x ? x->data() : nullptr;
  params.x_stride = x ? x->stride(0) : 0;
  params.delta = delta.data();
  params.delta_stride = delta.stride(0);
  params.y = y.data();
  params.row_source = static_cast<int64_t*>(row_source.data());
  params.next_update = static_cast<int64_t*>(next_update.data());
  fill_indexed(params, entries, count, weight, status, rows, dim, dtype);
  VIDLLM_RUN_KERNEL(routing, scatter, params, launch);
}

}  // namespace

void register_routing(py::module_& m) {
  m.def("routing_topk", &routing_topk, py::arg("scores"), py::arg("segment_offsets"),
        py::arg("keep_ratio"), py::arg("slot_start"), py::arg("total"), py::arg("index"),
        py::arg("stream") = 0,
        "Writes the selected count K (or -1 for invalid offsets on CUDA) into total and each "
        "segment's first slot into slot_start; then, unless index is None, the first "
        "min(K, capacity) selected token indices (ascending) into index.");
  m.def("routing_gather", &routing_gather, py::arg("source"), py::arg("index"), py::arg("weight"),
        py::arg("other"), py::arg("dot"), py::arg("out"), py::arg("status"), py::arg("stream") = 0,
        "out[k] = weight[k] * source[index[k]] (weight may be None), dot[k] = "
        "sum(source[index[k]] * other[k]) when other and dot are given; status receives the "
        "index flags (1: out of range, raised on the CPU).");
  m.def("routing_scatter", &routing_scatter, py::arg("x"), py::arg("index"), py::arg("delta"),
        py::arg("weight"), py::arg("y"), py::arg("row_source"), py::arg("next_update"),
        py::arg("status"), py::arg("check_unique"), py::arg("stream") = 0,
        "y = x (zeros if x is None), then y[index[k]] += weight[k] * delta[k]; row_source "
        "([rows]) and next_update ([count]) are int64 workspaces; status receives the index flags "
        "(1: out of range, raised on the CPU; 2: a row named twice, raised on the CPU when "
        "check_unique).");
  m.def("routing_check_offsets", &routing_check_offsets, py::arg("segment_offsets"),
        py::arg("tokens"), "Raises ValueError unless the CPU offsets run from 0 to tokens.");
  m.def("routing_check_index", &routing_check_index, py::arg("index"), py::arg("rows"),
        py::arg("unique"), py::arg("rows_name"),
        "Raises ValueError unless the CPU index entries lie in [0, rows) (and are unique).");
}

}  // namespace vidllm::binding
