#include "routing_checks.h"

#include <cmath>
#include <string>
#include <unordered_map>

namespace vidllm::binding {

using routing::RowType;

routing::RowType check_rows(const TensorArg& rows, const char* layout) {
  rows.expect_ndim(2, layout);
  const std::string dtype = rows.dtype_string();
  RowType type = RowType::kFloat32;
  if (dtype == "float16") {
    type = RowType::kFloat16;
  } else if (dtype == "bfloat16") {
    type = RowType::kBFloat16;
  } else if (dtype == "float64") {
    type = RowType::kFloat64;
  } else if (dtype != "float32") {
    throw py::type_error(std::string(rows.name()) +
                         ": expected dtype float32, float16, bfloat16 or float64, got " + dtype);
  }
  rows.expect_last_dim_contiguous();
  return type;
}

void expect_same_row_type(const TensorArg& arg, const TensorArg& like) {
  if (arg.dtype_string() != like.dtype_string()) {
    throw py::type_error(std::string(arg.name()) + ": expected dtype " + like.dtype_string() +
                         " like " + like.name() + ", got " + arg.dtype_string());
  }
}

void check_index(const TensorArg& index, const TensorArg& primary) {
  index.expect_same_device(primary);
  index.expect_dtype(kDLInt, 64, "int64");
  index.expect_ndim(1, "[count]");
  index.expect_dense();
}

void check_row_scalars(const TensorArg& arg, RowType rows_type, int64_t count,
                       const TensorArg& primary) {
  arg.expect_same_device(primary);
  if (rows_type == RowType::kFloat64)
    arg.expect_dtype(kDLFloat, 64, "float64 (the rows are float64)");
  else
    arg.expect_dtype(kDLFloat, 32, "float32");
  arg.expect_ndim(1, "[count]");
  arg.expect_size(0, count, "one per index entry");
  arg.expect_dense();
}

void check_status(const TensorArg& status, const TensorArg& primary) {
  status.expect_same_device(primary);
  status.expect_dtype(kDLInt, 32, "int32");
  status.expect_ndim(1, "[1]");
  status.expect_size(0, 1, "a single status word");
  status.expect_contiguous();
}

void check_keep_ratio(double keep_ratio) {
  if (!(std::isfinite(keep_ratio) && keep_ratio >= 0.0 && keep_ratio <= 1.0)) {
    throw py::value_error("keep_ratio: expected a fraction in [0, 1], got " +
                          std::to_string(keep_ratio));
  }
}

void check_offset_values(const int64_t* offsets, int64_t entries, int64_t tokens) {
  const std::string what = "segment_offsets: expected offsets that run from 0 to " +
                           std::to_string(tokens) + " (the number of scores) without decreasing";
  if (offsets[0] != 0)
    throw py::value_error(what + ", got segment_offsets[0] = " + std::to_string(offsets[0]));
  for (int64_t s = 0; s + 1 < entries; ++s) {
    if (offsets[s] > offsets[s + 1]) {
      throw py::value_error(what + ", got segment_offsets[" + std::to_string(s) +
                            "] = " + std::to_string(offsets[s]) + " > segment_offsets[" +
                            std::to_string(s + 1) + "] = " + std::to_string(offsets[s + 1]));
    }
  }
  if (offsets[entries - 1] != tokens) {
    throw py::value_error(what + ", got segment_offsets[" + std::to_string(entries - 1) +
                          "] = " + std::to_string(offsets[entries - 1]));
  }
}

void check_index_values(const int64_t* index, int64_t count, int64_t rows, bool unique,
                        const char* rows_name) {
  std::unordered_map<int64_t, int64_t> first_entry;
  for (int64_t k = 0; k < count; ++k) {
    const int64_t row = index[k];
    if (row < 0 || row >= rows) {
      throw py::value_error("index: expected entries in [0, " + std::to_string(rows) + ") (the " +
                            "rows of " + rows_name + "), got index[" + std::to_string(k) +
                            "] = " + std::to_string(row));
    }
    if (!unique) continue;
    const auto [it, inserted] = first_entry.emplace(row, k);
    if (!inserted) {
      throw py::value_error("index: expected every row at most once (check_index is on), got " +
                            std::to_string(row) + " at index[" + std::to_string(it->second) +
                            "] and index[" + std::to_string(k) + "]");
    }
  }
}

void check_scalar_output(const TensorArg& arg, DLDataTypeCode code, int bits, const char* dtype,
                         int64_t size, const char* what, const TensorArg& primary) {
  arg.expect_same_device(primary);
  arg.expect_dtype(code, bits, dtype);
  arg.expect_ndim(1, "[n]");
  arg.expect_size(0, size, what);
  arg.expect_dense();
}

void routing_check_offsets(py::handle offsets_obj, int64_t tokens) {
  const TensorArg offsets(offsets_obj, "segment_offsets");
  if (offsets.is_cuda()) throw py::value_error("segment_offsets: expected a CPU copy");
  offsets.expect_dtype(kDLInt, 64, "int64");
  offsets.expect_ndim(1, "[segments + 1]");
  offsets.expect_dense();
  if (offsets.size(0) < 1) throw py::value_error("segment_offsets: expected at least one entry");
  check_offset_values(static_cast<const int64_t*>(offsets.data()), offsets.size(0), tokens);
}

void routing_check_index(py::handle index_obj, int64_t rows, bool unique,
                         const std::string& rows_name) {
  const TensorArg index(index_obj, "index");
  if (index.is_cuda()) throw py::value_error("index: expected a CPU copy");
  index.expect_dtype(kDLInt, 64, "int64");
  index.expect_ndim(1, "[count]");
  index.expect_dense();
  check_index_values(static_cast<const int64_t*>(index.data()), index.size(0), rows, unique,
                     rows_name.c_str());
}

}  // namespace vidllm::binding
