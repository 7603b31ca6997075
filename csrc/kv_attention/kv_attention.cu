// CUDA twin of kv_attention_cpu.cpp, launched on the caller's stream. The per-tile phases
// live in kv_attention_tile.cuh.
//
// segment_partials: a block of kThreads per (query tile, split, KV head, sample). A query tile is
//   QT (8 or 16) of the KV head's group * q_len query rows, so decode (1..8 rows) is one tile and
//   chunked prefill runs several blocks over the same keys; the block index varies fastest along
//   query tiles, so those blocks run together and share the keys in L2. A block walks its split
//   in the CPU twin's tiles (tile_end: at most 32 rows with one key group and one value group):
//     prepare  (when the key group changes) q times the group's key scales into shared memory,
//              bias = q2 . zero2 by a deterministic block sum;
//     stage    the tile's packed key and value code rows into shared memory, 16-byte loads;
//     score    lane t of every warp owns tile row t, warp w the channel quads w, w + kWarps, ...
//              of it: codes are decoded in registers and dotted with the QT query rows (broadcast
//              reads of shared memory); the warps' partial dot products meet in shared memory;
//     softmax  a warp per query row (rows w, w + kWarps, ...) adds the partials in warp order,
//              masks (causality, mask, rows past the tile) and runs the online softmax in base 2,
//              its running max and sum in registers;
//     values   thread c owns channels c, c + kThreads, ...: decodes that channel of each tile row,
//              accumulates probability * value for the QT rows in registers, then rescales acc
//              (shared memory, [QT, D]) by the tile's correction and folds the value group's
//              statistics in once.
// combine_partials: a warp per query row: the max over splits, the denominator, then per channel
//   the numerator, each in a fixed order.
// No float atomics: every sum runs in a fixed order, so results are reproducible bit for bit.
#include <algorithm>
#include <cstdint>

#include "common/cuda_device.h"
#include "common/cuda_launch.cuh"
#include "common/cuda_utils.cuh"
#include "common/dtype.h"
#include "common/dynamic_shared.cuh"
#include "kv_attention/kv_attention.h"
#include "kv_attention/kv_attention_tile.cuh"
#include "kv_quant/kv_quant_math.h"

namespace vidllm::kv_attention {
namespace {

using cuda::ceil_div;
using namespace detail;

constexpr int64_t kDefaultSharedBytes = 48 * 1024;  // dynamic shared memory without opting in
constexpr int64_t kMaxHeadDim =
    1 << 16;  // keeps the layout's int offsets safe; shared memory binds first

// =============================== segment partials ===============================

// One block per (query tile, split, KV head, sample); see the top of the file. Four barriers per
// tile: before the stage (the previous tile's readers are done), before the scores, the softmax
// and the values.
template <int QT, bool kPackedKeys, ValueFormat kValues>
__global__ void __launch_bounds__(kThreads)
    segment_partials_kernel(const SegmentParams p, const Shape shape) {
  static_assert(QT % kWarps == 0, "softmax warps own QT / kWarps rows each");
  VIDLLM_DYNAMIC_SHARED(unsigned char, shared_bytes);
  __shared__ typename cuda::BlockSum<kThreads, QT>::Storage sum_storage;
  cuda::BlockSum<kThreads, QT> block_sum(sum_storage);
  const Shared s = carve(shared_bytes, shape.smem);

  int64_t block = blockIdx.x;
  Item item;
  item.query_tile = block % shape.query_tiles;
  block /= shape.query_tiles;
  item.split = block % shape.splits;
  block /= shape.splits;
  item.kv_head = block % p.q.kv_heads;
  item.batch = block / p.q.kv_heads;
  init_rows<QT>(p, shape, item, s);

  float running_max[QT / kWarps];
  float running_sum[QT / kWarps];
#pragma unroll
  for (int k = 0; k < QT / kWarps; ++k) {
    running_max[k] = -INFINITY;
    running_sum[k] = 0.0f;
  }
  const int64_t start = item.split * p.segment.split_rows;
  const int64_t stop = min(p.segment.rows, start + p.segment.split_rows);
  int64_t prepared_group = -2;  // key_group_of is -1 for full keys, >= 0 for packed ones
  for (int64_t tile = start; tile < stop;) {
    const int64_t end = tile_stop(p, item.batch, tile, stop);
    const int count = static_cast<int>(end - tile);
    __syncthreads();
    const int64_t key_group = key_group_of(p, item.batch, tile);
    if (key_group != prepared_group) {
      prepare_queries<QT, kPackedKeys>(p, shape, item, key_group, s, block_sum);
      prepared_group = key_group;
    }
    const Staged staged = stage_tile<kPackedKeys, kValues>(p, shape, item, tile, count, s);
    __syncthreads();
    score_tile<QT, kPackedKeys>(p, shape, item, count, staged, s);
    __syncthreads();
    softmax_tile<QT>(p, item, count, s, running_max, running_sum);
    __syncthreads();
    accumulate_values<QT, kValues>(p, shape, item, tile, count, staged, s);
    tile = end;
  }
  write_partials<QT>(p, item, s, running_max, running_sum);
}

int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

// Fills shape.smem; returns its size in bytes.
int64_t lay_out_shared(const SegmentParams& p, int qt, Shape& shape) {
  int64_t offset = 0;
  const auto take = [&offset](int64_t bytes) {
    const int64_t at = offset;
    offset += align16(bytes);
    return static_cast<int>(at);
  };
  SharedLayout& l = shape.smem;
  const int64_t f = sizeof(float);
  l.query = take(int64_t{qt} * shape.query_stride * f);
  l.acc = take(qt * p.q.head_dim * f);
  l.partial = take(int64_t{kWarps} * qt * kTile * f);
  l.prob = take(int64_t{qt} * kTile * f);
  l.bias = take(qt * f);
  l.correction = take(qt * f);
  l.prob_sum = take(qt * f);
  l.out_row = take(qt * sizeof(int64_t));
  l.query_index = take(qt * sizeof(int64_t));
  l.token = take(kTile * sizeof(int64_t));
  l.key2 = take(int64_t{kTile} * shape.key2_bytes + 16);
  l.key1 = take(int64_t{kTile} * shape.key1_bytes + 16);
  l.values = take(int64_t{kTile} * shape.value_bytes + 16);
  return offset;
}

Shape make_shape(const SegmentParams& p, int qt, int64_t splits) {
  const Queries& q = p.q;
  Shape shape{};
  shape.group = q.q_heads / q.kv_heads;
  shape.rows = shape.group * q.q_len;
  shape.query_tiles = ceil_div(shape.rows, int64_t{qt});
  shape.splits = splits;
  if (p.keys.format == KeyFormat::kPacked) {
    shape.key_groups = ceil_div(p.keys.tokens, p.keys.group_size);
    shape.key2_bytes = static_cast<int>(ceil_div(p.keys.two_bit, int64_t{4}));
    shape.key1_bytes = static_cast<int>(ceil_div(p.keys.one_bit, int64_t{8}));
    shape.one_bit_offset = 4 * shape.key2_bytes;
    shape.query_stride = shape.one_bit_offset + 8 * shape.key1_bytes;
  } else {
    shape.query_stride = static_cast<int>(ceil_div(q.head_dim, int64_t{4}) * 4);
  }
  switch (p.values.format) {
    case ValueFormat::kChannel2:
    case ValueFormat::kTrit:
      shape.value_groups = ceil_div(p.segment.rows, p.values.group_size);
      break;
    case ValueFormat::kToken2:
      shape.value_groups = ceil_div(q.head_dim, p.values.group_size);
      break;
    default:
      break;
  }
  if (p.values.format != ValueFormat::kFull)
    shape.value_bytes =
        static_cast<int>(value_code_bytes(q.head_dim, p.values.format == ValueFormat::kTrit));
  return shape;
}

template <int QT, bool kPackedKeys, ValueFormat kValues>
Status launch_segment(const SegmentParams& p, const Shape& shape, int64_t shared_bytes,
                      cudaStream_t stream) {
  const auto kernel = segment_partials_kernel<QT, kPackedKeys, kValues>;
  const int64_t static_bytes = sizeof(typename cuda::BlockSum<kThreads, QT>::Storage);
  if (shared_bytes + static_bytes > kDefaultSharedBytes) {
    int64_t max_dynamic_shared = 0;  // set once per device, never per launch: dynamic_shared.cuh
    VIDLLM_RETURN_IF_ERROR(cuda::max_dynamic_shared_bytes(reinterpret_cast<const void*>(kernel),
                                                          p.device, &max_dynamic_shared));
    if (shared_bytes > max_dynamic_shared)
      return Status::invalid(
          "packed attention: head_dim too large for the shared memory of a block on this device");
  }
  const int64_t blocks = shape.query_tiles * shape.splits * p.q.kv_heads * p.q.batch;
  VIDLLM_LAUNCH(static_cast<unsigned int>(blocks), kThreads, static_cast<size_t>(shared_bytes),
                stream, kernel)(p, shape);
  return cuda::launch_status();
}

template <int QT, bool kPackedKeys>
Status dispatch_values(const SegmentParams& p, const Shape& shape, int64_t shared_bytes,
                       cudaStream_t stream) {
  switch (p.values.format) {
    case ValueFormat::kFull:
      return launch_segment<QT, kPackedKeys, ValueFormat::kFull>(p, shape, shared_bytes, stream);
    case ValueFormat::kChannel2:
      return launch_segment<QT, kPackedKeys, ValueFormat::kChannel2>(p, shape, shared_bytes,
                                                                     stream);
    case ValueFormat::kTrit:
      return launch_segment<QT, kPackedKeys, ValueFormat::kTrit>(p, shape, shared_bytes, stream);
    case ValueFormat::kToken2:
      return launch_segment<QT, kPackedKeys, ValueFormat::kToken2>(p, shape, shared_bytes, stream);
  }
  return Status::invalid("packed attention: unknown value format");
}

template <int QT>
Status dispatch_keys(const SegmentParams& p, const Shape& shape, int64_t shared_bytes,
                     cudaStream_t stream) {
  if (p.keys.format == KeyFormat::kPacked)
    return dispatch_values<QT, true>(p, shape, shared_bytes, stream);
  return dispatch_values<QT, false>(p, shape, shared_bytes, stream);
}

bool known_dtype(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16;
}

// =============================== combine ===============================

constexpr int kCombineThreads = 128;
constexpr int kCombineWarps = kCombineThreads / 32;
constexpr int kCombineChannels = 8;  // per lane and pass: 256 channels per pass of a warp

// A warp per query row: lanes stride over the splits for the max and the denominator (warp
// trees), then over channels for the numerators, the splits in order, each weight computed once
// per pass by one lane and broadcast.
template <typename T>
__global__ void __launch_bounds__(kCombineThreads) combine_partials_kernel(const CombineParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kCombineWarps + threadIdx.x / 32;
  if (row >= p.rows) return;  // warp-uniform
  const int64_t splits = p.splits;
  const int64_t dim = p.head_dim;
  const float* max = p.max + row * splits;
  const float* sum = p.sum + row * splits;
  const float* acc = p.acc + row * splits * dim;
  T* out = static_cast<T*>(p.out) + row * dim;

  float overall = -INFINITY;
  for (int64_t s = lane; s < splits; s += 32) overall = nan_max(overall, max[s]);
  overall = warp_max(overall);
  if (overall == -INFINITY) {  // no split saw a visible token
    for (int64_t c = lane; c < dim; c += 32) out[c] = kv_quant::from_float<T>(0.0f);
    return;
  }
  float denominator = 0.0f;
  for (int64_t s = lane; s < splits; s += 32) denominator += exp2_diff(max[s], overall) * sum[s];
  denominator = warp_sum(denominator);

  for (int64_t c0 = 0; c0 < dim; c0 += 32 * kCombineChannels) {
    float numerator[kCombineChannels];
#pragma unroll
    for (int k = 0; k < kCombineChannels; ++k) numerator[k] = 0.0f;
    for (int64_t s0 = 0; s0 < splits; s0 += 32) {
      const float mine = s0 + lane < splits ? exp2_diff(max[s0 + lane], overall) : 0.0f;
      const int count = static_cast<int>(min(int64_t{32}, splits - s0));
      for (int j = 0; j < count; ++j) {
        const float weight = __shfl_sync(kFullWarp, mine, j);
        const float* split_acc = acc + (s0 + j) * dim;
#pragma unroll
        for (int k = 0; k < kCombineChannels; ++k) {
          const int64_t c = c0 + lane + 32 * k;
          if (c < dim) numerator[k] = fmaf(weight, split_acc[c], numerator[k]);
        }
      }
    }
#pragma unroll
    for (int k = 0; k < kCombineChannels; ++k) {
      const int64_t c = c0 + lane + 32 * k;
      if (c < dim) out[c] = kv_quant::from_float<T>(numerator[k] / denominator);
    }
  }
}

}  // namespace

// =============================== launchers ===============================

Status segment_partials_cuda(const SegmentParams& p, void* stream) {
  VIDLLM_RETURN_IF_ERROR(check_segment_params(p));
  const Queries& q = p.q;
  const int64_t splits = ceil_div(p.segment.rows, p.segment.split_rows);
  if (q.batch == 0 || splits == 0) return Status::ok();
  if (p.keys.format == KeyFormat::kFull && !known_dtype(p.keys.dtype))
    return Status::invalid("packed attention: full-precision keys must be float32/16, bfloat16");
  if (p.values.format == ValueFormat::kFull && !known_dtype(p.values.dtype))
    return Status::invalid("packed attention: full-precision values must be float32/16, bfloat16");
  if (q.head_dim > kMaxHeadDim)
    return Status::invalid("packed attention: head_dim too large for the CUDA kernel");
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(p.device));

  const int64_t rows = q.q_heads / q.kv_heads * q.q_len;
  const int qt = rows <= 8 || q.head_dim > 256 ? 8 : 16;
  Shape shape = make_shape(p, qt, splits);
  const int64_t shared_bytes = lay_out_shared(p, qt, shape);
  if (shape.query_tiles * splits * q.kv_heads * q.batch > cuda::kMaxGridX)
    return Status::invalid("packed attention: too many blocks; raise split_rows");
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  return qt == 8 ? dispatch_keys<8>(p, shape, shared_bytes, cuda_stream)
                 : dispatch_keys<16>(p, shape, shared_bytes, cuda_stream);
}

Status combine_partials_cuda(const CombineParams& p, void* stream) {
  if (p.rows < 0 || p.splits < 1 || p.head_dim < 1)
    return Status::invalid("combine_partials: needs at least one split and one channel");
  if (p.rows == 0) return Status::ok();
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(p.device));
  const int64_t blocks = ceil_div(p.rows, int64_t{kCombineWarps});
  if (blocks > cuda::kMaxGridX) return Status::invalid("combine_partials: too many rows");
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  VIDLLM_DISPATCH_FLOAT_TYPES(
      p.out_dtype, VIDLLM_LAUNCH(static_cast<unsigned int>(blocks), kCombineThreads, 0, cuda_stream,
                                 combine_partials_kernel<scalar_t>)(p));
  return cuda::launch_status();
}

}  // namespace vidllm::kv_attention
