// The switch of vidllm_ext.testing.emulated_cuda() and the emulator's test kernels. The switch
// exists in every build (it refuses to turn on without emulation); the test kernels only in
// emulation builds.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "dispatch.h"

namespace py = pybind11;

namespace vidllm::binding {
namespace {

#if defined(VIDLLM_CUDA_EMULATION)
// Runs the emulator test kernel `name` and returns what it recorded; a fault raises RuntimeError.
std::vector<int64_t> emulator_test_kernel(const std::string& name) {
  std::vector<int64_t> out;
  run_kernel(("emulator test kernel " + name).c_str(),
             [&] { return emulated_status(emulated_launchers::run_test_kernel(name, out)); });
  return out;
}
#endif

}  // namespace

void register_emulation(py::module_& m) {
  m.def("_set_cuda_emulation", &set_cuda_emulation, py::arg("enabled"), py::arg("schedule"),
        py::arg("seed"),
        "Routes ops on CPU tensors to the emulated CUDA launchers (enabled) or to the CPU twins. "
        "Use vidllm_ext.testing.emulated_cuda instead.");
  m.def("_cuda_emulation_enabled", &cuda_emulation_enabled,
        "Whether ops on CPU tensors run on the CUDA emulator now.");
#if defined(VIDLLM_CUDA_EMULATION)
  m.def("_emulator_test_kernel", &emulator_test_kernel, py::arg("name"),
        "Runs one of the emulator's own test kernels (tests/emulator).");
#endif
}

}  // namespace vidllm::binding
