// CUDA twin of routing_cpu.cpp, launched on the caller's stream:
//   topk:    plan: one block checks the offsets and scans the per-segment keep counts;
//            select: a warp per segment of at most 32 tokens (rank by counting), a block per
//            longer segment (radix select of the k-th largest rank key, then a block scan);
//   gather:  a warp per output row, 16-byte vectors when every row start allows;
//   scatter: which k updates each row (a map kernel over the index; with repeats, a link kernel
//            chains each row's updates in index order), then a warp per row of y.
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "common/block_select.cuh"
#include "common/cuda_device.h"
#include "common/cuda_launch.cuh"
#include "common/cuda_utils.cuh"
#include "common/dtype.h"
#include "common/rank_key.h"
#include "routing/routing.h"

namespace vidllm::routing {
namespace {

using cuda::aligned16;
using cuda::ceil_div;
using cuda::Vec;

constexpr unsigned int kFullWarp = 0xffffffffu;

// Blocks for a grid-stride loop over `work` items handled `per_block` at a time: enough to fill
// the device `per_sm` times over, never more than there is work for.
int64_t grid_size(int64_t work, int64_t per_block, int64_t per_sm, int device) {
  const int64_t sms = std::max(cuda::multiprocessor_count(device), 1);
  return std::max<int64_t>(1, std::min(ceil_div(work, per_block), sms * per_sm));
}

// =============================== topk ===============================

constexpr int kPlanThreads = 256;
constexpr int kPlanItems = 4;  // segments per thread per tile of the scan
constexpr int kSelectThreads = 256;
constexpr int kSelectWarps = kSelectThreads / 32;
constexpr int64_t kSmallSegment = 32;  // at most this many tokens: one warp ranks them

// One block: *total = sum of k_s and slot_start = its exclusive prefix sum, tile by tile with a
// running carry; *total = -1 when the offsets do not run from 0 to tokens without decreasing.
__global__ void __launch_bounds__(kPlanThreads) topk_plan_kernel(const TopkParams p) {
  using BlockScan = cub::BlockScan<int64_t, kPlanThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  int invalid = threadIdx.x == 0 && (p.offsets[0] != 0 || p.offsets[p.segments] != p.tokens);
  int64_t carry = 0;
  for (int64_t tile = 0; tile < p.segments; tile += kPlanThreads * kPlanItems) {
    // Blocked arrangement: each thread scans kPlanItems consecutive segments.
    const int64_t first = tile + static_cast<int64_t>(threadIdx.x) * kPlanItems;
    int64_t items[kPlanItems];
    int64_t prefix[kPlanItems];
#pragma unroll
    for (int i = 0; i < kPlanItems; ++i) {
      items[i] = 0;
      if (first + i < p.segments) {
        const int64_t tokens = p.offsets[first + i + 1] - p.offsets[first + i];
        invalid |= tokens < 0;
        items[i] = keep_count(p.keep_ratio, tokens);
      }
    }
    int64_t tile_total = 0;
    BlockScan(scan_storage).ExclusiveSum(items, prefix, tile_total);
#pragma unroll
    for (int i = 0; i < kPlanItems; ++i)
      if (first + i < p.segments) p.slot_start[first + i] = carry + prefix[i];
    carry += tile_total;
    __syncthreads();  // scan_storage is reused by the next tile
  }
  invalid = __syncthreads_or(invalid);
  if (threadIdx.x == 0) *p.total = invalid ? -1 : carry;
}

template <typename T>
__device__ __forceinline__ uint64_t token_key(const T* scores, int64_t stride, int64_t i) {
  return rank_key(to_float(scores[i * stride]), static_cast<uint32_t>(i));
}

// A warp per segment of at most kSmallSegment tokens: lane i holds token i's key (absent lanes
// key 0, below every real key), its rank is the number of larger keys in the warp, and the
// selected lanes find their output slots by a ballot.
template <typename T>
__global__ void __launch_bounds__(kSelectThreads) topk_small_kernel(const TopkParams p) {
  if (*p.total < 0) return;
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kSelectWarps;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * kSelectWarps + threadIdx.x / 32;
       s < p.segments; s += warps) {
    const int64_t first = p.offsets[s];
    const int64_t tokens = p.offsets[s + 1] - first;
    const int64_t kept = keep_count(p.keep_ratio, tokens);
    const int64_t slot = p.slot_start[s];
    if (tokens > kSmallSegment || kept == 0 || slot >= p.capacity) continue;  // warp-uniform
    const T* scores = static_cast<const T*>(p.scores) + first * p.score_stride;
    const bool present = lane < tokens;
    const uint64_t key = present ? token_key(scores, p.score_stride, lane) : 0;
    int rank = 0;
#pragma unroll
    for (int other = 0; other < 32; ++other) rank += __shfl_sync(kFullWarp, key, other) > key;
    const bool selected = present && rank < kept;
    const unsigned int ballot = __ballot_sync(kFullWarp, selected);
    const int64_t out = slot + __popc(ballot & ((1u << lane) - 1u));
    if (selected && out < p.capacity) p.index[out] = first + lane;
  }
}

// A block per segment of more than kSmallSegment tokens (grid-stride): the k-th largest key by
// radix select, then every key >= it (exactly k: keys are unique) written in token order through
// a block scan over tiles of the segment.
template <typename T>
__global__ void __launch_bounds__(kSelectThreads) topk_large_kernel(const TopkParams p) {
  using BlockSelect = cuda::BlockRadixSelect<kSelectThreads>;
  using BlockScan = cub::BlockScan<int, kSelectThreads>;
  __shared__ typename BlockSelect::Storage select_storage;
  __shared__ typename BlockScan::TempStorage scan_storage;
  if (*p.total < 0) return;
  for (int64_t s = blockIdx.x; s < p.segments; s += gridDim.x) {
    const int64_t first = p.offsets[s];
    const int64_t tokens = p.offsets[s + 1] - first;
    const int64_t kept = keep_count(p.keep_ratio, tokens);
    int64_t slot = p.slot_start[s];
    if (tokens <= kSmallSegment || kept == 0 || slot >= p.capacity) continue;  // block-uniform
    const T* scores = static_cast<const T*>(p.scores) + first * p.score_stride;
    const int64_t stride = p.score_stride;
    const auto key = [scores, stride](int64_t i) { return token_key(scores, stride, i); };
    const bool keep_all = kept == tokens;
    const uint64_t kth = keep_all ? 0 : BlockSelect::kth_largest(key, tokens, kept, select_storage);
    for (int64_t tile = 0; tile < tokens && slot < p.capacity; tile += kSelectThreads) {
      const int64_t i = tile + threadIdx.x;
      const int flag = i < tokens && (keep_all || key(i) >= kth);
      int rank = 0;
      int tile_kept = 0;
      BlockScan(scan_storage).ExclusiveSum(flag, rank, tile_kept);
      if (flag && slot + rank < p.capacity) p.index[slot + rank] = first + i;
      slot += tile_kept;
      __syncthreads();  // scan_storage is reused by the next tile
    }
  }
}

template <typename T>
Status launch_topk_select(const TopkParams& p, cudaStream_t stream) {
  const int64_t small_blocks = grid_size(p.segments, kSelectWarps, 8, p.device);
  VIDLLM_LAUNCH(static_cast<unsigned int>(small_blocks), kSelectThreads, 0, stream,
                topk_small_kernel<T>)(p);
  VIDLLM_RETURN_IF_ERROR(cuda::launch_status());
  if (p.tokens <= kSmallSegment) return Status::ok();  // no segment can be long
  const int64_t large_blocks = grid_size(p.segments, 1, 4, p.device);
  VIDLLM_LAUNCH(static_cast<unsigned int>(large_blocks), kSelectThreads, 0, stream,
                topk_large_kernel<T>)(p);
  return cuda::launch_status();
}

// =============================== rows ===============================

constexpr int kRowThreads = 256;
constexpr int kRowWarps = kRowThreads / 32;
constexpr int kRowBlocksPerSm = 8;  // 2048 threads: a full SM
constexpr int kCopyUnroll = 4;      // units each lane loads before storing any
constexpr int kRowUnroll = 4;       // vectors each lane loads before computing with any

template <typename T>
__device__ __forceinline__ void fill_nan(T* row, int64_t dim, int lane) {
  const T nan = narrow<T>(std::numeric_limits<acc_t<T>>::quiet_NaN());
  for (int64_t d = lane; d < dim; d += 32) row[d] = nan;
}

__device__ __forceinline__ int64_t warp_id() {
  return (static_cast<int64_t>(blockIdx.x) * kRowThreads + threadIdx.x) / 32;
}

__device__ __forceinline__ int64_t warp_count() {
  return static_cast<int64_t>(gridDim.x) * kRowWarps;
}

// This lane's kRowUnroll vectors first, first + 32, ... of a row (vector v at row + v * VEC) into
// `out`; those at or past `vectors` are left as they are. A null row reads as zeros.
template <typename T, int VEC>
__device__ __forceinline__ void load_lane_vectors(Vec<T, VEC> (&out)[kRowUnroll], const T* row,
                                                  int64_t first, int64_t vectors) {
#pragma unroll
  for (int u = 0; u < kRowUnroll; ++u) {
    const int64_t v = first + u * 32;
    if (v >= vectors) continue;
    out[u] = row == nullptr ? Vec<T, VEC>{} : Vec<T, VEC>::load(row + v * VEC);
  }
}

// Plain gather: rows copied as raw Units (16-byte vectors when every row start allows, else
// one element at a time).
template <typename T, typename Unit>
__global__ void __launch_bounds__(kRowThreads) gather_copy_kernel(const GatherParams p) {
  const int64_t units =
      p.dim * static_cast<int64_t>(sizeof(T)) / static_cast<int64_t>(sizeof(Unit));
  const int lane = threadIdx.x % 32;
  for (int64_t k = warp_id(); k < p.count; k += warp_count()) {
    const int64_t row = p.index[k];
    T* out = static_cast<T*>(p.out) + k * p.dim;
    if (row < 0 || row >= p.rows) {
      if (lane == 0) atomicOr(p.status, kIndexOutOfRange);
      fill_nan(out, p.dim, lane);
      continue;
    }
    const Unit* src =
        reinterpret_cast<const Unit*>(static_cast<const T*>(p.source) + row * p.source_stride);
    Unit* dst = reinterpret_cast<Unit*>(out);
    cuda::warp_copy<kCopyUnroll>(src, dst, units, lane);
  }
}

// Gather with a weight and/or a dot product against `other`: the backward of scatter_add_rows,
// grad_delta = weight * grad_y[index] and grad_weight = sum_d grad_y[index] * delta in one read.
// The dot product is reduced by a fixed shuffle tree: deterministic.
template <typename T, int VEC, bool kDot>
__global__ void __launch_bounds__(kRowThreads) gather_scaled_kernel(const GatherParams p) {
  using Acc = acc_t<T>;
  using V = Vec<T, VEC>;
  const int64_t vectors = p.dim / VEC;
  const int lane = threadIdx.x % 32;
  Acc* dot = static_cast<Acc*>(p.dot);
  for (int64_t k = warp_id(); k < p.count; k += warp_count()) {
    const int64_t row = p.index[k];
    T* out = p.out == nullptr ? nullptr : static_cast<T*>(p.out) + k * p.dim;
    if (row < 0 || row >= p.rows) {
      if (lane == 0) atomicOr(p.status, kIndexOutOfRange);
      if (out != nullptr) fill_nan(out, p.dim, lane);
      if (kDot && lane == 0) dot[k] = std::numeric_limits<Acc>::quiet_NaN();
      continue;
    }
    const Acc weight = p.weight == nullptr ? Acc(1) : static_cast<const Acc*>(p.weight)[k];
    const T* source = static_cast<const T*>(p.source) + row * p.source_stride;
    const T* other = kDot ? static_cast<const T*>(p.other) + k * p.other_stride : nullptr;
    Acc sum = 0;
    for (int64_t first = lane; first < vectors; first += 32 * kRowUnroll) {
      V sources[kRowUnroll];
      V others[kRowUnroll];
      load_lane_vectors(sources, source, first, vectors);
      if constexpr (kDot) load_lane_vectors(others, other, first, vectors);
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const int64_t v = first + u * 32;
        if (v >= vectors) continue;
        if (out != nullptr) {
          V scaled;
#pragma unroll
          for (int i = 0; i < VEC; ++i)
            scaled.elem[i] = narrow<T>(weight * widen(sources[u].elem[i]));
          scaled.store(out + v * VEC);
        }
        if constexpr (kDot) {
#pragma unroll
          for (int i = 0; i < VEC; ++i) sum += widen(sources[u].elem[i]) * widen(others[u].elem[i]);
        }
      }
    }
    if constexpr (kDot) {
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullWarp, sum, offset);
      if (lane == 0) dot[k] = sum;
    }
  }
}

// Which k updates each row of y: row_source[row] = k for one update, -2 for several (their
// order is then recovered by the link kernel). row_source starts at -1.
__global__ void __launch_bounds__(kRowThreads) scatter_map_kernel(const ScatterParams p) {
  using Word = unsigned long long;
  constexpr Word kNone = static_cast<Word>(-1);
  constexpr Word kSeveral = static_cast<Word>(-2);
  const int64_t step = static_cast<int64_t>(gridDim.x) * kRowThreads;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kRowThreads + threadIdx.x; k < p.count;
       k += step) {
    const int64_t row = p.index[k];
    if (row < 0 || row >= p.rows) {
      atomicOr(p.status, kIndexOutOfRange);
      continue;
    }
    Word* source = reinterpret_cast<Word*>(p.row_source + row);
    if (atomicCAS(source, kNone, static_cast<Word>(k)) != kNone) {
      atomicExch(source, kSeveral);  // nothing ever sets it back to a single k
      atomicOr(p.status, kIndexRepeated);
    }
  }
}

// The link pass (routing.h, "scatter workspace"), only when some row has several updates: one
// warp walks the index backwards, 32 entries at a time. Lanes naming the same row find each other
// by __match_any_sync; a lane's successor is the next such lane, or for the last of them the row's
// current first update; then the first of them becomes the row's first update. Sequential over
// count / 32 steps, but linear: the rows kernel no longer rescans the index per row.
__global__ void __launch_bounds__(32) scatter_link_kernel(const ScatterParams p) {
  if (*p.status != kIndexRepeated) return;  // no repeats, or every row is poisoned anyway
  const int lane = threadIdx.x;
  for (int64_t base = (p.count - 1) / 32 * 32; base >= 0; base -= 32) {
    const int64_t k = base + lane;
    const long long row = k < p.count ? p.index[k] : -1;
    const unsigned int peers = __match_any_sync(kFullWarp, row);
    const unsigned int later = peers & ~((2u << lane) - 1u);  // lane 31: 2u << 31 == 0, none
    const unsigned int earlier = peers & ((1u << lane) - 1u);
    if (row >= 0)
      p.next_update[k] =
          later != 0 ? base + __ffs(later) - 1 : linked_first_update(p.row_source[row]);
    __syncwarp();  // every lane has read the first updates before any is replaced
    if (row >= 0 && earlier == 0) p.row_source[row] = kFirstUpdateBase - k;
    __syncwarp();
  }
}

// A row of y with several updates: they are added in index order by following the chain from
// the link pass; each lane holds kRowUnroll vectors of sums while it walks the chain.
template <typename T, int VEC>
__device__ void scatter_repeated_row(const ScatterParams& p, int64_t first_update, const T* x, T* y,
                                     int64_t vectors, int lane) {
  using Acc = acc_t<T>;
  using V = Vec<T, VEC>;
  for (int64_t first = lane; first < vectors; first += 32 * kRowUnroll) {
    Acc acc[kRowUnroll][VEC];
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const int64_t v = first + u * 32;
      const V base = x == nullptr || v >= vectors ? V{} : V::load(x + v * VEC);  // V{}: zeros
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[u][i] = widen(base.elem[i]);
    }
    for (int64_t j = first_update; j >= 0; j = p.next_update[j]) {
      const Acc weight = p.weight == nullptr ? Acc(1) : static_cast<const Acc*>(p.weight)[j];
      const T* delta = static_cast<const T*>(p.delta) + j * p.delta_stride;
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const int64_t v = first + u * 32;
        if (v >= vectors) continue;
        const V update = V::load(delta + v * VEC);
#pragma unroll
        for (int i = 0; i < VEC; ++i)
          acc[u][i] = add_scaled(acc[u][i], weight, widen(update.elem[i]));
      }
    }
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const int64_t v = first + u * 32;
      if (v >= vectors) continue;
      V result;
#pragma unroll
      for (int i = 0; i < VEC; ++i) result.elem[i] = narrow<T>(acc[u][i]);
      result.store(y + v * VEC);
    }
  }
}

// A warp per row of y. Rows without an update are copied from x (or zeroed), rows with one get
// x + weight * delta; each lane loads kRowUnroll vectors before storing any. An out-of-range
// index makes every row NaN.
template <typename T, int VEC>
__global__ void __launch_bounds__(kRowThreads) scatter_rows_kernel(const ScatterParams p) {
  using Acc = acc_t<T>;
  using V = Vec<T, VEC>;
  const int64_t vectors = p.dim / VEC;
  const int lane = threadIdx.x % 32;
  const bool poisoned = (*p.status & kIndexOutOfRange) != 0;
  for (int64_t row = warp_id(); row < p.rows; row += warp_count()) {
    T* y = static_cast<T*>(p.y) + row * p.dim;
    if (poisoned) {
      fill_nan(y, p.dim, lane);
      continue;
    }
    const T* x = p.x == nullptr ? nullptr : static_cast<const T*>(p.x) + row * p.x_stride;
    const int64_t k = p.row_source[row];
    if (k <= kFirstUpdateBase) {
      scatter_repeated_row<T, VEC>(p, linked_first_update(k), x, y, vectors, lane);
      continue;
    }
    const T* delta = k < 0 ? nullptr : static_cast<const T*>(p.delta) + k * p.delta_stride;
    const Acc weight = k < 0 || p.weight == nullptr ? Acc(1) : static_cast<const Acc*>(p.weight)[k];
    for (int64_t first = lane; first < vectors; first += 32 * kRowUnroll) {
      V bases[kRowUnroll];
      V updates[kRowUnroll];
      load_lane_vectors(bases, x, first, vectors);  // null x: zeros
      if (delta != nullptr) load_lane_vectors(updates, delta, first, vectors);
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const int64_t v = first + u * 32;
        if (v >= vectors) continue;
        if (delta == nullptr) {
          bases[u].store(y + v * VEC);
          continue;
        }
        V result;
#pragma unroll
        for (int i = 0; i < VEC; ++i)
          result.elem[i] =
              narrow<T>(add_scaled(widen(bases[u].elem[i]), weight, widen(updates[u].elem[i])));
        result.store(y + v * VEC);
      }
    }
  }
}

// 16-byte vectors need every row start 16-byte aligned: base pointers, row strides (of tensors
// with more than one row) and dim all multiples of the vector.
bool rows_aligned(const void* base, int64_t stride, int64_t rows, int64_t vector) {
  return base == nullptr || (aligned16(base) && (rows <= 1 || stride % vector == 0));
}

template <typename T>
bool gather_vectorizable(const GatherParams& p) {
  constexpr int64_t kVec = cuda::kVectorWidth<T>;
  return p.dim % kVec == 0 && rows_aligned(p.source, p.source_stride, p.rows, kVec) &&
         rows_aligned(p.other, p.other_stride, p.count, kVec) && rows_aligned(p.out, 0, 1, kVec);
}

template <typename T>
bool scatter_vectorizable(const ScatterParams& p) {
  constexpr int64_t kVec = cuda::kVectorWidth<T>;
  return p.dim % kVec == 0 && rows_aligned(p.x, p.x_stride, p.rows, kVec) &&
         rows_aligned(p.delta, p.delta_stride, p.count, kVec) && rows_aligned(p.y, 0, 1, kVec);
}

template <typename T>
Status launch_gather(const GatherParams& p, cudaStream_t stream) {
  constexpr int kVec = cuda::kVectorWidth<T>;
  const bool vectorized = gather_vectorizable<T>(p);
  const dim3 grid(
      static_cast<unsigned int>(grid_size(p.count, kRowWarps, kRowBlocksPerSm, p.device)));
  if (p.weight == nullptr && p.dot == nullptr) {
    if (vectorized)
      VIDLLM_LAUNCH(grid, kRowThreads, 0, stream, gather_copy_kernel<T, uint4>)(p);
    else
      VIDLLM_LAUNCH(grid, kRowThreads, 0, stream, gather_copy_kernel<T, T>)(p);
  } else if (p.dot != nullptr) {
    if (vectorized)
      VIDLLM_LAUNCH(grid, kRowThreads, 0, stream, gather_scaled_kernel<T, kVec, true>)(p);
    else
      VIDLLM_LAUNCH(grid, kRowThreads, 0, stream, gather_scaled_kernel<T, 1, true>)(p);
  } else {
    if (vectorized)
      VIDLLM_LAUNCH(grid, kRowThreads, 0, stream, gather_scaled_kernel<T, kVec, false>)(p);
    else
      VIDLLM_LAUNCH(grid, kRowThreads, 0, stream, gather_scaled_kernel<T, 1, false>)(p);
  }
  return cuda::launch_status();
}

template <typename T>
Status launch_scatter_rows(const ScatterParams& p, cudaStream_t stream) {
  const dim3 grid(
      static_cast<unsigned int>(grid_size(p.rows, kRowWarps, kRowBlocksPerSm, p.device)));
  VIDLLM_VECTOR_SWITCH(
      scatter_vectorizable<T>(p), T, kVec,
      VIDLLM_LAUNCH(grid, kRowThreads, 0, stream, scatter_rows_kernel<T, kVec>)(p));
  return cuda::launch_status();
}

}  // namespace

// =============================== launchers ===============================

// Always writes *total (and slot_start): also for zero segments, where it checks tokens == 0.
Status topk_plan_cuda(const TopkParams& params, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(params.device));
  VIDLLM_LAUNCH(1, kPlanThreads, 0, static_cast<cudaStream_t>(stream), topk_plan_kernel)(params);
  return cuda::launch_status();
}

// Reads *total on the device: nothing is written after a plan that found invalid offsets.
Status topk_select_cuda(const TopkParams& params, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(params.device));
  if (params.segments == 0 || params.capacity <= 0) return Status::ok();
  if (params.tokens > cuda::kMaxGridX)
    return Status::invalid("routing topk: at most 2^31 - 1 tokens are supported");
  VIDLLM_DISPATCH_FLOAT_TYPES(params.score_dtype, return launch_topk_select<scalar_t>(
                                                      params, static_cast<cudaStream_t>(stream)));
}

Status gather_cuda(const GatherParams& params, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(params.device));
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  VIDLLM_RETURN_IF_CUDA_ERROR(cudaMemsetAsync(params.status, 0, sizeof(int32_t), cuda_stream));
  if (params.count == 0) return Status::ok();
  VIDLLM_DISPATCH_ROW_TYPES(params.dtype, return launch_gather<scalar_t>(params, cuda_stream));
}

Status scatter_cuda(const ScatterParams& params, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(params.device));
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  VIDLLM_RETURN_IF_CUDA_ERROR(cudaMemsetAsync(params.status, 0, sizeof(int32_t), cuda_stream));
  if (params.rows > 0) {
    // All bytes 0xff: every int64 entry is -1 (no update yet).
    VIDLLM_RETURN_IF_CUDA_ERROR(cudaMemsetAsync(
        params.row_source, 0xff, static_cast<size_t>(params.rows) * sizeof(int64_t), cuda_stream));
  }
  if (params.count > 0) {
    const int64_t blocks = grid_size(params.count, kRowThreads, kRowBlocksPerSm, params.device);
    VIDLLM_LAUNCH(static_cast<unsigned int>(blocks), kRowThreads, 0, cuda_stream,
                  scatter_map_kernel)(params);
    VIDLLM_RETURN_IF_ERROR(cuda::launch_status());
    VIDLLM_LAUNCH(1, 32, 0, cuda_stream,
                  scatter_link_kernel)(params);  // returns at once without repeats
    VIDLLM_RETURN_IF_ERROR(cuda::launch_status());
  }
  if (params.rows == 0 || params.dim == 0) return Status::ok();
  VIDLLM_DISPATCH_ROW_TYPES(params.dtype,
                            return launch_scatter_rows<scalar_t>(params, cuda_stream));
}

}  // namespace vidllm::routing
