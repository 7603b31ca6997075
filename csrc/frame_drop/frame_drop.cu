// CUDA twin of frame_drop_cpu.cpp. Three stages, launched on the caller's stream:
//   score:   a block walks one token position through a chunk of steps, so every feature row is
//            read from global memory once (plus one seed row per chunk);
//   decide:  a block per step: threshold, or a radix select of the step's k most redundant tokens;
//   compact: prefix sum of the counts, a block scan per step for the kept indices, row gather.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "common/block_select.cuh"
#include "common/cuda_device.h"
#include "common/cuda_launch.cuh"
#include "common/cuda_utils.cuh"
#include "common/dtype.h"
#include "common/dynamic_shared.cuh"
#include "common/rank_key.h"
#include "frame_drop/frame_drop.h"

namespace vidllm::frame_drop {
namespace {

using cuda::aligned16;
using cuda::ceil_div;
using cuda::Vec;

// =============================== score ===============================

constexpr int kScoreThreads = 128;
// Vectors each thread loads before using any: the memory-level parallelism of one thread.
constexpr int kScoreUnroll = 4;
constexpr int64_t kMaxStepsPerChunk = 64;

template <Method kMethod>
constexpr int kScoreSums = kMethod == Method::kFeature ? 2 : 1;  // {dot, sum a*a} or {sum |a-b|}

// Folds this thread's share of one row into `sums` against the previous row, which lies in shared
// memory, and leaves the row there for the next step. Thread x owns vectors x, x + kScoreThreads,
// ... of every row, so it only ever re-reads slots it wrote itself: no barrier for that buffer.
// The seed pass (the row before the chunk) only fills the buffer (and its sum of squares).
template <typename T, int VEC, Method kMethod, bool kSeed>
__device__ __forceinline__ void consume_row(const T* __restrict__ row, T* previous_row, int vectors,
                                            float (&sums)[kScoreSums<kMethod>]) {
  using V = Vec<T, VEC>;
  for (int base = threadIdx.x; base < vectors; base += kScoreThreads * kScoreUnroll) {
    V current[kScoreUnroll];
#pragma unroll
    for (int u = 0; u < kScoreUnroll; ++u) {
      const int v = base + u * kScoreThreads;
      if (v < vectors) current[u] = V::load(row + static_cast<int64_t>(v) * VEC);
    }
#pragma unroll
    for (int u = 0; u < kScoreUnroll; ++u) {
      const int v = base + u * kScoreThreads;
      if (v >= vectors) continue;
      T* slot = previous_row + static_cast<int64_t>(v) * VEC;
      if constexpr (!kSeed) {
        const V previous = V::load(slot);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float a = to_float(current[u].elem[i]);
          const float b = to_float(previous.elem[i]);
          if constexpr (kMethod == Method::kFeature) {
            // Rounded separately, never fused: the CPU twin's arithmetic, and for a == b the
            // dot product and the sum of squares stay equal (see common/cosine.h).
            sums[0] = add_rn(sums[0], mul_rn(a, b));
            sums[1] = add_rn(sums[1], mul_rn(a, a));
          } else {
            sums[0] += fabsf(a - b);
          }
        }
      } else if constexpr (kMethod == Method::kFeature) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float a = to_float(current[u].elem[i]);
          sums[1] = add_rn(sums[1], mul_rn(a, a));
        }
      }
      current[u].store(slot);
    }
  }
}

// grid.x = tokens, grid.y (folded at 65535) = chunks of steps_per_chunk steps. Dynamic shared
// memory: one row, dim * sizeof(T) bytes, in the native type. The score of a step does not depend
// on the chunking: the carried sum of squares of the previous row is computed with the same
// thread mapping and reduction order as when that row was the current one.
template <typename T, int VEC, Method kMethod>
__global__ void __launch_bounds__(kScoreThreads)
    score_kernel(const ScoreParams params, const int64_t steps_per_chunk, const int64_t chunks) {
  constexpr int kSums = kScoreSums<kMethod>;
  using BlockSum = cuda::BlockSum<kScoreThreads, kSums>;
  __shared__ typename BlockSum::Storage sum_storage;
  VIDLLM_DYNAMIC_SHARED(unsigned char, previous_row_bytes);
  T* previous_row = reinterpret_cast<T*>(previous_row_bytes);
  BlockSum block_sum(sum_storage);

  const T* frames = static_cast<const T*>(params.frames);
  const int64_t token = blockIdx.x;
  const int vectors = static_cast<int>(params.dim / VEC);
  const int64_t token_offset = token * params.frame_stride_token;

  for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
    const int64_t first = chunk * steps_per_chunk;
    const int64_t end =
        first + steps_per_chunk < params.steps ? first + steps_per_chunk : params.steps;
    int64_t step = first;
    const T* seed = nullptr;
    if (first > 0) {
      seed = frames + (first - 1) * params.frame_stride_step + token_offset;
    } else if (params.prev != nullptr) {
      seed = static_cast<const T*>(params.prev) + token * params.prev_stride_token;
    } else {
      // Nothing precedes step 0: its score is NaN and step 0 seeds the comparison of step 1.
      seed = frames + token_offset;
      step = 1;
      if (threadIdx.x == 0) params.scores[token] = __uint_as_float(0x7fc00000u);  // quiet NaN
    }

    float previous_sq = 0.0f;
    {
      float sums[kSums] = {};
      consume_row<T, VEC, kMethod, true>(seed, previous_row, vectors, sums);
      if constexpr (kMethod == Method::kFeature) {
        block_sum(sums);
        previous_sq = sums[1];
      }
    }
    for (; step < end; ++step) {
      float sums[kSums] = {};
      const T* row = frames + step * params.frame_stride_step + token_offset;
      consume_row<T, VEC, kMethod, false>(row, previous_row, vectors, sums);
      block_sum(sums);
      float* score = params.scores + step * params.tokens + token;
      if constexpr (kMethod == Method::kFeature) {
        if (threadIdx.x == 0) *score = cosine_from_sums(sums[0], sums[1], previous_sq);
        previous_sq = sums[1];
      } else {
        if (threadIdx.x == 0) *score = mean_abs_from_sum(sums[0], params.dim);
      }
    }
  }
}

// 16-byte vectors need every row start 16-byte aligned: base pointers, strides (of dimensions
// longer than one) and dim all multiples of the vector.
template <typename T>
bool score_vectorizable(const ScoreParams& p) {
  constexpr int64_t kVec = cuda::kVectorWidth<T>;
  const bool token_ok = p.tokens <= 1 || p.frame_stride_token % kVec == 0;
  const bool step_ok = p.steps <= 1 || p.frame_stride_step % kVec == 0;
  const bool prev_ok = p.prev == nullptr ||
                       (aligned16(p.prev) && (p.tokens <= 1 || p.prev_stride_token % kVec == 0));
  return p.dim % kVec == 0 && aligned16(p.frames) && token_ok && step_ok && prev_ok;
}

// Steps per block. A chunk of L steps reads L + 1 rows, and blocks run in waves of `resident`;
// the estimated time is waves * (L + 1) (a partial wave counted as a full one). Among lengths that
// give at least two waves (load balance), when any does, take the cheapest, ties to the longer.
int64_t choose_steps_per_chunk(int64_t steps, int64_t tokens, int64_t resident) {
  const int64_t longest = steps < kMaxStepsPerChunk ? steps : kMaxStepsPerChunk;
  const bool two_waves_possible = tokens * steps >= 2 * resident;
  int64_t best = 1;
  int64_t best_cost = std::numeric_limits<int64_t>::max();
  for (int64_t length = 1; length <= longest; ++length) {
    const int64_t blocks = tokens * ceil_div(steps, length);
    if (two_waves_possible && blocks < 2 * resident) break;  // blocks only shrink from here
    const int64_t cost = ceil_div(blocks, resident) * (length + 1);
    if (cost <= best_cost) {
      best = length;
      best_cost = cost;
    }
  }
  return best;
}

template <typename T, int VEC, Method kMethod>
Status launch_score(const ScoreParams& p, cudaStream_t stream) {
  const auto kernel = score_kernel<T, VEC, kMethod>;
  const int64_t row_bytes = p.dim * static_cast<int64_t>(sizeof(T));
  int64_t max_dynamic_shared = 0;  // set once per device, never per launch: see dynamic_shared.cuh
  VIDLLM_RETURN_IF_ERROR(cuda::max_dynamic_shared_bytes(reinterpret_cast<const void*>(kernel),
                                                        p.device, &max_dynamic_shared));
  if (row_bytes > max_dynamic_shared)
    return Status::invalid(
        "frame_drop score: one feature row (dim * element size bytes) must fit in the shared "
        "memory of a block on this device (about 227 KiB on H100/H200, 163 KiB on A100); use a "
        "16-bit dtype or a smaller dim");
  int blocks_per_sm = 0;
  VIDLLM_RETURN_IF_CUDA_ERROR(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks_per_sm, kernel, kScoreThreads, static_cast<size_t>(row_bytes)));
  const int64_t resident = static_cast<int64_t>(std::max(cuda::multiprocessor_count(p.device), 1)) *
                           std::max(blocks_per_sm, 1);
  const int64_t steps_per_chunk = choose_steps_per_chunk(p.steps, p.tokens, resident);
  const int64_t chunks = ceil_div(p.steps, steps_per_chunk);
  const dim3 grid(static_cast<unsigned int>(p.tokens),
                  static_cast<unsigned int>(std::min(chunks, cuda::kMaxGridY)));
  VIDLLM_LAUNCH(grid, kScoreThreads, static_cast<size_t>(row_bytes), stream, kernel)(
      p, steps_per_chunk, chunks);
  return cuda::launch_status();
}

template <typename T>
Status dispatch_score(const ScoreParams& p, cudaStream_t stream) {
  constexpr int kVec = cuda::kVectorWidth<T>;
  const bool vectorized = score_vectorizable<T>(p);
  if (p.method == Method::kFeature)
    return vectorized ? launch_score<T, kVec, Method::kFeature>(p, stream)
                      : launch_score<T, 1, Method::kFeature>(p, stream);
  return vectorized ? launch_score<T, kVec, Method::kPixel>(p, stream)
                    : launch_score<T, 1, Method::kPixel>(p, stream);
}

// =============================== decide ===============================

constexpr int kDecideThreads = 256;

// One block per step. Relative mode drops the k = min(drop_per_step, non-NaN scores) largest rank
// keys; NaN keys sit below every other key, so with k <= valid they are never among them. Keys
// are unique, so exactly k tokens have a key >= the k-th largest.
__global__ void __launch_bounds__(kDecideThreads) decide_kernel(const DecideParams params) {
  using BlockReduce = cub::BlockReduce<int, kDecideThreads>;
  using BlockSelect = cuda::BlockRadixSelect<kDecideThreads>;
  __shared__ typename BlockReduce::TempStorage reduce_storage;
  __shared__ typename BlockSelect::Storage select_storage;
  __shared__ int valid_in_step;

  const int64_t step = blockIdx.x;
  const int64_t tokens = params.tokens;
  const Method method = params.method;
  uint8_t* keep = params.keep_mask + step * tokens;
  const float* scores = params.scores == nullptr ? nullptr : params.scores + step * tokens;

  int kept = 0;
  if (scores == nullptr) {
    for (int64_t n = threadIdx.x; n < tokens; n += kDecideThreads) kept += keep[n] != 0;
  } else if (params.mode == Mode::kAbsolute) {
    for (int64_t n = threadIdx.x; n < tokens; n += kDecideThreads) {
      const bool keep_token = !drop_absolute(scores[n], method, params.threshold);
      keep[n] = keep_token;
      kept += keep_token;
    }
  } else {
    int valid = 0;
    for (int64_t n = threadIdx.x; n < tokens; n += kDecideThreads) valid += !isnan(scores[n]);
    valid = BlockReduce(reduce_storage).Sum(valid);
    if (threadIdx.x == 0) valid_in_step = valid;
    __syncthreads();  // also frees reduce_storage for the final count
    const int64_t quota = params.drop_per_step > 0 ? params.drop_per_step : 0;
    const int64_t drop = quota < valid_in_step ? quota : valid_in_step;
    const auto key = [scores, method](int64_t n) {
      return rank_key(redundancy(scores[n], method), static_cast<uint32_t>(n));
    };
    const uint64_t kth = drop > 0 ? BlockSelect::kth_largest(key, tokens, drop, select_storage) : 0;
    for (int64_t n = threadIdx.x; n < tokens; n += kDecideThreads) {
      const bool keep_token = drop == 0 || key(n) < kth;
      keep[n] = keep_token;
      kept += keep_token;
    }
  }
  kept = BlockReduce(reduce_storage).Sum(kept);
  if (threadIdx.x == 0) params.counts[step] = kept;
}

// =============================== compact ===============================

constexpr int kScanThreads = 256;
constexpr int kOffsetItems = 4;  // counts per thread per tile of the offsets scan

// One block: offsets = exclusive prefix sum of counts, tile by tile with a running carry;
// *total = the full sum (written even for zero steps).
__global__ void __launch_bounds__(kScanThreads)
    offsets_kernel(const int32_t* counts, int64_t* offsets, int64_t* total, int64_t steps) {
  using BlockScan = cub::BlockScan<int64_t, kScanThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  int64_t carry = 0;
  for (int64_t tile = 0; tile < steps; tile += kScanThreads * kOffsetItems) {
    // Blocked arrangement: each thread scans kOffsetItems consecutive steps.
    const int64_t first = tile + static_cast<int64_t>(threadIdx.x) * kOffsetItems;
    int64_t items[kOffsetItems];
    int64_t prefix[kOffsetItems];
#pragma unroll
    for (int i = 0; i < kOffsetItems; ++i) items[i] = first + i < steps ? counts[first + i] : 0;
    int64_t tile_total = 0;
    BlockScan(scan_storage).ExclusiveSum(items, prefix, tile_total);
#pragma unroll
    for (int i = 0; i < kOffsetItems; ++i)
      if (first + i < steps) offsets[first + i] = carry + prefix[i];
    carry += tile_total;
    __syncthreads();  // scan_storage is reused by the next tile
  }
  if (threadIdx.x == 0) *total = carry;
}

// One block per step: the kept tokens' ranks in token order, by a block scan over tiles of the
// mask row, give their output slots offsets[step] + rank; slots past capacity are not written.
__global__ void __launch_bounds__(kScanThreads) kept_index_kernel(const CompactParams params) {
  using BlockScan = cub::BlockScan<int, kScanThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  const int64_t step = blockIdx.x;
  const uint8_t* keep = params.keep_mask + step * params.tokens;
  int64_t slot_base = params.offsets[step];
  for (int64_t tile = 0; tile < params.tokens && slot_base < params.capacity;
       tile += kScanThreads) {
    const int64_t token = tile + threadIdx.x;
    const int flag = token < params.tokens && keep[token] != 0;
    int rank = 0;
    int tile_kept = 0;
    BlockScan(scan_storage).ExclusiveSum(flag, rank, tile_kept);
    const int64_t slot = slot_base + rank;
    if (flag && slot < params.capacity) params.kept_index[slot] = step * params.tokens + token;
    slot_base += tile_kept;
    __syncthreads();  // scan_storage is reused by the next tile
  }
}

constexpr int kGatherThreads = 256;
constexpr int kGatherWarps = kGatherThreads / 32;
constexpr int kGatherUnroll = 4;       // units each lane loads before storing any
constexpr int kGatherBlocksPerSm = 8;  // 2048 threads: a full SM

// A warp per output row, grid-stride over rows. The row count is read from *total here because
// the host does not know it. Rows are copied as raw Units (16-byte vectors when every row start
// allows, else one element).
template <typename Unit>
__global__ void __launch_bounds__(kGatherThreads)
    gather_kernel(const CompactParams params, const int64_t element_bytes) {
  const int64_t total = *params.total;
  const int64_t rows = total < params.capacity ? total : params.capacity;
  const int64_t units = params.dim * element_bytes / static_cast<int64_t>(sizeof(Unit));
  const int64_t step_bytes = params.frame_stride_step * element_bytes;
  const int64_t token_bytes = params.frame_stride_token * element_bytes;
  const char* frames = static_cast<const char*>(params.frames);
  Unit* kept = static_cast<Unit*>(params.kept);
  const int lane = threadIdx.x % 32;
  const int64_t first_row = (static_cast<int64_t>(blockIdx.x) * kGatherThreads + threadIdx.x) / 32;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kGatherWarps;

  for (int64_t row = first_row; row < rows; row += row_stride) {
    const int64_t flat = params.kept_index[row];
    const int64_t step = flat / params.tokens;
    const int64_t token = flat - step * params.tokens;
    const Unit* src =
        reinterpret_cast<const Unit*>(frames + step * step_bytes + token * token_bytes);
    Unit* dst = kept + row * units;
    cuda::warp_copy<kGatherUnroll>(src, dst, units, lane);
  }
}

bool gather_vectorizable(const CompactParams& p, int64_t element_bytes) {
  const bool token_ok = p.tokens <= 1 || p.frame_stride_token * element_bytes % 16 == 0;
  const bool step_ok = p.steps <= 1 || p.frame_stride_step * element_bytes % 16 == 0;
  return p.dim * element_bytes % 16 == 0 && aligned16(p.frames) && aligned16(p.kept) && token_ok &&
         step_ok;
}

Status launch_gather(const CompactParams& p, int64_t element_bytes, cudaStream_t stream) {
  const int64_t sms = std::max(cuda::multiprocessor_count(p.device), 1);
  const int64_t blocks =
      std::min(ceil_div(p.capacity, int64_t{kGatherWarps}), sms * kGatherBlocksPerSm);
  const dim3 grid(static_cast<unsigned int>(blocks));
  if (gather_vectorizable(p, element_bytes))
    VIDLLM_LAUNCH(grid, kGatherThreads, 0, stream, gather_kernel<uint4>)(p, element_bytes);
  else if (element_bytes == 4)
    VIDLLM_LAUNCH(grid, kGatherThreads, 0, stream, gather_kernel<uint32_t>)(p, element_bytes);
  else
    VIDLLM_LAUNCH(grid, kGatherThreads, 0, stream, gather_kernel<uint16_t>)(p, element_bytes);
  return cuda::launch_status();
}

bool known_dtype(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16;
}

}  // namespace

// =============================== launchers ===============================

Status score_cuda(const ScoreParams& params, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(params.device));
  if (params.steps == 0 || params.tokens == 0) return Status::ok();
  if (params.tokens > cuda::kMaxGridX)
    return Status::invalid("frame_drop score: tokens must be at most 2^31 - 1");
  VIDLLM_DISPATCH_FLOAT_TYPES(
      params.dtype, return dispatch_score<scalar_t>(params, static_cast<cudaStream_t>(stream)));
}

// Empty steps: nothing to write. Zero tokens still launches, so counts become 0 as on the CPU.
Status decide_cuda(const DecideParams& params, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(params.device));
  if (params.steps == 0) return Status::ok();
  if (params.steps > cuda::kMaxGridX || params.tokens > cuda::kMaxGridX)
    return Status::invalid("frame_drop decide: steps and tokens must be at most 2^31 - 1");
  VIDLLM_LAUNCH(static_cast<unsigned int>(params.steps), kDecideThreads, 0,
                static_cast<cudaStream_t>(stream), decide_kernel)(params);
  return cuda::launch_status();
}

// offsets and *total are always written (as on the CPU, also for zero steps or tokens); the
// index and gather stages run only when some row can be written.
Status compact_cuda(const CompactParams& params, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(params.device));
  if (!known_dtype(params.dtype)) return Status::invalid("frame_drop compact: unsupported dtype");
  if (params.steps > cuda::kMaxGridX || params.tokens > cuda::kMaxGridX)
    return Status::invalid("frame_drop compact: steps and tokens must be at most 2^31 - 1");
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  VIDLLM_LAUNCH(1, kScanThreads, 0, cuda_stream, offsets_kernel)(params.counts, params.offsets,
                                                                 params.total, params.steps);
  VIDLLM_RETURN_IF_ERROR(cuda::launch_status());
  if (params.steps == 0 || params.tokens == 0 || params.capacity <= 0) return Status::ok();
  VIDLLM_LAUNCH(static_cast<unsigned int>(params.steps), kScanThreads, 0, cuda_stream,
                kept_index_kernel)(params);
  VIDLLM_RETURN_IF_ERROR(cuda::launch_status());
  if (params.dim == 0) return Status::ok();
  return launch_gather(params, element_size(params.dtype), cuda_stream);
}

}  // namespace vidllm::frame_drop
