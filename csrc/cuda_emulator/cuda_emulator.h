// The CUDA execution model for the host compiler: what a .cu file of this project needs from
// nvcc, the CUDA runtime and cub, implemented on the CPU. Every emulated translation unit
// includes this header first (CMake passes -include); the <cuda_runtime.h>, <cuda_fp16.h>,
// <cuda_bf16.h> and <cub/...> includes of the sources resolve to include/ here. See README.md.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- keywords ------------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static shared memory: one object per kernel instantiation, shared by the threads of the block
// running (blocks run one at a time), uninitialized contents carried over as on a GPU.
#define __shared__ static
// __restrict__ is a GCC and Clang keyword already.

// ---- vector types and built-in variables -------------------------------------------------

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct __attribute__((aligned(8))) uint2 {
  unsigned int x, y;
};
struct __attribute__((aligned(16))) uint4 {
  unsigned int x, y, z, w;
};
struct __attribute__((aligned(8))) int2 {
  int x, y;
};
struct __attribute__((aligned(16))) int4 {
  int x, y, z, w;
};
struct __attribute__((aligned(8))) float2 {
  float x, y;
};
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
  return {x, y, z, w};
}
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// Set by the scheduler before it resumes a thread; read-only for kernels.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

// CUDA's device min and max overloads for arithmetic operands (mixed types promote as in C++).
namespace cuda_emulator::detail {
template <typename A, typename B>
using IfArithmetic = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value,
                                      std::common_type_t<A, B>>;
template <bool kMax, typename A, typename B>
inline IfArithmetic<A, B> min_or_max(A a, B b) {
  using C = std::common_type_t<A, B>;
  const C x = static_cast<C>(a);
  const C y = static_cast<C>(b);
  if constexpr (std::is_floating_point<C>::value) {
    return kMax ? std::fmax(x, y) : std::fmin(x, y);
  } else {
    return (kMax ? x < y : y < x) ? y : x;
  }
}
}  // namespace cuda_emulator::detail
template <typename A, typename B>
inline cuda_emulator::detail::IfArithmetic<A, B> min(A a, B b) {
  return cuda_emulator::detail::min_or_max<false>(a, b);
}
template <typename A, typename B>
inline cuda_emulator::detail::IfArithmetic<A, B> max(A a, B b) {
  return cuda_emulator::detail::min_or_max<true>(a, b);
}

using std::isfinite;
using std::isinf;
using std::isnan;

// ---- runtime API -------------------------------------------------------------------------

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorUnsupportedPtxVersion = 222,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute : int {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
struct cudaFuncAttributes {
  std::size_t sharedSizeBytes;
  std::size_t constSizeBytes;
  std::size_t localSizeBytes;
  int maxThreadsPerBlock;
  int numRegs;
  int ptxVersion;
  int binaryVersion;
  int cacheModeCA;
  int maxDynamicSharedSizeBytes;
  int preferredShmemCarveout;
};

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
const char* cudaGetErrorName(cudaError_t error);
cudaError_t cudaRuntimeGetVersion(int* version);
cudaError_t cudaDriverGetVersion(int* version);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device);
cudaError_t cudaMemsetAsync(void* pointer, int value, std::size_t bytes, cudaStream_t stream = 0);
cudaError_t cudaMemcpyAsync(void* destination, const void* source, std::size_t bytes,
                            cudaMemcpyKind kind, cudaStream_t stream = 0);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();

namespace cuda_emulator {
// Per-function attributes, keyed by the kernel's address.
cudaError_t func_get_attributes(cudaFuncAttributes* attributes, const void* kernel);
cudaError_t func_set_attribute(const void* kernel, cudaFuncAttribute attribute, int value);
cudaError_t occupancy(int* blocks, int block_size, std::size_t shared_bytes);
}  // namespace cuda_emulator

template <typename T>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, T* kernel) {
  return cuda_emulator::func_get_attributes(attributes, reinterpret_cast<const void*>(kernel));
}
template <typename T>
cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attribute, int value) {
  return cuda_emulator::func_set_attribute(reinterpret_cast<const void*>(kernel), attribute, value);
}
template <typename T>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, T*, int block_size,
                                                          std::size_t shared_bytes) {
  return cuda_emulator::occupancy(blocks, block_size, shared_bytes);
}

// ---- bit casts and rounded arithmetic ------------------------------------------------------

namespace cuda_emulator::detail {
template <typename To, typename From>
inline To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}
}  // namespace cuda_emulator::detail

inline float __uint_as_float(unsigned int x) { return cuda_emulator::detail::bit_cast<float>(x); }
inline float __int_as_float(int x) { return cuda_emulator::detail::bit_cast<float>(x); }
inline unsigned int __float_as_uint(float x) {
  return cuda_emulator::detail::bit_cast<unsigned int>(x);
}
inline int __float_as_int(float x) { return cuda_emulator::detail::bit_cast<int>(x); }
inline double __longlong_as_double(long long x) {
  return cuda_emulator::detail::bit_cast<double>(x);
}
inline long long __double_as_longlong(double x) {
  return cuda_emulator::detail::bit_cast<long long>(x);
}

// The emulated sources compile with -ffp-contract=off: each of these rounds once, like the
// device's _rn intrinsics.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }

inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned int>(x)); }
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline unsigned int __brev(unsigned int x) {
  unsigned int r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}

// ---- barriers, warp collectives, memory fences -------------------------------------------

namespace cuda_emulator {

enum class BarrierKind : int { kPlain, kOr, kAnd, kCount };
enum class WarpOp : int { kSync, kShfl, kShflXor, kShflDown, kShflUp, kBallot, kMatchAny };

// A block-wide barrier at source line `file`:`line`: every live (not exited) thread of the block
// must reach the same one. Returns the predicate reduction for kOr, kAnd and kCount.
int block_barrier(BarrierKind kind, int predicate, const char* file, int line);

// A warp collective over the lanes of `mask`: each of them must call the same operation with the
// same mask. `value` is the caller's operand (shuffles: the bits to send; match: the key),
// `argument` the lane, lane mask or delta. Returns the caller's result bits.
std::uint64_t warp_collective(WarpOp op, unsigned int mask, std::uint64_t value, int argument,
                              int width);

template <typename T>
inline std::uint64_t to_bits(T value) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                "warp shuffles move at most 64 bits of a trivially copyable type");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}
template <typename T>
inline T from_bits(std::uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// The __shfl_*_sync forms: `value` sent through warp_collective as bits and read back as T.
template <typename T>
inline T shuffle(WarpOp op, unsigned int mask, T value, int argument, int width) {
  return from_bits<T>(warp_collective(op, mask, to_bits(value), argument, width));
}

}  // namespace cuda_emulator

#define __syncthreads()                                                                    \
  ((void)::cuda_emulator::block_barrier(::cuda_emulator::BarrierKind::kPlain, 1, __FILE__, \
                                        __LINE__))
#define __syncthreads_or(predicate) \
  ::cuda_emulator::block_barrier(::cuda_emulator::BarrierKind::kOr, (predicate), __FILE__, __LINE__)
#define __syncthreads_and(predicate)                                                        \
  ::cuda_emulator::block_barrier(::cuda_emulator::BarrierKind::kAnd, (predicate), __FILE__, \
                                 __LINE__)
#define __syncthreads_count(predicate)                                                        \
  ::cuda_emulator::block_barrier(::cuda_emulator::BarrierKind::kCount, (predicate), __FILE__, \
                                 __LINE__)

inline void __syncwarp(unsigned int mask = 0xffffffffu) {
  ::cuda_emulator::warp_collective(::cuda_emulator::WarpOp::kSync, mask, 0, 0, 32);
}
template <typename T>
inline T __shfl_sync(unsigned int mask, T value, int source_lane, int width = 32) {
  return ::cuda_emulator::shuffle(::cuda_emulator::WarpOp::kShfl, mask, value, source_lane, width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T value, int lane_mask, int width = 32) {
  return ::cuda_emulator::shuffle(::cuda_emulator::WarpOp::kShflXor, mask, value, lane_mask, width);
}
template <typename T>
inline T __shfl_down_sync(unsigned int mask, T value, unsigned int delta, int width = 32) {
  return ::cuda_emulator::shuffle(::cuda_emulator::WarpOp::kShflDown, mask, value,
                                  static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_up_sync(unsigned int mask, T value, unsigned int delta, int width = 32) {
  return ::cuda_emulator::shuffle(::cuda_emulator::WarpOp::kShflUp, mask, value,
                                  static_cast<int>(delta), width);
}
inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
  using namespace cuda_emulator;
  return static_cast<unsigned int>(
      warp_collective(WarpOp::kBallot, mask, predicate != 0 ? 1u : 0u, 0, 32));
}
inline int __any_sync(unsigned int mask, int predicate) {
  return __ballot_sync(mask, predicate) != 0;
}
inline int __all_sync(unsigned int mask, int predicate) {
  return __ballot_sync(mask, predicate) == __ballot_sync(mask, 1);
}
template <typename T>
inline unsigned int __match_any_sync(unsigned int mask, T value) {
  using namespace cuda_emulator;
  static_assert(std::is_integral<T>::value || std::is_floating_point<T>::value,
                "__match_any_sync takes a 32- or 64-bit integer or float");
  return static_cast<unsigned int>(warp_collective(WarpOp::kMatchAny, mask, to_bits(value), 0, 32));
}

// Fibers of one block never run at the same time, so fences only have to stop the compiler.
inline void __threadfence() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// ---- atomics -----------------------------------------------------------------------------
// Like CUDA's overloads, the operand converts to the pointee type. Fibers never run at the same
// time and launches are serialized, yet the integer forms use real atomics, which cost nothing
// here and keep the emulator honest if that ever changes.

template <typename T, typename U>
inline T atomicAdd(T* address, U operand) {
  const T value = static_cast<T>(operand);
  if constexpr (std::is_integral<T>::value) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
  } else {
    const T old = *address;
    *address = old + value;
    return old;
  }
}
// The integer read-modify-write forms, one GCC builtin each.
#define VIDLLM_EMULATED_ATOMIC(name, builtin)                           \
  template <typename T, typename U>                                     \
  inline T name(T* address, U operand) {                                \
    return builtin(address, static_cast<T>(operand), __ATOMIC_RELAXED); \
  }
VIDLLM_EMULATED_ATOMIC(atomicSub, __atomic_fetch_sub)
VIDLLM_EMULATED_ATOMIC(atomicOr, __atomic_fetch_or)
VIDLLM_EMULATED_ATOMIC(atomicAnd, __atomic_fetch_and)
VIDLLM_EMULATED_ATOMIC(atomicXor, __atomic_fetch_xor)
VIDLLM_EMULATED_ATOMIC(atomicExch, __atomic_exchange_n)
#undef VIDLLM_EMULATED_ATOMIC
template <typename T, typename U, typename V>
inline T atomicCAS(T* address, U compare, V operand) {
  T expected = static_cast<T>(compare);
  __atomic_compare_exchange_n(address, &expected, static_cast<T>(operand), false, __ATOMIC_RELAXED,
                              __ATOMIC_RELAXED);
  return expected;
}
template <typename T, typename U>
inline T atomicMax(T* address, U operand) {
  const T old = *address;
  if (static_cast<T>(operand) > old) *address = static_cast<T>(operand);
  return old;
}
template <typename T, typename U>
inline T atomicMin(T* address, U operand) {
  const T old = *address;
  if (static_cast<T>(operand) < old) *address = static_cast<T>(operand);
  return old;
}

// ---- launches ----------------------------------------------------------------------------

namespace cuda_emulator {

struct LaunchConfig {
  const char* kernel;         // the launch's kernel expression, as written
  const char* launched_from;  // the enclosing host function
  const void* key;            // the kernel's address (function attributes)
  dim3 grid;
  dim3 block;
  std::size_t shared_bytes;
};

// Runs every block of the grid, each block's threads as fibers calling invoke(closure). Returns
// cudaSuccess, or an error whose cudaGetErrorString names the kernel and the fault.
cudaError_t run_kernel(const LaunchConfig& config, void (*invoke)(const void*),
                       const void* closure);

// The block's dynamic shared memory (16-byte aligned, poisoned with 0xFF before each block).
unsigned char* dynamic_shared_memory();

template <typename T>
inline T* dynamic_shared() {
  return reinterpret_cast<T*>(dynamic_shared_memory());
}

template <typename T>
inline dim3 to_dim3(T value) {
  if constexpr (std::is_same<T, dim3>::value) {
    return value;
  } else {
    return dim3(static_cast<unsigned int>(value));
  }
}

template <typename... Params>
class KernelLaunch {
 public:
  KernelLaunch(const LaunchConfig& config, void (*kernel)(Params...))
      : config_(config), kernel_(kernel) {}

  // Converts the arguments to the kernel's parameter types once; every thread then receives its
  // own copies, as each CUDA thread does.
  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "wrong number of kernel arguments");
    using Bound = std::tuple<std::decay_t<Params>...>;
    const Bound bound(std::forward<Args>(args)...);
    struct Closure {
      void (*kernel)(Params...);
      const Bound* arguments;
    } closure{kernel_, &bound};
    run_kernel(
        config_,
        [](const void* opaque) {
          const auto* c = static_cast<const Closure*>(opaque);
          std::apply(c->kernel, *c->arguments);
        },
        &closure);
  }

 private:
  LaunchConfig config_;
  void (*kernel_)(Params...);
};

template <typename... Params, typename Grid, typename Block, typename Stream>
inline KernelLaunch<Params...> launch(const char* name, const char* launched_from,
                                      void (*kernel)(Params...), Grid grid, Block block,
                                      std::size_t shared_bytes, Stream) {
  const LaunchConfig config{name,          launched_from,  reinterpret_cast<const void*>(kernel),
                            to_dim3(grid), to_dim3(block), shared_bytes};
  return KernelLaunch<Params...>(config, kernel);
}

}  // namespace cuda_emulator
