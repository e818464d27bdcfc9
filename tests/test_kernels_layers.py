"""Layer kernels (LRN, max-pooling, dropout, softmax cross-entropy, SGD, top-k) against
the NumPy reference, on every kernel backend (`emu` always, `cuda` with a GPU), every
numbered kernel version (plus version 0, the dispatcher) and, on emu, all three fiber
orders (a missing __syncthreads in a tiled version gives a wrong answer in one of them).

Tolerances (float32 kernels vs the float32 reference):
* max-pooling, dropout, SGD and top-k are compared bit for bit (so is SGD's skip on a
  non-finite loss: nothing may be written): a max, a count, a
  multiplication by 0/1 and a fixed scale, and the SGD rule are computed with the same
  float32 operations in the same order (the kernels round every product on its own,
  __fmul_rn, so no FMA contraction), and max-pool backward adds the overlapping
  gradients in the reference's order.
* LRN: `scale` is the same float32 sum in the same channel order, so it is compared with
  rtol 1e-6 (a few ulp of slack for a compiler that contracts differently; the emu build
  gives exact equality). y and dx go through powf(scale, -beta): CUDA's powf is within 2
  ulp, NumPy's within 1, so y gets rtol 1e-6 (~8 ulp). dx is a difference of two terms of
  the size of |dy| and |2*a*beta*x*cross|; it gets rtol 2e-6 plus atol 2e-6 * max|dx| for
  the cancellation. Inputs are scaled (alpha up to 0.1, |x| ~ 3) so that a wrong window
  moves the result by O(1) relative, far above these tolerances.
* softmax cross-entropy: exp and log differ by a few ulp between libraries and the sums
  run in a different order (block tree vs NumPy's pairwise sum), so loss gets rtol 1e-5
  and dlogits rtol 1e-5 with atol 1e-6/N (the label entry p-1 cancels near p=1).
"""
import math

import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda import reference as ref
from alexnet_cuda.backends import available_backends

KERNEL_BACKENDS = [b for b in ("emu", "cuda") if b in available_backends()]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def dev(be, a):
    """A new backend array holding a copy of the numpy array a (same dtype)."""
    return be.xp.array(a, dtype=a.dtype, copy=True)


def host(be, a):
    return np.asarray(be.to_numpy(a))


def versions(be, op):
    vs = be.versions(op)
    assert vs and 1 in vs and 2 in vs, f"{op}: numbered versions {vs}"
    return [0] + vs


def randn(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def assert_same(got, want, what):
    np.testing.assert_array_equal(got, want, err_msg=what)
    assert got.dtype == want.dtype, what


# ---------------------------------------------------------------------------
# LRN
# ---------------------------------------------------------------------------

LRN_CASES = [
    # shape, size, alpha, beta, k, alpha_scaled
    ((1, 3, 4, 5), 5, 1e-1, 0.75, 2.0, False),      # C < size: every window clipped
    ((2, 7, 5, 6), 5, 5e-2, 0.75, 2.0, False),
    ((1, 33, 3, 35), 5, 1e-1, 0.75, 1.0, True),     # C > the 32-channel chunk, HW > 32, no multiple
    ((2, 40, 1, 3), 3, 3e-2, 0.5, 2.0, False),
    ((1, 6, 2, 2), 1, 1e-1, 0.75, 2.0, False),      # a window of one channel
    ((1, 4, 3, 3), 9, 1e-1, 1.5, 0.5, False),       # window wider than 2C-1
    ((1, 1, 7, 9), 5, 1e-1, 0.75, 2.0, False),      # one channel
    ((3, 65, 2, 17), 7, 2e-2, 0.75, 2.0, True),     # two chunks plus a partial one
]


def lrn_check(be, x, dy, version, **hp):
    y, scale = be.lrn_forward(dev(be, x), version=version, **hp)
    y, scale = host(be, y), host(be, scale)
    yr, sr = ref.lrn_forward(x, **hp)
    what = f"version {version}, shape {x.shape}, {hp}"
    np.testing.assert_allclose(scale, sr, rtol=1e-6, atol=0, err_msg="scale " + what)
    np.testing.assert_allclose(y, yr, rtol=1e-6, atol=1e-30, err_msg="y " + what)
    dx = host(be, be.lrn_backward(dev(be, dy), dev(be, x), dev(be, yr), dev(be, sr), version=version, **hp))
    dxr = ref.lrn_backward(dy, x, yr, sr, **hp)
    np.testing.assert_allclose(dx, dxr, rtol=2e-6, atol=2e-6 * float(np.abs(dxr).max()), err_msg="dx " + what)


@pytest.mark.parametrize("shape,size,alpha,beta,k,alpha_scaled", LRN_CASES)
def test_lrn_matches_reference(kernel_backend, emu_order, rng, shape, size, alpha, beta, k, alpha_scaled):
    x, dy = randn(rng, shape, 3.0), randn(rng, shape)
    for v in versions(kernel_backend, "lrn_forward"):
        lrn_check(kernel_backend, x, dy, v, size=size, alpha=alpha, beta=beta, k=k, alpha_scaled=alpha_scaled)


@pytest.mark.parametrize("shape", [(1, 96, 55, 55), (2, 256, 27, 27)])
def test_lrn_alexnet_sizes(kernel_backend, emu_order, rng, shape):
    x = np.maximum(randn(rng, shape, 4.0), 0)  # after ReLU, as in the network; the paper's constants
    dy = randn(rng, shape)
    for v in versions(kernel_backend, "lrn_forward"):
        lrn_check(kernel_backend, x, dy, v)


def test_lrn_wide_window_is_version_1_only(kernel_backend, rng):
    """Version 2 stages half = 32 halo channels at most; wider windows go to version 1."""
    be = kernel_backend
    x = randn(rng, (1, 70, 2, 3), 3.0)
    hp = dict(size=67, alpha=1e-2)
    with pytest.raises(ValueError, match="version 2"):
        be.lrn_forward(dev(be, x), version=2, **hp)
    for v in (0, 1):
        lrn_check(be, x, randn(rng, x.shape), v, **hp)


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------

POOL_CASES = [
    # shape, size, stride
    ((1, 1, 3, 3), 3, 2),      # window = the whole input
    ((2, 3, 9, 11), 3, 2),     # the paper's overlapping 3/2
    ((1, 2, 8, 8), 2, 2),      # non-overlapping
    ((1, 2, 7, 6), 2, 1),      # every input in up to 4 windows
    ((1, 2, 10, 13), 3, 1),    # up to 9 windows
    ((2, 1, 11, 12), 5, 3),
    ((1, 3, 6, 5), 1, 1),      # identity
    ((1, 2, 12, 9), 3, 4),     # stride > size: inputs in no window get 0
    ((3, 5, 13, 13), 3, 2),    # pool5: 13 -> 6, several planes per block
    ((1, 2, 40, 200), 3, 2),   # version 2 splits the plane into row bands
]


def pool_check(be, x, dy, version, size, stride):
    what = f"version {version}, shape {x.shape}, size {size}, stride {stride}"
    y = host(be, be.maxpool_forward(dev(be, x), size=size, stride=stride, version=version))
    yr = ref.maxpool_forward(x, size=size, stride=stride)
    assert_same(y, yr, "y " + what)
    dx = host(be, be.maxpool_backward(dev(be, dy), dev(be, x), dev(be, yr), size=size, stride=stride,
                                      version=version))
    assert_same(dx, ref.maxpool_backward(dy, x, yr, size=size, stride=stride), "dx " + what)
    # the ReLU before the pooling folded in (tests/test_relu_fold.py has the bit-pattern checks)
    dx = host(be, be.maxpool_backward(dev(be, dy), dev(be, x), dev(be, yr), size=size, stride=stride,
                                      relu_input=True, version=version))
    assert_same(dx, ref.maxpool_backward(dy, x, yr, size=size, stride=stride, relu_input=True), "relu dx " + what)


@pytest.mark.parametrize("shape,size,stride", POOL_CASES)
def test_maxpool_matches_reference_with_ties(kernel_backend, emu_order, rng, shape, size, stride):
    # small integers: most windows hold tied maxima, so the first-max rule is exercised;
    # dy of distinct values, so a gradient sent to the wrong tied input shows
    x = rng.integers(-2, 3, shape).astype(np.float32)
    P, Q = (shape[2] - size) // stride + 1, (shape[3] - size) // stride + 1
    dy = (np.arange(shape[0] * shape[1] * P * Q).reshape(shape[0], shape[1], P, Q) % 97 + 1).astype(np.float32)
    dy *= np.float32(0.37)
    for v in versions(kernel_backend, "maxpool_forward"):
        pool_check(kernel_backend, x, dy, v, size, stride)


def test_maxpool_first_max_and_overlap_by_hand(kernel_backend, emu_order):
    be = kernel_backend
    x = np.zeros((1, 1, 5, 5), np.float32)  # all tied: each window's first max is its top-left corner
    dy = np.array([[[[1, 2], [4, 8]]]], np.float32)
    want = np.zeros_like(x)
    want[0, 0, 0, 0], want[0, 0, 0, 2], want[0, 0, 2, 0], want[0, 0, 2, 2] = 1, 2, 4, 8
    x2 = x.copy()
    x2[0, 0, 2, 2] = 1  # the shared centre is every window's max: the four gradients add up
    want2 = np.zeros_like(x)
    want2[0, 0, 2, 2] = 15
    for v in versions(be, "maxpool_backward"):
        y = be.maxpool_forward(dev(be, x), version=v)
        assert_same(host(be, be.maxpool_backward(dev(be, dy), dev(be, x), y, version=v)), want, f"version {v}")
        y2 = be.maxpool_forward(dev(be, x2), version=v)
        assert_same(host(be, be.maxpool_backward(dev(be, dy), dev(be, x2), y2, version=v)), want2, f"version {v}")


def test_maxpool_nan_is_the_maximum(kernel_backend, rng):
    """As np.max / np.argmax: a NaN in a window is its max and takes the gradient."""
    x = randn(rng, (1, 2, 7, 7))
    x[0, 0, 3, 4] = np.nan
    x[0, 1, 1, 1] = x[0, 1, 1, 2] = np.nan
    dy = randn(rng, (1, 2, 3, 3))
    for v in versions(kernel_backend, "maxpool_forward"):
        pool_check(kernel_backend, x, dy, v, 3, 2)


@pytest.mark.parametrize("shape", [(1, 96, 55, 55), (1, 256, 27, 27)])
def test_maxpool_alexnet_sizes(kernel_backend, emu_order, rng, shape):
    x = np.maximum(randn(rng, shape), 0)  # after ReLU: many tied zeros
    dy = randn(rng, (shape[0], shape[1], (shape[2] - 3) // 2 + 1, (shape[3] - 3) // 2 + 1))
    for v in versions(kernel_backend, "maxpool_forward"):
        pool_check(kernel_backend, x, dy, v, 3, 2)


def test_maxpool_very_wide_rows_use_version_1(kernel_backend, rng):
    be = kernel_backend
    x = randn(rng, (1, 1, 3, 2100))
    dy = randn(rng, (1, 1, 1, 1049))
    for op in ("maxpool_forward", "maxpool_backward"):
        args = (dev(be, x),) if op == "maxpool_forward" else (dev(be, dy), dev(be, x), dev(be, ref.maxpool_forward(x)))
        with pytest.raises(ValueError, match="version 2"):
            getattr(be, op)(*args, version=2)
    for v in (0, 1):
        pool_check(be, x, dy, v, 3, 2)


# ---------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------

DROPOUT_CASES = [
    # shape, p, seed, offset
    ((1,), 0.5, 0, 0),
    ((3,), 0.5, 1, 0),
    ((2, 5), 0.3, 12345, 7),
    ((4099,), 0.5, 2**64 - 1, 2**64 - 1),     # 64-bit seed and offset words
    ((2, 3, 5, 7), 0.9, 2**40 + 3, 2**33 + 1),
    ((17, 33), 0.0, 99, 1),                   # p = 0 keeps everything, scale 1
    ((2, 4096), 0.5, 2012, 3),                # fc6/fc7 activations at batch 2
]


def dropout_check(be, x, dy, version, p, seed, offset):
    what = f"version {version}, shape {x.shape}, p {p}, seed {seed}, offset {offset}"
    y, mask = be.dropout_forward(dev(be, x), p=p, seed=seed, offset=offset, version=version)
    y, mask = host(be, y), host(be, mask)
    with np.errstate(invalid="ignore"):  # inf * 0
        yr, mr = ref.dropout_forward(x, p=p, seed=seed, offset=offset)
    assert_same(mask, ref.dropout_mask(x.shape, p=p, seed=seed, offset=offset), "mask " + what)
    assert_same(y, yr, "y " + what)
    dx = host(be, be.dropout_backward(dev(be, dy), dev(be, mr), p=p, version=version))
    assert_same(dx, ref.dropout_backward(dy, mr, p=p), "dx " + what)
    # the ReLU before the dropout folded in: relu_y is that ReLU's output, the dropout's input x
    dx = host(be, be.dropout_backward(dev(be, dy), dev(be, mr), p=p, relu_y=dev(be, x), version=version))
    assert_same(dx, ref.dropout_backward(dy, mr, p=p, relu_y=x), "relu dx " + what)
    return mask


@pytest.mark.parametrize("shape,p,seed,offset", DROPOUT_CASES)
def test_dropout_bitwise_equals_reference(kernel_backend, emu_order, rng, shape, p, seed, offset):
    x, dy = randn(rng, shape), randn(rng, shape)
    if x.size > 3:  # signed zeros and specials: x * 0 * scale keeps -0 and makes NaN of inf, as in NumPy
        x.flat[0], x.flat[1], x.flat[2] = -0.0, np.inf, np.nan
    for v in versions(kernel_backend, "dropout_forward"):
        dropout_check(kernel_backend, x, dy, v, p, seed, offset)


def test_dropout_masks_equal_across_backends(rng):
    x = randn(rng, (3, 1001))
    masks = {}
    for name in KERNEL_BACKENDS:
        be = alexnet_cuda.get_backend(name)
        for v in versions(be, "dropout_forward"):
            masks[(name, v)] = host(be, be.dropout_forward(dev(be, x), p=0.5, seed=77, offset=5, version=v)[1])
    want = alexnet_cuda.get_backend("numpy").dropout_forward(x, p=0.5, seed=77, offset=5)[1]
    for key, m in masks.items():
        assert_same(m, want, f"{key}")


def test_dropout_offsets_and_seeds_give_different_masks(kernel_backend):
    be = kernel_backend
    x = dev(be, np.ones((4096,), np.float32))
    m = {(s, o): host(be, be.dropout_forward(x, p=0.5, seed=s, offset=o)[1]) for s in (1, 2) for o in (0, 1, 2**32)}
    keys = list(m)
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            # independent masks agree on about half the elements; never (nearly) all
            agree = np.mean(m[keys[i]] == m[keys[j]])
            assert 0.4 < agree < 0.6, (keys[i], keys[j], agree)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keep_fraction(kernel_backend, p):
    n = 1 << 17
    mask = host(kernel_backend, kernel_backend.dropout_forward(dev(kernel_backend, np.ones(n, np.float32)), p=p,
                                                               seed=4242, offset=0)[1])
    keep = 1 - math.ceil(p * 2**24) / 2**24
    sigma = math.sqrt(keep * (1 - keep) / n)
    assert abs(mask.mean() - keep) < 6 * sigma, (mask.mean(), keep)


def test_dropout_vector_version_needs_alignment(kernel_backend, rng):
    """A view starting 4 bytes into a buffer: version 2 refuses, version 0 picks version 1."""
    be = kernel_backend
    base = dev(be, randn(rng, (1001,)))
    x = base[1:]
    with pytest.raises(ValueError, match="aligned"):
        be.dropout_forward(x, p=0.5, seed=3, version=2)
    y, mask = be.dropout_forward(x, p=0.5, seed=3)
    yr, mr = ref.dropout_forward(host(be, x), p=0.5, seed=3)
    assert_same(host(be, mask), mr, "mask")
    assert_same(host(be, y), yr, "y")


@pytest.mark.parametrize("rows,lo,hi", [(6, 2, 5), (5, 1, 4), (4, 3, 4)])
def test_dropout_start_gives_the_rows_of_the_whole_batch(kernel_backend, emu_order, rng, rows, lo, hi):
    """Rows lo..hi-1 of a batch, dropped with start = lo * row size, get exactly those rows of the whole
    batch's mask (what a data-parallel rank holding those rows needs). Row sizes 7 and 4098 make start
    odd, even-but-not-a-multiple-of-4 and a multiple of 4, so both versions and every Philox lane
    offset run; bit for bit against the whole-tensor reference."""
    be = kernel_backend
    for cols in (7, 4098, 4096):
        x = randn(rng, (rows, cols))
        whole = ref.dropout_mask(x.shape, p=0.5, seed=11, offset=3)
        part = np.ascontiguousarray(x[lo:hi])
        for v in versions(be, "dropout_forward"):
            start = lo * cols
            if v == 2 and start % 4:
                with pytest.raises(ValueError, match="start"):
                    be.dropout_forward(dev(be, part), p=0.5, seed=11, offset=3, start=start, version=2)
                continue
            y, mask = be.dropout_forward(dev(be, part), p=0.5, seed=11, offset=3, start=start, version=v)
            assert_same(host(be, mask), whole[lo:hi], f"mask version {v}, cols {cols}")
            assert_same(host(be, y), ref.dropout_forward(part, p=0.5, seed=11, offset=3, start=start)[0], "y")


def test_dropout_start_bounds():
    with pytest.raises(ValueError, match="start"):
        ref.dropout_mask((8,), p=0.5, seed=1, start=2**64 - 4)
    assert ref.dropout_mask((4,), p=0.5, seed=1, start=2**64 - 4).shape == (4,)


def test_philox_known_answers(kernel_backend):
    """common/philox.h on the host against Random123's vectors and the reference."""
    mod = kernel_backend._mod
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for ctr, key, want in cases:
        assert tuple(mod.philox4x32_10(ctr, key)) == want
        r = ref.philox4x32_10(np.array(ctr, np.uint32).reshape(4, 1), np.array(key, np.uint32))
        assert tuple(int(v) for v in r[:, 0]) == want


# ---------------------------------------------------------------------------
# softmax cross-entropy
# ---------------------------------------------------------------------------

SOFTMAX_CASES = [
    # (N, classes), logit scale
    ((1, 1), 1.0),
    ((1, 10), 1.0),
    ((3, 1000), 3.0),
    ((7, 33), 10.0),
    ((5, 300), 1e4),     # logits of magnitude 1e4: exp underflows, log-sum-exp must not
    ((128, 1000), 2.0),  # fc8 at batch 128
]


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("shape,scale", SOFTMAX_CASES)
def test_softmax_cross_entropy_matches_reference(kernel_backend, emu_order, rng, shape, scale, label_dtype):
    be = kernel_backend
    N, classes = shape
    logits = randn(rng, shape, scale)
    labels = rng.integers(0, classes, N).astype(label_dtype)
    lr_, dr = ref.softmax_cross_entropy(logits, labels)
    for v in versions(be, "softmax_cross_entropy"):
        loss, d = be.softmax_cross_entropy(dev(be, logits), dev(be, labels), version=v)
        loss, d = host(be, loss), host(be, d)
        what = f"version {v}, shape {shape}, scale {scale}"
        assert loss.shape == () and loss.dtype == np.float32, what
        assert np.isfinite(loss), what
        np.testing.assert_allclose(loss, lr_, rtol=1e-5, atol=1e-6, err_msg="loss " + what)
        np.testing.assert_allclose(d, dr, rtol=1e-5, atol=1e-6 / N, err_msg="dlogits " + what)
        # deterministic: fixed reduction order, no float atomics
        loss2, d2 = be.softmax_cross_entropy(dev(be, logits), dev(be, labels), version=v)
        assert_same(host(be, loss2), loss, what)
        assert_same(host(be, d2), d, what)


# ---------------------------------------------------------------------------
# top-k
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 33), (64, 1000), (130, 10)])
def test_topk_correct_with_ties(kernel_backend, emu_order, rng, shape, label_dtype):
    be = kernel_backend
    N, classes = shape
    logits = rng.integers(0, 6, shape).astype(np.float32)  # many ties: they count for the label
    labels = rng.integers(0, classes, N).astype(label_dtype)
    for k in sorted({1, 2, 5, classes, classes + 3}):
        want = ref.topk_correct(logits, labels, k)
        for v in versions(be, "topk_correct"):
            got = be.topk_correct(dev(be, logits), dev(be, labels), k, version=v)
            assert isinstance(got, be.xp.ndarray) and got.shape == () and got.dtype == np.int64
            assert int(host(be, got)) == int(want), f"version {v}, shape {shape}, k {k}"


def test_topk_by_hand(kernel_backend):
    be = kernel_backend
    logits = np.array([[1, 3, 3, 0], [5, 5, 5, 5], [0, 1, 2, 3]], np.float32)
    labels = np.array([1, 2, 0], np.int64)
    for v in versions(be, "topk_correct"):
        got = [int(host(be, be.topk_correct(dev(be, logits), dev(be, labels), k, version=v))) for k in (1, 2, 3, 4)]
        assert got == [2, 2, 2, 3], f"version {v}"


# ---------------------------------------------------------------------------
# SGD
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1,), (3,), (1003,), (4, 5, 6), (256, 48, 5, 5)])
def test_sgd_update_bitwise_equals_reference(kernel_backend, emu_order, rng, shape):
    be = kernel_backend
    w, dw, vel = randn(rng, shape), randn(rng, shape, 0.1), randn(rng, shape, 0.01)
    hp = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
    wr, vr = w.copy(), vel.copy()
    ref.sgd_update(wr, dw, vr, **hp)
    for v in versions(be, "sgd_update"):
        wd, vd = dev(be, w), dev(be, vel)
        assert be.sgd_update(wd, dev(be, dw), vd, version=v, **hp) is None
        assert_same(host(be, wd), wr, f"w, version {v}, shape {shape}")
        assert_same(host(be, vd), vr, f"v, version {v}, shape {shape}")


def test_sgd_update_misaligned_views(kernel_backend, rng):
    be = kernel_backend
    w, dw, vel = randn(rng, (101,)), randn(rng, (101,)), randn(rng, (101,))
    wr, vr = w[1:].copy(), vel[1:].copy()
    ref.sgd_update(wr, dw[1:].copy(), vr, lr=0.1, weight_decay=1e-2)
    wd, dwd, vd = dev(be, w), dev(be, dw), dev(be, vel)
    with pytest.raises(ValueError, match="aligned"):
        be.sgd_update(wd[1:], dwd[1:], vd[1:], lr=0.1, weight_decay=1e-2, version=2)
    for v in (0, 1):
        wd, vd = dev(be, w), dev(be, vel)
        be.sgd_update(wd[1:], dwd[1:], vd[1:], lr=0.1, weight_decay=1e-2, version=v)
        assert_same(host(be, wd)[1:], wr, f"w version {v}")
        assert_same(host(be, vd)[1:], vr, f"v version {v}")
        assert host(be, wd)[0] == w[0] and host(be, vd)[0] == vel[0]  # outside the view: untouched


def test_sgd_update_multi_equals_per_tensor_updates(kernel_backend, emu_order, rng):
    be = kernel_backend
    shapes = [(96, 3, 11, 11), (96,), (0,), (1,), (5, 7), (4097,), (3, 4096)]
    decays = [5e-4, 0.0, 5e-4, 1e-3, 5e-4, 0.0, 5e-4]
    ws = [randn(rng, s) for s in shapes]
    gs = [randn(rng, s, 0.1) for s in shapes]
    vs = [randn(rng, s, 0.01) for s in shapes]
    want_w, want_v = [w.copy() for w in ws], [v.copy() for v in vs]
    for w, g, v, wd in zip(want_w, gs, want_v, decays):
        ref.sgd_update(w, g, v, lr=0.02, momentum=0.9, weight_decay=wd)
    # one tensor as a misaligned view of a bigger buffer (scalar path inside the multi kernel)
    big_w, big_v = dev(be, np.concatenate([[7.0], ws[4].ravel()]).astype(np.float32)), \
        dev(be, np.concatenate([[7.0], vs[4].ravel()]).astype(np.float32))
    dws = [dev(be, w) for w in ws]
    dvs = [dev(be, v) for v in vs]
    dws[4], dvs[4] = big_w[1:].reshape(shapes[4]), big_v[1:].reshape(shapes[4])
    be.sgd_update_multi(dws, [dev(be, g) for g in gs], dvs, lr=0.02, momentum=0.9, weight_decays=decays)
    for i in range(len(shapes)):
        assert_same(host(be, dws[i]), want_w[i], f"w[{i}] {shapes[i]}")
        assert_same(host(be, dvs[i]), want_v[i], f"v[{i}] {shapes[i]}")
    assert host(be, big_w)[0] == 7.0 and host(be, big_v)[0] == 7.0
    # default weight decays (5e-4 each) and an empty list
    w, v = dev(be, ws[1]), dev(be, vs[1])
    be.sgd_update_multi([w], [dev(be, gs[1])], [v], lr=0.02)
    wr, vr = ws[1].copy(), vs[1].copy()
    ref.sgd_update(wr, gs[1], vr, lr=0.02)
    assert_same(host(be, w), wr, "default weight decay")
    be.sgd_update_multi([], [], [], lr=0.1)


def test_sgd_update_multi_beyond_the_parameter_table(kernel_backend, emu_order, rng):
    """Up to SGD_PARAM_TENSORS tensors the table is a kernel parameter (the module takes table=None); one
    more and it goes through device memory: both equal the reference, and without a table the binding
    refuses more than SGD_PARAM_TENSORS tensors before writing anything."""
    be, mod = kernel_backend, kernel_backend._mod
    limit = mod.SGD_PARAM_TENSORS
    for count in (limit, limit + 1):
        shapes = [(int(n),) for n in rng.integers(1, 9, count)]
        ws = [randn(rng, s) for s in shapes]
        gs = [randn(rng, s, 0.1) for s in shapes]
        vs = [randn(rng, s, 0.01) for s in shapes]
        dws, dvs = [dev(be, w) for w in ws], [dev(be, v) for v in vs]
        be.sgd_update_multi(dws, [dev(be, g) for g in gs], dvs, lr=0.05, weight_decays=[1e-3] * count)
        for i, (w, g, v) in enumerate(zip(ws, gs, vs)):
            ref.sgd_update(w, g, v, lr=0.05, weight_decay=1e-3)
            assert_same(host(be, dws[i]), w, f"w[{i}] of {count}")
            assert_same(host(be, dvs[i]), v, f"v[{i}] of {count}")
    kept = [host(be, w) for w in dws]
    with pytest.raises(ValueError, match="table must hold"):
        mod.sgd_update_multi(dws, [dev(be, g) for g in gs], dvs, None, lr=0.05, weight_decays=[0.0] * (limit + 1))
    for w, k in zip(dws, kept):
        np.testing.assert_array_equal(host(be, w), k)
    mod.sgd_update_multi(dws[:2], [dev(be, g) for g in gs[:2]], dvs[:2], None, lr=0.05, weight_decays=[0.0] * 2)


@pytest.mark.parametrize("backend", ["numpy"] + KERNEL_BACKENDS)
def test_sgd_skips_on_a_non_finite_loss_and_is_unchanged_by_a_finite_one(backend, emu_order, rng):
    """The optional `loss` of sgd_update (every version) and sgd_update_multi: NaN or +-inf writes
    nothing (w and v bitwise as they were); a finite loss, however large, updates bitwise as without one."""
    be = alexnet_cuda.get_backend(backend)
    shapes, decays = [(1003,), (5, 7), (96,)], [5e-4, 5e-4, 0.0]
    ws, gs, vs = ([randn(rng, s, sc) for s in shapes] for sc in (1.0, 0.1, 0.01))
    hp = dict(lr=0.02, momentum=0.9)
    want_w, want_v = [w.copy() for w in ws], [v.copy() for v in vs]
    for w, g, v, wd in zip(want_w, gs, want_v, decays):
        ref.sgd_update(w, g, v, weight_decay=wd, **hp)
    singles = [{}] if backend == "numpy" else [{"version": v} for v in versions(be, "sgd_update")]
    for value in (np.nan, np.inf, -np.inf, 2.3, 0.0, -1.0, 3.0e38):
        loss = dev(be, np.array(value, np.float32))
        want = (ws, vs) if not np.isfinite(value) else (want_w, want_v)
        dws, dvs = [dev(be, w) for w in ws], [dev(be, v) for v in vs]
        be.sgd_update_multi(dws, [dev(be, g) for g in gs], dvs, weight_decays=decays, loss=loss, **hp)
        for i in range(len(shapes)):
            assert_same(host(be, dws[i]), want[0][i], f"multi w[{i}], loss {value}")
            assert_same(host(be, dvs[i]), want[1][i], f"multi v[{i}], loss {value}")
        for kw in singles:
            w, v = dev(be, ws[0]), dev(be, vs[0])
            assert be.sgd_update(w, dev(be, gs[0]), v, weight_decay=decays[0], loss=loss, **hp, **kw) is None
            assert_same(host(be, w), want[0][0], f"w, loss {value}, {kw}")
            assert_same(host(be, v), want[1][0], f"v, loss {value}, {kw}")


# ---------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------

def _f(*shape):
    return np.ones(shape, np.float32)


def _x():
    return np.random.default_rng(0).standard_normal((2, 6, 7, 7)).astype(np.float32)


# (name, call(backend, xp-converter) -> None, exception, regex naming the argument).
# Each runs on the numpy reference too (unless marked kernel-only): the same kind of error.
BAD = [
    ("lrn x ndim", lambda b, d: b.lrn_forward(d(_f(6, 7, 7))), ValueError, "x"),
    ("lrn x dtype", lambda b, d: b.lrn_forward(d(np.ones((1, 2, 3, 3), np.int32))), TypeError, "x"),
    ("lrn even size", lambda b, d: b.lrn_forward(d(_x()), size=4), ValueError, "size"),
    ("lrn size 0", lambda b, d: b.lrn_forward(d(_x()), size=0), ValueError, "size"),
    ("lrn alpha type", lambda b, d: b.lrn_forward(d(_x()), alpha="a"), TypeError, "alpha"),
    ("lrn beta nan", lambda b, d: b.lrn_forward(d(_x()), beta=float("nan")), ValueError, "beta"),
    ("lrn non-contiguous", lambda b, d: b.lrn_forward(d(_x())[:, :, :, ::2]), ValueError, "x"),
    ("lrn_backward dy shape", lambda b, d: b.lrn_backward(d(_f(2, 6, 7, 6)), d(_x()), d(_x()), d(_x())),
     ValueError, "dy"),
    ("lrn_backward scale dtype", lambda b, d: b.lrn_backward(d(_x()), d(_x()), d(_x()), d(_x().astype(np.int64))),
     TypeError, "scale"),
    ("lrn_backward even size", lambda b, d: b.lrn_backward(d(_x()), d(_x()), d(_x()), d(_x()), size=2),
     ValueError, "size"),
    ("maxpool x ndim", lambda b, d: b.maxpool_forward(d(_f(7, 7))), ValueError, "x"),
    ("maxpool window too large", lambda b, d: b.maxpool_forward(d(_f(1, 2, 2, 9))), ValueError, "size"),
    ("maxpool stride 0", lambda b, d: b.maxpool_forward(d(_x()), stride=0), ValueError, "stride"),
    ("maxpool size type", lambda b, d: b.maxpool_forward(d(_x()), size=2.0), TypeError, "size"),
    ("maxpool non-contiguous", lambda b, d: b.maxpool_forward(d(_f(1, 2, 7, 14))[..., ::2]), ValueError, "x"),
    ("maxpool_backward dy shape", lambda b, d: b.maxpool_backward(d(_f(2, 6, 3, 4)), d(_x()), d(_f(2, 6, 3, 3))),
     ValueError, "dy"),
    ("maxpool_backward y shape", lambda b, d: b.maxpool_backward(d(_f(2, 6, 3, 3)), d(_x()), d(_f(2, 6, 3, 2))),
     ValueError, "y"),
    ("maxpool_backward window too large",
     lambda b, d: b.maxpool_backward(d(_f(1, 1, 1, 1)), d(_f(1, 1, 2, 2)), d(_f(1, 1, 1, 1))), ValueError, "size"),
    ("dropout p = 1", lambda b, d: b.dropout_forward(d(_f(10)), p=1.0, seed=1), ValueError, "p"),
    ("dropout p < 0", lambda b, d: b.dropout_forward(d(_f(10)), p=-0.1, seed=1), ValueError, "p"),
    ("dropout p type", lambda b, d: b.dropout_forward(d(_f(10)), p="0.5", seed=1), TypeError, "p"),
    ("dropout seed < 0", lambda b, d: b.dropout_forward(d(_f(10)), seed=-1), ValueError, "seed"),
    ("dropout seed 2^64", lambda b, d: b.dropout_forward(d(_f(10)), seed=2**64), ValueError, "seed"),
    ("dropout offset type", lambda b, d: b.dropout_forward(d(_f(10)), seed=1, offset=1.5), TypeError, "offset"),
    ("dropout x dtype", lambda b, d: b.dropout_forward(d(np.ones(4, np.int32)), seed=1), TypeError, "x"),
    ("dropout_backward mask dtype", lambda b, d: b.dropout_backward(d(_f(4)), d(_f(4))), TypeError, "mask"),
    ("dropout_backward mask shape", lambda b, d: b.dropout_backward(d(_f(4)), d(np.ones(5, np.uint8))),
     ValueError, "mask"),
    ("dropout_backward p", lambda b, d: b.dropout_backward(d(_f(4)), d(np.ones(4, np.uint8)), p=1.5),
     ValueError, "p"),
    ("softmax logits ndim", lambda b, d: b.softmax_cross_entropy(d(_f(4)), d(np.zeros(4, np.int64))),
     ValueError, "logits"),
    ("softmax no rows", lambda b, d: b.softmax_cross_entropy(d(_f(0, 5)), d(np.zeros(0, np.int64))),
     ValueError, "logits"),
    ("softmax label count", lambda b, d: b.softmax_cross_entropy(d(_f(3, 5)), d(np.zeros(4, np.int64))),
     ValueError, "labels"),
    ("softmax label dtype", lambda b, d: b.softmax_cross_entropy(d(_f(3, 5)), d(np.zeros(3, np.float32))),
     TypeError, "labels"),
    ("softmax label ndim", lambda b, d: b.softmax_cross_entropy(d(_f(3, 5)), d(np.zeros((3, 1), np.int32))),
     ValueError, "labels"),
    ("softmax label too big", lambda b, d: b.softmax_cross_entropy(d(_f(3, 5)), d(np.array([0, 5, 1], np.int64))),
     ValueError, r"labels must be in \[0, 5\), found 5"),
    ("softmax label negative", lambda b, d: b.softmax_cross_entropy(d(_f(3, 5)), d(np.array([0, 1, -2], np.int32))),
     ValueError, r"labels must be in \[0, 5\), found -2"),
    ("softmax label beyond int32", lambda b, d: b.softmax_cross_entropy(
        d(_f(2, 5)), d(np.array([2**40, 1], np.int64))), ValueError, "labels"),
    ("topk label too big", lambda b, d: b.topk_correct(d(_f(3, 5)), d(np.array([0, 9, 1], np.int32)), 1),
     ValueError, "labels"),
    ("topk label count", lambda b, d: b.topk_correct(d(_f(3, 5)), d(np.zeros(2, np.int32)), 1), ValueError, "labels"),
    ("topk k = 0", lambda b, d: b.topk_correct(d(_f(3, 5)), d(np.zeros(3, np.int32)), 0), ValueError, "k"),
    ("topk k type", lambda b, d: b.topk_correct(d(_f(3, 5)), d(np.zeros(3, np.int32)), 1.5), TypeError, "k"),
    ("sgd dw shape", lambda b, d: b.sgd_update(d(_f(4)), d(_f(5)), d(_f(4)), lr=0.1), ValueError, "dw"),
    ("sgd v shape", lambda b, d: b.sgd_update(d(_f(4)), d(_f(4)), d(_f(2, 2)), lr=0.1), ValueError, "v"),
    ("sgd w dtype", lambda b, d: b.sgd_update(d(np.ones(4, np.int32)), d(_f(4)), d(_f(4)), lr=0.1), TypeError, "w"),
    ("sgd lr nan", lambda b, d: b.sgd_update(d(_f(4)), d(_f(4)), d(_f(4)), lr=float("nan")), ValueError, "lr"),
    ("sgd lr type", lambda b, d: b.sgd_update(d(_f(4)), d(_f(4)), d(_f(4)), lr=None), TypeError, "lr"),
    ("sgd v is w", lambda b, d: (lambda w: b.sgd_update(w, d(_f(4)), w, lr=0.1))(d(_f(4))), ValueError, "v"),
    ("sgd non-contiguous", lambda b, d: b.sgd_update(d(_f(8))[::2], d(_f(4)), d(_f(4)), lr=0.1), ValueError, "w"),
    ("sgd loss shape", lambda b, d: b.sgd_update(d(_f(4)), d(_f(4)), d(_f(4)), lr=0.1, loss=d(_f(2))), ValueError,
     "loss must hold one value"),
    ("sgd loss dtype", lambda b, d: b.sgd_update(d(_f(4)), d(_f(4)), d(_f(4)), lr=0.1,
                                                 loss=d(np.zeros((), np.int32))), TypeError, "loss"),
]

# Kernel backends only: the reference also takes float64 (the kernels are float32), and the
# multi-tensor update and numbered versions exist only there.
BAD_KERNEL_ONLY = [
    ("lrn float64", lambda b, d: b.lrn_forward(d(_x().astype(np.float64))), TypeError, "x"),
    ("softmax float64", lambda b, d: b.softmax_cross_entropy(d(_f(3, 5).astype(np.float64)),
                                                             d(np.zeros(3, np.int64))), TypeError, "logits"),
    ("lrn version 3", lambda b, d: b.lrn_forward(d(_x()), version=3), ValueError, "version"),
    ("pool version 7", lambda b, d: b.maxpool_forward(d(_x()), version=7), ValueError, "version"),
    ("softmax version 3", lambda b, d: b.softmax_cross_entropy(d(_f(3, 5)), d(np.zeros(3, np.int64)), version=3),
     ValueError, "version"),
    ("multi length", lambda b, d: b.sgd_update_multi([d(_f(4))], [], [d(_f(4))], lr=0.1), ValueError, "same length"),
    ("multi grads shape", lambda b, d: b.sgd_update_multi([d(_f(4)), d(_f(3))], [d(_f(4)), d(_f(4))],
                                                          [d(_f(4)), d(_f(3))], lr=0.1), ValueError, r"grads\[1\]"),
    ("multi decay nan", lambda b, d: b.sgd_update_multi([d(_f(4))], [d(_f(4))], [d(_f(4))], lr=0.1,
                                                        weight_decays=[float("nan")]), ValueError, "weight_decays"),
    ("multi v is w", lambda b, d: (lambda w: b.sgd_update_multi([w], [d(_f(4))], [w], lr=0.1))(d(_f(4))),
     ValueError, "overlap"),
    ("multi loss shape", lambda b, d: b.sgd_update_multi([d(_f(4))], [d(_f(4))], [d(_f(4))], lr=0.1,
                                                         loss=d(_f(1, 2))), ValueError, "loss"),
    ("multi loss is w", lambda b, d: (lambda w: b.sgd_update_multi([w], [d(_f(4))], [d(_f(4))], lr=0.1,
                                                                   loss=w[:1]))(d(_f(4))), ValueError, "overlap"),
    ("sgd loss float64", lambda b, d: b.sgd_update(d(_f(4)), d(_f(4)), d(_f(4)), lr=0.1,
                                                   loss=d(np.zeros((), np.float64))), TypeError, "loss"),
]


@pytest.mark.parametrize("name,call,exc,match", BAD, ids=[c[0] for c in BAD])
def test_bad_arguments_raise_like_the_reference(kernel_backend, name, call, exc, match):
    with pytest.raises(exc, match=match):
        call(kernel_backend, lambda a: dev(kernel_backend, a))
    with pytest.raises(exc, match=match):  # the reference raises the same kind of error
        call(alexnet_cuda.get_backend("numpy"), lambda a: a)


@pytest.mark.parametrize("name,call,exc,match", BAD_KERNEL_ONLY, ids=[c[0] for c in BAD_KERNEL_ONLY])
def test_bad_arguments_kernel_only(kernel_backend, name, call, exc, match):
    with pytest.raises(exc, match=match):
        call(kernel_backend, lambda a: dev(kernel_backend, a))


def test_read_only_outputs_rejected():
    """emu only (numpy arrays can be read-only): in-place w must be writeable."""
    if "emu" not in KERNEL_BACKENDS:
        pytest.skip("no emu build")
    be = alexnet_cuda.get_backend("emu")
    w = _f(4)
    w.flags.writeable = False
    with pytest.raises(ValueError, match="w"):
        be.sgd_update(w, _f(4), _f(4), lr=0.1)


def _sentinel(be, shape, dtype=np.float32, value=7):
    return dev(be, np.full(shape, value, dtype))


def test_failed_checks_leave_outputs_unwritten(kernel_backend):
    """Called through the module with preallocated outputs: nothing is written when a check fails
    (including labels out of range, which are found on the device before the op's kernels run)."""
    be, mod = kernel_backend, kernel_backend._mod
    x = dev(be, _x())
    cases = []
    y, s = _sentinel(be, (2, 6, 7, 7)), _sentinel(be, (2, 6, 7, 7))
    cases.append(((y, s), lambda: mod.lrn_forward(x, y, s, size=4)))
    cases.append(((y, s), lambda: mod.lrn_forward(x, y, s, version=9)))
    dx = _sentinel(be, (2, 6, 7, 7))
    cases.append(((dx,), lambda: mod.lrn_backward(x, x, x, dev(be, _f(2, 6, 7, 6)), dx)))
    yp = _sentinel(be, (2, 6, 3, 3))
    cases.append(((yp,), lambda: mod.maxpool_forward(x, yp, size=8)))
    cases.append(((yp,), lambda: mod.maxpool_forward(x, yp, version=3)))
    cases.append(((dx,), lambda: mod.maxpool_backward(dev(be, _f(2, 6, 3, 2)), x, yp, dx)))
    yd, md = _sentinel(be, (2, 6, 7, 7)), _sentinel(be, (2, 6, 7, 7), np.uint8)
    cases.append(((yd, md), lambda: mod.dropout_forward(x, yd, md, p=1.0, seed=1)))
    cases.append(((yd, md), lambda: mod.dropout_forward(x, yd, md, p=0.5, seed=1, version=5)))
    cases.append(((yd,), lambda: mod.dropout_backward(x, dev(be, np.ones((2, 6, 7, 6), np.uint8)), yd)))
    logits = dev(be, _f(3, 5))
    loss, dl, rl, ck = _sentinel(be, (1,)), _sentinel(be, (3, 5)), _sentinel(be, (3,)), _sentinel(be, (1,), np.int32)
    for lab in (np.array([0, 1, 5], np.int64), np.array([-1, 0, 0], np.int32)):
        cases.append(((loss, dl, rl), lambda lab=lab: mod.softmax_cross_entropy(logits, dev(be, lab), loss, dl, rl, ck)))
    out = _sentinel(be, (1,), np.int64)
    cases.append(((out,), lambda: mod.topk_correct(logits, dev(be, np.array([0, 7, 0], np.int32)), out, ck, k=1)))
    w, v = _sentinel(be, (5,)), _sentinel(be, (5,), value=3)
    cases.append(((w, v), lambda: mod.sgd_update(w, dev(be, _f(5)), v, lr=float("inf"))))
    cases.append(((w, v), lambda: mod.sgd_update(w, dev(be, _f(6)), v, lr=0.1)))
    cases.append(((w, v), lambda: mod.sgd_update(w, dev(be, _f(5)), v, lr=0.1, version=4)))
    cases.append(((w, v), lambda: mod.sgd_update(w, dev(be, _f(5)), v, lr=0.1, loss=dev(be, _f(2)))))
    table = dev(be, np.zeros(2 * mod.SGD_TABLE_WORDS, np.int64))
    w2, v2 = _sentinel(be, (9,)), _sentinel(be, (9,))
    cases.append(((w, v, w2, v2), lambda: mod.sgd_update_multi([w, w2], [dev(be, _f(5)), dev(be, _f(8))], [v, v2],
                                                               table, lr=0.1, weight_decays=[0.0, 0.0])))
    for i, (outs, call) in enumerate(cases):
        before = [host(be, o).copy() for o in outs]
        with pytest.raises((ValueError, TypeError)):
            call()
        for o, b in zip(outs, before):
            assert_same(host(be, o), b, f"case {i}: an output was written")
