// Bindings of the frame-difference token drop kernels (csrc/frame_drop). Every entry point walks
// the same phases: import, devices, dtypes, layout, shapes, then params, then dispatch.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "dispatch.h"
#include "frame_drop/frame_drop.h"
#include "frame_drop_checks.h"
#include "tensor_arg.h"

namespace vidllm::binding {
namespace {

using frame_drop::Method;
using frame_drop::Mode;

void frame_drop_score(py::handle frames_obj, py::handle prev_obj, py::handle scores_obj,
                      const std::string& method_name, uintptr_t stream) {
  const TensorArg frames(frames_obj, "frames");
  const std::optional<TensorArg> prev = optional_tensor(prev_obj, "prev");
  const TensorArg scores(scores_obj, "scores");
  const Method method = parse_method(method_name);
  // devices
  const Launch launch = select_launch(frames, stream, {&scores, if_given(prev)});
  // dtypes
  const DType dtype = check_frames(frames);
  scores.expect_dtype(kDLFloat, 32, "float32");
  if (prev) prev->expect_float_like(frames);
  // layout and shapes
  scores.expect_dense();
  scores.expect_ndim(2, "[steps, tokens]");
  scores.expect_size(0, frames.size(0), "steps of frames");
  scores.expect_size(1, frames.size(1), "tokens of frames");
  if (prev) {
    prev->expect_ndim(2, "[tokens, dim]");
    prev->expect_size(0, frames.size(1), "tokens of frames");
    prev->expect_size(1, frames.size(2), "dim of frames");
    prev->expect_last_dim_contiguous();
  }

  frame_drop::ScoreParams params;
  params.frames = frames.data();
  params.frame_stride_step = frames.stride(0);
  params.frame_stride_token = frames.stride(1);
  params.prev = prev ? prev->data() : nullptr;
  params.prev_stride_token = prev ? prev->stride(0) : 0;
  params.scores = static_cast<float*>(scores.data());
  params.steps = frames.size(0);
  params.tokens = frames.size(1);
  params.dim = frames.size(2);
  params.dtype = dtype;
  params.method = method;

  VIDLLM_RUN_KERNEL(frame_drop, score, params, launch);
}

void frame_drop_decide(py::handle scores_obj, py::handle keep_mask_obj, py::handle counts_obj,
                       const std::string& method_name, const std::string& mode_name,
                       double threshold, uintptr_t stream) {
  const TensorArg scores(scores_obj, "scores");
  const TensorArg keep_mask(keep_mask_obj, "keep_mask");
  const TensorArg counts(counts_obj, "counts");
  const Method method = parse_method(method_name);
  const Mode mode = parse_mode(mode_name);
  check_threshold(threshold, method, mode);
  const Launch launch = select_launch(scores, stream);
  scores.expect_dtype(kDLFloat, 32, "float32");
  scores.expect_dense();
  scores.expect_ndim(2, "[steps, tokens]");
  check_mask_and_counts(keep_mask, counts, scores, scores.size(0), scores.size(1));

  frame_drop::DecideParams params;
  params.scores = static_cast<const float*>(scores.data());
  params.keep_mask = static_cast<uint8_t*>(keep_mask.data());
  params.counts = static_cast<int32_t*>(counts.data());
  params.steps = scores.size(0);
  params.tokens = scores.size(1);
  params.method = method;
  params.mode = mode;
  params.threshold = static_cast<float>(threshold);
  params.drop_per_step =
      static_cast<int64_t>(std::floor(static_cast<double>(params.tokens) * threshold));
  VIDLLM_RUN_KERNEL(frame_drop, decide, params, launch);
}

void frame_drop_count(py::handle keep_mask_obj, py::handle counts_obj, uintptr_t stream) {
  const TensorArg keep_mask(keep_mask_obj, "keep_mask");
  const TensorArg counts(counts_obj, "counts");
  const Launch launch = select_launch(keep_mask, stream);
  keep_mask.expect_ndim(2, "[steps, tokens]");
  check_mask_and_counts(keep_mask, counts, keep_mask, keep_mask.size(0), keep_mask.size(1));

  frame_drop::DecideParams params;
  params.keep_mask = static_cast<uint8_t*>(keep_mask.data());
  params.counts = static_cast<int32_t*>(counts.data());
  params.steps = keep_mask.size(0);
  params.tokens = keep_mask.size(1);
  VIDLLM_RUN_KERNEL(frame_drop, decide, params, launch);
}

void frame_drop_compact(py::handle frames_obj, py::handle keep_mask_obj, py::handle counts_obj,
                        py::handle offsets_obj, py::handle kept_obj, py::handle kept_index_obj,
                        py::handle total_obj, uintptr_t stream) {
  const TensorArg frames(frames_obj, "frames");
  const TensorArg keep_mask(keep_mask_obj, "keep_mask");
  const TensorArg counts(counts_obj, "counts");
  const TensorArg offsets(offsets_obj, "offsets");
  const TensorArg kept(kept_obj, "kept");
  const TensorArg kept_index(kept_index_obj, "kept_index");
  const TensorArg total(total_obj, "total");
  // devices
  const Launch launch = select_launch(frames, stream, {&offsets, &kept, &kept_index, &total});
  // dtypes, layout, shapes
  const DType dtype = check_frames(frames);
  const int64_t steps = frames.size(0);
  const int64_t tokens = frames.size(1);
  check_mask_and_counts(keep_mask, counts, frames, steps, tokens);
  kept.expect_float_like(frames);
  for (const TensorArg* arg : {&offsets, &kept_index, &total})
    arg->expect_dtype(kDLInt, 64, "int64");
  for (const TensorArg* arg : {&offsets, &kept, &kept_index, &total}) arg->expect_dense();
  offsets.expect_ndim(1, "[steps]");
  offsets.expect_size(0, steps, "steps");
  kept.expect_ndim(2, "[capacity, dim]");
  kept.expect_size(1, frames.size(2), "dim of frames");
  kept_index.expect_ndim(1, "[capacity]");
  kept_index.expect_size(0, kept.size(0), "capacity, the rows of kept");
  total.expect_ndim(1, "[1]");
  total.expect_size(0, 1, "a single count");

  frame_drop::DecideParams count_params;
  count_params.keep_mask = static_cast<uint8_t*>(keep_mask.data());
  count_params.counts = static_cast<int32_t*>(counts.data());
  count_params.steps = steps;
  count_params.tokens = tokens;
  VIDLLM_RUN_KERNEL(frame_drop, decide, count_params, launch);

  frame_drop::CompactParams params;
  params.frames = frames.data();
  params.frame_stride_step = frames.stride(0);
  params.frame_stride_token = frames.stride(1);
  params.keep_mask = static_cast<const uint8_t*>(keep_mask.data());
  params.counts = static_cast<const int32_t*>(counts.data());
  params.offsets = static_cast<int64_t*>(offsets.data());
  params.kept = kept.data();
  params.kept_index = static_cast<int64_t*>(kept_index.data());
  params.total = static_cast<int64_t*>(total.data());
  params.capacity = kept.size(0);
  params.steps = steps;
  params.tokens = tokens;
  params.dim = frames.size(2);
  params.dtype = dtype;
  VIDLLM_RUN_KERNEL(frame_drop, compact, params, launch);
}

}  // namespace

void register_frame_drop(py::module_& m) {
  m.def("frame_drop_score", &frame_drop_score, py::arg("frames"), py::arg("prev"),
        py::arg("scores"), py::arg("method"), py::arg("stream") = 0,
        "Writes the float32 [steps, tokens] redundancy scores of frames into scores.");
  m.def("frame_drop_decide", &frame_drop_decide, py::arg("scores"), py::arg("keep_mask"),
        py::arg("counts"), py::arg("method"), py::arg("mode"), py::arg("threshold"),
        py::arg("stream") = 0,
        "Writes keep_mask (bool [steps, tokens]) and counts (int32 [steps]) from scores.");
  m.def("frame_drop_count", &frame_drop_count, py::arg("keep_mask"), py::arg("counts"),
        py::arg("stream") = 0,
        "Writes the kept tokens of every step of keep_mask into counts (int32 [steps]).");
  m.def("frame_drop_compact", &frame_drop_compact, py::arg("frames"), py::arg("keep_mask"),
        py::arg("counts"), py::arg("offsets"), py::arg("kept"), py::arg("kept_index"),
        py::arg("total"), py::arg("stream") = 0,
        "Counts keep_mask into counts, then writes at most capacity kept rows into kept and "
        "kept_index, and the full kept count into total.");
}

}  // namespace vidllm::binding
