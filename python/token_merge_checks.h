// Argument checks shared by the token-merge bindings; each throws ValueError or TypeError naming
// the argument, what was expected and what came.
#pragma once

#include <cstdint>

#include "tensor_arg.h"
#include "token_merge/token_merge.h"

namespace vidllm::binding {

// Where a tensor of tokens keeps row r's token t: r * row_stride + t * token_stride elements in.
struct TokenLayout {
  int64_t row_stride = 0;
  int64_t token_stride = 0;
};

// Contiguous, or empty: TensorArg::expect_contiguous also insists on the strides of an empty
// tensor, which torch leaves arbitrary when an inner dimension is 0.
void expect_compact(const TensorArg& tensor);

// A non-negative int argument; `limit` is the largest accepted value.
int64_t check_count(int64_t value, int64_t limit, const char* name, const char* what);

// rows x tokens geometry (last row last_tokens) with every token count below 2^31.
void check_rows(int64_t rows, int64_t tokens, int64_t last_tokens);

// The feature dimension (the last) of a [rows, tokens, dim] or [total, dim] tensor; at least 1.
int64_t feature_dim(const TensorArg& tensor);

// Features of every token: [rows, tokens, dim], or the rows one after another, [total, dim] with
// total = (rows - 1) * tokens + last_tokens. Innermost dimension contiguous; `contiguous` asks for
// a compact tensor.
TokenLayout check_tokens(const TensorArg& tensor, const token_merge::Rows& rows, int64_t dim,
                         bool contiguous);

// One value per token, contiguous: [rows, tokens] or the rows one after another, [total].
void check_per_token(const TensorArg& tensor, const token_merge::Rows& rows, DLDataTypeCode code,
                     int bits, const char* dtype_name);

// A contiguous int64 or float32 [rows, columns] plan tensor.
void check_table(const TensorArg& tensor, int64_t rows, int64_t columns, DLDataTypeCode code,
                 int bits, const char* dtype_name, const char* layout);

}  // namespace vidllm::binding
