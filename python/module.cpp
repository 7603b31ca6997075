// The extension module vidllm_ext._C: build facts and the kernel families' bindings.
#include <pybind11/pybind11.h>

#include <string>

#include "dispatch.h"

#if defined(VIDLLM_WITH_CUDA)
#include "common/cuda_device.h"
#endif

#ifndef VIDLLM_VERSION
#define VIDLLM_VERSION "0+unknown"
#endif
#ifndef VIDLLM_GIT_COMMIT
#define VIDLLM_GIT_COMMIT "unknown"
#endif

namespace py = pybind11;

namespace vidllm::binding {

void register_frame_drop(py::module_& m);
void register_kv_quant(py::module_& m);
void register_token_merge(py::module_& m);
void register_routing(py::module_& m);
void register_kv_attention(py::module_& m);
void register_emulation(py::module_& m);

namespace {

py::list split_archs(const std::string& archs) {
  py::list result;
  size_t start = 0;
  while (start < archs.size()) {
    const size_t end = archs.find(',', start);
    const std::string arch = archs.substr(start, end == std::string::npos ? end : end - start);
    if (!arch.empty()) result.append(arch);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return result;
}

py::dict build_info() {
  py::dict info;
  info["version"] = VIDLLM_VERSION;
  info["git_commit"] = VIDLLM_GIT_COMMIT;
  info["cuda_archs"] = split_archs(compiled_cuda_archs());
#if defined(VIDLLM_WITH_CUDA)
  const int runtime = cuda::runtime_version();
  info["cuda_compiled"] = true;
  info["cuda_runtime_version"] =
      std::to_string(runtime / 1000) + "." + std::to_string((runtime % 1000) / 10);
  info["device_count"] = cuda::device_count();
#else
  info["cuda_compiled"] = false;
  info["cuda_runtime_version"] = py::none();
  info["device_count"] = 0;
#endif
  info["cuda_emulation"] = cuda_emulation_compiled();
#if defined(_OPENMP)
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  return info;
}

}  // namespace
}  // namespace vidllm::binding

PYBIND11_MODULE(_C, m) {
  m.doc() = "vidllm_ext compiled kernels (CPU and, when built with nvcc, CUDA)";
  m.def("build_info", &vidllm::binding::build_info,
        "What this build compiled and what the CUDA runtime sees (no exception without a GPU).");
  vidllm::binding::register_frame_drop(m);
  vidllm::binding::register_kv_quant(m);
  vidllm::binding::register_token_merge(m);
  vidllm::binding::register_routing(m);
  vidllm::binding::register_kv_attention(m);
  vidllm::binding::register_emulation(m);
}
