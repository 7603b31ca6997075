// Frame-difference token drop (TimeChat-Online): score each token against the same spatial
// position one step earlier, decide which tokens are redundant, and compact the kept ones.
//
// Three stages, each a launcher with a CPU and a CUDA twin:
//   score:   frames [steps, tokens, dim] (+ optional prev [tokens, dim]) -> scores [steps, tokens]
//   decide:  scores -> keep_mask [steps, tokens] and counts [steps]   (or count a given mask)
//   compact: frames, keep_mask, counts -> kept [K, dim], kept_index [K], total
// Both twins share the per-token math below and the cosine of common/cosine.h, and both round
// every product and every sum separately (no FMA contraction), but they add a row's products in
// different orders (the CPU in 16 interleaved lanes, the GPU per thread and then over the block),
// so CPU tests exercise the GPU's formulas, not its exact bits: scores agree to float32 rounding
// and decisions may differ only for tokens within that rounding of the threshold. Within each
// twin dot(a, b) and the squared norms are summed alike, so identical rows score exactly 1 on both.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/cosine.h"
#include "common/dtype.h"
#include "common/macros.h"
#include "common/status.h"

namespace vidllm::frame_drop {

enum class Method : int {
  kFeature = 0,  // cosine similarity of the two feature vectors; high = redundant
  kPixel = 1,    // mean absolute difference of the two pixel patches; low = redundant
};

enum class Mode : int {
  kAbsolute = 0,  // drop iff the score is past a fixed threshold
  kRelative = 1,  // drop a fixed number of the most redundant tokens of every compared step
};

// Strides are in elements; the feature dimension is contiguous (stride 1) in every tensor.
struct ScoreParams {
  const void* frames = nullptr;  // [steps, tokens, dim]
  int64_t frame_stride_step = 0;
  int64_t frame_stride_token = 0;
  const void* prev = nullptr;  // [tokens, dim], the step before frames[0]; may be null
  int64_t prev_stride_token = 0;
  float* scores = nullptr;  // [steps, tokens], contiguous; NaN where a step has nothing to compare
  int64_t steps = 0;
  int64_t tokens = 0;
  int64_t dim = 0;
  DType dtype = DType::kFloat32;
  Method method = Method::kFeature;
  int device = 0;  // CUDA only: the device that owns every pointer
};

struct DecideParams {
  const float* scores = nullptr;  // [steps, tokens]; null: keep_mask is an input, only counted
  uint8_t* keep_mask = nullptr;   // [steps, tokens], contiguous, 1 = keep
  int32_t* counts = nullptr;      // [steps]: kept tokens per step
  int64_t steps = 0;
  int64_t tokens = 0;
  Method method = Method::kFeature;
  Mode mode = Mode::kAbsolute;
  float threshold = 0.0f;     // absolute mode: compared with the float32 score
  int64_t drop_per_step = 0;  // relative mode: floor(tokens * threshold), computed in double
  int device = 0;
};

struct CompactParams {
  const void* frames = nullptr;  // [steps, tokens, dim]
  int64_t frame_stride_step = 0;
  int64_t frame_stride_token = 0;
  const uint8_t* keep_mask = nullptr;  // [steps, tokens], contiguous
  const int32_t* counts = nullptr;     // [steps], as written by decide
  int64_t* offsets = nullptr;          // [steps] workspace: exclusive prefix sum of counts
  void* kept = nullptr;                // [capacity, dim], contiguous, same dtype as frames
  int64_t* kept_index = nullptr;       // [capacity]: flat index step * tokens + token
  int64_t* total = nullptr;            // [1]: kept tokens in all, even past capacity
  int64_t capacity = 0;                // rows beyond capacity are counted but not written
  int64_t steps = 0;
  int64_t tokens = 0;
  int64_t dim = 0;
  DType dtype = DType::kFloat32;
  int device = 0;
};

VIDLLM_LAUNCHERS(score, ScoreParams);
VIDLLM_LAUNCHERS(decide, DecideParams);
VIDLLM_LAUNCHERS(compact, CompactParams);

// ---- per-token math shared by the CPU and CUDA kernels ------------------------------------

// The feature score is vidllm::cosine_from_sums (common/cosine.h).

VIDLLM_HOST_DEVICE float mean_abs_from_sum(float sum_abs, int64_t dim) {
  return sum_abs / static_cast<float>(dim);
}

// Absolute mode. NaN compares false both ways, so a NaN score never drops its token.
VIDLLM_HOST_DEVICE bool drop_absolute(float score, Method method, float threshold) {
  return method == Method::kFeature ? score > threshold : score < threshold;
}

// Relative mode drops the tokens of highest redundancy: highest cosine, lowest pixel difference.
VIDLLM_HOST_DEVICE float redundancy(float score, Method method) {
  return method == Method::kFeature ? score : -score;
}

}  // namespace vidllm::frame_drop
