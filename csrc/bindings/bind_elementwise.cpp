// ReLU, tanh and the sum reduction.
#include "bindings/arrays.h"
#include "kernels/reduce.cuh"
#include "kernels/relu.cuh"
#include "kernels/tanh.cuh"

namespace alexnet {
using namespace pybind11::literals;

namespace {

using Forward = void (*)(const float*, float*, int64_t, int, cudaStream_t);
using Backward = void (*)(const float*, const float*, float*, int64_t, int, cudaStream_t);

// <name>_forward(x, y) and <name>_backward(dy, y, dx) of an elementwise activation (relu, tanh):
// float32 arrays of one shape, y and dx written in place.
void bind_activation(py::module_& m, const std::string& name, Forward forward, Backward backward,
                     const char* forward_doc, const char* backward_doc) {
  const std::string fwd = name + "_forward", bwd = name + "_backward";
  m.def(
      fwd.c_str(),
      [fwd, forward](py::handle x, py::handle y, int version, uintptr_t stream) {
        const char* op = fwd.c_str();
        Array X = input(x, op, "x", {DType::F32});
        Array Y = output(y, op, "y", {DType::F32});
        expect_same_shape(X, Y);
        py::gil_scoped_release nogil;
        forward(X.f32(), Y.f32(), X.numel(), version, as_stream(stream));
      },
      "x"_a, "y"_a, py::kw_only(), "version"_a = 0, "stream"_a = 0, forward_doc);
  m.def(
      bwd.c_str(),
      [bwd, backward](py::handle dy, py::handle y, py::handle dx, int version, uintptr_t stream) {
        const char* op = bwd.c_str();
        Array DY = input(dy, op, "dy", {DType::F32});
        Array Y = input(y, op, "y", {DType::F32});
        Array DX = output(dx, op, "dx", {DType::F32});
        expect_same_shape(DY, Y);
        expect_same_shape(DY, DX);
        py::gil_scoped_release nogil;
        backward(DY.f32(), Y.f32(), DX.f32(), DY.numel(), version, as_stream(stream));
      },
      "dy"_a, "y"_a, "dx"_a, py::kw_only(), "version"_a = 0, "stream"_a = 0, backward_doc);
}

}  // namespace

void bind_elementwise(py::module_& m) {
  register_versions({"relu_forward", "relu_backward"}, kernels::kReluVersions);
  register_versions({"tanh_forward", "tanh_backward"}, kernels::kTanhVersions);
  register_versions({"reduce_sum"}, kernels::kReduceVersions);

  bind_activation(m, "relu", kernels::relu_forward, kernels::relu_backward, "y = max(0, x). y is written in place.",
                  "dx = dy where y > 0, else 0.");
  bind_activation(m, "tanh", kernels::tanh_forward, kernels::tanh_backward, "y = tanh(x). y is written in place.",
                  "dx = dy * (1 - y^2), y the forward's output.");

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
