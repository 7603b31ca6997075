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

// What BlockScan and BlockReduce share: one slot per thread of a block of THREADS threads,
// filled before one barrier.
template <typename T, int THREADS>
class BlockSlots {
 public:
  static constexpr int kThreads = THREADS;
  struct TempStorage {
    T partial[kThreads];
  };

  explicit BlockSlots(TempStorage& storage) : storage_(storage) {}

 protected:
  // Stores `value` in the calling thread's slot and waits for the block; returns the thread's
  // linear index. `collective` names the caller in the fault of a block of another size.
  int publish(const char* collective, T value) {
    cuda_emulator::require_block_threads(collective, kThreads);
    const int self = linear_thread();
    storage_.partial[self] = value;
    __syncthreads();
    return self;
  }

  TempStorage& storage_;
};
}  // namespace detail

template <typename T, int BLOCK_DIM_X, BlockScanAlgorithm ALGORITHM = BLOCK_SCAN_RAKING,
          int BLOCK_DIM_Y = 1, int BLOCK_DIM_Z = 1, int PTX_ARCH = 0>
class BlockScan : public detail::BlockSlots<T, BLOCK_DIM_X * BLOCK_DIM_Y * BLOCK_DIM_Z> {
  using Slots = detail::BlockSlots<T, BLOCK_DIM_X * BLOCK_DIM_Y * BLOCK_DIM_Z>;

 public:
  using Slots::Slots;
  using typename Slots::TempStorage;

  // Prefix sums in thread order of one item, or ITEMS items, per thread; block_aggregate receives
  // the block's total.
  void ExclusiveSum(T input, T& output, T& block_aggregate) {
    output = exclusive(input, block_aggregate);
  }
  void InclusiveSum(T input, T& output, T& block_aggregate) {
    output = exclusive(input, block_aggregate) + input;
  }
  template <int ITEMS>
  void ExclusiveSum(const T (&input)[ITEMS], T (&output)[ITEMS], T& block_aggregate) {
    scan_items(input, output, ITEMS, /*inclusive=*/false, block_aggregate);
  }
  template <int ITEMS>
  void InclusiveSum(const T (&input)[ITEMS], T (&output)[ITEMS], T& block_aggregate) {
    scan_items(input, output, ITEMS, /*inclusive=*/true, block_aggregate);
  }
  // The same without the block's total, for one item or an array of them.
  template <typename Input, typename Output>
  void ExclusiveSum(const Input& input, Output& output) {
    T aggregate;
    ExclusiveSum(input, output, aggregate);
  }
  template <typename Input, typename Output>
  void InclusiveSum(const Input& input, Output& output) {
    T aggregate;
    InclusiveSum(input, output, aggregate);
  }

 private:
  // The prefix sums of a thread's `items` items, after the sums of the threads before it. output
  // may alias input.
  void scan_items(const T* input, T* output, int items, bool inclusive, T& aggregate) {
    T thread_total = T();
    for (int i = 0; i < items; ++i) thread_total = thread_total + input[i];
    T running = exclusive(thread_total, aggregate);
    for (int i = 0; i < items; ++i) {
      const T item = input[i];
      if (inclusive) running = running + item;
      output[i] = running;
      if (!inclusive) running = running + item;
    }
  }

  // Publishes `value`, waits for the block, then reads every thread's value in thread order.
  T exclusive(T value, T& aggregate) {
    const int self = this->publish("cub::BlockScan", value);
    T prefix = T();
    T total = T();
    for (int t = 0; t < Slots::kThreads; ++t) {
      if (t == self) prefix = total;
      total = total + this->storage_.partial[t];
    }
    aggregate = total;
    return prefix;
  }
};

template <typename T, int BLOCK_DIM_X,
          BlockReduceAlgorithm ALGORITHM = BLOCK_REDUCE_WARP_REDUCTIONS, int BLOCK_DIM_Y = 1,
          int BLOCK_DIM_Z = 1, int PTX_ARCH = 0>
class BlockReduce : public detail::BlockSlots<T, BLOCK_DIM_X * BLOCK_DIM_Y * BLOCK_DIM_Z> {
  using Slots = detail::BlockSlots<T, BLOCK_DIM_X * BLOCK_DIM_Y * BLOCK_DIM_Z>;

 public:
  using Slots::Slots;
  using typename Slots::TempStorage;

  // The block's sum in thread 0; a poison value elsewhere.
  T Sum(T input) { return Sum(input, Slots::kThreads); }
  T Sum(T input, int num_valid) {
    const int self = this->publish("cub::BlockReduce", input);
    if (self != 0) return std::numeric_limits<T>::max();
    T total = T();
    for (int t = 0; t < num_valid && t < Slots::kThreads; ++t)
      total = total + this->storage_.partial[t];
    return total;
  }
};

}  // namespace cub
