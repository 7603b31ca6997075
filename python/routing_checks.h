// Argument checks shared by the routing bindings; each throws ValueError or TypeError naming the
// argument, what was expected and what came.
#pragma once

#include <cstdint>
#include <string>

#include "routing/routing.h"
#include "tensor_arg.h"

namespace vidllm::binding {

// A [rows, dim] tensor of float32, float16, bfloat16 or float64 with a contiguous last
// dimension; returns its element type.
routing::RowType check_rows(const TensorArg& rows, const char* layout);

// `arg` has the element type of `like` (a rows tensor already checked).
void expect_same_row_type(const TensorArg& arg, const TensorArg& like);

// index: int64 [count], contiguous, on primary's device.
void check_index(const TensorArg& index, const TensorArg& primary);

// weight (or dot): [count] contiguous, float32, or float64 for float64 rows.
void check_row_scalars(const TensorArg& arg, routing::RowType rows_type, int64_t count,
                       const TensorArg& primary);

// A 1-D [size] output of the given type, contiguous, on primary's device.
void check_scalar_output(const TensorArg& arg, DLDataTypeCode code, int bits, const char* dtype,
                         int64_t size, const char* what, const TensorArg& primary);

// status: int32 [1] contiguous on primary's device.
void check_status(const TensorArg& status, const TensorArg& primary);

// keep_ratio: finite, in [0, 1].
void check_keep_ratio(double keep_ratio);

// Host-side checks of values (CPU tensors, or host copies): raise ValueError describing the
// first problem. Offsets must run from 0 to `tokens` without decreasing; index entries must lie
// in [0, rows) and, when `unique`, name each row at most once.
void check_offset_values(const int64_t* offsets, int64_t entries, int64_t tokens);
void check_index_values(const int64_t* index, int64_t count, int64_t rows, bool unique,
                        const char* rows_name);

// Bindings that check host copies of device values after a kernel flagged a problem (the
// error path of the CUDA ops): they raise the ValueError the CPU paths raise.
void routing_check_offsets(py::handle offsets_obj, int64_t tokens);
void routing_check_index(py::handle index_obj, int64_t rows, bool unique,
                         const std::string& rows_name);

}  // namespace vidllm::binding
