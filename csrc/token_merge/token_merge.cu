// CUDA twin of token_merge_cpu.cpp (matching is in token_merge_match.cu). Launched on the
// caller's stream, every row of a batch (every segment of a hierarchical round) in one launch:
//   metric:  a thread per (token, channel): the chunk sum in chunk order, then the mean;
//   plan:    a block per row: radix select of the r-th largest rank key, block scans for the
//            slots and the CSR offsets, then the sources placed in ascending token order;
//   merge:   a warp per output token: destination, then its sources in CSR order (no atomics);
//   unmerge: a warp per input token: a row copy.
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cstdint>

#include "common/block_select.cuh"
#include "common/cuda_device.h"
#include "common/cuda_launch.cuh"
#include "common/cuda_utils.cuh"
#include "common/dtype.h"
#include "common/rank_key.h"
#include "token_merge/token_merge.h"
#include "token_merge/token_merge_round_to.h"

namespace vidllm::token_merge {
namespace {

using cuda::aligned16;
using cuda::ceil_div;
using cuda::Vec;

constexpr int kBlocksPerSm = 8;

// Enough blocks to fill the device `kBlocksPerSm` deep, fewer when there is less work.
int64_t grid_for(int64_t work_blocks, int device) {
  const int64_t sms = std::max(cuda::multiprocessor_count(device), 1);
  return std::max<int64_t>(1, std::min({work_blocks, sms * kBlocksPerSm, cuda::kMaxGridX}));
}

// =============================== metric ===============================

constexpr int kMetricThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kMetricThreads) metric_kernel(const MetricParams params) {
  const int64_t channels = params.dim / params.chunks;
  const int64_t per_row = params.rows.tokens * channels;
  const int64_t total = params.rows.count * per_row;
  const float chunks = static_cast<float>(params.chunks);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kMetricThreads;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kMetricThreads + threadIdx.x; item < total;
       item += stride) {
    const int64_t row = item / per_row;
    const int64_t token = (item - row * per_row) / channels;
    const int64_t channel = item - row * per_row - token * channels;
    if (token >= tokens_of(params.rows, row)) continue;
    const T* x =
        static_cast<const T*>(params.x) +
        row_start(params.rows, params.x_flat, row, params.x_row_stride, params.x_token_stride) +
        token * params.x_token_stride + channel;
    float sum = 0.0f;
    for (int64_t h = 0; h < params.chunks; ++h) sum = add_rn(sum, to_float(x[h * channels]));
    params.metric[item] = div_rn(sum, chunks);
  }
}

// =============================== plan ===============================

constexpr int kPlanThreads = 256;
constexpr int kPlanWarps = kPlanThreads / 32;

// Writes the slots of the protected tokens, the unmerged A tokens and the B tokens (and the
// tokens each slot keeps): the survivors before a token are all tokens before it less the
// merged A tokens before it, counted by a block scan over A in tiles.
template <typename IsMerged, typename BlockScan>
__device__ void write_survivor_slots(const IsMerged& is_merged, int64_t protected_count,
                                     int64_t protected_tokens, int64_t a_size, int64_t b_size,
                                     int64_t* slot, int64_t* kept_index,
                                     typename BlockScan::TempStorage& scan_storage) {
  for (int64_t t = threadIdx.x; t < protected_count; t += kPlanThreads) slot[t] = kept_index[t] = t;
  int64_t merged_before = 0;
  for (int64_t tile = 0; tile < a_size; tile += kPlanThreads) {
    const int64_t i = tile + threadIdx.x;
    const int64_t merged = i < a_size && is_merged(i);
    int64_t rank = 0;
    int64_t tile_merged = 0;
    BlockScan(scan_storage).ExclusiveSum(merged, rank, tile_merged);
    rank += merged_before;
    if (i < a_size && !merged) {
      const int64_t a = a_token(protected_tokens, i);
      slot[a] = a - rank;
      kept_index[a - rank] = a;
    }
    if (i < b_size) {
      const int64_t b = b_token(protected_tokens, i);
      slot[b] = b - (rank + merged);
      kept_index[b - (rank + merged)] = b;
    }
    merged_before += tile_merged;
    __syncthreads();  // scan_storage is reused by the next tile
  }
}

// offsets[1..outputs] hold counts: turns them into the inclusive prefix sums (offsets[0] = 0)
// and starts each slot's cursor at its first source.
template <typename BlockScan>
__device__ void scan_offsets(int64_t* offsets, int64_t* cursor, int64_t outputs,
                             typename BlockScan::TempStorage& scan_storage) {
  int64_t carry = 0;
  for (int64_t tile = 0; tile < outputs; tile += kPlanThreads) {
    const int64_t s = tile + threadIdx.x;
    const int64_t count = s < outputs ? offsets[s + 1] : 0;
    int64_t inclusive = 0;
    int64_t tile_total = 0;
    BlockScan(scan_storage).InclusiveSum(count, inclusive, tile_total);
    if (s < outputs) {
      offsets[s + 1] = carry + inclusive;
      cursor[s] = carry + inclusive - count;
    }
    carry += tile_total;
    __syncthreads();
  }
}

// Writes each merged A token into its slot's list, in ascending token order: tiles in order, the
// warps of a tile in turn; lanes of one warp that share a slot take consecutive places by lane.
template <typename IsMerged>
__device__ void place_sources(const IsMerged& is_merged, int64_t protected_tokens, int64_t a_size,
                              const int64_t* slot, int64_t* cursor, int64_t* source_index) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  for (int64_t tile = 0; tile < a_size; tile += kPlanThreads) {
    const int64_t i = tile + threadIdx.x;
    const bool merged = i < a_size && is_merged(i);
    const int64_t a = a_token(protected_tokens, i);
    const int64_t target = merged ? slot[a] : -1;
    const unsigned int peers =
        __match_any_sync(0xffffffffu, static_cast<unsigned long long>(target));
    for (int turn = 0; turn < kPlanWarps; ++turn) {
      if (warp == turn) {
        int64_t position = 0;
        if (merged) position = cursor[target] + __popc(peers & ((1u << lane) - 1u));
        __syncwarp();  // every peer has read the cursor before its leader moves it
        if (merged) {
          source_index[position] = a;
          if (lane == __ffs(peers) - 1) cursor[target] += __popc(peers);
        }
      }
      __syncthreads();
    }
  }
}

__global__ void __launch_bounds__(kPlanThreads) plan_kernel(const PlanParams params) {
  using BlockScan = cub::BlockScan<int64_t, kPlanThreads>;
  using BlockSelect = cuda::BlockRadixSelect<kPlanThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  __shared__ typename BlockSelect::Storage select_storage;
  const Rows& rows = params.rows;
  const int64_t protected_tokens = rows.protected_tokens;
  const int64_t a_capacity = set_a_size(rows.tokens, protected_tokens);
  const int64_t out_capacity = rows.tokens - rows.merges;

  for (int64_t row = blockIdx.x; row < rows.count; row += gridDim.x) {
    const int64_t tokens = tokens_of(rows, row);
    const int64_t merges = merges_of(rows, row);
    const int64_t outputs = tokens - merges;
    const int64_t a_size = set_a_size(tokens, protected_tokens);
    const int64_t b_size = set_b_size(tokens, protected_tokens);
    const float* score = params.score + row * a_capacity;
    const int64_t* partner = params.partner + row * a_capacity;
    int64_t* slot = params.slot + row * rows.tokens;
    int64_t* kept_index = params.kept_index + row * out_capacity;
    int64_t* offsets = params.source_offsets + row * (out_capacity + 1);
    int64_t* cursor = params.cursor + row * out_capacity;
    int64_t* source_index = params.source_index + row * rows.merges;

    const auto key = [score](int64_t i) { return rank_key(score[i], static_cast<uint32_t>(i)); };
    const uint64_t threshold =
        merges > 0 ? BlockSelect::kth_largest(key, a_size, merges, select_storage) : 0;
    const auto is_merged = [&](int64_t i) { return merges > 0 && key(i) >= threshold; };

    for (int64_t s = threadIdx.x; s <= outputs; s += kPlanThreads) offsets[s] = 0;
    write_survivor_slots<decltype(is_merged), BlockScan>(
        is_merged, tokens < protected_tokens ? tokens : protected_tokens, protected_tokens, a_size,
        b_size, slot, kept_index, scan_storage);
    __syncthreads();  // B slots and zeroed offsets are visible to the block
    for (int64_t i = threadIdx.x; i < a_size; i += kPlanThreads) {
      if (!is_merged(i)) continue;
      const int64_t destination = b_token(protected_tokens, clamp_index(partner[i], b_size));
      const int64_t target = slot[destination];
      slot[a_token(protected_tokens, i)] = target;
      atomicAdd(reinterpret_cast<unsigned long long*>(offsets + target + 1), 1ull);  // integer
    }
    __syncthreads();
    scan_offsets<BlockScan>(offsets, cursor, outputs, scan_storage);
    __syncthreads();
    place_sources(is_merged, protected_tokens, a_size, slot, cursor, source_index);
  }
}

// =============================== merge and unmerge ===============================

constexpr int kRowThreads = 256;
constexpr int kRowWarps = kRowThreads / 32;

// Copies one row of `dim` elements, VEC at a time, with the 32 lanes of a warp.
template <typename T, int VEC>
__device__ __forceinline__ void copy_row(const T* source, T* target, int64_t dim, int lane) {
  for (int64_t v = lane; v < dim / VEC; v += 32)
    Vec<T, VEC>::load(source + v * VEC).store(target + v * VEC);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kRowThreads) merge_kernel(const MergeParams params) {
  const Rows& rows = params.rows;
  const int64_t out_capacity = rows.tokens - rows.merges;
  const int lane = threadIdx.x % 32;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowWarps;
  for (int64_t item = first; item < rows.count * out_capacity; item += stride) {
    const int64_t row = item / out_capacity;
    const int64_t out_slot = item - row * out_capacity;
    const int64_t tokens = tokens_of(rows, row);
    const int64_t merges = merges_of(rows, row);
    if (out_slot >= tokens - merges) continue;  // the last row may keep fewer
    const int64_t position = output_position(params, row, out_slot);
    if (position < 0) continue;
    const int64_t kept = clamp_index(params.kept_index[item], tokens);
    const int64_t* offsets = params.source_offsets + row * (out_capacity + 1) + out_slot;
    const int64_t begin = clamp_index(offsets[0], merges + 1);
    const int64_t last = clamp_index(offsets[1], merges + 1);
    const int64_t end = last > begin ? last : begin;
    const int64_t* sources = params.source_index + row * rows.merges;
    const T* x = static_cast<const T*>(params.x) +
                 row_start(rows, params.x_flat, row, params.x_row_stride, params.x_token_stride);
    const float* size =
        params.size == nullptr ? nullptr : params.size + row * params.size_row_stride;
    const float kept_size = size == nullptr ? 1.0f : size[kept];
    T* out = static_cast<T*>(params.out) + position * params.dim;
    if (lane == 0 && params.index_out != nullptr)
      params.index_out[position] = carried_index(params, row, kept);
    const T* kept_row = x + kept * params.x_token_stride;
    if (begin == end) {  // nothing merged into this token: copied unchanged
      copy_row<T, VEC>(kept_row, out, params.dim, lane);
      if (lane == 0) params.size_out[position] = kept_size;
      continue;
    }
    float total = kept_size;
    for (int64_t k = begin; k < end; ++k)
      total = add_rn(total, size == nullptr ? 1.0f : size[clamp_index(sources[k], tokens)]);
    if (lane == 0) params.size_out[position] = total;
    for (int64_t v = lane; v < params.dim / VEC; v += 32) {
      float acc[VEC];
      float values[VEC];
      cuda::load_as_float<T, VEC>(kept_row + v * VEC, values);
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] = mul_rn(kept_size, values[e]);
      for (int64_t k = begin; k < end; ++k) {
        const int64_t source = clamp_index(sources[k], tokens);
        const float source_size = size == nullptr ? 1.0f : size[source];
        cuda::load_as_float<T, VEC>(x + source * params.x_token_stride + v * VEC, values);
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[e] = add_product(acc[e], source_size, values[e]);
      }
      Vec<T, VEC> merged;
#pragma unroll
      for (int e = 0; e < VEC; ++e) merged.elem[e] = from_float<T>(div_rn(acc[e], total));
      merged.store(out + v * VEC);
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kRowThreads) unmerge_kernel(const UnmergeParams params) {
  const Rows& rows = params.rows;
  const int lane = threadIdx.x % 32;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowWarps;
  const int64_t outputs = rows.tokens - rows.merges;
  for (int64_t item = first; item < rows.count * rows.tokens; item += stride) {
    const int64_t row = item / rows.tokens;
    const int64_t source = clamp_index(params.slot[item], outputs);
    const T* merged = static_cast<const T*>(params.merged) + row * params.merged_row_stride +
                      source * params.merged_token_stride;
    copy_row<T, VEC>(merged, static_cast<T*>(params.out) + item * params.dim, params.dim, lane);
  }
}

// 16-byte vectors need every row start aligned: base pointers, strides (of dimensions longer
// than one) and dim multiples of the vector.
template <typename T>
bool rows_vectorizable(const void* base, int64_t row_stride, int64_t token_stride, int64_t dim,
                       const Rows& rows) {
  constexpr int64_t kVec = cuda::kVectorWidth<T>;
  const bool rows_ok = rows.count <= 1 || row_stride % kVec == 0;
  const bool tokens_ok = rows.tokens <= 1 || token_stride % kVec == 0;
  return dim % kVec == 0 && aligned16(base) && rows_ok && tokens_ok;
}

template <typename T>
Status launch_merge(const MergeParams& p, cudaStream_t stream) {
  const int64_t out_capacity = p.rows.tokens - p.rows.merges;
  const dim3 grid(static_cast<unsigned int>(
      grid_for(ceil_div(p.rows.count * out_capacity, int64_t{kRowWarps}), p.device)));
  const bool vectorized =
      rows_vectorizable<T>(p.x, p.x_row_stride, p.x_token_stride, p.dim, p.rows) &&
      aligned16(p.out);
  VIDLLM_VECTOR_SWITCH(vectorized, T, kVec,
                       VIDLLM_LAUNCH(grid, kRowThreads, 0, stream, merge_kernel<T, kVec>)(p));
  return cuda::launch_status();
}

template <typename T>
Status launch_unmerge(const UnmergeParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>(
      grid_for(ceil_div(p.rows.count * p.rows.tokens, int64_t{kRowWarps}), p.device)));
  Rows merged_rows = p.rows;
  merged_rows.tokens = p.rows.tokens - p.rows.merges;
  const bool vectorized = rows_vectorizable<T>(p.merged, p.merged_row_stride, p.merged_token_stride,
                                               p.dim, merged_rows) &&
                          aligned16(p.out);
  VIDLLM_VECTOR_SWITCH(vectorized, T, kVec,
                       VIDLLM_LAUNCH(grid, kRowThreads, 0, stream, unmerge_kernel<T, kVec>)(p));
  return cuda::launch_status();
}

}  // namespace

// =============================== launchers ===============================

Status metric_cuda(const MetricParams& params, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(params.device));
  const int64_t total = params.rows.count * params.rows.tokens * (params.dim / params.chunks);
  if (total == 0) return Status::ok();
  const dim3 grid(
      static_cast<unsigned int>(grid_for(ceil_div(total, int64_t{kMetricThreads}), params.device)));
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  VIDLLM_DISPATCH_FLOAT_TYPES(params.dtype, VIDLLM_LAUNCH(grid, kMetricThreads, 0, cuda_stream,
                                                          metric_kernel<scalar_t>)(params));
  return cuda::launch_status();
}

Status plan_cuda(const PlanParams& params, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(params.device));
  if (params.rows.count == 0) return Status::ok();
  const unsigned int blocks =
      static_cast<unsigned int>(std::min(params.rows.count, cuda::kMaxGridX));
  VIDLLM_LAUNCH(blocks, kPlanThreads, 0, static_cast<cudaStream_t>(stream), plan_kernel)(params);
  return cuda::launch_status();
}

Status wavg_cuda(const MergeParams& params, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(params.device));
  if (params.rows.count == 0 || params.rows.tokens - params.rows.merges == 0) return Status::ok();
  VIDLLM_DISPATCH_FLOAT_TYPES(
      params.dtype, return launch_merge<scalar_t>(params, static_cast<cudaStream_t>(stream)));
}

Status unmerge_cuda(const UnmergeParams& params, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(params.device));
  if (params.rows.count == 0 || params.rows.tokens == 0) return Status::ok();
  VIDLLM_DISPATCH_FLOAT_TYPES(
      params.dtype, return launch_unmerge<scalar_t>(params, static_cast<cudaStream_t>(stream)));
}

}  // namespace vidllm::token_merge
