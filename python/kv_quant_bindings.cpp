// Bindings of the sub-2-bit KV cache kernels (csrc/kv_quant).
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace vidllm::binding {

void register_kv_quant(py::module_& m) { (void)m; }

}  // namespace vidllm::binding
