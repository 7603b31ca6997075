// CPU twin of the matching kernel: every A token's most similar B token without storing the
// similarity matrix. Each dot product is a chain over the channels in ascending order, exactly as
// on the GPU; the SIMD lanes run different (A, B) pairs, never parts of one sum, so vectorizing
// changes no bit. AVX2 is used when the CPU has it (same results, twice the lanes per instruction).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include "common/dtype.h"
#include "common/parallel.h"
#include "common/rank_key.h"
#include "token_merge/token_merge.h"

namespace vidllm::token_merge {
namespace {

constexpr int kLanes = 8;     // floats per vector
constexpr int kVectorsB = 2;  // vectors of B tokens per register block
constexpr int kBlockB = kLanes * kVectorsB;
constexpr int kBlockA = 4;               // A tokens per register block: 8 accumulators
constexpr int64_t kATokensPerItem = 64;  // A tokens per parallel work item

typedef float FloatV __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IntV __attribute__((vector_size(kLanes * sizeof(int32_t))));

// One row's operands in float32. B is stored in blocks of kBlockB tokens, channel-major inside a
// block, so the inner loop streams through memory; the padding columns hold NaN, which never wins.
struct RowOperands {
  int64_t a_size = 0;
  int64_t b_size = 0;
  int64_t b_blocks = 0;
  std::vector<float> a;     // [a_size, channels]
  std::vector<float> a_sq;  // [a_size], clamped_sum_sq
  std::vector<float> b;     // [b_blocks, channels, kBlockB]
  std::vector<float> b_sq;  // [b_blocks * kBlockB], clamped_sum_sq (1 in the padding)
};

// Sum of squares in ascending channel order, as the CUDA kernel accumulates it, clamped.
float clamped_sum_sq_of(const float* values, int64_t channels) {
  float sum_sq = 0.0f;
  for (int64_t c = 0; c < channels; ++c) sum_sq = add_product(sum_sq, values[c], values[c]);
  return clamped_sum_sq(sum_sq);
}

// Square root lane by lane. sqrtps is IEEE (correctly rounded), so it gives std::sqrt's bits.
__attribute__((always_inline)) inline FloatV sqrt_lanes(FloatV x) {
#if defined(__SSE__)
  __m128 halves[kLanes / 4];
  std::memcpy(halves, &x, sizeof(x));
  for (__m128& half : halves) half = _mm_sqrt_ps(half);
  std::memcpy(&x, halves, sizeof(x));
#else
  for (int l = 0; l < kLanes; ++l) x[l] = std::sqrt(x[l]);
#endif
  return x;
}

// cosine_denominator (common/cosine.h) lane by lane, branch-free: the same operations and
// roundings, so the same bits.
__attribute__((always_inline)) inline FloatV cosine_denominators(FloatV a_sq, FloatV b_sq) {
  const FloatV product = a_sq * b_sq;
  const IntV overflow = product > FLT_MAX;  // NaN compares false, as in the scalar form
  const FloatV scaled = (a_sq * 0x1p-64f) * (b_sq * 0x1p-64f);
  const FloatV operand = reinterpret_cast<FloatV>((overflow & reinterpret_cast<IntV>(scaled)) |
                                                  (~overflow & reinterpret_cast<IntV>(product)));
  const FloatV root = sqrt_lanes(operand);
  const FloatV rescaled = root * 0x1p64f;
  return reinterpret_cast<FloatV>((overflow & reinterpret_cast<IntV>(rescaled)) |
                                  (~overflow & reinterpret_cast<IntV>(root)));
}

template <typename T>
void prepare_row(const MatchParams& p, int64_t row, RowOperands& ops) {
  const int64_t tokens = tokens_of(p.rows, row);
  const int64_t prot = p.rows.protected_tokens;
  const int64_t channels = p.channels;
  ops.a_size = set_a_size(tokens, prot);
  ops.b_size = set_b_size(tokens, prot);
  ops.b_blocks = (ops.b_size + kBlockB - 1) / kBlockB;
  ops.a.resize(static_cast<size_t>(ops.a_size * channels));
  ops.a_sq.resize(static_cast<size_t>(ops.a_size));
  ops.b.assign(static_cast<size_t>(ops.b_blocks * channels * kBlockB),
               std::numeric_limits<float>::quiet_NaN());
  ops.b_sq.assign(static_cast<size_t>(ops.b_blocks * kBlockB), 1.0f);
  const T* metric = static_cast<const T*>(p.metric) + row * p.metric_row_stride;
  std::vector<float> values(static_cast<size_t>(channels));
  for (int64_t i = 0; i < ops.a_size; ++i) {
    const T* source = metric + a_token(prot, i) * p.metric_token_stride;
    float* target = ops.a.data() + i * channels;
    for (int64_t c = 0; c < channels; ++c) target[c] = to_float(source[c]);
    ops.a_sq[i] = clamped_sum_sq_of(target, channels);
  }
  for (int64_t j = 0; j < ops.b_size; ++j) {
    const T* source = metric + b_token(prot, j) * p.metric_token_stride;
    for (int64_t c = 0; c < channels; ++c) values[c] = to_float(source[c]);
    float* block = ops.b.data() + (j / kBlockB) * channels * kBlockB + j % kBlockB;
    for (int64_t c = 0; c < channels; ++c) block[c * kBlockB] = values[c];
    ops.b_sq[j] = clamped_sum_sq_of(values.data(), channels);
  }
}

// Partners of A tokens [first, first + kBlockA) (fewer at the end of a row; the missing ones
// repeat the last and are not stored). Each lane keeps its best (highest similarity, NaN lowest,
// earlier index on ties: lanes see their B tokens in ascending order); the lanes' bests are then
// combined by rank key, which yields the same winner as one scan over all B tokens.
__attribute__((always_inline)) inline void match_block(const RowOperands& ops, int64_t channels,
                                                       int64_t first, float* score,
                                                       int64_t* partner) {
  const float* a_rows[kBlockA];
  float a_sq[kBlockA];
  for (int k = 0; k < kBlockA; ++k) {
    const int64_t i = first + k < ops.a_size ? first + k : ops.a_size - 1;
    a_rows[k] = ops.a.data() + i * channels;
    a_sq[k] = ops.a_sq[i];
  }
  IntV lane_index;
  for (int l = 0; l < kLanes; ++l) lane_index[l] = l;
  FloatV best[kBlockA][kVectorsB];
  IntV best_index[kBlockA][kVectorsB];
  for (int k = 0; k < kBlockA; ++k)
    for (int v = 0; v < kVectorsB; ++v) {
      best[k][v] = FloatV{} + std::numeric_limits<float>::quiet_NaN();
      best_index[k][v] = lane_index + v * kLanes;
    }
  for (int64_t block = 0; block < ops.b_blocks; ++block) {
    const float* b = ops.b.data() + block * channels * kBlockB;
    FloatV dot[kBlockA][kVectorsB] = {};
    for (int64_t c = 0; c < channels; ++c) {
      FloatV b0;
      FloatV b1;
      std::memcpy(&b0, b + c * kBlockB, sizeof(b0));
      std::memcpy(&b1, b + c * kBlockB + kLanes, sizeof(b1));
      for (int k = 0; k < kBlockA; ++k) {
        const FloatV a = FloatV{} + a_rows[k][c];
        dot[k][0] = dot[k][0] + a * b0;
        dot[k][1] = dot[k][1] + a * b1;
      }
    }
    for (int v = 0; v < kVectorsB; ++v) {
      FloatV b_sq;
      std::memcpy(&b_sq, ops.b_sq.data() + block * kBlockB + v * kLanes, sizeof(b_sq));
      const IntV index = lane_index + static_cast<int32_t>(block * kBlockB + v * kLanes);
      for (int k = 0; k < kBlockA; ++k) {
        const FloatV similarity = dot[k][v] / cosine_denominators(FloatV{} + a_sq[k], b_sq);
        const FloatV current = best[k][v];
        // NaN compares false: a NaN never replaces a number, and any number replaces a NaN.
        const IntV better =
            (similarity > current) | ((current != current) & (similarity == similarity));
        best[k][v] = reinterpret_cast<FloatV>((better & reinterpret_cast<IntV>(similarity)) |
                                              (~better & reinterpret_cast<IntV>(current)));
        best_index[k][v] = (better & index) | (~better & best_index[k][v]);
      }
    }
  }
  for (int k = 0; k < kBlockA && first + k < ops.a_size; ++k) {
    uint64_t best_key = 0;
    for (int v = 0; v < kVectorsB; ++v)
      for (int l = 0; l < kLanes; ++l) {
        const uint32_t j = static_cast<uint32_t>(best_index[k][v][l]);
        const uint64_t key = rank_key(best[k][v][l], j);
        if (key > best_key) {
          best_key = key;
          score[first + k] = best[k][v][l];
          partner[first + k] = j;
        }
      }
  }
}

int64_t items_per_row(const MatchParams& p) {
  const int64_t a_capacity = set_a_size(p.rows.tokens, p.rows.protected_tokens);
  return (a_capacity + kATokensPerItem - 1) / kATokensPerItem;
}

// One work item: kATokensPerItem A tokens of one row.
__attribute__((always_inline)) inline void match_item(const MatchParams& p,
                                                      const std::vector<RowOperands>& operands,
                                                      int64_t item) {
  const int64_t a_capacity = set_a_size(p.rows.tokens, p.rows.protected_tokens);
  const int64_t row = item / items_per_row(p);
  const RowOperands& ops = operands[row];
  const int64_t first = (item % items_per_row(p)) * kATokensPerItem;
  const int64_t end = std::min(first + kATokensPerItem, ops.a_size);
  float* score = p.score + row * a_capacity;
  int64_t* partner = p.partner + row * a_capacity;
  if (ops.b_size == 0) {  // at most one open token: nothing to match it with
    for (int64_t i = first; i < end; ++i) {
      score[i] = std::numeric_limits<float>::quiet_NaN();
      partner[i] = -1;
    }
    return;
  }
  for (int64_t i = first; i < end; i += kBlockA) match_block(ops, p.channels, i, score, partner);
}

// The same code compiled twice; a work item is the unit the dispatch picks (lambdas and OpenMP
// regions would not inherit a target attribute).
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2"))) void match_item_avx2(const MatchParams& p,
                                                     const std::vector<RowOperands>& operands,
                                                     int64_t item) {
  match_item(p, operands, item);
}
#endif

void match_item_baseline(const MatchParams& p, const std::vector<RowOperands>& operands,
                         int64_t item) {
  match_item(p, operands, item);
}

}  // namespace

Status match_cpu(const MatchParams& p) {
  std::vector<RowOperands> operands(static_cast<size_t>(p.rows.count));
  VIDLLM_DISPATCH_FLOAT_TYPES(p.dtype, parallel_for(p.rows.count, [&](int64_t row) {
                                prepare_row<scalar_t>(p, row, operands[row]);
                              }));
  auto* match_one = &match_item_baseline;
#if defined(__x86_64__) || defined(__i386__)
  if (__builtin_cpu_supports("avx2")) match_one = &match_item_avx2;
#endif
  parallel_for(p.rows.count * items_per_row(p),
               [&](int64_t item) { match_one(p, operands, item); });
  return Status::ok();
}

}  // namespace vidllm::token_merge
