// CUDA twin of kv_quant_cpu.cpp, launched on the caller's stream:
//   pack / unpack:      a thread per packed byte; when the rows form one unpadded stream of bytes
//                       (n a multiple of the codes per byte, contiguous, 16-byte aligned), a
//                       thread per 16 packed bytes with 16-byte loads and stores;
//   channel groups:     a block per (row, group) and tile of byte columns; a thread owns the
//                       channels of one byte column, reads the group's tokens in order (threads
//                       coalesced along channels) for the statistics, then again to encode one
//                       whole byte per token;
//   token groups:       a block per tile of tokens: statistics per (token, group), a barrier,
//                       then one byte per (token, byte column);
//   dequantize:         a thread per 16 bytes of output (4 float32 or 8 16-bit channels of one
//                       token), vector stores when the channels are consecutive and aligned.
// Reductions run in the same order as on the CPU, so results agree bitwise; invalid-input counts
// are integer atomics (order-free).
#include <algorithm>
#include <cstdint>

#include "common/cuda_device.h"
#include "common/cuda_launch.cuh"
#include "common/cuda_utils.cuh"
#include "common/dtype.h"
#include "kv_quant/kv_quant.h"

namespace vidllm::kv_quant {
namespace {

using cuda::aligned16;
using cuda::ceil_div;

constexpr int kThreads = 256;
constexpr int64_t kBlocksPerSm = 16;  // cap of grid-stride launches: enough to fill every SM

// Blocks of kThreads for a grid-stride loop over `items`.
unsigned int grid_stride_blocks(int64_t items, int device) {
  const int64_t sms = std::max(cuda::multiprocessor_count(device), 1);
  return static_cast<unsigned int>(
      std::max<int64_t>(1, std::min(ceil_div(items, int64_t{kThreads}), sms * kBlocksPerSm)));
}

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t global_threads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Adds each thread's count to *counter: a warp sum, then one atomic per warp with a non-zero sum.
// Every lane of the warp must call it.
__device__ __forceinline__ void add_invalid(int64_t* counter, long long count) {
  for (int offset = 16; offset > 0; offset /= 2)
    count += __shfl_down_sync(0xffffffffu, count, offset);
  if (threadIdx.x % 32 == 0 && count != 0)
    atomicAdd(reinterpret_cast<unsigned long long*>(counter),
              static_cast<unsigned long long>(count));
}

// The storage bits of value rounded to T, in the low bits of a word (assembled into 16-byte
// stores in registers; building a Vec<T> of 16-bit structs went through local memory).
template <typename T>
__device__ __forceinline__ uint32_t storage_bits(float value) {
  if constexpr (sizeof(T) == 4) {
    return __float_as_uint(value);
  } else {
    return from_float<T>(value).bits;
  }
}

// Byte k of 16-byte words held as 32-bit lanes (k a compile-time constant after unrolling).
__device__ __forceinline__ uint8_t byte_of(const uint32_t* words, int k) {
  return static_cast<uint8_t>(words[k / 4] >> (8 * (k % 4)));
}

// =============================== pack / unpack ===============================

template <Packing kPacking>
__global__ void __launch_bounds__(kThreads)
    pack_bytes_kernel(const PackParams p, const int64_t bytes_per_row) {
  using Traits = PackingTraits<kPacking>;
  using Code = typename Traits::Code;
  const Code* codes = static_cast<const Code*>(p.codes);
  const int64_t total = p.rows * bytes_per_row;
  long long invalid = 0;
  for (int64_t i = global_thread(); i < total; i += global_threads()) {
    const int64_t row = i / bytes_per_row;
    const int64_t first = (i - row * bytes_per_row) * Traits::kPerByte;
    const Code* src = codes + row * p.codes_row_stride + first;
    const int count = static_cast<int>(min(static_cast<int64_t>(Traits::kPerByte), p.n - first));
    int byte_invalid = 0;
    p.packed[i] = pack_digits<kPacking>(
        count, [src](int k) { return code_digit<kPacking>(src[k]); }, byte_invalid);
    invalid += byte_invalid;
  }
  add_invalid(p.invalid, invalid);
}

// Rows form one stream: packed byte i holds codes [i * kPerByte, (i + 1) * kPerByte) of the flat
// codes. A thread packs 16 bytes from kPerByte 16-byte loads; the last total % 16 bytes go one by
// one. Both pointers are 16-byte aligned.
template <Packing kPacking>
__global__ void __launch_bounds__(kThreads)
    pack_stream_kernel(const PackParams p, const int64_t total_bytes) {
  using Traits = PackingTraits<kPacking>;
  using Code = typename Traits::Code;
  constexpr int kPerByte = Traits::kPerByte;
  const int64_t vectors = total_bytes / 16;
  const uint4* src = static_cast<const uint4*>(p.codes);
  uint4* dst = reinterpret_cast<uint4*>(p.packed);
  long long invalid = 0;
  for (int64_t v = global_thread(); v < vectors; v += global_threads()) {
    int vector_invalid = 0;  // at most 16 * kPerByte
    uint32_t in[4 * kPerByte];
#pragma unroll
    for (int k = 0; k < kPerByte; ++k) {
      const uint4 word = src[v * kPerByte + k];
      in[4 * k] = word.x;
      in[4 * k + 1] = word.y;
      in[4 * k + 2] = word.z;
      in[4 * k + 3] = word.w;
    }
    uint32_t out[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int b = 0; b < 16; ++b) {
      const uint8_t byte = pack_digits<kPacking>(
          kPerByte,
          [&in, b](int k) {
            return code_digit<kPacking>(static_cast<Code>(byte_of(in, b * kPerByte + k)));
          },
          vector_invalid);
      out[b / 4] |= static_cast<uint32_t>(byte) << (8 * (b % 4));
    }
    dst[v] = make_uint4(out[0], out[1], out[2], out[3]);
    invalid += vector_invalid;
  }
  const Code* codes = static_cast<const Code*>(p.codes);
  for (int64_t i = vectors * 16 + global_thread(); i < total_bytes; i += global_threads()) {
    const Code* first = codes + i * kPerByte;
    int byte_invalid = 0;
    p.packed[i] = pack_digits<kPacking>(
        kPerByte, [first](int k) { return code_digit<kPacking>(first[k]); }, byte_invalid);
    invalid += byte_invalid;
  }
  add_invalid(p.invalid, invalid);
}

template <Packing kPacking>
__global__ void __launch_bounds__(kThreads)
    unpack_bytes_kernel(const UnpackParams p, const int64_t bytes_per_row) {
  using Traits = PackingTraits<kPacking>;
  using Code = typename Traits::Code;
  Code* codes = static_cast<Code*>(p.codes);
  const int64_t total = p.rows * bytes_per_row;
  long long invalid = 0;
  for (int64_t i = global_thread(); i < total; i += global_threads()) {
    const int64_t row = i / bytes_per_row;
    const int64_t j = i - row * bytes_per_row;
    const int64_t first = j * Traits::kPerByte;
    Code* dst = codes + row * p.n + first;
    const int count = static_cast<int>(min(static_cast<int64_t>(Traits::kPerByte), p.n - first));
    invalid += unpack_digits<kPacking>(
        p.packed[row * p.packed_row_stride + j], count,
        [dst](int k, unsigned int digit) { dst[k] = digit_code<kPacking>(digit); });
  }
  add_invalid(p.invalid, invalid);
}

// Inverse of pack_stream_kernel: 16 packed bytes in, kPerByte 16-byte vectors of codes out.
template <Packing kPacking>
__global__ void __launch_bounds__(kThreads)
    unpack_stream_kernel(const UnpackParams p, const int64_t total_bytes) {
  using Traits = PackingTraits<kPacking>;
  using Code = typename Traits::Code;
  constexpr int kPerByte = Traits::kPerByte;
  const int64_t vectors = total_bytes / 16;
  const uint4* src = reinterpret_cast<const uint4*>(p.packed);
  uint4* dst = static_cast<uint4*>(p.codes);
  long long invalid = 0;
  for (int64_t v = global_thread(); v < vectors; v += global_threads()) {
    const uint4 word = src[v];
    const uint32_t in[4] = {word.x, word.y, word.z, word.w};
    uint32_t out[4 * kPerByte];
#pragma unroll
    for (int k = 0; k < 4 * kPerByte; ++k) out[k] = 0u;
#pragma unroll
    for (int b = 0; b < 16; ++b) {
      invalid +=
          unpack_digits<kPacking>(byte_of(in, b), kPerByte, [&out, b](int k, unsigned int d) {
            const int index = b * kPerByte + k;
            const uint8_t code = static_cast<uint8_t>(digit_code<kPacking>(d));
            out[index / 4] |= static_cast<uint32_t>(code) << (8 * (index % 4));
          });
    }
#pragma unroll
    for (int k = 0; k < kPerByte; ++k)
      dst[v * kPerByte + k] =
          make_uint4(out[4 * k], out[4 * k + 1], out[4 * k + 2], out[4 * k + 3]);
  }
  Code* codes = static_cast<Code*>(p.codes);
  for (int64_t i = vectors * 16 + global_thread(); i < total_bytes; i += global_threads()) {
    Code* first = codes + i * kPerByte;
    invalid += unpack_digits<kPacking>(p.packed[i], kPerByte, [first](int k, unsigned int d) {
      first[k] = digit_code<kPacking>(d);
    });
  }
  add_invalid(p.invalid, invalid);
}

template <Packing kPacking>
Status launch_pack(const PackParams& p, int64_t bytes_per_row, cudaStream_t stream) {
  constexpr int kPerByte = PackingTraits<kPacking>::kPerByte;
  const int64_t total = p.rows * bytes_per_row;
  const bool one_stream = p.n % kPerByte == 0 && (p.rows == 1 || p.codes_row_stride == p.n) &&
                          aligned16(p.codes) && aligned16(p.packed);
  if (one_stream) {
    const unsigned int blocks = grid_stride_blocks(std::max<int64_t>(total / 16, 1), p.device);
    VIDLLM_LAUNCH(blocks, kThreads, 0, stream, pack_stream_kernel<kPacking>)(p, total);
  } else {
    const unsigned int blocks = grid_stride_blocks(total, p.device);
    VIDLLM_LAUNCH(blocks, kThreads, 0, stream, pack_bytes_kernel<kPacking>)(p, bytes_per_row);
  }
  return cuda::launch_status();
}

template <Packing kPacking>
Status launch_unpack(const UnpackParams& p, int64_t bytes_per_row, cudaStream_t stream) {
  constexpr int kPerByte = PackingTraits<kPacking>::kPerByte;
  const int64_t total = p.rows * bytes_per_row;
  const bool one_stream = p.n % kPerByte == 0 &&
                          (p.rows == 1 || p.packed_row_stride == bytes_per_row) &&
                          aligned16(p.codes) && aligned16(p.packed);
  if (one_stream) {
    const unsigned int blocks = grid_stride_blocks(std::max<int64_t>(total / 16, 1), p.device);
    VIDLLM_LAUNCH(blocks, kThreads, 0, stream, unpack_stream_kernel<kPacking>)(p, total);
  } else {
    const unsigned int blocks = grid_stride_blocks(total, p.device);
    VIDLLM_LAUNCH(blocks, kThreads, 0, stream, unpack_bytes_kernel<kPacking>)(p, bytes_per_row);
  }
  return cuda::launch_status();
}

// =============================== channel groups ===============================

constexpr int kColumnThreads = 128;

// grid.x: tiles of byte columns; grid.y (folded at 65535): (row, group) pairs. A column's
// channels are read as NaN when their index is out of range (never dereferenced).
template <typename T, Mode kMode>
__global__ void __launch_bounds__(kColumnThreads)
    quantize_channel_groups_kernel(const ChannelGroupQuantParams p, const int64_t groups,
                                   const int64_t bytes_per_token) {
  constexpr Packing kPacking = ModeTraits<kMode>::kPacking;
  constexpr int kPerByte = PackingTraits<kPacking>::kPerByte;
  const int64_t column = global_thread();
  if (column >= bytes_per_token) return;
  const int64_t count = p.quantized_channels;
  const int64_t first_channel = column * kPerByte;
  const int in_byte = static_cast<int>(min(static_cast<int64_t>(kPerByte), count - first_channel));
  const T* x = static_cast<const T*>(p.x);
  const float nan = __int_as_float(0x7fc00000);

  for (int64_t item = blockIdx.y; item < p.rows * groups; item += gridDim.y) {
    const int64_t row = item / groups;
    const int64_t group = item - row * groups;
    const int64_t* map = head_channel_map(p.channels, p.heads, count, row);
    int64_t offset[kPerByte];
    bool readable[kPerByte];
#pragma unroll
    for (int k = 0; k < kPerByte; ++k) {
      const int64_t channel = k >= in_byte ? 0 : mapped_channel(map, first_channel + k);
      readable[k] = k < in_byte && channel >= 0 && channel < p.x_channels;
      offset[k] = readable[k] ? channel : 0;
    }
    const int64_t first_token = group * p.group_size;
    const int64_t end_token = min(first_token + p.group_size, p.tokens);
    const T* rows = x + row * p.x_stride_row;

    GroupAccumulator<kMode> accumulators[kPerByte];
#pragma unroll
    for (int k = 0; k < kPerByte; ++k) accumulators[k].start();
    for (int64_t t = first_token; t < end_token; ++t) {
      const T* token = rows + t * p.x_stride_token;
#pragma unroll
      for (int k = 0; k < kPerByte; ++k)
        if (k < in_byte) accumulators[k].add(readable[k] ? to_float(token[offset[k]]) : nan);
    }
    float scale[kPerByte];
    float zero[kPerByte];
    const int64_t stats = (row * groups + group) * count + first_channel;
#pragma unroll
    for (int k = 0; k < kPerByte; ++k) {
      accumulators[k].finish(end_token - first_token, scale[k], zero[k]);
      if (k < in_byte) {
        p.scale[stats + k] = scale[k];
        if (p.zero != nullptr) p.zero[stats + k] = zero[k];
      }
    }
    int unused = 0;  // digits from encode are always in range
    for (int64_t t = first_token; t < end_token; ++t) {
      const T* token = rows + t * p.x_stride_token;
      p.codes[(row * p.tokens + t) * bytes_per_token + column] = pack_digits<kPacking>(
          in_byte,
          [&](int k) {
            const float value = readable[k] ? to_float(token[offset[k]]) : nan;
            return encode<kMode>(value, scale[k], zero[k]);
          },
          unused);
    }
  }
}

// =============================== token groups ===============================

// Tokens are numbered q = row * tokens + t. Phase 1: threads over (token, group) pairs of the
// tile write each group's statistics; phase 2, after a barrier that makes those global writes
// visible to the block: threads over (token, byte column) pairs read them back and encode.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    quantize_token_groups_kernel(const TokenGroupQuantParams p, const int64_t groups,
                                 const int64_t tokens_per_tile) {
  const int64_t total_tokens = p.rows * p.tokens;
  const int64_t bytes_per_token = packed_bytes(p.channels, Packing::kBits2);
  const int64_t tiles = ceil_div(total_tokens, tokens_per_tile);
  const T* x = static_cast<const T*>(p.x);
  auto token_row = [&](int64_t q) {
    const int64_t row = q / p.tokens;
    return x + row * p.x_stride_row + (q - row * p.tokens) * p.x_stride_token;
  };
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {  // uniform in the block
    const int64_t first = tile * tokens_per_tile;
    const int64_t tile_tokens = min(tokens_per_tile, total_tokens - first);
    for (int64_t i = threadIdx.x; i < tile_tokens * groups; i += blockDim.x) {
      const int64_t q = first + i / groups;
      const int64_t g = i % groups;
      const T* token = token_row(q);
      const int64_t end = min((g + 1) * p.group_size, p.channels);
      GroupAccumulator<Mode::kMinMax2> accumulator;
      accumulator.start();
      for (int64_t c = g * p.group_size; c < end; ++c) accumulator.add(to_float(token[c]));
      accumulator.finish(end - g * p.group_size, p.scale[q * groups + g], p.zero[q * groups + g]);
    }
    __syncthreads();
    // No barrier after phase 2: the next tile writes other tokens' statistics.
    for (int64_t i = threadIdx.x; i < tile_tokens * bytes_per_token; i += blockDim.x) {
      const int64_t q = first + i / bytes_per_token;
      const int64_t b = i % bytes_per_token;
      const T* token = token_row(q);
      const float* scale = p.scale + q * groups;
      const float* zero = p.zero + q * groups;
      int unused = 0;
      p.codes[q * bytes_per_token + b] = pack_digits<Packing::kBits2>(
          static_cast<int>(min(int64_t{4}, p.channels - b * 4)),
          [&](int k) {
            const int64_t c = b * 4 + k;
            const int64_t g = c / p.group_size;
            return encode<Mode::kMinMax2>(to_float(token[c]), scale[g], zero[g]);
          },
          unused);
    }
  }
}

// =============================== dequantize ===============================

// One description of both dequantizers: statistics of channel c of token (row, t) lie at
// (row * groups + t / group_size) * C + c for channel groups, (row * tokens + t) * groups +
// c / group_size for token groups.
struct DequantArgs {
  const uint8_t* codes;
  const float* scale;
  const float* zero;  // null: 0 (sign1, trit)
  const int64_t* channels;
  int64_t heads;
  void* out;
  int64_t out_stride_row;
  int64_t out_stride_token;
  int64_t out_stride_channel;
  int64_t out_channels;
  int64_t rows;
  int64_t tokens;
  int64_t count;  // quantized channels C
  int64_t group_size;
  int64_t groups;
  bool token_groups;
};

// kVector: every chunk is kWidth whole channels, consecutive and 16-byte aligned in out, with no
// channel map: one vector store per thread.
template <typename T, Mode kMode, bool kVector>
__global__ void __launch_bounds__(kThreads) dequantize_kernel(const DequantArgs a) {
  constexpr Packing kPacking = ModeTraits<kMode>::kPacking;
  constexpr int kWidth = cuda::kVectorWidth<T>;
  constexpr int kPerWord = 4 / static_cast<int>(sizeof(T));  // outputs per 32-bit word
  constexpr int kWordShift = 8 * static_cast<int>(sizeof(T));
  const int64_t chunks = ceil_div(a.count, static_cast<int64_t>(kWidth));
  const int64_t bytes_per_token = packed_bytes(a.count, kPacking);
  const int64_t total = a.rows * a.tokens * chunks;
  for (int64_t i = global_thread(); i < total; i += global_threads()) {
    const int64_t q = i / chunks;
    const int64_t first = (i - q * chunks) * kWidth;
    const int64_t row = q / a.tokens;
    const int64_t t = q - row * a.tokens;
    const uint8_t* codes = a.codes + q * bytes_per_token;
    const auto value_of = [&](int64_t c) {
      const unsigned int digit = digit_in_row<kPacking>(codes, c);
      const int64_t stats = a.token_groups ? q * a.groups + c / a.group_size
                                           : (row * a.groups + t / a.group_size) * a.count + c;
      return decode<kMode>(digit, a.scale[stats], a.zero == nullptr ? 0.0f : a.zero[stats]);
    };
    T* out = static_cast<T*>(a.out) + row * a.out_stride_row + t * a.out_stride_token;
    if constexpr (kVector) {
      uint32_t words[4] = {0u, 0u, 0u, 0u};
#pragma unroll
      for (int k = 0; k < kWidth; ++k) {
        words[k / kPerWord] |= storage_bits<T>(value_of(first + k))
                               << (kWordShift * (k % kPerWord));
      }
      *reinterpret_cast<uint4*>(out + first) = make_uint4(words[0], words[1], words[2], words[3]);
    } else {
      const int64_t* map = head_channel_map(a.channels, a.heads, a.count, row);
#pragma unroll
      for (int k = 0; k < kWidth; ++k) {
        const int64_t c = first + k;
        const int64_t channel = c >= a.count ? -1 : mapped_channel(map, c);
        if (channel >= 0 && channel < a.out_channels)
          out[channel * a.out_stride_channel] = from_float<T>(value_of(c));
      }
    }
  }
}

template <typename T>
bool dequantize_vectorizable(const DequantArgs& a) {
  constexpr int64_t kWidth = cuda::kVectorWidth<T>;
  const bool row_ok = a.rows <= 1 || a.out_stride_row % kWidth == 0;
  const bool token_ok = a.tokens <= 1 || a.out_stride_token % kWidth == 0;
  return a.channels == nullptr && a.out_stride_channel == 1 && a.count % kWidth == 0 &&
         aligned16(a.out) && row_ok && token_ok;
}

template <typename T, Mode kMode>
Status launch_dequantize(const DequantArgs& a, int device, cudaStream_t stream) {
  const int64_t chunks = ceil_div(a.count, static_cast<int64_t>(cuda::kVectorWidth<T>));
  const unsigned int blocks = grid_stride_blocks(a.rows * a.tokens * chunks, device);
  if (dequantize_vectorizable<T>(a))
    VIDLLM_LAUNCH(blocks, kThreads, 0, stream, dequantize_kernel<T, kMode, true>)(a);
  else
    VIDLLM_LAUNCH(blocks, kThreads, 0, stream, dequantize_kernel<T, kMode, false>)(a);
  return cuda::launch_status();
}

Status dequantize(const DequantArgs& a, DType dtype, Mode mode, int device, void* stream) {
  if (a.rows == 0 || a.tokens == 0 || a.count == 0) return Status::ok();
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  VIDLLM_DISPATCH_FLOAT_TYPES(
      dtype, VIDLLM_KV_DISPATCH_MODE(
                 mode, return launch_dequantize<scalar_t, kMode>(a, device, cuda_stream)));
}

}  // namespace

// =============================== launchers ===============================

Status pack_cuda(const PackParams& p, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(p.device));
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  VIDLLM_RETURN_IF_CUDA_ERROR(cudaMemsetAsync(p.invalid, 0, sizeof(int64_t), cuda_stream));
  const int64_t bytes_per_row = packed_bytes(p.n, p.packing);
  if (p.rows == 0 || bytes_per_row == 0) return Status::ok();
  VIDLLM_KV_DISPATCH_PACKING(p.packing,
                             return launch_pack<kPacking>(p, bytes_per_row, cuda_stream));
}

Status unpack_cuda(const UnpackParams& p, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(p.device));
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  VIDLLM_RETURN_IF_CUDA_ERROR(cudaMemsetAsync(p.invalid, 0, sizeof(int64_t), cuda_stream));
  const int64_t bytes_per_row = packed_bytes(p.n, p.packing);
  if (p.rows == 0 || bytes_per_row == 0) return Status::ok();
  VIDLLM_KV_DISPATCH_PACKING(p.packing,
                             return launch_unpack<kPacking>(p, bytes_per_row, cuda_stream));
}

Status quantize_channel_groups_cuda(const ChannelGroupQuantParams& p, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(p.device));
  if (p.group_size < 1) return Status::invalid("group_size must be at least 1");
  const int64_t groups = ceil_groups(p.tokens, p.group_size);
  if (p.rows == 0 || groups == 0 || p.quantized_channels == 0) return Status::ok();
  const int64_t bytes_per_token = packed_bytes(p.quantized_channels, mode_packing(p.mode));
  const int64_t threads =
      std::min<int64_t>(kColumnThreads, ceil_div(bytes_per_token, int64_t{32}) * 32);
  const int64_t column_tiles = ceil_div(bytes_per_token, threads);
  if (column_tiles > cuda::kMaxGridX)
    return Status::invalid("kv_quant: too many quantized channels per row");
  const dim3 grid(static_cast<unsigned int>(column_tiles),
                  static_cast<unsigned int>(std::min(p.rows * groups, cuda::kMaxGridY)));
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  VIDLLM_DISPATCH_FLOAT_TYPES(
      p.dtype, VIDLLM_KV_DISPATCH_MODE(
                   p.mode, VIDLLM_LAUNCH(grid, static_cast<unsigned int>(threads), 0, cuda_stream,
                                         quantize_channel_groups_kernel<scalar_t, kMode>)(
                               p, groups, bytes_per_token)));
  return cuda::launch_status();
}

Status dequantize_channel_groups_cuda(const ChannelGroupDequantParams& p, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(p.device));
  if (p.group_size < 1) return Status::invalid("group_size must be at least 1");
  const DequantArgs args{p.codes,
                         p.scale,
                         p.mode == Mode::kMinMax2 ? p.zero : nullptr,
                         p.channels,
                         p.heads,
                         p.out,
                         p.out_stride_row,
                         p.out_stride_token,
                         p.out_stride_channel,
                         p.out_channels,
                         p.rows,
                         p.tokens,
                         p.quantized_channels,
                         p.group_size,
                         ceil_groups(p.tokens, p.group_size),
                         /*token_groups=*/false};
  return dequantize(args, p.out_dtype, p.mode, p.device, stream);
}

Status quantize_token_groups_cuda(const TokenGroupQuantParams& p, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(p.device));
  if (p.group_size < 1) return Status::invalid("group_size must be at least 1");
  const int64_t groups = ceil_groups(p.channels, p.group_size);
  if (p.rows == 0 || p.tokens == 0 || p.channels == 0) return Status::ok();
  // About two code bytes per thread and tile: enough work per barrier, many tiles in flight.
  const int64_t bytes_per_token = packed_bytes(p.channels, Packing::kBits2);
  const int64_t tokens_per_tile = std::max<int64_t>(1, 2 * kThreads / bytes_per_token);
  const int64_t tiles = ceil_div(p.rows * p.tokens, tokens_per_tile);
  const int64_t sms = std::max(cuda::multiprocessor_count(p.device), 1);
  const unsigned int blocks = static_cast<unsigned int>(std::min(tiles, sms * kBlocksPerSm));
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  VIDLLM_DISPATCH_FLOAT_TYPES(
      p.dtype, VIDLLM_LAUNCH(blocks, kThreads, 0, cuda_stream,
                             quantize_token_groups_kernel<scalar_t>)(p, groups, tokens_per_tile));
  return cuda::launch_status();
}

Status dequantize_token_groups_cuda(const TokenGroupDequantParams& p, void* stream) {
  VIDLLM_RETURN_IF_ERROR(cuda::set_device(p.device));
  if (p.group_size < 1) return Status::invalid("group_size must be at least 1");
  const DequantArgs args{p.codes,
                         p.scale,
                         p.zero,
                         nullptr,
                         1,
                         p.out,
                         p.tokens * p.channels,
                         p.channels,
                         1,
                         p.channels,
                         p.rows,
                         p.tokens,
                         p.channels,
                         p.group_size,
                         ceil_groups(p.channels, p.group_size),
                         /*token_groups=*/true};
  return dequantize(args, p.out_dtype, Mode::kMinMax2, p.device, stream);
}

}  // namespace vidllm::kv_quant
