// LRN, max-pooling, dropout, softmax cross-entropy, SGD and top-k: argument checks and
// dispatch to the launchers. LRN, max-pooling and dropout take FP32 or BF16 storage (uint16
// bits) for their activation arguments, one storage per call (expect_storage; LRN's scale is
// float32, dropout's mask uint8 either way). Outputs (and workspaces) are allocated by Python and passed
// in; every check below runs before anything is launched or written, except the label
// range check, which scans the labels on the device first (kernels::first_bad_label, one
// 4-byte copy back) and raises ValueError before the op's own kernels are launched, so a
// bad label leaves the outputs unwritten as well; or, given `bad_labels`, records the first
// bad label on the device for the caller to read later (kernels::record_bad_label, no sync).
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "bindings/arrays.h"
#include "common/philox.h"
#include "kernels/dropout.cuh"
#include "kernels/lrn.cuh"
#include "kernels/lrn_pool.cuh"
#include "kernels/pool.cuh"
#include "kernels/sgd.cuh"
#include "kernels/softmax_xent.cuh"
#include "kernels/topk.cuh"

namespace alexnet {
using namespace pybind11::literals;

namespace {

double finite(const char* op, const char* name, double v) {
  if (!std::isfinite(v)) value_error(op, std::string(name) + " must be finite, got " + std::to_string(v));
  return v;
}

void check_prob(const char* op, double p) {
  if (!(p >= 0.0 && p < 1.0)) value_error(op, "p must be in [0, 1), got " + std::to_string(p));
}

void check_lrn_size(const char* op, int size) {
  if (size < 1) value_error(op, "size must be >= 1, got " + std::to_string(size));
  if (size % 2 == 0)
    value_error(op, "size must be odd (a window centred on the channel), got " + std::to_string(size));
}

// (P, Q) of a pooling window over X (N, C, H, W), or ValueError.
std::pair<int64_t, int64_t> pool_out(const char* op, const Array& X, int size, int stride) {
  if (size < 1) value_error(op, "size must be >= 1, got " + std::to_string(size));
  if (stride < 1) value_error(op, "stride must be >= 1, got " + std::to_string(stride));
  const int64_t H = X.dim(2), W = X.dim(3);
  if (size > H || size > W)
    value_error(op, "size=" + std::to_string(size) + " pooling window is larger than the input x (" + std::to_string(H) +
                        "x" + std::to_string(W) + ")");
  return {(H - size) / stride + 1, (W - size) / stride + 1};
}

// logits (N, classes) float32 with N, classes >= 1 and labels (N,) int32/int64.
struct Labeled {
  Array L, Y;
};
Labeled logits_labels(const char* op, py::handle logits, py::handle labels) {
  Labeled in{input(logits, op, "logits", {DType::F32}, 2), input(labels, op, "labels", {DType::I32, DType::I64}, 1)};
  if (in.L.dim(0) < 1 || in.L.dim(1) < 1)
    value_error(op, "logits must have at least one row and one class, got shape " + in.L.shape_str());
  if (in.Y.dim(0) != in.L.dim(0))
    value_error(op, "labels has " + std::to_string(in.Y.dim(0)) + " entries, expected " +
                        std::to_string(in.L.dim(0)) + " (one per row of logits)");
  return in;
}

// The optional `bad_labels` of the loss and top-k ops: two int64 on the current device (an empty
// Array when None), apart from every other argument.
Array optional_bad_labels(const char* op, py::handle bad_labels, std::initializer_list<const Array*> others) {
  if (bad_labels.is_none()) return Array{};
  Array B = output(bad_labels, op, "bad_labels", {DType::I64});
  expect_shape(B, {2}, "(two int64: the first bad row + 1 and its label)");
  for (const Array* a : others) expect_no_overlap(B, *a);
  return B;
}

// Without BL (bad_labels None): scans the labels on the device (kernels::first_bad_label; CK: its
// one int of workspace), then, still without the GIL, launch(labels are int64) when every label
// is in range; else ValueError naming the first bad label, with nothing launched.
// With BL: records the first bad label there (kernels::record_bad_label) and launches; nothing is
// read back (the kernels give bad rows a NaN loss and never count them).
template <class Launch>
void with_checked_labels(const char* op, const Labeled& in, const Array& CK, const Array& BL, uintptr_t stream,
                         Launch&& launch) {
  const bool is64 = in.Y.dtype == DType::I64;
  int64_t bad_row = -1, bad_value = 0;
  {
    py::gil_scoped_release nogil;
    if (BL.ptr)
      kernels::record_bad_label(in.Y.ptr, is64, in.Y.dim(0), in.L.dim(1), BL.as<int64_t>(), as_stream(stream));
    else
      bad_row = kernels::first_bad_label(in.Y.ptr, is64, in.Y.dim(0), in.L.dim(1), CK.as<int>(), &bad_value,
                                         as_stream(stream));
    if (bad_row < 0) launch(is64);
  }
  if (bad_row >= 0)
    value_error(op, "labels must be in [0, " + std::to_string(in.L.dim(1)) + "), found " + std::to_string(bad_value));
}

// The LRN and pooling hyper-parameters of the fused LRN + max-pool ops against x (N, C, H, W):
// (P, Q), or ValueError naming the argument.
std::pair<int64_t, int64_t> lrn_pool_args(const char* op, const Array& X, int size, double alpha, double beta,
                                          double k, int pool_size, int pool_stride) {
  check_lrn_size(op, size);
  finite(op, "alpha", alpha);
  finite(op, "beta", beta);
  finite(op, "k", k);
  if (pool_size < 1) value_error(op, "pool_size must be >= 1, got " + std::to_string(pool_size));
  if (pool_stride < 1) value_error(op, "pool_stride must be >= 1, got " + std::to_string(pool_stride));
  const int64_t H = X.dim(2), W = X.dim(3);
  if (pool_size > H || pool_size > W)
    value_error(op, "pool_size=" + std::to_string(pool_size) + " pooling window is larger than the input x (" +
                        std::to_string(H) + "x" + std::to_string(W) + ")");
  return {(H - pool_size) / pool_stride + 1, (W - pool_size) / pool_stride + 1};
}

// The optional `loss` of the SGD ops: one float32 on the current device (an empty Array when None).
Array optional_loss(const char* op, py::handle loss) {
  if (loss.is_none()) return Array{};
  Array L = input(loss, op, "loss", {DType::F32});
  if (L.numel() != 1) value_error(op, "loss must hold one value (a 0-d array), got shape " + L.shape_str());
  return L;
}

}  // namespace

void bind_layers(py::module_& m) {
  register_versions({"lrn_forward", "lrn_backward"}, kernels::kLrnVersions);
  register_versions({"maxpool_forward", "maxpool_backward"}, kernels::kPoolVersions);
  register_versions({"dropout_forward", "dropout_backward"}, kernels::kDropoutVersions);
  register_versions({"softmax_cross_entropy"}, kernels::kSoftmaxXentVersions);
  register_versions({"sgd_update"}, kernels::kSgdVersions);
  register_versions({"topk_correct"}, kernels::kTopkVersions);

  // ---- LRN -------------------------------------------------------------------------------
  m.def(
      "lrn_forward",
      [](py::handle x, py::handle y, py::handle scale, int size, double alpha, double beta, double k, int version,
         uintptr_t stream) {
        const char* op = "lrn_forward";
        Array X = input(x, op, "x", kStorageDTypes, 4);
        Array Y = output(y, op, "y", kStorageDTypes);
        Array S = output(scale, op, "scale", {DType::F32});
        const DType st = expect_storage(X, {&Y});
        expect_same_shape(X, Y);
        expect_same_shape(X, S);
        expect_no_overlap({&Y, &S}, {&X, &Y, &S});
        check_lrn_size(op, size);
        finite(op, "alpha", alpha);
        finite(op, "beta", beta);
        finite(op, "k", k);
        py::gil_scoped_release nogil;
        with_storage(st, [&](auto t) {
          using T = decltype(t);
          kernels::lrn_forward(X.as<T>(), Y.as<T>(), S.f32(), X.dim(0), X.dim(1), X.dim(2) * X.dim(3), size, alpha,
                               beta, k, version, as_stream(stream));
        });
      },
      "x"_a, "y"_a, "scale"_a, py::kw_only(), "size"_a = 5, "alpha"_a = 1e-4, "beta"_a = 0.75, "k"_a = 2.0,
      "version"_a = 0, "stream"_a = 0,
      "scale = k + alpha * (window sum of x^2), y = x * scale^-beta; alpha is the coefficient applied to the sum "
      "(divide by size first for the alpha/n convention). x, y float32 or BF16 (uint16 bits); scale float32. y and "
      "scale are written in place.");

  m.def(
      "lrn_backward",
      [](py::handle dy, py::handle x, py::handle y, py::handle scale, py::handle dx, int size, double alpha,
         double beta, int version, uintptr_t stream) {
        const char* op = "lrn_backward";
        Array X = input(x, op, "x", kStorageDTypes, 4);
        Array DY = input(dy, op, "dy", kStorageDTypes, 4);
        Array Y = input(y, op, "y", kStorageDTypes, 4);
        Array S = input(scale, op, "scale", {DType::F32}, 4);
        Array DX = output(dx, op, "dx", kStorageDTypes);
        const DType st = expect_storage(X, {&DY, &Y, &DX});
        for (const Array* a : {&DY, &Y, &S, &DX}) expect_same_shape(X, *a);
        expect_no_overlap({&DX}, {&X, &DY, &Y, &S});
        check_lrn_size(op, size);
        finite(op, "alpha", alpha);
        finite(op, "beta", beta);
        py::gil_scoped_release nogil;
        with_storage(st, [&](auto t) {
          using T = decltype(t);
          kernels::lrn_backward(DY.as<T>(), X.as<T>(), Y.as<T>(), S.f32(), DX.as<T>(), X.dim(0), X.dim(1),
                                X.dim(2) * X.dim(3), size, alpha, beta, version, as_stream(stream));
        });
      },
      "dy"_a, "x"_a, "y"_a, "scale"_a, "dx"_a, py::kw_only(), "size"_a = 5, "alpha"_a = 1e-4, "beta"_a = 0.75,
      "version"_a = 0, "stream"_a = 0,
      "Gradient of lrn_forward (dy, x, y, dx one storage: float32 or BF16; scale float32); dx is written in place.");

  // ---- max pooling -----------------------------------------------------------------------
  m.def(
      "maxpool_forward",
      [](py::handle x, py::handle y, int size, int stride, int version, uintptr_t stream) {
        const char* op = "maxpool_forward";
        Array X = input(x, op, "x", kStorageDTypes, 4);
        auto [P, Q] = pool_out(op, X, size, stride);
        Array Y = output(y, op, "y", kStorageDTypes, 4);
        const DType st = expect_storage(X, {&Y});
        expect_shape(Y, {X.dim(0), X.dim(1), P, Q}, "(the pooled shape of x)");
        expect_no_overlap(Y, X);
        py::gil_scoped_release nogil;
        with_storage(st, [&](auto t) {
          using T = decltype(t);
          kernels::maxpool_forward(X.as<T>(), Y.as<T>(), X.dim(0), X.dim(1), X.dim(2), X.dim(3), size, stride, version,
                                   as_stream(stream));
        });
      },
      "x"_a, "y"_a, py::kw_only(), "size"_a = 3, "stride"_a = 2, "version"_a = 0, "stream"_a = 0,
      "y = max over size x size windows of x at the given stride (no padding); y is written in place.");

  m.def(
      "maxpool_backward",
      [](py::handle dy, py::handle x, py::handle y, py::handle dx, int size, int stride, bool relu_input, int version,
         uintptr_t stream) {
        const char* op = "maxpool_backward";
        Array X = input(x, op, "x", kStorageDTypes, 4);
        auto [P, Q] = pool_out(op, X, size, stride);
        Array Y = input(y, op, "y", kStorageDTypes, 4);
        Array DY = input(dy, op, "dy", kStorageDTypes, 4);
        Array DX = output(dx, op, "dx", kStorageDTypes);
        const DType st = expect_storage(X, {&Y, &DY, &DX});
        const std::vector<int64_t> pooled{X.dim(0), X.dim(1), P, Q};
        expect_shape(Y, pooled, "(the shape of maxpool_forward's output)");
        expect_shape(DY, pooled, "(the shape of maxpool_forward's output)");
        expect_same_shape(X, DX);
        expect_no_overlap({&DX}, {&X, &DY, &Y});
        py::gil_scoped_release nogil;
        with_storage(st, [&](auto t) {
          using T = decltype(t);
          kernels::maxpool_backward(DY.as<T>(), X.as<T>(), DX.as<T>(), X.dim(0), X.dim(1), X.dim(2), X.dim(3), size,
                                    stride, relu_input, version, as_stream(stream));
        });
      },
      "dy"_a, "x"_a, "y"_a, "dx"_a, py::kw_only(), "size"_a = 3, "stride"_a = 2, "relu_input"_a = false,
      "version"_a = 0, "stream"_a = 0,
      "dx: each dy to the first maximum (row-major) of its window in x, overlaps accumulated; relu_input: dx = 0 "
      "where x <= 0 as well (x is a ReLU's output). dx written in place.");

  // ---- dropout ---------------------------------------------------------------------------
  m.def(
      "dropout_forward",
      [](py::handle x, py::handle y, py::handle mask, double p, uint64_t seed, uint64_t offset, uint64_t start,
         int version, uintptr_t stream) {
        const char* op = "dropout_forward";
        Array X = input(x, op, "x", kStorageDTypes);
        Array Y = output(y, op, "y", kStorageDTypes);
        Array M = output(mask, op, "mask", {DType::U8});
        const DType st = expect_storage(X, {&Y});
        expect_same_shape(X, Y);
        expect_same_shape(X, M);
        expect_no_overlap({&Y, &M}, {&X, &Y, &M});
        check_prob(op, p);
        py::gil_scoped_release nogil;
        with_storage(st, [&](auto t) {
          using T = decltype(t);
          kernels::dropout_forward(X.as<T>(), Y.as<T>(), M.as<uint8_t>(), X.numel(), p, seed, offset, start, version,
                                   as_stream(stream));
        });
      },
      "x"_a, "y"_a, "mask"_a, py::kw_only(), "p"_a = 0.5, "seed"_a, "offset"_a = 0, "start"_a = 0, "version"_a = 0,
      "stream"_a = 0,
      "Inverted dropout: mask (uint8) from Philox-4x32-10 keyed by (seed, offset, start + element index), "
      "y = x * mask / (1 - p) (x, y float32 or BF16 as uint16 bits). y and mask are written in place.");

  m.def(
      "dropout_backward",
      [](py::handle dy, py::handle mask, py::handle dx, double p, py::handle relu_y, int version, uintptr_t stream) {
        const char* op = "dropout_backward";
        Array DY = input(dy, op, "dy", kStorageDTypes);
        Array M = input(mask, op, "mask", {DType::U8});
        Array DX = output(dx, op, "dx", kStorageDTypes);
        Array RY;  // the folded ReLU's output (optional)
        if (!relu_y.is_none()) {
          RY = input(relu_y, op, "relu_y", kStorageDTypes);
          expect_same_shape(DY, RY);
        }
        const DType st = expect_storage(DY, {&DX, &RY});
        expect_same_shape(DY, M);
        expect_same_shape(DY, DX);
        expect_no_overlap({&DX}, {&DY, &M, &RY});
        check_prob(op, p);
        py::gil_scoped_release nogil;
        with_storage(st, [&](auto t) {
          using T = decltype(t);
          kernels::dropout_backward(DY.as<T>(), M.as<uint8_t>(), DX.as<T>(), DY.numel(), p,
                                    RY.ptr ? RY.as<T>() : nullptr, version, as_stream(stream));
        });
      },
      "dy"_a, "mask"_a, "dx"_a, py::kw_only(), "p"_a = 0.5, "relu_y"_a = py::none(), "version"_a = 0, "stream"_a = 0,
      "dx = dy * mask / (1 - p); relu_y (optional, the output of the ReLU before the dropout, i.e. its input x): "
      "dx = 0 where relu_y <= 0 as well. dx is written in place.");

  m.def(
      "philox4x32_10",
      [](std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
        const Philox4 r = philox4x32_10(c[0], c[1], c[2], c[3], k[0], k[1]);
        return py::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
      },
      "counter"_a, "key"_a, "Host build of common/philox.h (the words the kernels use): 4 uint32 words.");

  // ---- softmax cross-entropy -------------------------------------------------------------
  m.def(
      "softmax_cross_entropy",
      [](py::handle logits, py::handle labels, py::handle loss, py::handle dlogits, py::handle row_loss,
         py::handle check, py::handle bad_labels, int version, uintptr_t stream) {
        const char* op = "softmax_cross_entropy";
        const Labeled in = logits_labels(op, logits, labels);
        const Array &L = in.L, &Y = in.Y;
        Array LO = output(loss, op, "loss", {DType::F32});
        Array DL = output(dlogits, op, "dlogits", {DType::F32});
        Array RL = output(row_loss, op, "row_loss", {DType::F32}, 1);
        Array CK = output(check, op, "check", {DType::I32});
        expect_shape(LO, {1});
        expect_same_shape(L, DL);
        expect_shape(RL, {L.dim(0)}, "(one float per row of logits)");
        expect_shape(CK, {1});
        expect_no_overlap({&LO, &DL, &RL, &CK}, {&L, &Y, &LO, &DL, &RL, &CK});
        check_version(op, version, kernels::kSoftmaxXentVersions);
        const Array BL = optional_bad_labels(op, bad_labels, {&L, &Y, &LO, &DL, &RL, &CK});
        with_checked_labels(op, in, CK, BL, stream, [&](bool is64) {
          kernels::softmax_cross_entropy(L.f32(), Y.ptr, is64, LO.f32(), DL.f32(), RL.f32(), L.dim(0), L.dim(1),
                                         version, as_stream(stream));
        });
      },
      "logits"_a, "labels"_a, "loss"_a, "dlogits"_a, "row_loss"_a, "check"_a, py::kw_only(), "bad_labels"_a = py::none(),
      "version"_a = 0, "stream"_a = 0,
      "loss[0] = mean softmax cross-entropy, dlogits = (softmax - onehot)/N. row_loss (N floats) and check (1 int32) "
      "are workspaces. Labels out of range raise ValueError before anything is written (device check, one sync); "
      "with bad_labels (2 int64 on the device) the first bad one is recorded there instead (no sync) and loss is NaN.");

  // ---- top-k -------------------------------------------------------------------------------
  m.def(
      "topk_correct",
      [](py::handle logits, py::handle labels, py::handle out, py::handle check, py::handle bad_labels, int64_t k,
         int version, uintptr_t stream) {
        const char* op = "topk_correct";
        const Labeled in = logits_labels(op, logits, labels);
        const Array &L = in.L, &Y = in.Y;
        Array O = output(out, op, "out", {DType::I64});
        Array CK = output(check, op, "check", {DType::I32});
        expect_shape(O, {1});
        expect_shape(CK, {1});
        expect_no_overlap({&O, &CK}, {&L, &Y, &O, &CK});
        if (k < 1) value_error(op, "k must be >= 1, got " + std::to_string(k));
        check_version(op, version, kernels::kTopkVersions);
        const Array BL = optional_bad_labels(op, bad_labels, {&L, &Y, &O, &CK});
        with_checked_labels(op, in, CK, BL, stream, [&](bool is64) {
          kernels::topk_correct(L.f32(), Y.ptr, is64, L.dim(0), L.dim(1), k, O.as<int64_t>(), version,
                                as_stream(stream));
        });
      },
      "logits"_a, "labels"_a, "out"_a, "check"_a, py::kw_only(), "bad_labels"_a = py::none(), "k"_a, "version"_a = 0,
      "stream"_a = 0,
      "out[0] (int64) = number of rows whose label is in the top k (ties in the label's favour). check: 1 int32 of "
      "workspace. bad_labels as softmax_cross_entropy's (bad rows are not counted).");

  // ---- SGD -----------------------------------------------------------------------------------
  m.def(
      "sgd_update",
      [](py::handle w, py::handle dw, py::handle v, double lr, double momentum, double weight_decay,
         py::handle loss, int version, uintptr_t stream) {
        const char* op = "sgd_update";
        Array W = output(w, op, "w", {DType::F32});
        Array DW = input(dw, op, "dw", {DType::F32});
        Array V = output(v, op, "v", {DType::F32});
        expect_same_shape(W, DW);
        expect_same_shape(W, V);
        expect_no_overlap(W, V);
        finite(op, "lr", lr);
        finite(op, "momentum", momentum);
        finite(op, "weight_decay", weight_decay);
        Array L = optional_loss(op, loss);
        expect_no_overlap({&W, &V}, {&L});
        py::gil_scoped_release nogil;
        kernels::sgd_update(W.f32(), DW.f32(), V.f32(), W.numel(), lr, momentum, weight_decay * lr,
                            L.ptr ? L.f32() : nullptr, version, as_stream(stream));
      },
      "w"_a, "dw"_a, "v"_a, py::kw_only(), "lr"_a, "momentum"_a = 0.9, "weight_decay"_a = 5e-4, "loss"_a = py::none(),
      "version"_a = 0, "stream"_a = 0,
      "In place: v = momentum*v - weight_decay*lr*w - lr*dw; w += v. loss (one float32 on the device, optional): "
      "when it is not finite, nothing is written (decided by the kernel).");

  m.attr("SGD_TABLE_WORDS") = kernels::kSgdTableWords;
  m.attr("SGD_PARAM_TENSORS") = kernels::kSgdParamTensors;
  m.def(
      "sgd_update_multi",
      [](py::sequence params, py::sequence grads, py::sequence vels, py::handle table, double lr, double momentum,
         py::sequence weight_decays, py::handle loss, uintptr_t stream) {
        const char* op = "sgd_update_multi";
        const size_t n = py::len(params);
        if (py::len(grads) != n || py::len(vels) != n || py::len(weight_decays) != n)
          value_error(op, "params, grads, vels and weight_decays must have the same length (got " + std::to_string(n) +
                              ", " + std::to_string(py::len(grads)) + ", " + std::to_string(py::len(vels)) + ", " +
                              std::to_string(py::len(weight_decays)) + ")");
        finite(op, "lr", lr);
        finite(op, "momentum", momentum);
        // table: needed only beyond SGD_PARAM_TENSORS tensors (else the launch carries it; None is fine)
        Array T = table.is_none() ? Array{} : output(table, op, "table", {DType::I64}, 1);
        if (n > size_t(kernels::kSgdParamTensors) && T.numel() < int64_t(n) * kernels::kSgdTableWords)
          value_error(op, "table must hold at least " + std::to_string(n * kernels::kSgdTableWords) +
                              " int64 words (more than " + std::to_string(kernels::kSgdParamTensors) + " tensors)");
        Array L = optional_loss(op, loss);
        expect_no_overlap(T, L);
        std::vector<kernels::SgdTensor> tensors(n);
        for (size_t i = 0; i < n; ++i) {
          const std::string s = "[" + std::to_string(i) + "]";
          Array W = output(params[i], op, ("params" + s).c_str(), {DType::F32});
          Array DW = input(grads[i], op, ("grads" + s).c_str(), {DType::F32});
          Array V = output(vels[i], op, ("vels" + s).c_str(), {DType::F32});
          expect_same_shape(W, DW);
          expect_same_shape(W, V);
          expect_no_overlap(W, V);
          expect_no_overlap(T, W);
          expect_no_overlap(T, V);
          expect_no_overlap({&W, &V}, {&L});
          const double wd = finite(op, ("weight_decays" + s).c_str(), weight_decays[i].cast<double>());
          tensors[i] = kernels::SgdTensor{W.f32(), DW.f32(), V.f32(), W.numel(), 0, float(wd * lr), 0};
        }
        if (n == 0) return;
        py::gil_scoped_release nogil;
        kernels::sgd_update_multi(tensors.data(), int(n), T.ptr ? T.as<kernels::SgdTensor>() : nullptr, lr, momentum,
                                  L.ptr ? L.f32() : nullptr, as_stream(stream));
      },
      "params"_a, "grads"_a, "vels"_a, "table"_a, py::kw_only(), "lr"_a, "momentum"_a = 0.9, "weight_decays"_a,
      "loss"_a = py::none(), "stream"_a = 0,
      "sgd_update over many tensors with ONE launch; table: None, or SGD_TABLE_WORDS int64 words of device memory per "
      "tensor (needed beyond SGD_PARAM_TENSORS tensors, where the table is copied there first); loss as sgd_update's.");

  // ---- LRN + max pooling in one kernel (lrn_pool.cu) ----------------------------------------
  register_versions({"lrn_maxpool_forward", "lrn_maxpool_backward"}, kernels::kLrnPoolVersions);
  m.def(
      "lrn_maxpool_forward",
      [](py::handle x, py::handle y_pool, py::handle lrn_y, py::handle scale, int size, double alpha, double beta,
         double k, int pool_size, int pool_stride, int version, uintptr_t stream) {
        const char* op = "lrn_maxpool_forward";
        Array X = input(x, op, "x", {DType::F32, DType::U16}, 4);
        auto [P, Q] = lrn_pool_args(op, X, size, alpha, beta, k, pool_size, pool_stride);
        Array YP = output(y_pool, op, "y_pool", {DType::F32, DType::U16}, 4);
        Array LY = output(lrn_y, op, "lrn_y", {DType::F32, DType::U16});
        Array S = output(scale, op, "scale", {DType::F32});
        expect_same_dtype(X, YP);
        expect_same_dtype(X, LY);
        expect_shape(YP, {X.dim(0), X.dim(1), P, Q}, "(the pooled shape of x)");
        expect_same_shape(X, LY);
        expect_same_shape(X, S);
        expect_no_overlap({&YP, &LY, &S}, {&X, &YP, &LY, &S});
        py::gil_scoped_release nogil;
        with_storage(X.dtype, [&](auto t) {
          using T = decltype(t);
          kernels::lrn_maxpool_forward<T>(X.as<T>(), YP.as<T>(), LY.as<T>(), S.f32(), X.dim(0), X.dim(1), X.dim(2),
                                          X.dim(3), size, alpha, beta, k, pool_size, pool_stride, version,
                                          as_stream(stream));
        });
      },
      "x"_a, "y_pool"_a, "lrn_y"_a, "scale"_a, py::kw_only(), "size"_a = 5, "alpha"_a = 1e-4, "beta"_a = 0.75,
      "k"_a = 2.0, "pool_size"_a = 3, "pool_stride"_a = 2, "version"_a = 0, "stream"_a = 0,
      "lrn_forward (alpha applied to the sum) then maxpool_forward of its output, in one kernel: y_pool, lrn_y and "
      "scale (float32) written in place. x, y_pool, lrn_y: float32, or uint16 BF16 bits, all the same.");

  m.def(
      "lrn_maxpool_backward",
      [](py::handle dy_pool, py::handle x, py::handle lrn_y, py::handle scale, py::handle dx, int size, double alpha,
         double beta, int pool_size, int pool_stride, bool relu_input, int version, uintptr_t stream) {
        const char* op = "lrn_maxpool_backward";
        Array X = input(x, op, "x", {DType::F32, DType::U16}, 4);
        auto [P, Q] = lrn_pool_args(op, X, size, alpha, beta, 0.0, pool_size, pool_stride);
        Array DY = input(dy_pool, op, "dy_pool", {DType::F32, DType::U16}, 4);
        Array LY = input(lrn_y, op, "lrn_y", {DType::F32, DType::U16}, 4);
        Array S = input(scale, op, "scale", {DType::F32}, 4);
        Array DX = output(dx, op, "dx", {DType::F32, DType::U16});
        for (const Array* a : {&DY, &LY, &DX}) expect_same_dtype(X, *a);
        expect_shape(DY, {X.dim(0), X.dim(1), P, Q}, "(the pooled shape of x)");
        for (const Array* a : {&LY, &S, &DX}) expect_same_shape(X, *a);
        expect_no_overlap({&DX}, {&X, &DY, &LY, &S});
        py::gil_scoped_release nogil;
        with_storage(X.dtype, [&](auto t) {
          using T = decltype(t);
          kernels::lrn_maxpool_backward<T>(DY.as<T>(), X.as<T>(), LY.as<T>(), S.f32(), DX.as<T>(), X.dim(0), X.dim(1),
                                           X.dim(2), X.dim(3), size, alpha, beta, pool_size, pool_stride, relu_input,
                                           version, as_stream(stream));
        });
      },
      "dy_pool"_a, "x"_a, "lrn_y"_a, "scale"_a, "dx"_a, py::kw_only(), "size"_a = 5, "alpha"_a = 1e-4,
      "beta"_a = 0.75, "pool_size"_a = 3, "pool_stride"_a = 2, "relu_input"_a = false, "version"_a = 0,
      "stream"_a = 0,
      "dx = lrn_backward(maxpool_backward(dy_pool, lrn_y), x, lrn_y, scale) in one kernel; relu_input: dx = 0 where "
      "x <= 0 as well (x is a ReLU's output). dx written in place.");
}

}  // namespace alexnet
