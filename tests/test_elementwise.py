"""ReLU, tanh and the sum reduction: the first kernels through the whole path (kernel ->
binding -> backend), every version, on every kernel backend, in every emu fiber order,
against the NumPy reference."""
import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda import reference

SIZES = [1, 3, 4, 5, 255, 1023, 4097, 96 * 55 * 55 + 1]


@pytest.mark.parametrize("n", SIZES)
def test_relu_forward_backward_all_versions(kernel_backend, emu_order, n, rng):
    be = kernel_backend
    x = rng.standard_normal(n).astype(np.float32)
    x[::7] = 0.0  # exact zeros: forward keeps 0, backward sends no gradient
    dy = rng.standard_normal(n).astype(np.float32)
    y_ref = reference.relu_forward(x)
    dx_ref = reference.relu_backward(dy, y_ref)
    for v in be.versions("relu_forward"):
        y = be.to_numpy(be.relu_forward(be.asarray(x), version=v))
        np.testing.assert_array_equal(y, y_ref, err_msg=f"relu_forward v{v}")  # exact: no arithmetic
    for v in be.versions("relu_backward"):
        dx = be.to_numpy(be.relu_backward(be.asarray(dy), be.asarray(y_ref), version=v))
        np.testing.assert_array_equal(dx, dx_ref, err_msg=f"relu_backward v{v}")


@pytest.mark.parametrize("n", SIZES)
def test_tanh_forward_backward_all_versions(kernel_backend, emu_order, n, rng):
    be = kernel_backend
    x = (3.0 * rng.standard_normal(n)).astype(np.float32)  # near 0, in the bend and in the flat tails
    x[::11] = 0.0
    x[1::13] = 20.0   # tanh rounds to exactly 1 in float32: no gradient passes
    dy = rng.standard_normal(n).astype(np.float32)
    y_ref = reference.tanh_forward(x)
    dx_ref = reference.tanh_backward(dy, y_ref)
    for v in be.versions("tanh_forward"):
        y = be.to_numpy(be.tanh_forward(be.asarray(x), version=v))
        # tanhf (CUDA's, at most 2 ulp off; the emu's is the host libm's) against numpy's float32 tanh
        # (also within a few ulp): 4 float32 ulp of |y| apart at most. Exact where tanh is exactly 0 or +-1.
        np.testing.assert_allclose(y, y_ref, rtol=4 * np.finfo(np.float32).eps, atol=0,
                                   err_msg=f"tanh_forward v{v}")
        assert (y[x == 0] == 0).all() and (y[x == 20] == 1).all()
    for v in be.versions("tanh_backward"):
        dx = be.to_numpy(be.tanh_backward(be.asarray(dy), be.asarray(y_ref), version=v))
        # exact: dy * ((1 - y) * (1 + y)) in float32 has one rounding per operation on both sides
        np.testing.assert_array_equal(dx, dx_ref, err_msg=f"tanh_backward v{v}")
        assert (dx[x == 20] == 0).all()


def test_tanh_bad_arguments_name_the_argument(kernel_backend):
    be = kernel_backend
    with pytest.raises(TypeError, match="tanh_forward: x must be float32 or uint16, got float64"):
        be.tanh_forward(be.xp.ones(8, dtype=be.xp.float64))
    with pytest.raises(ValueError, match=r"tanh_backward: y has shape \(8,\), expected \(7,\) \(the shape of dy\)"):
        be.tanh_backward(be.xp.ones(7, dtype=be.xp.float32), be.xp.ones(8, dtype=be.xp.float32))
    with pytest.raises(ValueError, match="no kernel version 3"):
        be.tanh_forward(be.asarray(np.ones(4, np.float32)), version=3)


def test_relu_4d_shape_kept(kernel_backend, rng):
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    y = kernel_backend.relu_forward(kernel_backend.asarray(x))
    assert y.shape == x.shape
    np.testing.assert_array_equal(kernel_backend.to_numpy(y), np.maximum(x, 0))


@pytest.mark.parametrize("n", [1, 31, 256, 1025, 100_003, 1_500_001])
def test_reduce_sum_all_versions(kernel_backend, emu_order, n, rng):
    be = kernel_backend
    x = rng.standard_normal(n).astype(np.float32)
    exact = x.astype(np.float64).sum()
    # float32 accumulation of n terms in a tree: |error| <= (log2(n) + per-thread terms)
    # * eps * sum|x|; the per-thread serial part is at most ceil(n / 256) terms.
    bound = (np.log2(n) + np.ceil(n / 256) + 2) * np.finfo(np.float32).eps * np.abs(x).astype(np.float64).sum()
    results = []
    for v in be.versions("reduce_sum"):
        s = float(be.to_numpy(be.reduce_sum(be.asarray(x), version=v)))
        assert abs(s - exact) <= bound, f"reduce_sum v{v}: {s} vs {exact}"
        results.append(s)
    # Deterministic: the same input gives bitwise the same sum.
    assert float(be.to_numpy(be.reduce_sum(be.asarray(x)))) == float(be.to_numpy(be.reduce_sum(be.asarray(x))))


def test_unknown_version_is_rejected(kernel_backend):
    with pytest.raises(ValueError, match="no kernel version 9"):
        kernel_backend.relu_forward(kernel_backend.asarray(np.ones(4, np.float32)), version=9)


def test_bad_arguments_name_the_argument(kernel_backend):
    be = kernel_backend
    mod = be._mod
    x = be.asarray(np.ones(8, np.float32))
    with pytest.raises(TypeError, match="relu_forward: x must be float32 or uint16, got float64"):
        be.relu_forward(be.xp.ones(8, dtype=be.xp.float64))
    with pytest.raises(ValueError, match=r"relu_forward: y has shape \(7,\), expected \(8,\)"):
        mod.relu_forward(x, be.xp.zeros(7, dtype=be.xp.float32))
    with pytest.raises(ValueError, match="relu_backward: dy must be C-contiguous"):
        be.relu_backward(be.xp.ones((4, 4), dtype=be.xp.float32)[:, ::2], be.xp.ones((4, 2), dtype=be.xp.float32))
    with pytest.raises(TypeError, match="relu_forward: x must be a"):
        be.relu_forward([1.0, 2.0])
    if be.name == "emu":
        y = np.zeros(8, np.float32)
        y.flags.writeable = False
        with pytest.raises(ValueError, match="y is read-only"):
            mod.relu_forward(np.ones(8, np.float32), y)


def test_failed_check_writes_nothing(kernel_backend):
    be = kernel_backend
    y = be.xp.full(8, 7.0, dtype=be.xp.float32)
    dy = be.xp.ones(8, dtype=be.xp.float32)
    with pytest.raises(TypeError):
        be._mod.relu_backward(dy, be.xp.ones(8, dtype=be.xp.float64), y)
    assert (be.to_numpy(y) == 7.0).all()


def test_emu_rejects_a_non_numpy_array():
    be = alexnet_cuda.get_backend("emu")

    class FakeGpuArray:
        __cuda_array_interface__ = {"shape": (4,), "typestr": "<f4", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match=r"x must be a numpy array \(the emu backend"):
        be.relu_forward(FakeGpuArray())
