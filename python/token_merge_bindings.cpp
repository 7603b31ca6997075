// Bindings of the token merging kernels (csrc/token_merge).
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace vidllm::binding {

void register_token_merge(py::module_& m) { (void)m; }

}  // namespace vidllm::binding
