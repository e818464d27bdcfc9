// The extension module: alexnet_cuda._emu (g++, CPU execution) or alexnet_cuda._cuda
// (nvcc). The same binding sources build both; ALEXNET_MODULE_NAME picks the name.
#include <pybind11/pybind11.h>

#include "bindings/arrays.h"
#include "bindings/registry.h"

namespace py = pybind11;

#define ALEXNET_DECLARE(name) void bind_##name(py::module_& m);
namespace alexnet {
ALEXNET_BINDING_FAMILIES(ALEXNET_DECLARE)
}
#undef ALEXNET_DECLARE

PYBIND11_MODULE(ALEXNET_MODULE_NAME, m) {
  m.doc() = "alexnet-cuda kernels";
  py::register_exception<alexnet::CudaError>(m, "CudaError", PyExc_RuntimeError);
#define ALEXNET_CALL(name) alexnet::bind_##name(m);
  ALEXNET_BINDING_FAMILIES(ALEXNET_CALL)
#undef ALEXNET_CALL
}
