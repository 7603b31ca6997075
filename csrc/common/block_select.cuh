// Block-wide selection of the k-th largest of `count` unique 64-bit keys (the rank keys of
// common/rank_key.h), shared by every top-k in the package. Most-significant-digit radix select,
// 8 bits per pass: each pass histograms the digit of the keys that still match the prefix found
// so far, then one warp locates the bin holding the k-th largest with a suffix scan. Keys are
// recomputed from the caller's functor on every pass, so nothing is buffered and `count` is
// bounded only by the 32-bit histogram counters.
#pragma once

#include <cstdint>

namespace vidllm::cuda {

template <int kThreads>
class BlockRadixSelect {
 public:
  static_assert(kThreads % 32 == 0, "BlockRadixSelect needs whole warps");
  static constexpr int kDigitBits = 8;
  static constexpr int kBins = 1 << kDigitBits;
  static constexpr int kBinsPerLane = kBins / 32;

  struct Storage {
    unsigned int histogram[kBins];
    unsigned int digit;      // bin of the k-th largest in the current pass
    unsigned int rank;       // its rank (1 = largest) among the keys in that bin
    unsigned int bin_count;  // keys in that bin
    unsigned long long found;
  };

  // The k-th largest (k = 1: the largest) of key(0), ..., key(count - 1), returned to every thread.
  // Requires: keys unique, 1 <= k <= count < 2^32, a 1-D block of kThreads threads that all call
  // with the same arguments. `key` is a device callable int64_t -> uint64_t. Back-to-back calls
  // with the same storage are safe without an extra barrier.
  template <typename KeyFn>
  __device__ static uint64_t kth_largest(const KeyFn& key, int64_t count, int64_t k,
                                         Storage& storage) {
    uint64_t prefix = 0;  // digits found so far, in place
    uint64_t mask = 0;    // the bits they cover
    unsigned int rank = static_cast<unsigned int>(k);
    for (int shift = 64 - kDigitBits; shift >= 0; shift -= kDigitBits) {
      for (int bin = threadIdx.x; bin < kBins; bin += kThreads) storage.histogram[bin] = 0;
      __syncthreads();
      count_digits(key, count, prefix, mask, shift, storage.histogram);
      __syncthreads();
      if (threadIdx.x < 32) pick_digit(storage, rank);
      __syncthreads();
      prefix |= static_cast<uint64_t>(storage.digit) << shift;
      mask |= static_cast<uint64_t>(kBins - 1) << shift;
      rank = storage.rank;
      // A bin of one key: that key is the answer; fetch it instead of running the lower passes.
      if (storage.bin_count == 1 && shift > 0) return find_match(key, count, prefix, mask, storage);
    }
    return prefix;
  }

 private:
  template <typename KeyFn>
  __device__ static void count_digits(const KeyFn& key, int64_t count, uint64_t prefix,
                                      uint64_t mask, int shift, unsigned int* histogram) {
    const int lane = threadIdx.x % 32;
    // The trip count is uniform so every lane reaches __match_any_sync; lanes with no key to
    // count carry the out-of-range digit kBins. Lanes sharing a digit add once, through their
    // lowest lane: early passes put most keys in a few bins, where plain atomics would serialize.
    for (int64_t base = 0; base < count; base += kThreads) {
      const int64_t i = base + threadIdx.x;
      unsigned int digit = kBins;
      if (i < count) {
        const uint64_t k = key(i);
        if ((k & mask) == prefix) digit = static_cast<unsigned int>(k >> shift) & (kBins - 1);
      }
      const unsigned int peers = __match_any_sync(0xffffffffu, digit);
      if (digit < kBins && lane == __ffs(peers) - 1) atomicAdd(&histogram[digit], __popc(peers));
    }
  }

  // Run by warp 0. Lane l owns bins [l * kBinsPerLane, (l + 1) * kBinsPerLane); a suffix scan over
  // the lanes' totals tells each lane how many keys lie in higher bins, and the one lane whose
  // range crosses `rank` walks its bins downwards to find the digit.
  __device__ static void pick_digit(Storage& storage, unsigned int rank) {
    const int lane = threadIdx.x;
    unsigned int bins[kBinsPerLane];
    unsigned int lane_total = 0;
#pragma unroll
    for (int j = 0; j < kBinsPerLane; ++j) {
      bins[j] = storage.histogram[lane * kBinsPerLane + j];
      lane_total += bins[j];
    }
    unsigned int suffix = lane_total;  // keys in this lane's bins and in all higher lanes'
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const unsigned int higher = __shfl_down_sync(0xffffffffu, suffix, offset);
      if (lane + offset < 32) suffix += higher;
    }
    unsigned int above = suffix - lane_total;  // keys in bins above this lane's
#pragma unroll
    for (int j = kBinsPerLane - 1; j >= 0; --j) {
      if (above < rank && above + bins[j] >= rank) {
        storage.digit = static_cast<unsigned int>(lane * kBinsPerLane + j);
        storage.rank = rank - above;
        storage.bin_count = bins[j];
      }
      above += bins[j];
    }
  }

  // The only key matching `prefix` under `mask` (keys are unique and its bin held one).
  template <typename KeyFn>
  __device__ static uint64_t find_match(const KeyFn& key, int64_t count, uint64_t prefix,
                                        uint64_t mask, Storage& storage) {
    for (int64_t i = threadIdx.x; i < count; i += kThreads) {
      const uint64_t k = key(i);
      if ((k & mask) == prefix) storage.found = k;
    }
    __syncthreads();
    return storage.found;
  }
};

}  // namespace vidllm::cuda
