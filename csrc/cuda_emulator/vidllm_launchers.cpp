// Compiled with the emulated sources (-Dvidllm=vidllm_emulated): forwards each entry point of
// vidllm_launchers.h to the emulated `family::launcher_cuda`.
#include "cuda_emulator/vidllm_launchers.h"

#include "frame_drop/frame_drop.h"
#include "kv_attention/kv_attention.h"
#include "kv_quant/kv_quant.h"
#include "routing/routing.h"
#include "token_merge/token_merge.h"

namespace emulated_launchers {

#define VIDLLM_DEFINE_EMULATED_LAUNCHER(family, launcher, params_type)                   \
  namespace family {                                                                     \
  Result launcher(const void* params, std::size_t params_size) {                         \
    using Params = ::vidllm::family::params_type;                                        \
    if (params_size != sizeof(Params))                                                   \
      return {static_cast<int>(::vidllm::StatusCode::kCudaError),                        \
              "emulated launcher: params struct size differs from the binding's"};       \
    const ::vidllm::Status status =                                                      \
        ::vidllm::family::launcher##_cuda(*static_cast<const Params*>(params), nullptr); \
    return {static_cast<int>(status.code), status.message};                              \
  }                                                                                      \
  }
VIDLLM_EMULATED_LAUNCHERS(VIDLLM_DEFINE_EMULATED_LAUNCHER)
#undef VIDLLM_DEFINE_EMULATED_LAUNCHER

}  // namespace emulated_launchers
