// Helpers shared by the CUDA kernel families: CUDA errors as Status, 16-byte vector I/O with
// conversion to float32, and a deterministic block-wide float sum.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "common/dtype.h"
#include "common/status.h"

namespace vidllm::cuda {

// ---- errors ------------------------------------------------------------------------------

// Clears the runtime's last-error slot on failure, so a stale error is never blamed on a later,
// unrelated launch. cudaGetErrorString returns static storage, as Status requires.
inline Status to_status(cudaError_t err) {
  if (err == cudaSuccess) return Status::ok();
  cudaGetLastError();
  return {StatusCode::kCudaError, cudaGetErrorString(err)};
}

// Call right after a <<<...>>> launch: reports a refused launch (bad configuration, no image).
inline Status launch_status() { return to_status(cudaGetLastError()); }

}  // namespace vidllm::cuda

// Returns the Status from the enclosing function unless it is ok.
#define VIDLLM_RETURN_IF_ERROR(expr)                    \
  do {                                                  \
    const ::vidllm::Status vidllm_status_ = (expr);     \
    if (!vidllm_status_.is_ok()) return vidllm_status_; \
  } while (0)

// Returns a kCudaError Status from the enclosing function unless `expr` is cudaSuccess.
#define VIDLLM_RETURN_IF_CUDA_ERROR(expr) VIDLLM_RETURN_IF_ERROR(::vidllm::cuda::to_status(expr))

namespace vidllm::cuda {

template <typename T>
VIDLLM_HOST_DEVICE constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// ---- vector I/O --------------------------------------------------------------------------

// Widest access a thread issues: one 128-bit load or store.
constexpr int kVectorBytes = 16;

// The largest grid a launch may ask for: 2^31 - 1 blocks along x, 65535 along y.
constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxGridY = 65535;

// Whether `ptr` allows one 16-byte access.
inline bool aligned16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % kVectorBytes == 0;
}

// Elements of T in one 16-byte vector: 4 for float, 8 for Half and BFloat16.
template <typename T>
constexpr int kVectorWidth = kVectorBytes / static_cast<int>(sizeof(T));

// The unsigned type of one access of kBytes bytes.
template <int kBytes>
struct RawBytes {
  static_assert(kBytes == 2 || kBytes == 4 || kBytes == 8 || kBytes == 16,
                "accesses are 2, 4, 8 or 16 bytes");
  using type = std::conditional_t<
      kBytes == 2, uint16_t,
      std::conditional_t<kBytes == 4, uint32_t, std::conditional_t<kBytes == 8, uint2, uint4>>>;
};

// VEC consecutive elements moved with a single access of VEC * sizeof(T) bytes; the pointer must
// be aligned to that size (launchers check it before choosing VEC > 1). Works for global and
// shared memory alike.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  using Raw = typename RawBytes<static_cast<int>(sizeof(T)) * VEC>::type;
  T elem[VEC];

  __device__ __forceinline__ static Vec load(const T* ptr) {
    Vec v;
    *reinterpret_cast<Raw*>(v.elem) = *reinterpret_cast<const Raw*>(ptr);
    return v;
  }
  __device__ __forceinline__ void store(T* ptr) const {
    *reinterpret_cast<Raw*>(ptr) = *reinterpret_cast<const Raw*>(elem);
  }
};

// Loads VEC elements of T (float, Half or BFloat16) at once and widens them to float32.
template <typename T, int VEC>
__device__ __forceinline__ void load_as_float(const T* ptr, float (&out)[VEC]) {
  const Vec<T, VEC> v = Vec<T, VEC>::load(ptr);
#pragma unroll
  for (int i = 0; i < VEC; ++i) out[i] = to_float(v.elem[i]);
}

// A warp copies `units` Units from src to dst, `lane` taking every 32nd; each lane loads kUnroll
// Units before storing any (the memory-level parallelism of one lane).
template <int kUnroll, typename Unit>
__device__ __forceinline__ void warp_copy(const Unit* src, Unit* dst, int64_t units, int lane) {
  for (int64_t base = lane; base < units; base += 32 * kUnroll) {
    Unit buffer[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (base + u * 32 < units) buffer[u] = src[base + u * 32];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (base + u * 32 < units) dst[base + u * 32] = buffer[u];
  }
}

// ---- block reduction ---------------------------------------------------------------------

// Block-wide sum of kValues floats per thread, bitwise reproducible: a fixed shuffle tree within
// each warp, then the warp partials added in warp order. Every thread receives the sums. The
// partials are double buffered, so back-to-back calls need only the one barrier inside each call:
// call i + 2 cannot overwrite buffer i % 2 before every thread has passed call i + 1's barrier,
// which comes after its reads of call i. Requires a 1-D block of exactly kThreads threads, all of
// which make every call.
template <int kThreads, int kValues>
class BlockSum {
 public:
  static_assert(kThreads % 32 == 0, "BlockSum needs whole warps");
  static constexpr int kWarps = kThreads / 32;

  struct Storage {
    float partial[2][kWarps][kValues];
  };

  __device__ __forceinline__ explicit BlockSum(Storage& storage) : storage_(storage) {}

  // Replaces each of `values` by its sum over the block.
  __device__ __forceinline__ void operator()(float (&values)[kValues]) {
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int v = 0; v < kValues; ++v) {
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2)
        values[v] += __shfl_xor_sync(0xffffffffu, values[v], offset);
    }
    if (lane == 0) {
#pragma unroll
      for (int v = 0; v < kValues; ++v) storage_.partial[parity_][warp][v] = values[v];
    }
    __syncthreads();
#pragma unroll
    for (int v = 0; v < kValues; ++v) {
      float total = storage_.partial[parity_][0][v];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) total += storage_.partial[parity_][w][v];
      values[v] = total;
    }
    parity_ ^= 1;
  }

 private:
  Storage& storage_;
  int parity_ = 0;
};

}  // namespace vidllm::cuda

// Runs the statement with `kVec` bound to kVectorWidth<T> when `vectorized`, else to 1: picks a
// kernel's vector or scalar instantiation, e.g.
//   VIDLLM_VECTOR_SWITCH(ok, T, kVec, VIDLLM_LAUNCH(grid, block, 0, stream, kernel<T, kVec>)(p));
#define VIDLLM_VECTOR_SWITCH(vectorized, T, kVec, ...)    \
  if (vectorized) {                                       \
    constexpr int kVec = ::vidllm::cuda::kVectorWidth<T>; \
    __VA_ARGS__;                                          \
  } else {                                                \
    constexpr int kVec = 1;                               \
    __VA_ARGS__;                                          \
  }
