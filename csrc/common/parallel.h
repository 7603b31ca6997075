// A thin OpenMP wrapper so CPU kernels read the same with and without OpenMP.
#pragma once

#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace vidllm {

// Calls body(i) for i in [0, count), split statically across threads when OpenMP is available.
template <typename Body>
void parallel_for(int64_t count, const Body& body) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (count > 1)
  for (int64_t i = 0; i < count; ++i) body(i);
#else
  for (int64_t i = 0; i < count; ++i) body(i);
#endif
}

}  // namespace vidllm
