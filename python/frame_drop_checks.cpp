#include "frame_drop_checks.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

namespace vidllm::binding {

using frame_drop::Method;
using frame_drop::Mode;

Method parse_method(const std::string& method) {
  return parse_choice<Method>("method", method,
                              {{"feature", Method::kFeature}, {"pixel", Method::kPixel}});
}

Mode parse_mode(const std::string& mode) {
  return parse_choice<Mode>("mode", mode,
                            {{"absolute", Mode::kAbsolute}, {"relative", Mode::kRelative}});
}

void check_threshold(double threshold, Method method, Mode mode) {
  const bool relative = mode == Mode::kRelative;
  const bool feature = method == Method::kFeature;
  const double low = relative ? 0.0 : (feature ? -1.0 : 0.0);
  const double high = (relative || feature) ? 1.0 : std::numeric_limits<double>::infinity();
  if (!std::isfinite(threshold) || threshold < low || threshold > high) {
    const char* range = relative  ? "a fraction in [0, 1]"
                        : feature ? "a cosine similarity in [-1, 1]"
                                  : "a finite mean absolute difference >= 0";
    throw py::value_error("threshold: expected " + std::string(range) + " for method '" +
                          (feature ? "feature" : "pixel") + "' in mode '" +
                          (relative ? "relative" : "absolute") + "', got " +
                          std::to_string(threshold));
  }
}

DType check_frames(const TensorArg& frames) {
  frames.expect_ndim(3, "[steps, tokens, dim]");
  const DType dtype = frames.expect_float();
  frames.expect_last_dim_contiguous();
  if (frames.size(2) < 1) {
    throw py::value_error("frames: expected a non-empty feature dimension, got shape " +
                          frames.shape_string());
  }
  if (frames.size(1) > std::numeric_limits<int32_t>::max()) {
    throw py::value_error("frames: at most 2^31 - 1 tokens per step are supported, got shape " +
                          frames.shape_string());
  }
  return dtype;
}

void check_mask_and_counts(const TensorArg& keep_mask, const TensorArg& counts,
                           const TensorArg& primary, int64_t steps, int64_t tokens) {
  keep_mask.expect_same_device(primary);
  counts.expect_same_device(primary);
  keep_mask.expect_bool();
  counts.expect_dtype(kDLInt, 32, "int32");
  // Dense: contiguous unless empty (torch gives empty tensors strides like (1, 1)).
  keep_mask.expect_dense();
  counts.expect_dense();
  keep_mask.expect_ndim(2, "[steps, tokens]");
  keep_mask.expect_size(0, steps, "steps");
  keep_mask.expect_size(1, tokens, "tokens");
  counts.expect_ndim(1, "[steps]");
  counts.expect_size(0, steps, "steps");
}

}  // namespace vidllm::binding
