// The emulator's own test kernels (tests/emulator/): each plants one fault the emulator must
// report, or records what the emulator did (orders, poison, collective results) for the tests
// to check. Compiled only into emulation builds; never by nvcc.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cstdint>
#include <string>
#include <vector>

#include "common/cuda_launch.cuh"
#include "cuda_emulator/vidllm_launchers.h"

namespace vidllm::emulator_tests {
namespace {

constexpr unsigned int kFullWarp = 0xffffffffu;

// Thread 5 skips the first barrier and waits at the second while the others wait at the first.
__global__ void divergent_barrier_kernel(int64_t* out) {
  if (threadIdx.x != 5) __syncthreads();
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Lane 7 of warp 0 skips the shuffle its mask names and goes on to the barrier.
__global__ void missing_lane_kernel(int64_t* out) {
  int64_t value = threadIdx.x;
  if (threadIdx.x != 7) value = __shfl_xor_sync(kFullWarp, value, 1);
  __syncthreads();
  out[threadIdx.x] = value;
}

// Lane 3 has exited when the others shuffle with a full mask.
__global__ void exited_lane_kernel(int64_t* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_sync(kFullWarp, static_cast<int64_t>(threadIdx.x), 0);
}

__global__ void empty_kernel(int64_t* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) out[0] = 1;
}

// Reads its dynamic shared memory before writing it, block after block: poison every time.
__global__ void shared_poison_kernel(int64_t* out) {
  VIDLLM_DYNAMIC_SHARED(unsigned char, bytes);
  out[blockIdx.x * blockDim.x + threadIdx.x] = bytes[threadIdx.x];
  __syncthreads();
  bytes[threadIdx.x] = 0;
}

// Records the order of blocks, then the order threads start and resume after a barrier and
// after a warp collective: out[0] is the cursor.
__global__ void order_kernel(int64_t* out) {
  if (threadIdx.x == 0)
    out[1 + atomicAdd(reinterpret_cast<unsigned long long*>(out), 1ull)] = blockIdx.x;
  __syncthreads();
  out[1 + atomicAdd(reinterpret_cast<unsigned long long*>(out), 1ull)] = 1000 + threadIdx.x;
  __syncthreads();
  out[1 + atomicAdd(reinterpret_cast<unsigned long long*>(out), 1ull)] = 2000 + threadIdx.x;
  __syncwarp();
  out[1 + atomicAdd(reinterpret_cast<unsigned long long*>(out), 1ull)] = 3000 + threadIdx.x;
}

// Two block scans on one storage: with the barrier cub requires between them, and without.
template <bool kBarrierBetween>
__global__ void scan_reuse_kernel(int64_t* out) {
  using BlockScan = cub::BlockScan<int, 64>;
  __shared__ typename BlockScan::TempStorage storage;
  int first = 0, second = 0, first_total = 0, second_total = 0;
  BlockScan(storage).ExclusiveSum(1, first, first_total);
  if (kBarrierBetween) __syncthreads();
  BlockScan(storage).ExclusiveSum(static_cast<int>(threadIdx.x), second, second_total);
  out[3 * threadIdx.x] = first;
  out[3 * threadIdx.x + 1] = first_total;
  out[3 * threadIdx.x + 2] = second;
}

// cub::BlockReduce: the sum in thread 0 only.
__global__ void block_reduce_kernel(int64_t* out) {
  using BlockReduce = cub::BlockReduce<int, 64>;
  __shared__ typename BlockReduce::TempStorage storage;
  out[threadIdx.x] = BlockReduce(storage).Sum(static_cast<int>(threadIdx.x) + 1);
}

// Every warp collective and predicate barrier on known values; 64 threads, 9 results each.
__global__ void collectives_kernel(int64_t* out) {
  const int lane = threadIdx.x % 32;
  const int64_t big = (int64_t{1} << 40) + threadIdx.x;  // 64-bit shuffles keep the high bits
  int64_t* mine = out + 9 * threadIdx.x;
  mine[0] = __shfl_sync(kFullWarp, big, 31 - lane);
  mine[1] = __shfl_xor_sync(kFullWarp, static_cast<int>(threadIdx.x), 5);
  mine[2] = __shfl_down_sync(kFullWarp, static_cast<int>(threadIdx.x), 3);
  mine[3] = __shfl_up_sync(kFullWarp, static_cast<int>(threadIdx.x), 2);
  mine[4] = __ballot_sync(kFullWarp, lane % 3 == 0);
  mine[5] = __match_any_sync(kFullWarp, static_cast<unsigned long long>(lane % 4));
  mine[6] = __syncthreads_or(threadIdx.x == 40);
  mine[7] = __syncthreads_count(threadIdx.x % 2 == 0);
  mine[8] = __syncthreads_and(threadIdx.x < 64);
}

}  // namespace
}  // namespace vidllm::emulator_tests

namespace emulated_launchers {

Result run_test_kernel(const std::string& name, std::vector<std::int64_t>& out) {
  using namespace ::vidllm::emulator_tests;
  const cudaStream_t stream = nullptr;
  out.assign(4096, -1);
  int64_t* data = out.data();
  if (name == "divergent_barrier") {
    VIDLLM_LAUNCH(1, 64, 0, stream, divergent_barrier_kernel)(data);
  } else if (name == "missing_lane") {
    VIDLLM_LAUNCH(1, 64, 0, stream, missing_lane_kernel)(data);
  } else if (name == "exited_lane") {
    VIDLLM_LAUNCH(1, 32, 0, stream, exited_lane_kernel)(data);
  } else if (name == "block_too_large") {
    VIDLLM_LAUNCH(1, 1025, 0, stream, empty_kernel)(data);
  } else if (name == "grid_y_too_large") {
    VIDLLM_LAUNCH(dim3(1, 65536), 32, 0, stream, empty_kernel)(data);
  } else if (name == "grid_z_too_large") {
    VIDLLM_LAUNCH(dim3(1, 1, 65536), 32, 0, stream, empty_kernel)(data);
  } else if (name == "grid_y_at_limit") {
    VIDLLM_LAUNCH(dim3(1, 65535), 32, 0, stream, empty_kernel)(data);
  } else if (name == "shared_without_attribute") {
    VIDLLM_LAUNCH(1, 32, 48 * 1024 + 16, stream, shared_poison_kernel)(data);
  } else if (name == "shared_with_attribute") {
    const auto kernel = shared_poison_kernel;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100000) !=
        cudaSuccess)
      return {2, cudaGetErrorString(cudaGetLastError())};
    VIDLLM_LAUNCH(2, 32, 100000, stream, kernel)(data);
  } else if (name == "shared_over_optin") {
    const auto kernel = shared_poison_kernel;
    const cudaError_t refused =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 232448 + 16);
    if (refused == cudaSuccess) return {2, "cudaFuncSetAttribute accepted 232464 bytes"};
    cudaGetLastError();
    VIDLLM_LAUNCH(1, 32, 232448 + 16, stream, kernel)(data);
  } else if (name == "shared_poison") {
    VIDLLM_LAUNCH(3, 32, 32, stream, shared_poison_kernel)(data);
  } else if (name == "order") {
    out[0] = 0;
    VIDLLM_LAUNCH(8, 64, 0, stream, order_kernel)(data);
  } else if (name == "scan_reuse_with_barrier") {
    VIDLLM_LAUNCH(1, 64, 0, stream, scan_reuse_kernel<true>)(data);
  } else if (name == "scan_reuse_without_barrier") {
    VIDLLM_LAUNCH(1, 64, 0, stream, scan_reuse_kernel<false>)(data);
  } else if (name == "block_reduce") {
    VIDLLM_LAUNCH(1, 64, 0, stream, block_reduce_kernel)(data);
  } else if (name == "collectives") {
    VIDLLM_LAUNCH(1, 64, 0, stream, collectives_kernel)(data);
  } else {
    return {1, "unknown emulator test kernel"};
  }
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) return {2, cudaGetErrorString(error)};
  return {0, ""};
}

}  // namespace emulated_launchers
