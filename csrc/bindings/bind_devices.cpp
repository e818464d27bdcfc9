// Devices, peer access, streams, events and peer copies: what the model's two-device mode
// (alexnet_cuda/towers.py) asks of the runtime, in both builds. On emu, ALEXNET_EMU_DEVICES=N gives
// N virtual devices (csrc/emu/README.md) and `empty` allocates an array on the current one.
#include <pybind11/stl.h>

#include "bindings/arrays.h"

namespace alexnet {
using namespace pybind11::literals;

namespace {

// A stream created on the device current at construction (non-blocking), destroyed with the object.
struct Stream {
  cudaStream_t s = nullptr;
  int device = 0;
  Stream() {
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  }
  ~Stream() {
    if (s) cudaStreamDestroy(s);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

// An event (no timing) of the device current at construction.
struct Event {
  cudaEvent_t e = nullptr;
  int device = 0;
  Event() {
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  ~Event() {
    if (e) cudaEventDestroy(e);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

#if defined(ALEXNET_EMU)
// A numpy array over cudaMalloc'd memory of the current device, freed with its last view.
py::array device_empty(std::vector<int64_t> shape, py::object dtype) {
  py::dtype dt = py::dtype::from_args(dtype);
  int64_t n = 1;
  for (int64_t s : shape) {
    if (s < 0) throw py::value_error("empty: negative dimension in shape");
    n *= s;
  }
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, size_t(n) * size_t(dt.itemsize())));
  py::capsule owner(p, [](void* q) { cudaFree(q); });
  std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  return py::array(dt, dims, p, owner);
}
#endif

}  // namespace

void bind_devices(py::module_& m) {
  m.def("set_device", [](int d) { CUDA_CHECK(cudaSetDevice(d)); }, "d"_a, "cudaSetDevice(d) for this host thread.");
  m.def(
      "get_device",
      []() {
        int d = 0;
        CUDA_CHECK(cudaGetDevice(&d));
        return d;
      },
      "This host thread's current device.");
  m.def(
      "can_access_peer",
      [](int device, int peer) {
        int can = 0;
        CUDA_CHECK(cudaDeviceCanAccessPeer(&can, device, peer));
        return can != 0;
      },
      "device"_a, "peer"_a, "cudaDeviceCanAccessPeer: may kernels on `device` read `peer`'s memory (False for itself).");
  m.def(
      "enable_peer_access", [](int peer) { CUDA_CHECK(cudaDeviceEnablePeerAccess(peer, 0)); }, "peer"_a,
      "cudaDeviceEnablePeerAccess(peer) from the current device; RuntimeError (the CUDA error name) on failure.");
  m.def(
      "disable_peer_access", [](int peer) { CUDA_CHECK(cudaDeviceDisablePeerAccess(peer)); }, "peer"_a,
      "cudaDeviceDisablePeerAccess(peer) from the current device.");

  py::class_<Stream>(m, "Stream", "A non-blocking stream of the device current at construction.")
      .def(py::init<>())
      .def_property_readonly("ptr", [](const Stream& s) { return reinterpret_cast<uintptr_t>(s.s); })
      .def_readonly("device", &Stream::device)
      .def("synchronize", [](Stream& s) {
        py::gil_scoped_release nogil;
        CUDA_CHECK(cudaStreamSynchronize(s.s));
      });
  py::class_<Event>(m, "Event", "An event (no timing) of the device current at construction.")
      .def(py::init<>())
      .def_readonly("device", &Event::device)
      .def(
          "record", [](Event& e, uintptr_t stream) { CUDA_CHECK(cudaEventRecord(e.e, as_stream(stream))); },
          "stream"_a = 0, "Record on `stream` (0: the current device's null stream), which must be of the event's device.")
      .def(
          "wait", [](Event& e, uintptr_t stream) { CUDA_CHECK(cudaStreamWaitEvent(as_stream(stream), e.e, 0)); },
          "stream"_a = 0, "Make `stream` (any device's) wait for the work recorded before this event.")
      .def("synchronize", [](Event& e) {
        py::gil_scoped_release nogil;
        CUDA_CHECK(cudaEventSynchronize(e.e));
      });

  m.def(
      "memcpy_peer",
      [](py::handle dst, int dst_device, py::handle src, int src_device, uintptr_t stream) {
        const char* op = "memcpy_peer";
        Array S = get_array(src, op, "src", src_device);
        Array D = get_array(dst, op, "dst", dst_device);
        if (D.readonly) value_error(op, "dst is read-only");
        if (S.nbytes() != D.nbytes())
          value_error(op, "dst holds " + std::to_string(D.nbytes()) + " bytes, src " + std::to_string(S.nbytes()));
        CUDA_CHECK(cudaMemcpyPeerAsync(D.ptr, dst_device, S.ptr, src_device, S.nbytes(), as_stream(stream)));
      },
      "dst"_a, "dst_device"_a, "src"_a, "src_device"_a, py::kw_only(), "stream"_a = 0,
      "cudaMemcpyPeerAsync of src (on src_device) into dst (on dst_device); needs no peer access.");

#if defined(ALEXNET_EMU)
  m.def("empty", &device_empty, "shape"_a, "dtype"_a,
        "A numpy array over memory cudaMalloc'd on the current virtual device (emu only).");
  m.def(
      "pointer_device",
      [](py::array a) -> py::object {
        int d = emu::pointer_device(a.data());
        return d < 0 ? py::object(py::none()) : py::object(py::int_(d));
      },
      "a"_a, "The virtual device whose memory holds a's data, or None for plain host memory (emu only).");
#endif
}

}  // namespace alexnet
