// conv2d and linear: argument checks, then the launchers of conv.cu and gemm.cu.
//
// Outputs (and the split-reduction workspace) are allocated by Python and passed in. Every
// argument is checked (kind, dtype, ndim, contiguity, shapes, hyper-parameters, overlap of an
// output with an input) before anything is launched, so a failed check writes nothing.
// The `*_check` functions run the same checks without launching and return the shapes the
// outputs need, so Python allocates only after the arguments are known to be good.
#include <pybind11/stl.h>

#include <string>

#include "bindings/arrays.h"
#include "kernels/conv.cuh"
#include "kernels/conv_tc.cuh"
#include "kernels/conv_winograd.cuh"
#include "kernels/gemm.cuh"

namespace alexnet {
using namespace pybind11::literals;

namespace {

int checked_int(const char* op, const char* name, int64_t v, int64_t minimum) {
  if (v < minimum)
    value_error(op, std::string(name) + " must be >= " + std::to_string(minimum) + ", got " + std::to_string(v));
  if (v > (int64_t(1) << 30)) value_error(op, std::string(name) + " is too large: " + std::to_string(v));
  return int(v);
}

int dim_int(const Array& a, int i) {
  const int64_t v = a.dim(i);
  if (v > 0x7fffffff) value_error(a.op, a.name + " has a dimension larger than 2^31-1");
  return int(v);
}

// The reference's _conv_geometry, message for message.
kernels::ConvShape conv_shape(const char* op, const Array& X, const Array& Wt, int64_t stride, int64_t padding,
                              int64_t groups) {
  kernels::ConvShape s{};
  s.stride = checked_int(op, "stride", stride, 1);
  s.pad = checked_int(op, "padding", padding, 0);
  s.groups = checked_int(op, "groups", groups, 1);
  s.N = dim_int(X, 0);
  s.C = dim_int(X, 1);
  s.H = dim_int(X, 2);
  s.W = dim_int(X, 3);
  s.K = dim_int(Wt, 0);
  const int Cg = dim_int(Wt, 1);
  s.R = dim_int(Wt, 2);
  s.S = dim_int(Wt, 3);
  const std::string g = std::to_string(s.groups);
  if (s.C % s.groups)
    value_error(op, "x has C=" + std::to_string(s.C) + " channels, not divisible by groups=" + g);
  if (s.K % s.groups)
    value_error(op, "w has K=" + std::to_string(s.K) + " output channels, not divisible by groups=" + g);
  if (Cg != s.C / s.groups)
    value_error(op, "w has " + std::to_string(Cg) + " input channels per group, expected " +
                        std::to_string(s.C / s.groups) + " (x has C=" + std::to_string(s.C) + ", groups=" + g + ")");
  if (s.R < 1 || s.S < 1) value_error(op, "w has an empty kernel " + std::to_string(s.R) + "x" + std::to_string(s.S));
  if (s.C < 1 || s.H < 1 || s.W < 1) value_error(op, "x has an empty channel or spatial dimension " + X.shape_str());
  const int64_t Hp = int64_t(s.H) + 2 * int64_t(s.pad), Wp = int64_t(s.W) + 2 * int64_t(s.pad);
  if (s.R > Hp || s.S > Wp)
    value_error(op, "w kernel " + std::to_string(s.R) + "x" + std::to_string(s.S) + " is larger than the padded input x " +
                        std::to_string(Hp) + "x" + std::to_string(Wp) + " (H=" + std::to_string(s.H) +
                        ", W=" + std::to_string(s.W) + ", padding=" + std::to_string(s.pad) + ")");
  s.P = int((Hp - s.R) / s.stride + 1);
  s.Q = int((Wp - s.S) / s.stride + 1);
  const int64_t lim = 0x7fffffff;
  if (int64_t(s.N) * s.C * s.H * s.W > lim || int64_t(s.N) * s.K * s.P * s.Q > lim ||
      int64_t(s.K) * Cg * s.R * s.S > lim)
    value_error(op, "a tensor of this convolution has more than 2^31-1 elements (not supported)");
  return s;
}

// b (n,) float32, or an empty Array (no memory) when b is None.
Array optional_bias(const char* op, py::handle b, int64_t n, const char* what) {
  if (b.is_none()) return Array{};
  Array B = input(b, op, "b", {DType::F32}, 1);
  if (B.dim(0) != n)
    value_error(op, "b has length " + std::to_string(B.dim(0)) + ", expected " + std::to_string(n) + " (" + what + ")");
  return B;
}

std::vector<int64_t> y_shape(const kernels::ConvShape& s) { return {s.N, s.K, s.P, s.Q}; }

struct ConvIn {
  Array X, Wt;
  kernels::ConvShape s;
};

// The precision argument of conv2d_forward and the linear ops: "fp32", "tf32" or "bf16".
kernels::Precision precision_arg(const char* op, const std::string& p) {
  if (p == "fp32") return kernels::Precision::kFP32;
  if (p == "tf32") return kernels::Precision::kTF32;
  if (p == "bf16") return kernels::Precision::kBF16;
  value_error(op, "precision must be fp32, tf32 or bf16, got '" + p + "'");
}

// The activation argument of conv2d_forward and linear_forward: "none" or "relu" (fused into
// the kernels' epilogue at every precision; true for relu).
bool activation_arg(const char* op, const std::string& a) {
  if (a != "none" && a != "relu") value_error(op, "activation must be none or relu, got '" + a + "'");
  return a == "relu";
}

// The algorithm argument of conv2d_forward and conv2d_backward_data: "gemm" (conv.cu, conv_tc.cu) or
// "winograd" (conv_winograd.cu: FP32 only); true for winograd.
bool algorithm_arg(const char* op, const std::string& a, kernels::Precision p) {
  if (a != "gemm" && a != "winograd") value_error(op, "algorithm must be gemm or winograd, got '" + a + "'");
  if (a == "winograd" && p != kernels::Precision::kFP32)
    value_error(op, "algorithm 'winograd' runs at precision fp32 only");
  return a == "winograd";
}

// The geometry and version checks of the Winograd kernels; returns the workspace (floats) they need.
int64_t winograd_need(const char* op, const kernels::ConvShape& s, bool data, int version) {
  const std::string why = kernels::conv_winograd_unsupported(s);
  if (!why.empty()) value_error(op, why);
  check_version(op, version, kernels::kConvWinogradVersions);
  return kernels::conv2d_winograd_workspace(s, data, version);
}

// The dtype of a GEMM operand at a precision: uint16 BF16 bit patterns for bf16, else float32.
DType operand_dtype(kernels::Precision p) { return p == kernels::Precision::kBF16 ? DType::U16 : DType::F32; }

// The weights w at a precision: float32, or at bf16 uint16 BF16 bits or float32 (the FP32 master
// weights, rounded to nearest even by the kernels as they stage them: no conversion pass).
Array weight_input(py::handle w, const char* op, int ndim, kernels::Precision p) {
  if (p == kernels::Precision::kBF16) return input(w, op, "w", {DType::U16, DType::F32}, ndim);
  return input(w, op, "w", {DType::F32}, ndim);
}

// True when the kernels get FP32 weights to round as they stage them (bf16 with a float32 w).
bool fp32_weights(kernels::Precision p, const Array& Wt) {
  return p == kernels::Precision::kBF16 && Wt.dtype == DType::F32;
}

// An output with a storage choice (y, dx): float32, or uint16 BF16 bit patterns (the FP32 result
// rounded once to nearest even), which only precision bf16 writes.
Array storage_output(py::handle obj, const char* op, const char* name, int ndim, kernels::Precision p) {
  Array a = output(obj, op, name, {DType::F32, DType::U16}, ndim);
  if (a.dtype == DType::U16 && p != kernels::Precision::kBF16)
    value_error(op, std::string(name) + " is BF16 storage (uint16 bit patterns), which needs precision bf16");
  return a;
}

// relu_x of conv2d_backward_data (relu_input: dx is zeroed where the ReLU's output x is not > 0): an
// empty Array when None, else x's values as the caller stores them, in dx's storage (TypeError
// otherwise: dx's storage follows that x) and shape.
Array relu_input(const char* op, py::handle relu_x, const Array& DX) {
  if (relu_x.is_none()) return Array{};
  Array RX = input(relu_x, op, "relu_x", kStorageDTypes, 4);
  expect_storage(DX, {&RX});
  expect_same_shape(DX, RX);
  return RX;
}

// Checks of conv2d_forward's inputs (x, w, b, hyper-parameters).
ConvIn forward_inputs(const char* op, py::handle x, py::handle w, py::handle b, int64_t stride, int64_t padding,
                      int64_t groups, Array* Bout, kernels::Precision p = kernels::Precision::kFP32) {
  ConvIn in{input(x, op, "x", {operand_dtype(p)}, 4), weight_input(w, op, 4, p), {}};
  in.s = conv_shape(op, in.X, in.Wt, stride, padding, groups);
  Array B = optional_bias(op, b, in.s.K, "one per output channel");
  if (Bout) *Bout = B;
  return in;
}

// Checks of conv2d_backward's inputs (dy, x, w, hyper-parameters); at bf16 dy and x BF16, w BF16 or FP32.
ConvIn backward_inputs(const char* op, py::handle dy, py::handle x, py::handle w, int64_t stride, int64_t padding,
                       int64_t groups, Array& DY, kernels::Precision p) {
  ConvIn in{input(x, op, "x", {operand_dtype(p)}, 4), weight_input(w, op, 4, p), {}};
  in.s = conv_shape(op, in.X, in.Wt, stride, padding, groups);
  DY = input(dy, op, "dy", {operand_dtype(p)}, 4);
  expect_shape(DY, y_shape(in.s), "(the shape of conv2d_forward's output)");
  return in;
}

// The versions a conv2d op takes at a precision, and the backward-filter plan there.
int conv_versions(kernels::Precision p) {
  return p == kernels::Precision::kFP32 ? kernels::kConvVersions : kernels::kConvTcVersions;
}

// The backward-filter kernel has its own versions at fp32 (conv_wgrad.cu's version 3).
int filter_versions(kernels::Precision p) {
  return p == kernels::Precision::kFP32 ? kernels::kConvFilterVersions : kernels::kConvTcVersions;
}

kernels::SplitPlan filter_plan(kernels::Precision p, const kernels::ConvShape& s, int version, int splits) {
  return p == kernels::Precision::kFP32 ? kernels::conv2d_backward_filter_plan(s, version, splits)
                                        : kernels::conv2d_backward_filter_tc_plan(s, version, splits);
}

// Linear layers: x (N, I), w (O, I).
struct LinIn {
  Array X, Wt;
  int N, I, O;
};

// The versions a linear op takes at a precision: gemm's (fp32) or gemm_tc's.
int linear_versions(kernels::Precision p) {
  return p == kernels::Precision::kFP32 ? kernels::kGemmVersions : kernels::gemm_tc_versions(p);
}

// ValueError unless the linear GEMM's version takes operands A and B (gemm_tc's alignment needs).
void check_linear_operands(const char* op, kernels::Precision p, int version, bool ta, bool tb, int M, int N, int K,
                           const Array& A, int lda, const Array& B, int ldb) {
  if (p == kernels::Precision::kFP32) return;
  const std::string why =
      kernels::gemm_tc_unsupported(version, ta, tb, M, N, K, A.ptr, lda, A.name.c_str(), B.ptr, ldb, B.name.c_str());
  if (!why.empty()) value_error(op, why);
}

kernels::SplitPlan linear_plan(kernels::Precision p, int M, int N, int K, int version, int splits) {
  return p == kernels::Precision::kFP32 ? kernels::gemm_plan(M, N, K, version, splits)
                                        : kernels::gemm_tc_plan(M, N, K, version, splits);
}

LinIn linear_inputs(const char* op, py::handle x, py::handle w, kernels::Precision p = kernels::Precision::kFP32) {
  LinIn in{input(x, op, "x", {operand_dtype(p)}, 2), weight_input(w, op, 2, p), 0, 0, 0};
  if (in.Wt.dim(1) != in.X.dim(1))
    value_error(op, "w has " + std::to_string(in.Wt.dim(1)) + " input features, expected " +
                        std::to_string(in.X.dim(1)) + " (x has shape " + in.X.shape_str() + ")");
  in.N = dim_int(in.X, 0);
  in.I = dim_int(in.X, 1);
  in.O = dim_int(in.Wt, 0);
  return in;
}

// dy of linear_backward: (N, O) from x and w.
Array linear_dy(const char* op, py::handle dy, const LinIn& in, kernels::Precision p = kernels::Precision::kFP32) {
  Array DY = input(dy, op, "dy", {operand_dtype(p)}, 2);
  expect_shape(DY, {in.N, in.O}, "((N, O) from x and w)");
  return DY;
}

Array workspace(py::handle work, const char* op, int64_t need) {
  if (work.is_none()) {
    if (need > 0) value_error(op, "work is None but this call needs a workspace of " + std::to_string(need) + " floats");
    return Array{};
  }
  Array Wk = output(work, op, "work", {DType::F32}, 1);
  if (Wk.numel() < need)
    value_error(op, "work holds " + std::to_string(Wk.numel()) + " floats, " + std::to_string(need) + " needed");
  return Wk;
}

// The end of every linear GEMM binding, after its own checks: C = op(A) op(B) (+ bias, which
// may be an empty Array) with gemm's plan; the workspace checked, C and the workspace apart
// from the operands and from each other.
// At fp32 on gemm, at tf32 or bf16 on gemm_tc (the operands already checked for the precision;
// at bf16 B may be the FP32 weights and C BF16 storage: storage_output).
void linear_gemm(const char* op, kernels::Precision p, bool ta, bool tb, int M, int N, int K, const Array& A, int lda,
                 const Array& B, int ldb, const Array& C, const Array& bias, py::handle work, int version, int splits,
                 uintptr_t stream, bool relu = false) {
  check_version(op, version, linear_versions(p));
  check_linear_operands(op, p, version, ta, tb, M, N, K, A, lda, B, ldb);
  const kernels::SplitPlan plan = linear_plan(p, M, N, K, version, splits);
  Array WK = workspace(work, op, plan.workspace);
  expect_no_overlap({&C, &WK}, {&A, &B, &bias, &WK});
  py::gil_scoped_release nogil;
  const float* b = bias.ptr ? bias.f32() : nullptr;
  float* wk = WK.ptr ? WK.f32() : nullptr;
  const bool b_fp32 = fp32_weights(p, B);
  if (p == kernels::Precision::kFP32)
    kernels::gemm(ta, tb, M, N, K, A.f32(), lda, B.f32(), ldb, C.f32(), b, wk, WK.numel(), version, splits,
                  as_stream(stream), relu);
  else if (C.dtype == DType::U16)
    kernels::gemm_tc(p, ta, tb, M, N, K, A.ptr, lda, B.ptr, ldb, C.as<uint16_t>(), b, wk, WK.numel(), version,
                     splits, as_stream(stream), relu, b_fp32);
  else
    kernels::gemm_tc(p, ta, tb, M, N, K, A.ptr, lda, B.ptr, ldb, C.f32(), b, wk, WK.numel(), version, splits,
                     as_stream(stream), relu, b_fp32);
}

}  // namespace

void bind_conv(py::module_& m) {
  register_versions({"conv2d_forward", "conv2d_backward"}, kernels::kConvVersions);
  register_versions({"conv2d_forward_tf32", "conv2d_forward_bf16", "conv2d_backward_tf32", "conv2d_backward_bf16"},
                    kernels::kConvTcVersions);
  register_versions({"conv2d_backward_filter"}, kernels::kConvFilterVersions);
  register_versions({"conv2d_forward_winograd", "conv2d_backward_winograd"}, kernels::kConvWinogradVersions);
  register_versions({"linear_forward", "linear_backward"}, kernels::kGemmVersions);
  register_versions({"linear_forward_tf32", "linear_backward_tf32"}, kernels::kGemmTcVersions);
  register_versions({"linear_forward_bf16", "linear_backward_bf16"}, kernels::kGemmTcBF16Versions);

  m.def(
      "balanced_splits",
      [](int64_t tiles, int ktiles, int64_t slots, int min_ktiles, int max_n) {
        return kernels::balanced_splits(tiles, ktiles, slots, min_ktiles, max_n);
      },
      "tiles"_a, "ktiles"_a, "slots"_a, "min_ktiles"_a = 32, "max_n"_a = 4096,
      "The split count the planners choose for a reduction (kernels/gemm.cuh).");

  // ---- conv2d ------------------------------------------------------------------------------
  m.def(
      "conv2d_forward_check",
      [](py::handle x, py::handle w, py::handle b, int64_t stride, int64_t padding, int64_t groups,
         const std::string& precision) {
        const char* op = "conv2d_forward";
        ConvIn in = forward_inputs(op, x, w, b, stride, padding, groups, nullptr, precision_arg(op, precision));
        return py::make_tuple(in.s.N, in.s.K, in.s.P, in.s.Q);
      },
      "x"_a, "w"_a, "b"_a, py::kw_only(), "stride"_a = 1, "padding"_a = 0, "groups"_a = 1, "precision"_a = "fp32",
      "Checks conv2d_forward's arguments; returns the shape of y.");

  m.def(
      "conv2d_forward",
      [](py::handle x, py::handle w, py::handle b, py::handle y, int64_t stride, int64_t padding, int64_t groups,
         int version, const std::string& precision, const std::string& activation, const std::string& algorithm,
         py::handle work, uintptr_t stream) {
        const char* op = "conv2d_forward";
        const kernels::Precision p = precision_arg(op, precision);
        const bool relu = activation_arg(op, activation);
        const bool wino = algorithm_arg(op, algorithm, p);
        Array B;
        ConvIn in = forward_inputs(op, x, w, b, stride, padding, groups, &B, p);
        Array Y = storage_output(y, op, "y", 4, p);
        expect_shape(Y, y_shape(in.s), "(N, K, P, Q)");
        Array WK = workspace(work, op, wino ? winograd_need(op, in.s, false, version) : 0);
        expect_no_overlap({&Y, &WK}, {&in.X, &in.Wt, &B, &Y, &WK});
        check_version(op, version,
                      wino ? kernels::kConvWinogradVersions
                           : p == kernels::Precision::kFP32 ? kernels::kConvVersions : kernels::kConvTcVersions);
        py::gil_scoped_release nogil;
        const float* bp = B.ptr ? B.f32() : nullptr;
        const bool w32 = fp32_weights(p, in.Wt);
        if (wino)
          kernels::conv2d_forward_winograd(in.X.f32(), in.Wt.f32(), bp, Y.f32(), WK.ptr ? WK.f32() : nullptr,
                                           WK.numel(), in.s, version, as_stream(stream), relu);
        else if (p == kernels::Precision::kFP32)
          kernels::conv2d_forward(in.X.f32(), in.Wt.f32(), bp, Y.f32(), in.s, version, as_stream(stream), relu);
        else if (Y.dtype == DType::U16)
          kernels::conv2d_forward_tc(p, in.X.ptr, in.Wt.ptr, bp, Y.as<uint16_t>(), in.s, version, as_stream(stream),
                                     relu, w32);
        else
          kernels::conv2d_forward_tc(p, in.X.ptr, in.Wt.ptr, bp, Y.f32(), in.s, version, as_stream(stream), relu, w32);
      },
      "x"_a, "w"_a, "b"_a, "y"_a, py::kw_only(), "stride"_a = 1, "padding"_a = 0, "groups"_a = 1, "version"_a = 0,
      "precision"_a = "fp32", "activation"_a = "none", "algorithm"_a = "gemm", "work"_a = py::none(), "stream"_a = 0,
      "y = conv2d(x, w) + b (b may be None), written into y (float32; at bf16 also uint16 BF16 storage: rounded "
      "once). precision: fp32, tf32 (float32 x, w on tensor cores) or bf16 (uint16 BF16 x; w uint16 BF16 or "
      "float32, rounded as the kernel stages it). activation 'relu': y = max(0, conv2d(x, w) + b) in the "
      "kernel's epilogue. algorithm 'winograd' (fp32, 3x3, stride 1, padding <= 2): conv_winograd.cu, whose "
      "versions `version` numbers, with the float32 workspace `work` of conv2d_winograd_check's size.");

  m.def(
      "conv2d_winograd_check",
      [](py::handle x, py::handle w, int64_t stride, int64_t padding, int64_t groups, int version,
         const std::string& direction) {
        if (direction != "forward" && direction != "data")
          value_error("conv2d_winograd_check", "direction must be forward or data, got '" + direction + "'");
        const bool data = direction == "data";
        const char* op = data ? "conv2d_backward" : "conv2d_forward";
        ConvIn in = forward_inputs(op, x, w, py::none(), stride, padding, groups, nullptr);
        return py::dict("workspace"_a = winograd_need(op, in.s, data, version));
      },
      "x"_a, "w"_a, py::kw_only(), "stride"_a = 1, "padding"_a = 0, "groups"_a = 1, "version"_a = 0,
      "direction"_a = "forward",
      "Checks that the Winograd kernels (conv_winograd.cu) take this convolution (3x3, stride 1, padding <= 2) "
      "and `version`; returns {'workspace': floats} of the forward pass (direction 'forward') or of the data "
      "gradient ('data').");

  m.def(
      "conv2d_backward_check",
      [](py::handle dy, py::handle x, py::handle w, int64_t stride, int64_t padding, int64_t groups, int version,
         int splits, const std::string& precision) {
        const char* op = "conv2d_backward";
        const kernels::Precision p = precision_arg(op, precision);
        Array DY;
        ConvIn in = backward_inputs(op, dy, x, w, stride, padding, groups, DY, p);
        check_version(op, version, filter_versions(p));
        const kernels::SplitPlan plan = filter_plan(p, in.s, version, splits);
        return py::dict("splits"_a = plan.splits, "workspace"_a = plan.workspace);
      },
      "dy"_a, "x"_a, "w"_a, py::kw_only(), "stride"_a = 1, "padding"_a = 0, "groups"_a = 1, "version"_a = 0,
      "splits"_a = 0, "precision"_a = "fp32",
      "Checks conv2d_backward's arguments; returns the backward-filter plan of `version` (at fp32 a version of "
      "conv2d_backward_filter): {'splits', 'workspace' (floats)}. precision as conv2d_forward's (bf16: dy, x "
      "uint16 BF16; w uint16 BF16 or float32).");

  m.def(
      "conv2d_backward_data",
      [](py::handle dy, py::handle x, py::handle w, py::handle dx, int64_t stride, int64_t padding, int64_t groups,
         int version, const std::string& precision, const std::string& algorithm, py::handle work, py::handle relu_x,
         uintptr_t stream) {
        const char* op = "conv2d_backward";
        const kernels::Precision p = precision_arg(op, precision);
        const bool wino = algorithm_arg(op, algorithm, p);
        Array DY;
        ConvIn in = backward_inputs(op, dy, x, w, stride, padding, groups, DY, p);
        Array DX = storage_output(dx, op, "dx", 4, p);
        expect_same_shape(in.X, DX);
        Array RX = relu_input(op, relu_x, DX);
        Array WK = workspace(work, op, wino ? winograd_need(op, in.s, true, version) : 0);
        expect_no_overlap({&DX, &WK}, {&DY, &in.Wt, &RX, &DX, &WK});
        check_version(op, version, wino ? kernels::kConvWinogradVersions : conv_versions(p));
        py::gil_scoped_release nogil;
        const bool w32 = fp32_weights(p, in.Wt);
        const float* rx = RX.ptr ? RX.f32() : nullptr;  // the FP32 paths (dx float32: relu_x too)
        if (wino)
          kernels::conv2d_backward_data_winograd(DY.f32(), in.Wt.f32(), DX.f32(), WK.ptr ? WK.f32() : nullptr,
                                                 WK.numel(), in.s, version, as_stream(stream), rx);
        else if (p == kernels::Precision::kFP32)
          kernels::conv2d_backward_data(DY.f32(), in.Wt.f32(), DX.f32(), in.s, version, as_stream(stream), rx);
        else if (DX.dtype == DType::U16)
          kernels::conv2d_backward_data_tc(p, DY.ptr, in.Wt.ptr, DX.as<uint16_t>(), in.s, version, as_stream(stream),
                                           w32, RX.ptr ? RX.as<uint16_t>() : nullptr);
        else
          kernels::conv2d_backward_data_tc(p, DY.ptr, in.Wt.ptr, DX.f32(), in.s, version, as_stream(stream), w32, rx);
      },
      "dy"_a, "x"_a, "w"_a, "dx"_a, py::kw_only(), "stride"_a = 1, "padding"_a = 0, "groups"_a = 1, "version"_a = 0,
      "precision"_a = "fp32", "algorithm"_a = "gemm", "work"_a = py::none(), "relu_x"_a = py::none(), "stream"_a = 0,
      "dx of conv2d (float32; at bf16 also uint16 BF16 storage: rounded once; x is read only for its shape). algorithm 'winograd' as conv2d_forward's (its "
      "workspace: conv2d_winograd_check(direction='data')). relu_x (relu_input): the ReLU output that x is, as "
      "the caller stores it, in dx's dtype and x's shape; dx is then zeroed where relu_x <= 0 (or NaN) in the "
      "kernels' store, bit for bit relu_backward(dx, relu_x). None: no fold.");

  m.def(
      "conv2d_backward_filter",
      [](py::handle dy, py::handle x, py::handle w, py::handle dw, py::handle work, int64_t stride, int64_t padding,
         int64_t groups, int version, int splits, const std::string& precision, uintptr_t stream) {
        const char* op = "conv2d_backward";
        const kernels::Precision p = precision_arg(op, precision);
        Array DY;
        ConvIn in = backward_inputs(op, dy, x, w, stride, padding, groups, DY, p);
        Array DW = output(dw, op, "dw", {DType::F32}, 4);
        expect_same_shape(in.Wt, DW);
        check_version(op, version, filter_versions(p));
        const kernels::SplitPlan plan = filter_plan(p, in.s, version, splits);
        Array WK = workspace(work, op, plan.workspace);
        expect_no_overlap({&DW, &WK}, {&DY, &in.X, &WK});
        py::gil_scoped_release nogil;
        float* wk = WK.ptr ? WK.f32() : nullptr;
        if (p == kernels::Precision::kFP32)
          kernels::conv2d_backward_filter(DY.f32(), in.X.f32(), DW.f32(), wk, WK.numel(), in.s, version, splits,
                                          as_stream(stream));
        else
          kernels::conv2d_backward_filter_tc(p, DY.ptr, in.X.ptr, DW.f32(), wk, WK.numel(), in.s, version, splits,
                                             as_stream(stream));
      },
      "dy"_a, "x"_a, "w"_a, "dw"_a, "work"_a, py::kw_only(), "stride"_a = 1, "padding"_a = 0, "groups"_a = 1,
      "version"_a = 0, "splits"_a = 0, "precision"_a = "fp32", "stream"_a = 0,
      "dw of conv2d (w is read only for its shape). work: float32 workspace of the size conv2d_backward_check "
      "returns (None when it is 0). splits > 0 forces the split of the N*P*Q reduction.");

  m.def(
      "conv2d_backward_bias",
      [](py::handle dy, py::handle db, int version, uintptr_t stream) {
        const char* op = "conv2d_backward";
        Array DY = input(dy, op, "dy", {DType::F32, DType::U16}, 4);
        Array DB = output(db, op, "db", {DType::F32}, 1);
        expect_shape(DB, {DY.dim(1)}, "(one per output channel of dy)");
        expect_no_overlap(DB, DY);
        check_version(op, version, kernels::kConvVersions);
        if (DY.dim(2) * DY.dim(3) > 0x7fffffff || DY.dim(0) > 0x7fffffff) value_error(op, "dy is too large");
        py::gil_scoped_release nogil;
        const int N = int(DY.dim(0)), K = int(DY.dim(1)), PQ = int(DY.dim(2) * DY.dim(3));
        if (DY.dtype == DType::U16)
          kernels::conv2d_backward_bias(DY.as<uint16_t>(), DB.f32(), N, K, PQ, version, as_stream(stream));
        else
          kernels::conv2d_backward_bias(DY.f32(), DB.f32(), N, K, PQ, version, as_stream(stream));
      },
      "dy"_a, "db"_a, py::kw_only(), "version"_a = 0, "stream"_a = 0,
      "db[k] = sum of dy[:, k] in float32; dy float32 or uint16 BF16 bits (the stored values).");

  // ---- linear ------------------------------------------------------------------------------
  m.def(
      "linear_check",
      [](py::handle x, py::handle w, py::handle b, py::handle dy, int version, int splits, const std::string& precision) {
        // Forward when dy is None, backward otherwise. Returns the plans (splits, workspace)
        // of the GEMMs involved: forward {'forward'}, backward {'data', 'weight'}.
        const bool fwd = dy.is_none();
        const char* op = fwd ? "linear_forward" : "linear_backward";
        const kernels::Precision p = precision_arg(op, precision);
        LinIn in = linear_inputs(op, x, w, p);
        check_version(op, version, linear_versions(p));
        if (fwd) {
          optional_bias(op, b, in.O, "one per output feature");
          check_linear_operands(op, p, version, false, true, in.N, in.O, in.I, in.X, in.I, in.Wt, in.I);
        } else {  // the GEMMs of linear_backward_data (dx = dy w) and _weight (dw = dy^T x)
          const Array DY = linear_dy(op, dy, in, p);
          check_linear_operands(op, p, version, false, false, in.N, in.I, in.O, DY, in.O, in.Wt, in.I);
          check_linear_operands(op, p, version, true, false, in.O, in.I, in.N, DY, in.O, in.X, in.I);
        }
        auto plan = [](const kernels::SplitPlan& sp) {
          return py::dict("splits"_a = sp.splits, "workspace"_a = sp.workspace);
        };
        py::dict out;
        if (fwd) {
          out["forward"] = plan(linear_plan(p, in.N, in.O, in.I, version, splits));
        } else {
          out["data"] = plan(linear_plan(p, in.N, in.I, in.O, version, splits));
          out["weight"] = plan(linear_plan(p, in.O, in.I, in.N, version, splits));
        }
        return out;
      },
      "x"_a, "w"_a, "b"_a = py::none(), "dy"_a = py::none(), py::kw_only(), "version"_a = 0, "splits"_a = 0,
      "precision"_a = "fp32",
      "Checks linear_forward's (dy None) or linear_backward's arguments; returns the GEMM plans. precision: fp32 "
      "(float32 operands), tf32 (float32 operands, products on tensor cores) or bf16 (uint16 BF16 x and dy; w "
      "uint16 BF16 or float32).");

  m.def(
      "linear_forward",
      [](py::handle x, py::handle w, py::handle b, py::handle y, py::handle work, int version, int splits,
         const std::string& precision, const std::string& activation, uintptr_t stream) {
        const char* op = "linear_forward";
        const kernels::Precision p = precision_arg(op, precision);
        const bool relu = activation_arg(op, activation);
        LinIn in = linear_inputs(op, x, w, p);
        Array B = optional_bias(op, b, in.O, "one per output feature");
        Array Y = storage_output(y, op, "y", 2, p);
        expect_shape(Y, {in.N, in.O}, "(N, O)");
        linear_gemm(op, p, false, true, in.N, in.O, in.I, in.X, in.I, in.Wt, in.I, Y, B, work, version, splits,
                    stream, relu);
      },
      "x"_a, "w"_a, "b"_a, "y"_a, "work"_a = py::none(), py::kw_only(), "version"_a = 0, "splits"_a = 0,
      "precision"_a = "fp32", "activation"_a = "none", "stream"_a = 0,
      "y = x w^T + b (b may be None), written into y (float32; at bf16 also uint16 BF16 storage: rounded once, "
      "after the split reduction when there is one); activation 'relu': y = max(0, x w^T + b) in the GEMM's last "
      "pass.");

  m.def(
      "linear_backward_data",
      [](py::handle dy, py::handle x, py::handle w, py::handle dx, py::handle work, int version, int splits,
         const std::string& precision, uintptr_t stream) {
        const char* op = "linear_backward";
        const kernels::Precision p = precision_arg(op, precision);
        LinIn in = linear_inputs(op, x, w, p);
        Array DY = linear_dy(op, dy, in, p);
        Array DX = storage_output(dx, op, "dx", 2, p);
        expect_same_shape(in.X, DX);
        linear_gemm(op, p, false, false, in.N, in.I, in.O, DY, in.O, in.Wt, in.I, DX, Array{}, work, version, splits,
                    stream);
      },
      "dy"_a, "x"_a, "w"_a, "dx"_a, "work"_a = py::none(), py::kw_only(), "version"_a = 0, "splits"_a = 0,
      "precision"_a = "fp32", "stream"_a = 0,
      "dx = dy w (x is read only for its shape; dx float32, at bf16 also uint16 BF16 storage: rounded once).");

  m.def(
      "linear_backward_weight",
      [](py::handle dy, py::handle x, py::handle w, py::handle dw, py::handle work, int version, int splits,
         const std::string& precision, uintptr_t stream) {
        const char* op = "linear_backward";
        const kernels::Precision p = precision_arg(op, precision);
        LinIn in = linear_inputs(op, x, w, p);
        Array DY = linear_dy(op, dy, in, p);
        Array DW = output(dw, op, "dw", {DType::F32}, 2);
        expect_same_shape(in.Wt, DW);
        linear_gemm(op, p, true, false, in.O, in.I, in.N, DY, in.O, in.X, in.I, DW, Array{}, work, version, splits,
                    stream);
      },
      "dy"_a, "x"_a, "w"_a, "dw"_a, "work"_a = py::none(), py::kw_only(), "version"_a = 0, "splits"_a = 0,
      "precision"_a = "fp32", "stream"_a = 0, "dw = dy^T x (w is read only for its shape; dw float32).");

  m.def(
      "linear_backward_bias",
      [](py::handle dy, py::handle db, int version, uintptr_t stream) {
        const char* op = "linear_backward";
        Array DY = input(dy, op, "dy", {DType::F32, DType::U16}, 2);
        Array DB = output(db, op, "db", {DType::F32}, 1);
        expect_shape(DB, {DY.dim(1)}, "(one per column of dy)");
        expect_no_overlap(DB, DY);
        check_version(op, version, kernels::kGemmVersions);
        if (DY.dim(0) > 0x7fffffff || DY.dim(1) > 0x7fffffff) value_error(op, "dy is too large");
        py::gil_scoped_release nogil;
        const int rows = int(DY.dim(0)), cols = int(DY.dim(1));
        if (DY.dtype == DType::U16)
          kernels::column_sums(DY.as<uint16_t>(), DB.f32(), rows, cols, version, as_stream(stream));
        else
          kernels::column_sums(DY.f32(), DB.f32(), rows, cols, version, as_stream(stream));
      },
      "dy"_a, "db"_a, py::kw_only(), "version"_a = 0, "stream"_a = 0,
      "db = column sums of dy in float32; dy float32 or uint16 BF16 bits (the stored values).");
}

}  // namespace alexnet
