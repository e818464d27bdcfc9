"""The fused LRN + max-pool ops (csrc/kernels/lrn_pool.cu) against the separate ops they replace.

lrn_maxpool_forward must equal lrn_forward then maxpool_forward of its output, and
lrn_maxpool_backward must equal maxpool_backward, then lrn_backward, then (relu_input=True)
relu_backward(dx, x), bit for bit (compared as bit patterns, so a -0 for a +0 fails): the fused kernels
evaluate the same float operations in the same order through the same device functions
(kernels/lrn_math.cuh, kernels/pool_math.cuh). The oracle is the separate kernel ops of the same
backend, which tests/test_kernels_layers.py checks against the NumPy reference (with the LRN's powf
tolerances; the fused ops get the same against the reference composition below).

BF16 storage (uint16 bit patterns): the fused kernels round to BF16 where the separate BF16-storage
ops would store: lrn_y, y_pool, the pooled gradient between the two backward ops, and dx. The oracle is
the separate FP32 ops on the widened values with those roundings (alexnet_cuda.precision.bf16_bits),
again bit for bit.

Every case runs versions 0, 1 and 2 in the emulator's three fiber orders, with FP32 and BF16 storage,
with and without relu_input. The inputs are 60% zeros (the ReLU before the LRN): many pooling windows
hold tied maxima (zeros, and BF16 roundings), so the first-maximum rule is exercised, and the relu mask
has zeros and negatives to act on.
"""
import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda import reference as ref
from alexnet_cuda.backends import available_backends
from alexnet_cuda.precision import bf16_bits, from_bf16_bits

STORAGES = ("float32", "bf16")

CASES = [
    # shape (N, C, H, W), LRN size, (pool size, pool stride)
    ((1, 13, 7, 7), 5, (3, 2)),      # batch 1; C not a multiple of the window nor of the 8-channel chunk
    ((2, 70, 13, 13), 5, (3, 2)),    # two channel groups (64 + 6): the ring of channels wraps
    ((1, 9, 15, 15), 5, (2, 2)),     # non-overlapping on an odd map: the last row and column in no window
    ((2, 11, 13, 13), 3, (2, 2)),
    ((1, 3, 9, 8), 5, (3, 2)),       # C < size: every LRN window clipped
    ((1, 6, 7, 9), 3, (3, 1)),       # stride 1: up to 9 windows per input
    ((1, 5, 12, 9), 5, (3, 4)),      # stride > size: rows and columns between the windows
    ((1, 10, 55, 55), 5, (3, 2)),    # conv1's map: 7 forward bands, 10 backward bands (version 2)
    ((1, 12, 27, 27), 5, (3, 2)),    # conv2's map: 2 bands each way
    ((1, 9, 27, 27), 5, (2, 2)),
    ((1, 4, 20, 100), 5, (3, 2)),    # wide rows: 5 forward bands of 2 pool rows
]


def dev(be, a):
    return be.xp.array(a, dtype=a.dtype, copy=True)


def host(be, a):
    return np.asarray(be.to_numpy(a))


def pooled(shape, pool):
    N, C, H, W = shape
    return (N, C, (H - pool[0]) // pool[1] + 1, (W - pool[0]) // pool[1] + 1)


def inputs(rng, shape):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x[rng.random(shape) < 0.6] = 0
    return x


def stored(a, storage):
    """float32 values as the storage holds them: float32, or uint16 BF16 bits (rounded)."""
    return a.astype(np.float32) if storage == "float32" else bf16_bits(a)


def widen(a):
    return from_bf16_bits(a) if a.dtype == np.uint16 else a


def assert_bits(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    u = np.uint16 if want.dtype == np.uint16 else np.uint32
    np.testing.assert_array_equal(got.view(u), want.view(u), err_msg=what)


def separate_forward(be, xs, hp, ph):
    """(y_pool, lrn_y, scale) of the separate FP32 ops with the storage's roundings, as numpy arrays."""
    y, scale = be.lrn_forward(dev(be, widen(xs)), **hp)
    lrn_y = stored(host(be, y), "bf16" if xs.dtype == np.uint16 else "float32")
    y_pool = host(be, be.maxpool_forward(dev(be, widen(lrn_y)), size=ph["pool_size"], stride=ph["pool_stride"]))
    return (bf16_bits(y_pool) if xs.dtype == np.uint16 else y_pool), lrn_y, host(be, scale)


def separate_backward(be, dys, xs, lrn_y, scale, hp, ph, relu_input):
    storage = "bf16" if xs.dtype == np.uint16 else "float32"
    d = dev(be, widen(dys))
    g = be.maxpool_backward(d, dev(be, widen(lrn_y)), d, size=ph["pool_size"], stride=ph["pool_stride"])
    g = widen(stored(host(be, g), storage))
    x = dev(be, widen(xs))
    dx = be.lrn_backward(dev(be, g), x, dev(be, widen(lrn_y)), dev(be, scale), **hp)
    if relu_input:
        dx = be.relu_backward(dx, x)
    return stored(host(be, dx), storage)


def versions(be):
    vs = be.versions("lrn_maxpool_forward")
    assert vs == [1, 2] and be.versions("lrn_maxpool_backward") == vs
    return [0] + vs


def check_fused(be, x, dy, hp, ph):
    for storage in STORAGES:
        xs, dys = stored(x, storage), stored(dy, storage)
        want = separate_forward(be, xs, hp, ph)
        want_dx = {r: separate_backward(be, dys, xs, want[1], want[2], hp, ph, r) for r in (False, True)}
        for v in versions(be):
            what = f"{storage}, version {v}, shape {x.shape}, {hp}, {ph}"
            got = be.lrn_maxpool_forward(dev(be, xs), **hp, **ph, version=v)
            for name, g, w in zip(("y_pool", "lrn_y", "scale"), got, want):
                assert_bits(host(be, g), w, f"{name} {what}")
            for r in (False, True):
                dx = be.lrn_maxpool_backward(dev(be, dys), dev(be, xs), dev(be, want[1]), dev(be, want[2]), **hp,
                                             **ph, relu_input=r, version=v)
                assert_bits(host(be, dx), want_dx[r], f"dx relu_input={r} {what}")


@pytest.mark.parametrize("shape,size,pool", CASES)
def test_fused_equals_the_separate_ops(kernel_backend, emu_order, rng, shape, size, pool):
    hp = dict(size=size, alpha=0.1, beta=0.75, k=2.0)
    ph = dict(pool_size=pool[0], pool_stride=pool[1])
    check_fused(kernel_backend, inputs(rng, shape), rng.standard_normal(pooled(shape, pool)).astype(np.float32), hp,
                ph)


def test_paper_constants_and_alpha_scaled(kernel_backend, rng):
    shape, pool = (2, 17, 13, 13), (3, 2)
    dy = rng.standard_normal(pooled(shape, pool)).astype(np.float32)
    ph = dict(pool_size=3, pool_stride=2)
    check_fused(kernel_backend, inputs(rng, shape) * 40, dy, {}, ph)  # size 5, alpha 1e-4, beta 0.75, k 2
    check_fused(kernel_backend, inputs(rng, shape), dy, dict(size=7, alpha=0.7, beta=0.5, k=1.0, alpha_scaled=True),
                ph)


def test_relu_input_zeroes_where_x_is_not_positive(kernel_backend, rng):
    """What relu_input adds, said directly: dx unchanged where x > 0, +0 elsewhere."""
    be = kernel_backend
    x = inputs(rng, (1, 6, 9, 9))
    dy = rng.standard_normal((1, 6, 4, 4)).astype(np.float32)
    yp, ly, sc = be.lrn_maxpool_forward(dev(be, x), alpha=0.1)
    plain = host(be, be.lrn_maxpool_backward(dev(be, dy), dev(be, x), ly, sc, alpha=0.1))
    folded = host(be, be.lrn_maxpool_backward(dev(be, dy), dev(be, x), ly, sc, alpha=0.1, relu_input=True))
    assert np.count_nonzero(plain[x <= 0]) > 0  # the LRN spreads gradient to x = 0 too: the mask matters
    assert_bits(folded, np.where(x > 0, plain, np.float32(0)), "relu_input")


def test_fused_matches_the_reference(kernel_backend, rng):
    """Against the NumPy reference composition (the numpy backend's op), with test_kernels_layers.py's LRN
    tolerances: scale bitwise on emu (same float sums), y and y_pool through powf (rtol 1e-6), dx rtol 2e-6
    plus atol 2e-6 * max|dx| for the cancellation. The backward is given the reference's lrn_y, so the
    pooling picks the same maxima."""
    be = kernel_backend
    x = inputs(rng, (2, 10, 15, 15))
    dy = rng.standard_normal((2, 10, 7, 7)).astype(np.float32)
    hp = dict(size=5, alpha=0.1, beta=0.75, k=2.0, pool_size=3, pool_stride=2)
    yr, lr, sr = ref.lrn_maxpool_forward(x, **hp)
    y, ly, s = (host(be, a) for a in be.lrn_maxpool_forward(dev(be, x), **hp))
    np.testing.assert_allclose(s, sr, rtol=1e-6, atol=0)
    np.testing.assert_allclose(ly, lr, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(y, yr, rtol=1e-6, atol=1e-30)
    for r in (False, True):
        dxr = ref.lrn_maxpool_backward(dy, x, lr, sr, **hp, relu_input=r)
        dx = host(be, be.lrn_maxpool_backward(dev(be, dy), dev(be, x), dev(be, lr), dev(be, sr), **hp, relu_input=r))
        np.testing.assert_allclose(dx, dxr, rtol=2e-6, atol=2e-6 * float(np.abs(dxr).max()), err_msg=f"relu {r}")


def test_reference_is_the_composition(rng):
    """The numpy backend's fused ops are the separate reference ops, one after the other (float64 too)."""
    be = alexnet_cuda.get_backend("numpy")
    for dtype in (np.float32, np.float64):
        x = inputs(rng, (2, 7, 9, 9)).astype(dtype)
        dy = rng.standard_normal((2, 7, 4, 4)).astype(dtype)
        y_pool, lrn_y, scale = be.lrn_maxpool_forward(x, size=3, alpha=0.2, pool_size=3, pool_stride=2)
        y, s = ref.lrn_forward(x, size=3, alpha=0.2)
        for got, want in ((y_pool, ref.maxpool_forward(y)), (lrn_y, y), (scale, s)):
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, want)
        dx = ref.lrn_backward(ref.maxpool_backward(dy, y, y_pool), x, y, s, size=3, alpha=0.2)
        np.testing.assert_array_equal(be.lrn_maxpool_backward(dy, x, lrn_y, scale, size=3, alpha=0.2), dx)
        np.testing.assert_array_equal(be.lrn_maxpool_backward(dy, x, lrn_y, scale, size=3, alpha=0.2,
                                                              relu_input=True), ref.relu_backward(dx, x))


@pytest.mark.skipif("emu" not in available_backends(), reason="the emu extension is not built")
def test_ml_dtypes_bfloat16_arrays_on_emu(rng):
    """An ml_dtypes.bfloat16 numpy array goes to the kernels as its uint16 view; the outputs come back as
    bfloat16 (scale float32), with the bits of the uint16 call."""
    import ml_dtypes

    be = alexnet_cuda.get_backend("emu")
    x = inputs(rng, (1, 5, 9, 9))
    xb = bf16_bits(x)
    dyb = bf16_bits(rng.standard_normal((1, 5, 4, 4)))
    got = be.lrn_maxpool_forward(xb.view(ml_dtypes.bfloat16), alpha=0.1)
    want = be.lrn_maxpool_forward(xb, alpha=0.1)
    assert [a.dtype for a in got] == [np.dtype(ml_dtypes.bfloat16)] * 2 + [np.dtype(np.float32)]
    for g, w in zip(got, want):
        assert_bits(np.asarray(g).view(w.dtype), np.asarray(w), "forward")
    dx = be.lrn_maxpool_backward(dyb.view(ml_dtypes.bfloat16), xb.view(ml_dtypes.bfloat16), got[1], got[2],
                                 alpha=0.1, relu_input=True)
    assert dx.dtype == np.dtype(ml_dtypes.bfloat16)
    assert_bits(dx.view(np.uint16), be.lrn_maxpool_backward(dyb, xb, want[1], want[2], alpha=0.1, relu_input=True),
                "backward")


# ---------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------

BAD = [
    # kwargs of the forward, exception, message
    (dict(pool_size=6), ValueError, "lrn_maxpool_forward: pool_size=6 pooling window is larger than the input x"),
    (dict(pool_size=0), ValueError, "lrn_maxpool_forward: pool_size must be >= 1"),
    (dict(pool_stride=0), ValueError, "lrn_maxpool_forward: pool_stride must be >= 1"),
    (dict(size=4), ValueError, "lrn_maxpool_forward: size must be odd"),
    (dict(alpha="x"), TypeError, "lrn_maxpool_forward: alpha must be a real number"),
]


@pytest.mark.parametrize("kw,exc,msg", BAD)
def test_bad_scalars_on_every_backend(any_backend, kw, exc, msg):
    be = any_backend
    x = dev(be, np.zeros((1, 4, 5, 5), np.float32)) if be.name != "numpy" else np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(exc, match=msg):
        be.lrn_maxpool_forward(x, **kw)


def test_bad_backward_arguments(any_backend):
    be = any_backend
    put = (lambda a: a) if be.name == "numpy" else (lambda a: dev(be, a))
    x = put(np.zeros((1, 4, 5, 5), np.float32))
    y_pool, lrn_y, scale = be.lrn_maxpool_forward(x)
    with pytest.raises(TypeError, match="lrn_maxpool_backward: relu_input must be a bool"):
        be.lrn_maxpool_backward(y_pool, x, lrn_y, scale, relu_input="yes")
    with pytest.raises(ValueError, match="lrn_maxpool_backward: .*dy_pool"):
        be.lrn_maxpool_backward(put(np.zeros((1, 4, 3, 3), np.float32)), x, lrn_y, scale)
    with pytest.raises(ValueError, match="lrn_maxpool_backward: .*lrn_y"):
        be.lrn_maxpool_backward(y_pool, x, put(np.zeros((1, 4, 5, 4), np.float32)), scale)


def test_kernel_argument_checks(kernel_backend):
    be = kernel_backend
    x = dev(be, np.zeros((1, 4, 5, 5), np.float32))
    xb = dev(be, np.zeros((1, 4, 5, 5), np.uint16))
    y_pool, lrn_y, scale = be.lrn_maxpool_forward(x)
    with pytest.raises(TypeError, match="lrn_maxpool_forward: x must be float32 or uint16, got float64"):
        be.lrn_maxpool_forward(dev(be, np.zeros((1, 4, 5, 5))))
    with pytest.raises(TypeError, match="lrn_maxpool_backward: dy_pool is float32 but x is uint16"):
        be.lrn_maxpool_backward(y_pool, xb, dev(be, np.zeros((1, 4, 5, 5), np.uint16)), scale)
    with pytest.raises(TypeError, match="lrn_maxpool_backward: scale must be float32, got uint16"):
        be.lrn_maxpool_backward(y_pool, x, lrn_y, dev(be, np.zeros((1, 4, 5, 5), np.uint16)))
    with pytest.raises(ValueError, match="no kernel version 3"):
        be.lrn_maxpool_forward(x, version=3)
    with pytest.raises(ValueError, match="no kernel version 3"):
        be.lrn_maxpool_backward(y_pool, x, lrn_y, scale, version=3)


def test_rows_too_wide_for_version_2(kernel_backend, rng):
    """A band of 3 rows of 6000 pixels does not fit in shared memory: version 2 says so, version 0 runs
    version 1."""
    be = kernel_backend
    x = inputs(rng, (1, 2, 3, 6000))
    dy = rng.standard_normal((1, 2, 1, 2999)).astype(np.float32)
    y_pool, lrn_y, scale = be.lrn_maxpool_forward(dev(be, x), version=1)
    with pytest.raises(ValueError, match="version 2"):
        be.lrn_maxpool_forward(dev(be, x), version=2)
    with pytest.raises(ValueError, match="version 2"):
        be.lrn_maxpool_backward(dev(be, dy), dev(be, x), lrn_y, scale, version=2)
    for got, want in zip(be.lrn_maxpool_forward(dev(be, x)), (y_pool, lrn_y, scale)):
        assert_bits(host(be, got), host(be, want), "forward")
    assert_bits(host(be, be.lrn_maxpool_backward(dev(be, dy), dev(be, x), lrn_y, scale)),
                host(be, be.lrn_maxpool_backward(dev(be, dy), dev(be, x), lrn_y, scale, version=1)), "backward")
