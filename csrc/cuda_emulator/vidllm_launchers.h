// The project's CUDA launchers compiled for the emulator, as the bindings call them.
//
// The emulated build compiles every csrc/**/*.cu (and the CPU sources they call) a second time
// with the host compiler and `-Dvidllm=vidllm_emulated`, so nothing it defines can collide with
// the CPU twins or the nvcc-compiled launchers, not even inline functions whose device branch
// (__CUDA_ARCH__) differs from their host branch. The bindings know only the real `vidllm`
// types, so each launcher is reached through a function here that takes its params struct by
// address (the same header compiled twice, so the same layout; its size is checked).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace emulated_launchers {

// A vidllm Status: its StatusCode as an int and its message (static or thread-local storage,
// valid until the next failing emulated launch in this thread).
struct Result {
  int code;
  const char* message;
};

// X(family, launcher, params struct): every `family::launcher_cuda(const params&, void*)`.
#define VIDLLM_EMULATED_LAUNCHERS(X)                                \
  X(frame_drop, score, ScoreParams)                                 \
  X(frame_drop, decide, DecideParams)                               \
  X(frame_drop, compact, CompactParams)                             \
  X(kv_attention, segment_partials, SegmentParams)                  \
  X(kv_attention, combine_partials, CombineParams)                  \
  X(kv_quant, pack, PackParams)                                     \
  X(kv_quant, unpack, UnpackParams)                                 \
  X(kv_quant, quantize_channel_groups, ChannelGroupQuantParams)     \
  X(kv_quant, dequantize_channel_groups, ChannelGroupDequantParams) \
  X(kv_quant, quantize_token_groups, TokenGroupQuantParams)         \
  X(kv_quant, dequantize_token_groups, TokenGroupDequantParams)     \
  X(routing, topk_plan, TopkParams)                                 \
  X(routing, topk_select, TopkParams)                               \
  X(routing, gather, GatherParams)                                  \
  X(routing, scatter, ScatterParams)                                \
  X(token_merge, metric, MetricParams)                              \
  X(token_merge, match, MatchParams)                                \
  X(token_merge, plan, PlanParams)                                  \
  X(token_merge, wavg, MergeParams)                                 \
  X(token_merge, unmerge, UnmergeParams)                            \
  X(token_merge, hierarchical, HierarchicalParams)

#define VIDLLM_DECLARE_EMULATED_LAUNCHER(family, launcher, params_type) \
  namespace family {                                                    \
  Result launcher(const void* params, std::size_t params_size);         \
  }
VIDLLM_EMULATED_LAUNCHERS(VIDLLM_DECLARE_EMULATED_LAUNCHER)
#undef VIDLLM_DECLARE_EMULATED_LAUNCHER

// The emulator's own test kernels (csrc/cuda_emulator/tests/test_kernels.cu): runs the one named
// `name` and stores what it reports in `out`. Unknown names give code 1 (invalid argument).
Result run_test_kernel(const std::string& name, std::vector<std::int64_t>& out);

}  // namespace emulated_launchers
