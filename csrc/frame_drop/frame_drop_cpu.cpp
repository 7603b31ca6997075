// CPU twin of frame_drop.cu: the same decomposition (a worker walks one token position through a
// chunk of steps, so each row is read once) and the same per-token math from frame_drop.h.
#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "common/rank_key.h"
#include "frame_drop/frame_drop.h"

namespace vidllm::frame_drop {
namespace {

// Independent partial sums in fixed lanes: the compiler vectorizes them without reassociating,
// and the summation order (hence the result) does not depend on the thread count.
constexpr int kLanes = 16;
// Steps one worker walks; the row before its chunk is read once more to seed the comparison.
constexpr int64_t kStepsPerChunk = 32;

struct RowSums {
  float cross = 0.0f;    // feature: dot(a, b); pixel: sum |a - b|
  float self_sq = 0.0f;  // feature: sum a * a
};

inline float reduce_lanes(float* lanes) {
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  return lanes[0];
}

template <typename T>
float sum_of_squares(const T* row, int64_t dim) {
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= dim; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float x = to_float(row[i + l]);
      lanes[l] += x * x;
    }
  for (int l = 0; i < dim; ++i, ++l) {
    const float x = to_float(row[i]);
    lanes[l] += x * x;
  }
  return reduce_lanes(lanes);
}

template <typename T>
RowSums compare_rows(const T* current, const T* previous, int64_t dim, Method method) {
  float cross[kLanes] = {};
  float self_sq[kLanes] = {};
  int64_t i = 0;
  if (method == Method::kFeature) {
    for (; i + kLanes <= dim; i += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const float a = to_float(current[i + l]);
        const float b = to_float(previous[i + l]);
        cross[l] += a * b;
        self_sq[l] += a * a;
      }
    for (int l = 0; i < dim; ++i, ++l) {
      const float a = to_float(current[i]);
      cross[l] += a * to_float(previous[i]);
      self_sq[l] += a * a;
    }
  } else {
    for (; i + kLanes <= dim; i += kLanes)
      for (int l = 0; l < kLanes; ++l)
        cross[l] += std::fabs(to_float(current[i + l]) - to_float(previous[i + l]));
    for (int l = 0; i < dim; ++i, ++l)
      cross[l] += std::fabs(to_float(current[i]) - to_float(previous[i]));
  }
  return {reduce_lanes(cross), reduce_lanes(self_sq)};
}

template <typename T>
void score_chunk(const ScoreParams& p, int64_t token, int64_t first_step, int64_t end_step) {
  const T* frames = static_cast<const T*>(p.frames);
  auto row = [&](int64_t step) {
    return frames + step * p.frame_stride_step + token * p.frame_stride_token;
  };
  const T* previous = nullptr;
  if (first_step > 0) {
    previous = row(first_step - 1);
  } else if (p.prev != nullptr) {
    previous = static_cast<const T*>(p.prev) + token * p.prev_stride_token;
  }
  const bool feature = p.method == Method::kFeature;
  float previous_sq = (previous != nullptr && feature) ? sum_of_squares(previous, p.dim) : 0.0f;
  for (int64_t step = first_step; step < end_step; ++step) {
    const T* current = row(step);
    float& score = p.scores[step * p.tokens + token];
    if (previous == nullptr) {
      score = std::numeric_limits<float>::quiet_NaN();
      if (feature) previous_sq = sum_of_squares(current, p.dim);
    } else {
      const RowSums sums = compare_rows(current, previous, p.dim, p.method);
      score = feature ? cosine_from_sums(sums.cross, sums.self_sq, previous_sq)
                      : mean_abs_from_sum(sums.cross, p.dim);
      previous_sq = sums.self_sq;
    }
    previous = current;
  }
}

// Relative mode for one step: drop the `quota` tokens of highest redundancy among the non-NaN
// ones (ties: lower index), i.e. the largest rank keys.
void decide_relative_step(const float* scores, uint8_t* keep, int64_t tokens, Method method,
                          int64_t quota) {
  std::vector<uint64_t> keys;
  keys.reserve(static_cast<size_t>(tokens));
  for (int64_t n = 0; n < tokens; ++n) {
    keep[n] = 1;
    if (!std::isnan(scores[n]))
      keys.push_back(rank_key(redundancy(scores[n], method), static_cast<uint32_t>(n)));
  }
  const int64_t drop = std::min<int64_t>(quota, static_cast<int64_t>(keys.size()));
  if (drop <= 0) return;
  std::nth_element(keys.begin(), keys.begin() + (drop - 1), keys.end(), std::greater<uint64_t>());
  for (int64_t i = 0; i < drop; ++i) keep[0xffffffffu - static_cast<uint32_t>(keys[i])] = 0;
}

int32_t count_kept(const uint8_t* keep, int64_t tokens) {
  int32_t kept = 0;
  for (int64_t n = 0; n < tokens; ++n) kept += keep[n] != 0;
  return kept;
}

}  // namespace

Status score_cpu(const ScoreParams& p) {
  if (p.steps == 0 || p.tokens == 0) return Status::ok();
  const int64_t chunks = (p.steps + kStepsPerChunk - 1) / kStepsPerChunk;
  VIDLLM_DISPATCH_FLOAT_TYPES(p.dtype, parallel_for(chunks * p.tokens, [&](int64_t item) {
                                const int64_t chunk = item / p.tokens;
                                const int64_t first = chunk * kStepsPerChunk;
                                score_chunk<scalar_t>(p, item % p.tokens, first,
                                                      std::min(first + kStepsPerChunk, p.steps));
                              }));
  return Status::ok();
}

Status decide_cpu(const DecideParams& p) {
  parallel_for(p.steps, [&](int64_t step) {
    uint8_t* keep = p.keep_mask + step * p.tokens;
    const float* scores = p.scores == nullptr ? nullptr : p.scores + step * p.tokens;
    if (scores != nullptr && p.mode == Mode::kAbsolute) {
      for (int64_t n = 0; n < p.tokens; ++n)
        keep[n] = !drop_absolute(scores[n], p.method, p.threshold);
    } else if (scores != nullptr) {
      decide_relative_step(scores, keep, p.tokens, p.method, p.drop_per_step);
    }
    p.counts[step] = count_kept(keep, p.tokens);
  });
  return Status::ok();
}

Status compact_cpu(const CompactParams& p) {
  int64_t running = 0;
  for (int64_t step = 0; step < p.steps; ++step) {
    p.offsets[step] = running;
    running += p.counts[step];
  }
  *p.total = running;
  const int64_t row_bytes = p.dim * element_size(p.dtype);
  const char* frames = static_cast<const char*>(p.frames);
  char* kept = static_cast<char*>(p.kept);
  const int64_t step_bytes = p.frame_stride_step * element_size(p.dtype);
  const int64_t token_bytes = p.frame_stride_token * element_size(p.dtype);
  parallel_for(p.steps, [&](int64_t step) {
    const uint8_t* keep = p.keep_mask + step * p.tokens;
    int64_t slot = p.offsets[step];
    for (int64_t n = 0; n < p.tokens && slot < p.capacity; ++n) {
      if (!keep[n]) continue;
      p.kept_index[slot] = step * p.tokens + n;
      std::memcpy(kept + slot * row_bytes, frames + step * step_bytes + n * token_bytes,
                  static_cast<size_t>(row_bytes));
      ++slot;
    }
  });
  return Status::ok();
}

}  // namespace vidllm::frame_drop
