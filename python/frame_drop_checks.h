// Argument checks shared by the frame-drop bindings; each throws ValueError or TypeError naming
// the argument, what was expected and what came.
#pragma once

#include <string>

#include "frame_drop/frame_drop.h"
#include "tensor_arg.h"

namespace vidllm::binding {

frame_drop::Method parse_method(const std::string& method);
frame_drop::Mode parse_mode(const std::string& mode);
void check_threshold(double threshold, frame_drop::Method method, frame_drop::Mode mode);

// frames [steps, tokens, dim], float, feature dimension contiguous; returns its dtype.
DType check_frames(const TensorArg& frames);

// keep_mask [steps, tokens] bool and counts [steps] int32, both contiguous (or empty), on
// primary's device.
void check_mask_and_counts(const TensorArg& keep_mask, const TensorArg& counts,
                           const TensorArg& primary, int64_t steps, int64_t tokens);

}  // namespace vidllm::binding
