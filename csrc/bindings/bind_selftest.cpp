// Bindings of the self-test kernels (csrc/kernels/selftest.cu), used by tests/test_emu.py.
#include "bindings/arrays.h"
#include "kernels/selftest.cuh"

namespace alexnet {
using namespace pybind11::literals;
namespace st = kernels::selftest;

namespace {
Array arr(py::handle o, const char* name, DType d) { return output(o, "selftest", name, {d}); }
void need(bool ok, const char* what) {
  if (!ok) value_error("selftest", what);
}
}  // namespace

void bind_selftest(py::module_& m) {
  py::module_ t = m.def_submodule("selftest", "Kernels that exercise CUDA features, for the tests.");
  t.def("barrier", [](py::handle out, py::handle counts, int threads, int live) {
    Array o = arr(out, "out", DType::F32), c = arr(counts, "counts", DType::I32);
    need(o.numel() >= threads && c.numel() >= 3, "out needs `threads` floats and counts 3 ints");
    py::gil_scoped_release g;
    st::barrier(o.f32(), c.as<int>(), threads, live, nullptr);
  });
  t.def("warp", [](py::handle in, py::handle arg, py::handle out, int op, unsigned mask, unsigned active, int width) {
    Array i = arr(in, "in", DType::I32), a = arr(arg, "arg", DType::I32), o = arr(out, "out", DType::I32);
    need(i.numel() % 32 == 0 && i.numel() > 0 && a.numel() == i.numel() && o.numel() == i.numel(),
         "in, arg and out need the same size, a multiple of 32");
    py::gil_scoped_release g;
    st::warp(i.as<int>(), a.as<int>(), o.as<int>(), int(i.numel() / 32), op, mask, active, width, nullptr);
  });
  t.def("tree_sum", [](py::handle x, py::handle out, bool sync) {
    Array X = arr(x, "x", DType::F32), o = arr(out, "out", DType::F32);
    py::gil_scoped_release g;
    st::tree_sum(X.f32(), o.f32(), int(X.numel()), sync, nullptr);
  });
  t.def("divergent_barrier", [](py::handle out, int threads, int split) {
    Array o = arr(out, "out", DType::F32);
    need(o.numel() >= threads, "out needs `threads` floats");
    py::gil_scoped_release g;
    st::divergent_barrier(o.f32(), threads, split, nullptr);
  });
  t.def("atomics", [](py::handle ints, py::handle f, int blocks, int threads, int reps) {
    Array i = arr(ints, "ints", DType::I32), F = arr(f, "f", DType::F32);
    need(i.numel() >= 3 && F.numel() >= 1, "ints needs 3 elements and f 1");
    py::gil_scoped_release g;
    st::atomics(i.as<int>(), F.f32(), blocks, threads, reps, nullptr);
  });
  t.def("wmma", [](py::handle a, py::handle b, py::handle c, py::handle d, int kind) {
    Array A = arr(a, "a", DType::F32), B = arr(b, "b", DType::F32), C = arr(c, "c", DType::F32), D = arr(d, "d", DType::F32);
    static const int mnk[6][3] = {{16, 16, 16}, {32, 8, 16}, {8, 32, 16}, {16, 16, 16}, {16, 16, 8}, {32, 8, 16}};
    need(kind >= 0 && kind <= 5, "kind must be 0..5");
    const int M = mnk[kind][0], N = mnk[kind][1], K = mnk[kind][2];
    need(A.numel() == M * K && B.numel() == K * N && C.numel() == M * N && D.numel() == M * N,
         "a, b, c, d must be (M,K), (K,N), (M,N), (M,N) for the kind");
    py::gil_scoped_release g;
    st::wmma(A.f32(), B.f32(), C.f32(), D.f32(), kind, nullptr);
  });
  t.def("mma", [](py::handle a, py::handle b, py::handle c, py::handle d, int kind, int variant) {
    Array A = arr(a, "a", DType::F32), B = arr(b, "b", DType::F32), C = arr(c, "c", DType::F32), D = arr(d, "d", DType::F32);
    need(kind == 0 || kind == 1, "kind must be 0 (bf16 m16n8k16) or 1 (tf32 m16n8k8)");
    const int K = kind == 0 ? 16 : 8;
    need(A.numel() == 16 * K && B.numel() == K * 8 && C.numel() == 128 && D.numel() == 128,
         "a, b, c, d must be (16,K), (K,8), (16,8), (16,8) for the kind");
    py::gil_scoped_release g;
    st::mma(A.f32(), B.f32(), C.f32(), D.f32(), kind, variant, nullptr);
  });
  t.def("ldmatrix", [](py::handle src, py::handle rows, py::handle cols, py::handle out, bool trans) {
    Array S = arr(src, "src", DType::U16), R = arr(rows, "rows", DType::I32), C = arr(cols, "cols", DType::I32),
          O = arr(out, "out", DType::I32);
    need(S.numel() == 64 * 64 && R.numel() == 32 && C.numel() == 32 && O.numel() == 128,
         "src must be 64 x 64, rows and cols 32 ints, out 128 ints");
    py::gil_scoped_release g;
    st::ldmatrix(S.as<uint16_t>(), R.as<int>(), C.as<int>(), O.as<uint32_t>(), trans, nullptr);
  });
  t.def("ldmatrix_mma", [](py::handle a, py::handle b, py::handle d, bool a_kmajor, bool b_kmajor, bool wrong) {
    Array A = arr(a, "a", DType::F32), B = arr(b, "b", DType::F32), D = arr(d, "d", DType::F32);
    need(A.numel() == 256 && B.numel() == 256 && D.numel() == 256, "a, b and d must be 16 x 16");
    py::gil_scoped_release g;
    st::ldmatrix_mma(A.f32(), B.f32(), D.f32(), a_kmajor, b_kmajor, wrong, nullptr);
  });
  t.def("tf32", [](py::handle x, py::handle out) {
    Array X = arr(x, "x", DType::F32), O = arr(out, "out", DType::I32);
    need(O.numel() == X.numel(), "x and out need the same size");
    py::gil_scoped_release g;
    st::tf32(X.f32(), O.as<uint32_t>(), int(X.numel()), nullptr);
  });
  t.def("dyn_smem_reverse", [](py::handle x, py::handle y, py::handle poisoned, int per_block, size_t extra_smem) {
    Array X = arr(x, "x", DType::F32), Y = arr(y, "y", DType::F32), P = arr(poisoned, "poisoned", DType::I32);
    need(per_block > 0 && X.numel() % per_block == 0 && Y.numel() == X.numel() && P.numel() == X.numel() / per_block,
         "x and y need blocks * per_block floats, poisoned `blocks` ints");
    py::gil_scoped_release g;
    st::dyn_smem_reverse(X.f32(), Y.f32(), P.as<int>(), int(P.numel()), per_block, extra_smem, nullptr);
  }, "x"_a, "y"_a, "poisoned"_a, "per_block"_a, "extra_smem"_a = 0);
  t.def("fiber_order", [](py::handle ticket, py::handle counter) {
    Array T = arr(ticket, "ticket", DType::I32), C = arr(counter, "counter", DType::I32);
    need(C.numel() >= 1, "counter needs 1 element");
    py::gil_scoped_release g;
    st::fiber_order(T.as<int>(), C.as<int>(), int(T.numel()), nullptr);
  });
  t.def("convert", [](py::handle x, py::handle oh, py::handle ob, py::handle back) {
    Array X = arr(x, "x", DType::F32), H = arr(oh, "out_half", DType::U16), B = arr(ob, "out_bf16", DType::U16),
          K = arr(back, "back", DType::F32);
    need(H.numel() == X.numel() && B.numel() == X.numel() && K.numel() == X.numel(), "all arrays need the same size");
    py::gil_scoped_release g;
    st::convert(X.f32(), H.as<uint16_t>(), B.as<uint16_t>(), K.f32(), int(X.numel()), nullptr);
  });
}

}  // namespace alexnet
