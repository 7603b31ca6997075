// CPU twin of routing.cu: the same stages, the same per-element math from routing.h, the same
// results (bitwise, except the float order of the dot products of the scatter backward).
#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

// add_scaled must round w * d before the sum, as the CUDA twin (__fmul_rn) and torch do; GCC
// contracts a * b + c into an FMA wherever the target has one (aarch64, -march=native).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "common/dtype.h"
#include "common/parallel.h"
#include "common/rank_key.h"
#include "routing/routing.h"

namespace vidllm::routing {
namespace {

// Bytes of rows per work item of the row loops: small problems stay on one thread, where waking
// the others would cost more than the copy.
constexpr int64_t kBytesPerItem = 64 * 1024;
// Tokens per work item of the top-k selection (whole segments).
constexpr int64_t kTokensPerItem = 16 * 1024;
// Independent partial sums of a dot product: fixed lanes, so the result does not depend on the
// thread count, and the compiler can vectorize without reassociating.
constexpr int kLanes = 8;

// body(row) for every row, in work items of about kBytesPerItem spread over the threads.
template <typename Body>
void for_row_blocks(int64_t rows, int64_t row_bytes, const Body& body) {
  const int64_t rows_per_item =
      std::max<int64_t>(1, kBytesPerItem / std::max<int64_t>(row_bytes, 1));
  const int64_t items = (rows + rows_per_item - 1) / rows_per_item;
  parallel_for(items, [&](int64_t item) {
    const int64_t end = std::min(rows, (item + 1) * rows_per_item);
    for (int64_t row = item * rows_per_item; row < end; ++row) body(row);
  });
}

template <typename T>
void fill_nan(T* row, int64_t dim) {
  const T nan = narrow<T>(std::numeric_limits<acc_t<T>>::quiet_NaN());
  std::fill(row, row + dim, nan);
}

// =============================== topk ===============================

bool offsets_valid(const TopkParams& p) {
  if (p.offsets[0] != 0 || p.offsets[p.segments] != p.tokens) return false;
  for (int64_t s = 0; s < p.segments; ++s)
    if (p.offsets[s] > p.offsets[s + 1]) return false;
  return true;
}

// One segment: its k highest rank keys, written in token order from the segment's first slot.
template <typename T>
void select_segment(const TopkParams& p, int64_t segment, std::vector<uint64_t>& keys) {
  const int64_t first = p.offsets[segment];
  const int64_t tokens = p.offsets[segment + 1] - first;
  const int64_t kept = keep_count(p.keep_ratio, tokens);
  int64_t slot = p.slot_start[segment];
  if (kept == 0 || slot >= p.capacity) return;
  if (kept == tokens) {
    for (int64_t i = 0; i < tokens && slot < p.capacity; ++i) p.index[slot++] = first + i;
    return;
  }
  const T* scores = static_cast<const T*>(p.scores) + first * p.score_stride;
  const auto key = [&](int64_t i) {
    return rank_key(to_float(scores[i * p.score_stride]), static_cast<uint32_t>(i));
  };
  keys.resize(static_cast<size_t>(tokens));
  for (int64_t i = 0; i < tokens; ++i) keys[i] = key(i);
  std::nth_element(keys.begin(), keys.begin() + (kept - 1), keys.end(), std::greater<uint64_t>());
  const uint64_t kth = keys[kept - 1];  // keys are unique: exactly `kept` of them are >= kth
  for (int64_t i = 0; i < tokens && slot < p.capacity; ++i)
    if (key(i) >= kth) p.index[slot++] = first + i;
}

// =============================== gather ===============================

template <typename T>
void gather_row(const GatherParams& p, int64_t k) {
  using Acc = acc_t<T>;
  const int64_t row = p.index[k];
  T* out = p.out == nullptr ? nullptr : static_cast<T*>(p.out) + k * p.dim;
  Acc* dot = static_cast<Acc*>(p.dot);
  if (row < 0 || row >= p.rows) {
    if (out != nullptr) fill_nan(out, p.dim);
    if (dot != nullptr) dot[k] = std::numeric_limits<Acc>::quiet_NaN();
    return;
  }
  const T* source = static_cast<const T*>(p.source) + row * p.source_stride;
  // Empty rows: torch hands over null data pointers, which memcpy must not see even for 0 bytes.
  const auto copy_row = [&] {
    if (p.dim > 0) std::memcpy(out, source, static_cast<size_t>(p.dim) * sizeof(T));
  };
  if (p.weight == nullptr && dot == nullptr) {
    copy_row();
    return;
  }
  if (out != nullptr) {
    if (p.weight == nullptr) {
      copy_row();
    } else {
      const Acc weight = static_cast<const Acc*>(p.weight)[k];
      for (int64_t d = 0; d < p.dim; ++d) out[d] = narrow<T>(weight * widen(source[d]));
    }
  }
  if (dot != nullptr) {
    const T* other = static_cast<const T*>(p.other) + k * p.other_stride;
    Acc lanes[kLanes] = {};
    int64_t d = 0;
    for (; d + kLanes <= p.dim; d += kLanes)
      for (int l = 0; l < kLanes; ++l) lanes[l] += widen(source[d + l]) * widen(other[d + l]);
    for (int l = 0; d < p.dim; ++d, ++l) lanes[l] += widen(source[d]) * widen(other[d]);
    for (int width = kLanes / 2; width > 0; width /= 2)
      for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
    dot[k] = lanes[0];
  }
}

// =============================== scatter ===============================

// Records which k updates each row (-1: none, -2: several) and the kIndex* bits.
int32_t map_rows(const ScatterParams& p) {
  std::fill(p.row_source, p.row_source + p.rows, int64_t{-1});
  int32_t status = 0;
  for (int64_t k = 0; k < p.count; ++k) {
    const int64_t row = p.index[k];
    if (row < 0 || row >= p.rows) {
      status |= kIndexOutOfRange;
    } else if (p.row_source[row] == -1) {
      p.row_source[row] = k;
    } else {
      p.row_source[row] = -2;
      status |= kIndexRepeated;
    }
  }
  return status;
}

template <typename T>
acc_t<T> weight_of(const ScatterParams& p, int64_t k) {
  return p.weight == nullptr ? acc_t<T>(1) : static_cast<const acc_t<T>*>(p.weight)[k];
}

// The link pass (routing.h, "scatter workspace"): backwards over the index, each k's successor
// is the row's current first update, then k becomes the first.
void link_updates(const ScatterParams& p) {
  for (int64_t k = p.count - 1; k >= 0; --k) {
    int64_t& first = p.row_source[p.index[k]];
    p.next_update[k] = linked_first_update(first);
    first = kFirstUpdateBase - k;
  }
}

// A row with several updates: added in index order by following the chain of updates, all in
// the accumulation type.
template <typename T>
void scatter_repeated_row(const ScatterParams& p, int64_t first_update, const T* x, T* y,
                          std::vector<acc_t<T>>& acc) {
  acc.assign(static_cast<size_t>(p.dim), acc_t<T>(0));
  if (x != nullptr)
    for (int64_t d = 0; d < p.dim; ++d) acc[d] = widen(x[d]);
  for (int64_t k = first_update; k >= 0; k = p.next_update[k]) {
    const T* delta = static_cast<const T*>(p.delta) + k * p.delta_stride;
    const acc_t<T> weight = weight_of<T>(p, k);
    for (int64_t d = 0; d < p.dim; ++d) acc[d] = add_scaled(acc[d], weight, widen(delta[d]));
  }
  for (int64_t d = 0; d < p.dim; ++d) y[d] = narrow<T>(acc[d]);
}

template <typename T>
void scatter_row(const ScatterParams& p, int64_t row, bool poisoned, std::vector<acc_t<T>>& acc) {
  T* y = static_cast<T*>(p.y) + row * p.dim;
  const T* x = p.x == nullptr ? nullptr : static_cast<const T*>(p.x) + row * p.x_stride;
  const int64_t k = p.row_source[row];
  if (poisoned) {
    fill_nan(y, p.dim);
  } else if (k <= kFirstUpdateBase) {
    scatter_repeated_row(p, linked_first_update(k), x, y, acc);
  } else if (k == -1) {
    if (x != nullptr)
      std::memcpy(y, x, static_cast<size_t>(p.dim) * sizeof(T));
    else
      std::fill(y, y + p.dim, narrow<T>(acc_t<T>(0)));
  } else {
    const T* delta = static_cast<const T*>(p.delta) + k * p.delta_stride;
    const acc_t<T> weight = weight_of<T>(p, k);
    for (int64_t d = 0; d < p.dim; ++d) {
      const acc_t<T> base = x == nullptr ? acc_t<T>(0) : widen(x[d]);
      y[d] = narrow<T>(add_scaled(base, weight, widen(delta[d])));
    }
  }
}

}  // namespace

Status topk_plan_cpu(const TopkParams& p) {
  if (!offsets_valid(p)) {
    *p.total = -1;
    return Status::ok();
  }
  int64_t running = 0;
  for (int64_t s = 0; s < p.segments; ++s) {
    p.slot_start[s] = running;
    running += keep_count(p.keep_ratio, p.offsets[s + 1] - p.offsets[s]);
  }
  *p.total = running;
  return Status::ok();
}

Status topk_select_cpu(const TopkParams& p) {
  if (*p.total < 0 || p.capacity <= 0) return Status::ok();
  // Work items of whole segments holding about kTokensPerItem tokens: a few frames of a video
  // stay on one thread, where waking the others would cost more than selecting.
  std::vector<int64_t> item_start{0};
  for (int64_t s = 0; s < p.segments; ++s)
    if (p.offsets[s + 1] - p.offsets[item_start.back()] >= kTokensPerItem)
      item_start.push_back(s + 1);
  if (item_start.back() != p.segments) item_start.push_back(p.segments);
  const int64_t items = static_cast<int64_t>(item_start.size()) - 1;
  VIDLLM_DISPATCH_FLOAT_TYPES(p.score_dtype, parallel_for(items, [&](int64_t item) {
                                thread_local std::vector<uint64_t> keys;
                                for (int64_t s = item_start[item]; s < item_start[item + 1]; ++s)
                                  select_segment<scalar_t>(p, s, keys);
                              }));
  return Status::ok();
}

Status gather_cpu(const GatherParams& p) {
  int32_t status = 0;
  for (int64_t k = 0; k < p.count; ++k)
    if (p.index[k] < 0 || p.index[k] >= p.rows) status |= kIndexOutOfRange;
  *p.status = status;
  const int64_t row_bytes = p.dim * row_element_size(p.dtype) * (p.other == nullptr ? 2 : 3);
  VIDLLM_DISPATCH_ROW_TYPES(
      p.dtype, for_row_blocks(p.count, row_bytes, [&](int64_t k) { gather_row<scalar_t>(p, k); }));
  return Status::ok();
}

Status scatter_cpu(const ScatterParams& p) {
  const int32_t status = map_rows(p);
  *p.status = status;
  const bool poisoned = (status & kIndexOutOfRange) != 0;
  if (status == kIndexRepeated) link_updates(p);
  const int64_t row_bytes = 2 * p.dim * row_element_size(p.dtype);
  VIDLLM_DISPATCH_ROW_TYPES(p.dtype, for_row_blocks(p.rows, row_bytes, [&](int64_t row) {
                              thread_local std::vector<acc_t<scalar_t>> acc;
                              scatter_row<scalar_t>(p, row, poisoned, acc);
                            }));
  return Status::ok();
}

}  // namespace vidllm::routing
