// CUDA twin of token_merge_match_cpu.cpp: each A token's most similar B token, without writing
// the |A| x |B| similarity matrix anywhere. A block owns kTileA A tokens of one row and walks the
// row's B tokens in tiles of kTileB; channels stream through shared memory in chunks. Every
// thread computes a 4 x 4 register tile of dot products, each a chain over the channels in
// ascending order (add_product: no FMA contraction), then folds the similarities into a running
// best per A token keyed by rank_key, so the result is the CPU's bit for bit.
#include <algorithm>
#include <cstdint>

#include "common/cuda_device.h"
#include "common/cuda_launch.cuh"
#include "common/cuda_utils.cuh"
#include "common/dtype.h"
#include "common/rank_key.h"
#include "token_merge/token_merge.h"

namespace vidllm::token_merge {
namespace {

using cuda::ceil_div;

constexpr int kMatchThreads = 256;
constexpr int kTileA = 64;
constexpr int kTileB = 64;
constexpr int kChunk = 32;                  // channels per shared-memory stage
constexpr int kMicro = 4;                   // A tokens and B tokens per thread
constexpr int kThreadsB = kTileB / kMicro;  // 16 threads across B, 16 across A
static_assert(kThreadsB * (kTileA / kMicro) == kMatchThreads, "one thread per 4 x 4 tile");
static_assert(kTileA + kTileB <= kMatchThreads, "one thread per norm");

struct MatchStorage {
  float a[kChunk][kTileA + 1];  // channel-major; +1 keeps the transposing stores conflict-free
  float b[kChunk][kTileB + 1];
  float a_sum_sq[kTileA];
  float b_sum_sq[kTileB];
};

// Stages channels [first, first + count) of kTile tokens (token(r) for r < valid, zeros after)
// into tile[channel][r]; consecutive threads read consecutive channels of one token.
template <typename T, int kTile>
__device__ __forceinline__ void stage(float (*tile)[kTile + 1], const T* metric,
                                      int64_t token_stride, int64_t protected_tokens,
                                      int64_t first_token, int64_t valid, bool set_b, int64_t first,
                                      int count) {
  for (int e = threadIdx.x; e < kTile * kChunk; e += kMatchThreads) {
    const int r = e / kChunk;
    const int c = e % kChunk;
    float value = 0.0f;
    if (first_token + r < valid && c < count) {
      const int64_t index = first_token + r;
      const int64_t token =
          set_b ? b_token(protected_tokens, index) : a_token(protected_tokens, index);
      value = to_float(metric[token * token_stride + first + c]);
    }
    tile[c][r] = value;
  }
}

template <typename T>
__global__ void __launch_bounds__(kMatchThreads)
    match_kernel(const MatchParams params, const int64_t a_tiles) {
  __shared__ MatchStorage storage;
  const Rows& rows = params.rows;
  const int64_t prot = rows.protected_tokens;
  const int64_t a_capacity = set_a_size(rows.tokens, prot);
  const int tx = threadIdx.x % kThreadsB;  // B columns tx + 16 j
  const int ty = threadIdx.x / kThreadsB;  // A rows ty + 16 i

  for (int64_t work = blockIdx.x; work < rows.count * a_tiles; work += gridDim.x) {
    const int64_t row = work / a_tiles;
    const int64_t first_a = (work % a_tiles) * kTileA;
    const int64_t tokens = tokens_of(rows, row);
    const int64_t a_size = set_a_size(tokens, prot);
    const int64_t b_size = set_b_size(tokens, prot);
    if (first_a >= a_size) continue;  // the last row may be shorter
    float* score = params.score + row * a_capacity;
    int64_t* partner = params.partner + row * a_capacity;
    if (b_size == 0) {  // at most one open token: nothing to match it with
      const int64_t i = first_a + threadIdx.x;
      if (threadIdx.x < kTileA && i < a_size) {
        score[i] = __uint_as_float(0x7fc00000u);
        partner[i] = -1;
      }
      continue;
    }
    const T* metric = static_cast<const T*>(params.metric) + row * params.metric_row_stride;

    uint64_t best_key[kMicro];
    float best_score[kMicro];
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
      best_key[i] = 0;  // below every rank key: the first candidate always wins
      best_score[i] = 0.0f;
    }
    for (int64_t first_b = 0; first_b < b_size; first_b += kTileB) {
      float dot[kMicro][kMicro];
#pragma unroll
      for (int i = 0; i < kMicro; ++i)
#pragma unroll
        for (int j = 0; j < kMicro; ++j) dot[i][j] = 0.0f;
      float sum_sq = 0.0f;  // threads 0..63: an A token's; 64..127: a B token's
      for (int64_t first_c = 0; first_c < params.channels; first_c += kChunk) {
        const int count = static_cast<int>(
            params.channels - first_c < kChunk ? params.channels - first_c : kChunk);
        stage<T, kTileA>(storage.a, metric, params.metric_token_stride, prot, first_a, a_size,
                         false, first_c, count);
        stage<T, kTileB>(storage.b, metric, params.metric_token_stride, prot, first_b, b_size, true,
                         first_c, count);
        __syncthreads();
        if (threadIdx.x < kTileA) {
          if (first_b == 0)
            for (int c = 0; c < count; ++c)
              sum_sq = add_product(sum_sq, storage.a[c][threadIdx.x], storage.a[c][threadIdx.x]);
        } else if (threadIdx.x < kTileA + kTileB) {
          const int r = threadIdx.x - kTileA;
          for (int c = 0; c < count; ++c)
            sum_sq = add_product(sum_sq, storage.b[c][r], storage.b[c][r]);
        }
        for (int c = 0; c < count; ++c) {
          float a[kMicro];
          float b[kMicro];
#pragma unroll
          for (int i = 0; i < kMicro; ++i) a[i] = storage.a[c][ty + i * kThreadsB];
#pragma unroll
          for (int j = 0; j < kMicro; ++j) b[j] = storage.b[c][tx + j * kThreadsB];
#pragma unroll
          for (int i = 0; i < kMicro; ++i)
#pragma unroll
            for (int j = 0; j < kMicro; ++j) dot[i][j] = add_product(dot[i][j], a[i], b[j]);
        }
        __syncthreads();  // the tiles are restaged next
      }
      // A sums of squares are computed on the first B tile and kept for the later ones.
      if (threadIdx.x < kTileA && first_b == 0) storage.a_sum_sq[threadIdx.x] = sum_sq;
      if (threadIdx.x >= kTileA && threadIdx.x < kTileA + kTileB)
        storage.b_sum_sq[threadIdx.x - kTileA] = sum_sq;
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
        const float a_sq = clamped_sum_sq(storage.a_sum_sq[ty + i * kThreadsB]);
#pragma unroll
        for (int j = 0; j < kMicro; ++j) {
          const int64_t b_index = first_b + tx + j * kThreadsB;
          if (b_index >= b_size) continue;
          const float b_sq = clamped_sum_sq(storage.b_sum_sq[tx + j * kThreadsB]);
          // cosine_from_sums, with the clamps hoisted out of the loops.
          const float similarity = div_rn(dot[i][j], cosine_denominator(a_sq, b_sq));
          const uint64_t key = rank_key(similarity, static_cast<uint32_t>(b_index));
          if (key > best_key[i]) {
            best_key[i] = key;
            best_score[i] = similarity;
          }
        }
      }
      __syncthreads();  // b_sum_sq is rewritten by the next tile
    }
    // The 16 threads sharing ty are 16 consecutive lanes: combine their bests by rank key
    // (keys are unique, so the order of combining does not matter).
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
#pragma unroll
      for (int offset = kThreadsB / 2; offset > 0; offset /= 2) {
        const uint64_t other_key = __shfl_xor_sync(0xffffffffu, best_key[i], offset);
        const float other_score = __shfl_xor_sync(0xffffffffu, best_score[i], offset);
        if (other_key > best_key[i]) {
          best_key[i] = other_key;
          best_score[i] = other_score;
        }
      }
      const int64_t a_index = first_a + ty + i * kThreadsB;
      if (tx == 0 && a_index < a_size) {
        partner[a_index] = 0xffffffffu - static_cast<uint32_t>(best_key[i]);
        score[a_index] = best_score[i];
      }
    }
  }
}

template <typename T>
Status launch_match(const MatchParams& p, cudaStream_t stream) {
  const int64_t a_capacity = set_a_size(p.rows.tokens, p.rows.protected_tokens);
  const int64_t a_tiles = ceil_div(a_capacity, int64_t{kTileA});
  const int64_t blocks = std::min(p.rows.count * a_tiles, cuda::kMaxGridX);
  VIDLLM_LAUNCH(static_cast<unsigned int>(blocks), kMatchThreads, 0, stream, match_kernel<T>)(
      p, a_tiles);
  return cuda::launch_status();
}

}  // namespace

Status match_cuda(const MatchParams& params, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(params.device));
  if (set_a_size(params.rows.tokens, params.rows.protected_tokens) == 0 || params.rows.count == 0)
    return Status::ok();
  VIDLLM_DISPATCH_FLOAT_TYPES(
      params.dtype, return launch_match<scalar_t>(params, static_cast<cudaStream_t>(stream)));
}

}  // namespace vidllm::token_merge
