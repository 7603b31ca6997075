// The two spots where a .cu file cannot be plain CUDA if the host emulator is to compile it
// (csrc/cuda_emulator/README.md): kernel launches and the dynamic shared memory array. With nvcc
// both macros expand to exactly the CUDA syntax they replace.
//
//   VIDLLM_LAUNCH(grid, block, shared_bytes, stream, kernel<T, 4>)(args...);
//       == kernel<T, 4><<<grid, block, shared_bytes, stream>>>(args...);
//   VIDLLM_DYNAMIC_SHARED(unsigned char, bytes);
//       == extern __shared__ __align__(16) unsigned char bytes[];
// The kernel comes last so that template arguments may contain commas.
#pragma once

#if defined(VIDLLM_CUDA_EMULATION)
#define VIDLLM_LAUNCH(grid, block, shared_bytes, stream, ...)                                   \
  ::cuda_emulator::launch(#__VA_ARGS__, __func__, __VA_ARGS__, (grid), (block), (shared_bytes), \
                          (stream))
#define VIDLLM_DYNAMIC_SHARED(type, name) type* const name = ::cuda_emulator::dynamic_shared<type>()
#else
#define VIDLLM_LAUNCH(grid, block, shared_bytes, stream, ...) \
  __VA_ARGS__<<<(grid), (block), (shared_bytes), (stream)>>>
#define VIDLLM_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif
