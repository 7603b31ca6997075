// CPU twin of frame_drop.cu: the same decomposition (a worker walks one token position through a
// chunk of steps, so each row is read once) and the same per-token math from frame_drop.h.
// Products and sums are rounded one by one, as on the GPU: no contraction into FMA.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

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
// A work item: kStepsPerChunk steps of kTokensPerBlock adjacent tokens. The row before the chunk
// is read once more to seed the comparison.
constexpr int64_t kStepsPerChunk = 32;
constexpr int64_t kTokensPerBlock = 16;

struct RowSums {
  float cross = 0.0f;    // feature: dot(a, b); pixel: sum |a - b|
  float self_sq = 0.0f;  // feature: sum a * a
};

inline float reduce_lanes(float* lanes) {
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  return lanes[0];
}

// Lane l sums elements l, l + kLanes, l + 2 kLanes, ...: four 4-wide SIMD vectors (GCC/Clang
// vector extensions) during the main loop, spilled to an array for the tail and the reduction.
typedef float Float4 __attribute__((vector_size(16)));
typedef int32_t Int4 __attribute__((vector_size(16)));
constexpr int kVectors = kLanes / 4;

// |x| lane by lane: clears the sign bits (NaN stays NaN, as with std::fabs).
inline Float4 abs4(Float4 x) {
  return reinterpret_cast<Float4>(reinterpret_cast<Int4>(x) & 0x7fffffff);
}

template <typename T>
inline Float4 load4(const T* values) {
  return Float4{to_float(values[0]), to_float(values[1]), to_float(values[2]), to_float(values[3])};
}

template <>
inline Float4 load4<float>(const float* values) {
  Float4 vector;
  std::memcpy(&vector, values, sizeof(vector));
  return vector;
}

inline void spill(const Float4 (&vectors)[kVectors], float (&lanes)[kLanes]) {
  std::memcpy(lanes, vectors, sizeof(lanes));
}

template <typename T>
float sum_of_squares(const T* row, int64_t dim) {
  Float4 squares[kVectors] = {};
  int64_t i = 0;
  for (; i + kLanes <= dim; i += kLanes)
    for (int v = 0; v < kVectors; ++v) {
      const Float4 x = load4(row + i + 4 * v);
      squares[v] += x * x;
    }
  float lanes[kLanes];
  spill(squares, lanes);
  for (int l = 0; i < dim; ++i, ++l) {
    const float x = to_float(row[i]);
    lanes[l] += x * x;
  }
  return reduce_lanes(lanes);
}

template <typename T>
RowSums compare_rows(const T* current, const T* previous, int64_t dim, Method method) {
  Float4 cross_vectors[kVectors] = {};
  Float4 square_vectors[kVectors] = {};
  const bool feature = method == Method::kFeature;
  int64_t i = 0;
  for (; i + kLanes <= dim; i += kLanes)
    for (int v = 0; v < kVectors; ++v) {
      const Float4 a = load4(current + i + 4 * v);
      const Float4 b = load4(previous + i + 4 * v);
      if (feature) {
        cross_vectors[v] += a * b;
        square_vectors[v] += a * a;
      } else {
        cross_vectors[v] += abs4(a - b);
      }
    }
  float cross[kLanes];
  float self_sq[kLanes];
  spill(cross_vectors, cross);
  spill(square_vectors, self_sq);
  for (int l = 0; i < dim; ++i, ++l) {
    const float a = to_float(current[i]);
    const float b = to_float(previous[i]);
    if (feature) {
      cross[l] += a * b;
      self_sq[l] += a * a;
    } else {
      cross[l] += std::fabs(a - b);
    }
  }
  return {reduce_lanes(cross), reduce_lanes(self_sq)};
}

// Scores steps [first_step, end_step) of tokens [first_token, end_token). The tokens of one step
// lie next to each other in memory, so walking the block step by step reads memory in long runs
// (prefetcher-friendly), and the previous step's rows were read just before (still in cache).
template <typename T>
void score_block(const ScoreParams& p, int64_t first_token, int64_t end_token, int64_t first_step,
                 int64_t end_step) {
  const T* frames = static_cast<const T*>(p.frames);
  auto row = [&](int64_t step, int64_t token) {
    return frames + step * p.frame_stride_step + token * p.frame_stride_token;
  };
  auto seed_row = [&](int64_t token) -> const T* {
    if (first_step > 0) return row(first_step - 1, token);
    if (p.prev != nullptr) return static_cast<const T*>(p.prev) + token * p.prev_stride_token;
    return nullptr;
  };
  const bool feature = p.method == Method::kFeature;
  float previous_sq[kTokensPerBlock];
  for (int64_t token = first_token; token < end_token; ++token) {
    const T* seed = seed_row(token);
    previous_sq[token - first_token] =
        (seed != nullptr && feature) ? sum_of_squares(seed, p.dim) : 0.0f;
  }
  for (int64_t step = first_step; step < end_step; ++step) {
    for (int64_t token = first_token; token < end_token; ++token) {
      const T* current = row(step, token);
      const T* previous = step > first_step ? row(step - 1, token) : seed_row(token);
      float& carried_sq = previous_sq[token - first_token];
      float& score = p.scores[step * p.tokens + token];
      if (previous == nullptr) {
        score = std::numeric_limits<float>::quiet_NaN();
        if (feature) carried_sq = sum_of_squares(current, p.dim);
        continue;
      }
      const RowSums sums = compare_rows(current, previous, p.dim, p.method);
      score = feature ? cosine_from_sums(sums.cross, sums.self_sq, carried_sq)
                      : mean_abs_from_sum(sums.cross, p.dim);
      carried_sq = sums.self_sq;
    }
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
  const int64_t blocks = (p.tokens + kTokensPerBlock - 1) / kTokensPerBlock;
  VIDLLM_DISPATCH_FLOAT_TYPES(
      p.dtype, parallel_for(chunks * blocks, [&](int64_t item) {
        const int64_t first_step = (item / blocks) * kStepsPerChunk;
        const int64_t first_token = (item % blocks) * kTokensPerBlock;
        score_block<scalar_t>(p, first_token, std::min(first_token + kTokensPerBlock, p.tokens),
                              first_step, std::min(first_step + kStepsPerChunk, p.steps));
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
