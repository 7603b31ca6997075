#include "token_merge_checks.h"

#include <limits>
#include <string>

namespace vidllm::binding {
namespace {

constexpr int64_t kMaxTokens = std::numeric_limits<int32_t>::max();

int64_t total_tokens(const token_merge::Rows& rows) {
  return rows.count == 0 ? 0 : (rows.count - 1) * rows.tokens + rows.last_tokens;
}

std::string rows_text(const token_merge::Rows& rows) {
  return std::to_string(rows.count) + " rows of " + std::to_string(rows.tokens) +
         " tokens, the last of " + std::to_string(rows.last_tokens);
}

}  // namespace

void expect_compact(const TensorArg& tensor) {
  if (tensor.numel() > 0) tensor.expect_contiguous();
}

int64_t check_count(int64_t value, int64_t limit, const char* name, const char* what) {
  if (value < 0 || value > limit) {
    throw py::value_error(std::string(name) + ": expected " + what + " in [0, " +
                          std::to_string(limit) + "], got " + std::to_string(value));
  }
  return value;
}

void check_rows(int64_t rows, int64_t tokens, int64_t last_tokens) {
  check_count(rows, std::numeric_limits<int64_t>::max(), "rows", "a row count");
  check_count(tokens, kMaxTokens, "tokens", "a token count per row");
  check_count(last_tokens, tokens, "last_tokens", "the last row's token count");
}

int64_t feature_dim(const TensorArg& tensor) {
  if (tensor.ndim() != 2 && tensor.ndim() != 3) {
    throw py::value_error(std::string(tensor.name()) +
                          ": expected [rows, tokens, dim] or [total tokens, dim], got shape " +
                          tensor.shape_string());
  }
  const int64_t dim = tensor.size(tensor.ndim() - 1);
  if (dim < 1) {
    throw py::value_error(std::string(tensor.name()) +
                          ": expected a non-empty feature dimension, got shape " +
                          tensor.shape_string());
  }
  return dim;
}

TokenLayout check_tokens(const TensorArg& tensor, const token_merge::Rows& rows, int64_t dim,
                         bool contiguous) {
  if (contiguous) expect_compact(tensor);
  tensor.expect_last_dim_contiguous();
  if (tensor.ndim() == 3) {
    tensor.expect_size(0, rows.count, "rows");
    tensor.expect_size(1, rows.tokens, "tokens per row");
    tensor.expect_size(2, dim, "feature dimension");
    return {tensor.stride(0), tensor.stride(1)};
  }
  feature_dim(tensor);
  if (tensor.size(0) != total_tokens(rows)) {
    throw py::value_error(std::string(tensor.name()) + ": expected " +
                          std::to_string(total_tokens(rows)) + " tokens (" + rows_text(rows) +
                          ") in dimension 0, got shape " + tensor.shape_string());
  }
  tensor.expect_size(1, dim, "feature dimension");
  return {rows.tokens * tensor.stride(0), tensor.stride(0)};
}

void check_per_token(const TensorArg& tensor, const token_merge::Rows& rows, DLDataTypeCode code,
                     int bits, const char* dtype_name) {
  tensor.expect_dtype(code, bits, dtype_name);
  expect_compact(tensor);
  if (tensor.ndim() == 2) {
    tensor.expect_size(0, rows.count, "rows");
    tensor.expect_size(1, rows.tokens, "tokens per row");
    return;
  }
  if (tensor.ndim() != 1 || tensor.size(0) != total_tokens(rows)) {
    throw py::value_error(std::string(tensor.name()) + ": expected [" + std::to_string(rows.count) +
                          ", " + std::to_string(rows.tokens) + "] or [" +
                          std::to_string(total_tokens(rows)) + "] (" + rows_text(rows) +
                          "), got shape " + tensor.shape_string());
  }
}

void check_table(const TensorArg& tensor, int64_t rows, int64_t columns, DLDataTypeCode code,
                 int bits, const char* dtype_name, const char* layout) {
  tensor.expect_dtype(code, bits, dtype_name);
  expect_compact(tensor);
  tensor.expect_ndim(2, layout);
  tensor.expect_size(0, rows, "rows");
  tensor.expect_size(1, columns, layout);
}

}  // namespace vidllm::binding
