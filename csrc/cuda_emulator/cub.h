// cub::BlockScan and cub::BlockReduce for the emulator, with cub's contract: the calling block's
// threads all call, the storage holds one barrier's worth of state, and no barrier follows the
// collective (reusing the storage needs the caller's __syncthreads). Results are computed in a
// fixed order after one barrier, so a missing barrier before reuse shows up as wrong values
// under the "reverse" and "random" schedules. BlockReduce's result is valid in thread 0 only; the
// other threads get a poison value (the type's maximum).
#pragma once

#include <limits>

#include "cuda_emulator/cuda_emulator.h"

namespace cuda_emulator {
// Raises the emulator's fault "cub collective of kThreads threads in a block of N" unless the
// block has exactly `threads` threads.
void require_block_threads(const char* collective, int threads);
}  // namespace cuda_emulator

namespace cub {

enum BlockScanAlgorithm { BLOCK_SCAN_RAKING, BLOCK_SCAN_RAKING_MEMOIZE, BLOCK_SCAN_WARP_SCANS };
enum BlockReduceAlgorithm {
  BLOCK_REDUCE_RAKING_COMMUTATIVE_ONLY,
  BLOCK_REDUCE_RAKING,
  BLOCK_REDUCE_WARP_REDUCTIONS
};

namespace detail {
inline int linear_thread() {
  return static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}
}  // namespace detail

template <typename T, int BLOCK_DIM_X, BlockScanAlgorithm ALGORITHM = BLOCK_SCAN_RAKING,
          int BLOCK_DIM_Y = 1, int BLOCK_DIM_Z = 1, int PTX_ARCH = 0>
class BlockScan {
 public:
  static constexpr int kThreads = BLOCK_DIM_X * BLOCK_DIM_Y * BLOCK_DIM_Z;
  struct TempStorage {
    T partial[kThreads];
  };

  explicit BlockScan(TempStorage& storage) : storage_(storage) {}

  void ExclusiveSum(T input, T& output) {
    T aggregate;
    ExclusiveSum(input, output, aggregate);
  }
  void ExclusiveSum(T input, T& output, T& block_aggregate) {
    output = exclusive(input, block_aggregate);
  }
  void InclusiveSum(T input, T& output) {
    T aggregate;
    InclusiveSum(input, output, aggregate);
  }
  void InclusiveSum(T input, T& output, T& block_aggregate) {
    output = exclusive(input, block_aggregate) + input;
  }
  template <int ITEMS>
  void ExclusiveSum(const T (&input)[ITEMS], T (&output)[ITEMS]) {
    T aggregate;
    ExclusiveSum(input, output, aggregate);
  }
  template <int ITEMS>
  void ExclusiveSum(const T (&input)[ITEMS], T (&output)[ITEMS], T& block_aggregate) {
    T running = exclusive(thread_sum(input), block_aggregate);
    for (int i = 0; i < ITEMS; ++i) {
      const T item = input[i];
      output[i] = running;
      running = running + item;
    }
  }
  template <int ITEMS>
  void InclusiveSum(const T (&input)[ITEMS], T (&output)[ITEMS]) {
    T aggregate;
    InclusiveSum(input, output, aggregate);
  }
  template <int ITEMS>
  void InclusiveSum(const T (&input)[ITEMS], T (&output)[ITEMS], T& block_aggregate) {
    T running = exclusive(thread_sum(input), block_aggregate);
    for (int i = 0; i < ITEMS; ++i) {
      running = running + input[i];
      output[i] = running;
    }
  }

 private:
  template <int ITEMS>
  static T thread_sum(const T (&input)[ITEMS]) {
    T sum = T();
    for (int i = 0; i < ITEMS; ++i) sum = sum + input[i];
    return sum;
  }

  // Publishes `value`, waits for the block, then reads every thread's value in thread order.
  T exclusive(T value, T& aggregate) {
    cuda_emulator::require_block_threads("cub::BlockScan", kThreads);
    const int self = detail::linear_thread();
    storage_.partial[self] = value;
    __syncthreads();
    T prefix = T();
    T total = T();
    for (int t = 0; t < kThreads; ++t) {
      if (t == self) prefix = total;
      total = total + storage_.partial[t];
    }
    aggregate = total;
    return prefix;
  }

  TempStorage& storage_;
};

template <typename T, int BLOCK_DIM_X,
          BlockReduceAlgorithm ALGORITHM = BLOCK_REDUCE_WARP_REDUCTIONS, int BLOCK_DIM_Y = 1,
          int BLOCK_DIM_Z = 1, int PTX_ARCH = 0>
class BlockReduce {
 public:
  static constexpr int kThreads = BLOCK_DIM_X * BLOCK_DIM_Y * BLOCK_DIM_Z;
  struct TempStorage {
    T partial[kThreads];
  };

  explicit BlockReduce(TempStorage& storage) : storage_(storage) {}

  // The block's sum in thread 0; a poison value elsewhere.
  T Sum(T input) { return Sum(input, kThreads); }
  T Sum(T input, int num_valid) {
    cuda_emulator::require_block_threads("cub::BlockReduce", kThreads);
    const int self = detail::linear_thread();
    storage_.partial[self] = input;
    __syncthreads();
    if (self != 0) return std::numeric_limits<T>::max();
    T total = T();
    for (int t = 0; t < num_valid && t < kThreads; ++t) total = total + storage_.partial[t];
    return total;
  }

 private:
  TempStorage& storage_;
};

}  // namespace cub
