// ReLU, tanh and the sum reduction.
#include "bindings/arrays.h"
#include "kernels/reduce.cuh"
#include "kernels/relu.cuh"
#include "kernels/tanh.cuh"

namespace alexnet {
using namespace pybind11::literals;

namespace {

// <name>_forward(x, y) and <name>_backward(dy, y, dx) of an elementwise activation (relu, tanh):
// arrays of one shape and one storage (float32, or uint16 BF16 bits), y and dx written in place.
// forward / backward: generic lambdas over the launchers (one name, an overload per storage).
template <class Forward, class Backward>
void bind_activation(py::module_& m, const std::string& name, Forward forward, Backward backward,
                     const char* forward_doc, const char* backward_doc) {
  const std::string fwd = name + "_forward", bwd = name + "_backward";
  m.def(
      fwd.c_str(),
      [fwd, forward](py::handle x, py::handle y, int version, uintptr_t stream) {
        const char* op = fwd.c_str();
        Array X = input(x, op, "x", kStorageDTypes);
        Array Y = output(y, op, "y", kStorageDTypes);
        const DType st = expect_storage(X, {&Y});
        expect_same_shape(X, Y);
        py::gil_scoped_release nogil;
        with_storage(st, [&](auto t) {
          using T = decltype(t);
          forward(X.as<T>(), Y.as<T>(), X.numel(), version, as_stream(stream));
        });
      },
      "x"_a, "y"_a, py::kw_only(), "version"_a = 0, "stream"_a = 0, forward_doc);
  m.def(
      bwd.c_str(),
      [bwd, backward](py::handle dy, py::handle y, py::handle dx, int version, uintptr_t stream) {
        const char* op = bwd.c_str();
        Array DY = input(dy, op, "dy", kStorageDTypes);
        Array Y = input(y, op, "y", kStorageDTypes);
        Array DX = output(dx, op, "dx", kStorageDTypes);
        const DType st = expect_storage(DY, {&Y, &DX});
        expect_same_shape(DY, Y);
        expect_same_shape(DY, DX);
        py::gil_scoped_release nogil;
        with_storage(st, [&](auto t) {
          using T = decltype(t);
          backward(DY.as<T>(), Y.as<T>(), DX.as<T>(), DY.numel(), version, as_stream(stream));
        });
      },
      "dy"_a, "y"_a, "dx"_a, py::kw_only(), "version"_a = 0, "stream"_a = 0, backward_doc);
}

}  // namespace

void bind_elementwise(py::module_& m) {
  register_versions({"relu_forward", "relu_backward"}, kernels::kReluVersions);
  register_versions({"tanh_forward", "tanh_backward"}, kernels::kTanhVersions);
  register_versions({"reduce_sum"}, kernels::kReduceVersions);

  bind_activation(
      m, "relu", [](auto... a) { kernels::relu_forward(a...); }, [](auto... a) { kernels::relu_backward(a...); },
      "y = max(0, x) (float32, or BF16 as uint16 bits). y is written in place.",
      "dx = dy where y > 0, else 0 (one storage: float32 or BF16).");
  bind_activation(
      m, "tanh", [](auto... a) { kernels::tanh_forward(a...); }, [](auto... a) { kernels::tanh_backward(a...); },
      "y = tanh(x) (float32, or BF16 as uint16 bits; FP32 math, one rounding). y is written in place.",
      "dx = dy * (1 - y^2), y the forward's output (one storage: float32 or BF16).");

  m.attr("REDUCE_WORKSPACE") = kernels::kReduceMaxBlocks;
  m.def(
      "reduce_sum",
      [](py::handle x, py::handle out, py::handle work, int version, uintptr_t stream) {
        const char* op = "reduce_sum";
        Array X = input(x, op, "x", {DType::F32});
        Array O = output(out, op, "out", {DType::F32});
        Array W = output(work, op, "work", {DType::F32}, 1);
        expect_shape(O, {1});
        if (W.numel() < kernels::kReduceMaxBlocks)
          value_error(op, "work must hold at least " + std::to_string(kernels::kReduceMaxBlocks) + " floats");
        expect_no_overlap(X, W);
        expect_no_overlap(O, W);
        py::gil_scoped_release nogil;
        kernels::reduce_sum(X.f32(), O.f32(), W.f32(), X.numel(), version, as_stream(stream));
      },
      "x"_a, "out"_a, "work"_a, py::kw_only(), "version"_a = 0, "stream"_a = 0, "out[0] = sum(x), deterministic.");
}

}  // namespace alexnet
