// Build and device information.
#include <pybind11/stl.h>

#include "bindings/arrays.h"

namespace alexnet {

void bind_core(py::module_& m) {
#if defined(ALEXNET_EMU)
  m.attr("BUILD") = "emu";
  m.def("emu_settings", &emu::settings_summary,
        "The emulator's settings for the next launch (ALEXNET_EMU_ORDER, ALEXNET_EMU_THREADS, ALEXNET_EMU_FIBERS).");
#else
  m.attr("BUILD") = "cuda";
#endif
  m.def("kernel_versions", &kernel_versions, "{op: [numbered kernel versions]} of this build.");
  m.def(
      "device_count",
      []() -> py::tuple {
        int n = 0;
        cudaError_t e = cudaGetDeviceCount(&n);
        if (e != cudaSuccess) {
          cudaGetLastError();
          return py::make_tuple(0, std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e));
        }
        return py::make_tuple(n, std::string(n ? "ok" : "no device"));
      },
      "(number of CUDA devices, reason when 0). Never raises.");
  m.def(
      "device_properties",
      [](int device) {
        cudaDeviceProp p;
        CUDA_CHECK(cudaGetDeviceProperties(&p, device));
        py::dict d;
        d["name"] = std::string(p.name);
        d["total_memory"] = p.totalGlobalMem;
        d["multiprocessors"] = p.multiProcessorCount;
        d["compute_capability"] = py::make_tuple(p.major, p.minor);
        d["shared_memory_per_block_optin"] = p.sharedMemPerBlockOptin;
        return d;
      },
      py::arg("device") = 0);
  m.def("synchronize", []() {
    py::gil_scoped_release nogil;
    CUDA_CHECK(cudaDeviceSynchronize());
  });
}

}  // namespace alexnet
