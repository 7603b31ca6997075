// Bindings of the layer-skip routing kernels (csrc/routing).
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace vidllm::binding {

void register_routing(py::module_& m) { (void)m; }

}  // namespace vidllm::binding
