// Layer-skip routing (VideoLLM-MoD mixture of depths): choose the tokens a routed layer
// processes, gather their rows, and add the layer's weighted update back.
//
// Three kinds of launchers, each with a CPU and a CUDA twin:
//   topk:    scores [tokens] cut into segments by offsets [segments + 1] -> in every segment the
//            k_s = min(n_s, ceil(keep_ratio * n_s)) highest-ranked tokens, as ascending indices.
//            Two stages: plan (check the offsets, each segment's first output slot, the total K)
//            and select (the indices, at most `capacity` of them).
//   gather:  out[k] = source[index[k]], optionally scaled by weight[k], optionally with
//            dot[k] = sum_d source[index[k], d] * other[k, d]: gather_rows, and the backward of
//            scatter_add_rows (grad_delta and grad_weight in one pass).
//   scatter: y = x, then y[index[k]] += weight[k] * delta[k] for every k (x null: zeros):
//            scatter_add_rows, and the backward of gather_rows.
// Rows are float32, float16, bfloat16 or float64; the math is float32 (float64 for float64
// rows, so gradients can be checked numerically). The per-element math below is shared by both
// twins, so CPU tests exercise the GPU's arithmetic.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/dtype.h"
#include "common/macros.h"
#include "common/narrow.h"
#include "common/status.h"

namespace vidllm::routing {

// Element type of the row tensors (gather, scatter). Scores use vidllm::DType (no float64).
enum class RowType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

inline int64_t row_element_size(RowType type) {
  return type == RowType::kFloat64 ? 8 : (type == RowType::kFloat32 ? 4 : 2);
}

// Bits OR-ed into the int32 status word by gather and scatter. Kernels never touch memory
// outside the tensors: an out-of-range index is skipped, and the rows it would have produced
// are NaN (gather: that output row; scatter: every row of y, since an update went missing).
constexpr int32_t kIndexOutOfRange = 1;
constexpr int32_t kIndexRepeated = 2;  // scatter only: a row of y receives several updates

// Strides are in elements.
struct TopkParams {
  const void* scores = nullptr;  // [tokens]
  int64_t score_stride = 1;
  DType score_dtype = DType::kFloat32;
  const int64_t* offsets = nullptr;  // [segments + 1], contiguous: 0 = o_0 <= ... <= o_S = tokens
  int64_t segments = 0;
  int64_t tokens = 0;
  double keep_ratio = 0.0;        // in [0, 1]
  int64_t* slot_start = nullptr;  // [segments] workspace: exclusive prefix sum of k_s (plan)
  int64_t* total = nullptr;       // [1]: K = sum k_s, or -1 when the offsets are invalid (plan)
  int64_t* index = nullptr;       // [capacity]: selected token indices, ascending (select)
  int64_t capacity = 0;           // slots past capacity are not written
  int device = 0;                 // CUDA only: the device that owns every pointer
};

struct GatherParams {
  const void* source = nullptr;  // [rows, dim]
  int64_t source_stride = 0;
  int64_t rows = 0;
  const int64_t* index = nullptr;  // [count], contiguous
  int64_t count = 0;
  const void* weight = nullptr;  // [count] float32 (float64 rows: float64), or null
  const void* other = nullptr;   // [count, dim] like source, or null
  int64_t other_stride = 0;
  void* dot = nullptr;        // [count] float32 (float64 rows: float64); with other
  void* out = nullptr;        // [count, dim], contiguous, like source; may be null with dot
  int32_t* status = nullptr;  // [1]: overwritten with the kIndex* bits found
  int64_t dim = 0;
  RowType dtype = RowType::kFloat32;
  int device = 0;
};

struct ScatterParams {
  const void* x = nullptr;  // [rows, dim], or null: zeros
  int64_t x_stride = 0;
  const int64_t* index = nullptr;  // [count], contiguous
  int64_t count = 0;
  const void* delta = nullptr;  // [count, dim] like x
  int64_t delta_stride = 0;
  const void* weight = nullptr;    // [count] float32 (float64 rows: float64), or null: 1
  void* y = nullptr;               // [rows, dim], contiguous, like x
  int64_t* row_source = nullptr;   // [rows] workspace: see "scatter workspace" below
  int64_t* next_update = nullptr;  // [count] workspace: see "scatter workspace" below
  int32_t* status = nullptr;       // [1]: overwritten with the kIndex* bits found
  int64_t rows = 0;
  int64_t dim = 0;
  RowType dtype = RowType::kFloat32;
  int device = 0;
};

// Scatter workspace. A map pass over the index writes row_source[row] = the k updating the row,
// -1 for none, -2 for several (kIndexRepeated). Only then, when some row has several updates, a
// link pass walks the index backwards and buckets the updates by row without sorting: every row
// with updates gets row_source = kFirstUpdateBase - (its first k), and next_update[k] = the next
// k' > k naming the same row (-1 after the last). The rows then add their updates by following
// that chain, in index order, so the work is linear in count * dim however often rows repeat.
constexpr int64_t kFirstUpdateBase = -3;

// The first update of a row from its linked row_source entry (<= kFirstUpdateBase), or -1 for
// an entry the link pass has not reached yet (-1, -2 or a k >= 0 from the map pass).
VIDLLM_HOST_DEVICE int64_t linked_first_update(int64_t row_source) {
  return row_source <= kFirstUpdateBase ? kFirstUpdateBase - row_source : -1;
}

VIDLLM_LAUNCHERS(topk_plan, TopkParams);
VIDLLM_LAUNCHERS(topk_select, TopkParams);
VIDLLM_LAUNCHERS(gather, GatherParams);
VIDLLM_LAUNCHERS(scatter, ScatterParams);

// ---- per-element math shared by the CPU and CUDA kernels ----------------------------------

// k_s = min(n, ceil(keep_ratio * n)), the product rounded to float64 first, exactly as Python's
// math.ceil(keep_ratio * n) (so 0.14 of 50 tokens keeps 8: 0.14 * 50 == 7.000000000000001).
VIDLLM_HOST_DEVICE int64_t keep_count(double keep_ratio, int64_t tokens) {
  if (tokens <= 0) return 0;
#if defined(__CUDA_ARCH__)
  const double product = __dmul_rn(keep_ratio, static_cast<double>(tokens));
#else
  const double product = keep_ratio * static_cast<double>(tokens);
#endif
  const double wanted = ceil(product);
  return wanted < static_cast<double>(tokens) ? static_cast<int64_t>(wanted) : tokens;
}

// The accumulation type of a row element type: float32, or float64 for float64 rows.
template <typename T>
struct Accumulator {
  using type = float;
};
template <>
struct Accumulator<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Accumulator<T>::type;

template <typename T>
VIDLLM_HOST_DEVICE acc_t<T> widen(T value) {
  return to_float(value);
}
template <>
VIDLLM_HOST_DEVICE double widen<double>(double value) {
  return value;
}

// The accumulator rounded to the row type, as torch's .to(dtype) does (nearest even, overflow to
// inf), with one canonical NaN per type: float16 and bfloat16 through common/narrow.h, shared by
// every kernel family; float32 and float64 keep their value but not a NaN's sign and payload,
// which float arithmetic leaves different on the CPU and the GPU.
template <typename T>
VIDLLM_HOST_DEVICE T narrow(acc_t<T> value);
template <>
VIDLLM_HOST_DEVICE float narrow<float>(float value) {
  return value != value ? bits_to_float(0x7fc00000u) : value;
}
template <>
VIDLLM_HOST_DEVICE double narrow<double>(double value) {
  return value != value ? std::numeric_limits<double>::quiet_NaN() : value;
}
template <>
VIDLLM_HOST_DEVICE Half narrow<Half>(float value) {
  return ::vidllm::half_from_float(value);
}
template <>
VIDLLM_HOST_DEVICE BFloat16 narrow<BFloat16>(float value) {
  return ::vidllm::bfloat16_from_float(value);
}

// base + weight * value in the accumulation type (float or double) with the product rounded
// before the sum (no FMA), as torch computes x + w * delta with two kernels. The CPU twin is
// compiled without contraction as well.
template <typename Acc>
VIDLLM_HOST_DEVICE Acc add_scaled(Acc base, Acc weight, Acc value) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<Acc, double>)
    return __dadd_rn(base, __dmul_rn(weight, value));
  else
    return __fadd_rn(base, __fmul_rn(weight, value));
#else
  return base + weight * value;
#endif
}

}  // namespace vidllm::routing

// Runs the statement with `scalar_t` bound to the row element type `type` (float64 included);
// returns an invalid Status from the enclosing function for a type it does not know.
#define VIDLLM_DISPATCH_ROW_TYPES(type, ...)                            \
  switch (type) {                                                       \
    case ::vidllm::routing::RowType::kFloat32: {                        \
      using scalar_t = float;                                           \
      __VA_ARGS__;                                                      \
      break;                                                            \
    }                                                                   \
    case ::vidllm::routing::RowType::kFloat16: {                        \
      using scalar_t = ::vidllm::Half;                                  \
      __VA_ARGS__;                                                      \
      break;                                                            \
    }                                                                   \
    case ::vidllm::routing::RowType::kBFloat16: {                       \
      using scalar_t = ::vidllm::BFloat16;                              \
      __VA_ARGS__;                                                      \
      break;                                                            \
    }                                                                   \
    case ::vidllm::routing::RowType::kFloat64: {                        \
      using scalar_t = double;                                          \
      __VA_ARGS__;                                                      \
      break;                                                            \
    }                                                                   \
    default:                                                            \
      return ::vidllm::Status::invalid("unsupported row element type"); \
  }
