// Portability macros shared by the CPU and CUDA builds of every kernel family.
#pragma once

#if defined(__CUDACC__)
#define VIDLLM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define VIDLLM_HOST_DEVICE inline
#endif
