// The transfer kernels where towers meet (kernels/transfer.cu). Arrays are (N, C, H, W) maps or
// (N, F) features, all float32 or all BF16 (uint16 bits; expect_storage); `offset` counts channels
// (features). The peer-side array is checked against the device it is said to live on
// (`src_device` / `peer_device`, -1: the current one), every other array against the current
// device; the kernel itself needs peer access to read another device.
#include "bindings/arrays.h"
#include "kernels/transfer.cuh"

namespace alexnet {
using namespace pybind11::literals;

namespace {

// ValueError unless `a` (the one-tower array) and `cat` (the concatenated one) agree in every
// dimension but 1 and `offset + a.dim(1) <= cat.dim(1)`. Returns the elements per channel.
int64_t check_slice(const Array& a, const Array& cat, int64_t offset) {
  const std::string& op = a.op;
  if (a.ndim() != 2 && a.ndim() != 4) value_error(op, a.name + " must be (N, C, H, W) or (N, F), got shape " + a.shape_str());
  if (cat.ndim() != a.ndim()) value_error(op, cat.name + " has shape " + cat.shape_str() + ", " + a.name + " " + a.shape_str());
  for (int i = 0; i < a.ndim(); ++i)
    if (i != 1 && a.dim(i) != cat.dim(i))
      value_error(op, cat.name + " has shape " + cat.shape_str() + " but " + a.name + " " + a.shape_str() +
                          ": they may differ only in dimension 1");
  if (offset < 0 || offset + a.dim(1) > cat.dim(1))
    value_error(op, "offset " + std::to_string(offset) + " + " + std::to_string(a.dim(1)) + " channels of " + a.name +
                        " exceeds the " + std::to_string(cat.dim(1)) + " channels of " + cat.name);
  return a.ndim() == 4 ? a.dim(2) * a.dim(3) : 1;
}

}  // namespace

void bind_transfer(py::module_& m) {
  register_versions({"transfer_forward", "transfer_backward"}, kernels::kTransferVersions);

  m.def(
      "transfer_forward",
      [](py::handle src, py::handle dst, int64_t offset, int64_t src_offset, int64_t channels, int src_device,
         int version, uintptr_t stream) {
        const char* op = "transfer_forward";
        Array S = input(src, op, "src", kStorageDTypes, -1, src_device);
        Array D = output(dst, op, "dst", kStorageDTypes);
        const DType st = expect_storage(S, {&D});
        if (S.ndim() != 2 && S.ndim() != 4) value_error(op, "src must be (N, C, H, W) or (N, F), got shape " + S.shape_str());
        if (channels < 0) channels = S.dim(1) - src_offset;
        if (src_offset < 0 || channels < 0 || src_offset + channels > S.dim(1))
          value_error(op, "src_offset " + std::to_string(src_offset) + " + " + std::to_string(channels) +
                              " channels exceeds the " + std::to_string(S.dim(1)) + " channels of src");
        Array piece = S;  // the shape of the channels copied, for the checks against dst
        piece.shape[1] = channels;
        const int64_t hw = check_slice(piece, D, offset);
        expect_no_overlap(D, S);
        py::gil_scoped_release nogil;
        with_storage(st, [&](auto t) {
          using T = decltype(t);
          kernels::transfer_forward(S.as<T>(), D.as<T>(), S.dim(0), channels * hw, S.dim(1) * hw, src_offset * hw,
                                    D.dim(1) * hw, offset * hw, version, as_stream(stream));
        });
      },
      "src"_a, "dst"_a, py::kw_only(), "offset"_a, "src_offset"_a = 0, "channels"_a = -1,
      "src_device"_a = kCurrentDevice, "version"_a = 0, "stream"_a = 0,
      "dst[:, offset:offset + channels] = src[:, src_offset:src_offset + channels] in place (channels -1: the rest "
      "of src); src may live on src_device (a peer).");

  m.def(
      "transfer_backward",
      [](py::handle peer, py::handle local, py::handle out, int64_t offset, int peer_device, int version,
         uintptr_t stream) {
        const char* op = "transfer_backward";
        Array P = input(peer, op, "grad", kStorageDTypes, -1, peer_device);
        Array L;
        if (!local.is_none()) {
          L = input(local, op, "local", kStorageDTypes);
          expect_same_shape(P, L);
        }
        Array O = output(out, op, "out", kStorageDTypes);
        const DType st = expect_storage(P, {&L, &O});
        const int64_t hw = check_slice(O, P, offset);
        expect_no_overlap({&O}, {&P, &L});
        py::gil_scoped_release nogil;
        with_storage(st, [&](auto t) {
          using T = decltype(t);
          kernels::transfer_backward(P.as<T>(), L.ptr ? L.as<T>() : nullptr, O.as<T>(), O.dim(0),
                                     O.numel() / (O.dim(0) ? O.dim(0) : 1), P.dim(1) * hw, offset * hw, version,
                                     as_stream(stream));
        });
      },
      "grad"_a, "local"_a, "out"_a, py::kw_only(), "offset"_a, "peer_device"_a = kCurrentDevice, "version"_a = 0,
      "stream"_a = 0,
      "out = grad[:, offset:offset + out.shape[1]] (+ local[...] when local is not None); grad may live on peer_device.");
}

}  // namespace alexnet
