"""Tests of the NumPy reference (alexnet_cuda.reference) and of the gradient
checks (alexnet_cuda.gradcheck).

Each op is compared with an independent, deliberately naive computation
(explicit Python loops over tiny inputs), in float32 and float64.
"""

import math

import numpy as np
import pytest

from alexnet_cuda import gradcheck
from alexnet_cuda import reference as ref

DTYPES = [np.float32, np.float64]


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------
# Naive loop implementations (the independent computations)
# ---------------------------------------------------------------------------

def _taps(x_shape, w_shape, P, Q, stride, padding, groups):
    """Every (n, k, p, q, [(c, r, s, ci, h, ww), ...]) of a convolution by plain loops: output element
    (n, k, p, q) and the kernel taps (c, r, s) that land inside the input, at x[n, ci, h, ww]."""
    N, C, H, W = x_shape
    K, Cg, R, S = w_shape
    for n in range(N):
        for k in range(K):
            g = k // (K // groups)
            for p in range(P):
                for q in range(Q):
                    taps = [(c, r, s, g * Cg + c, p * stride + r - padding, q * stride + s - padding)
                            for c in range(Cg) for r in range(R) for s in range(S)]
                    yield n, k, p, q, [t for t in taps if 0 <= t[4] < H and 0 <= t[5] < W]


def naive_conv(x, w, b, stride, padding, groups):
    P = (x.shape[2] + 2 * padding - w.shape[2]) // stride + 1
    Q = (x.shape[3] + 2 * padding - w.shape[3]) // stride + 1
    y = np.zeros((x.shape[0], w.shape[0], P, Q))
    for n, k, p, q, taps in _taps(x.shape, w.shape, P, Q, stride, padding, groups):
        acc = 0.0 if b is None else float(b[k])
        for c, r, s, ci, h, ww in taps:
            acc += float(w[k, c, r, s]) * float(x[n, ci, h, ww])
        y[n, k, p, q] = acc
    return y


def naive_conv_backward(dy, x, w, stride, padding, groups):
    dx, dw, db = np.zeros(x.shape), np.zeros(w.shape), np.zeros(w.shape[0])
    for n, k, p, q, taps in _taps(x.shape, w.shape, dy.shape[2], dy.shape[3], stride, padding, groups):
        d = float(dy[n, k, p, q])
        db[k] += d
        for c, r, s, ci, h, ww in taps:
            dx[n, ci, h, ww] += d * float(w[k, c, r, s])
            dw[k, c, r, s] += d * float(x[n, ci, h, ww])
    return dx, dw, db


def naive_lrn(x, size, alpha, beta, k, alpha_scaled):
    N, C, H, W = x.shape
    a = alpha / size if alpha_scaled else alpha
    scale = np.zeros(x.shape)
    y = np.zeros(x.shape)
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    lo, hi = max(0, c - size // 2), min(C - 1, c + size // 2)
                    ssum = sum(float(x[n, cc, h, w]) ** 2 for cc in range(lo, hi + 1))
                    scale[n, c, h, w] = k + a * ssum
                    y[n, c, h, w] = float(x[n, c, h, w]) * scale[n, c, h, w] ** (-beta)
    return y, scale


def naive_maxpool(x, size, stride):
    """Returns y and, per output, the (h, w) of the first maximum (row-major)."""
    N, C, H, W = x.shape
    P, Q = (H - size) // stride + 1, (W - size) // stride + 1
    y = np.zeros((N, C, P, Q))
    where = {}
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    best, bh, bw = None, None, None
                    for r in range(size):
                        for s in range(size):
                            v = x[n, c, p * stride + r, q * stride + s]
                            if best is None or v > best:
                                best, bh, bw = v, p * stride + r, q * stride + s
                    y[n, c, p, q] = best
                    where[n, c, p, q] = (bh, bw)
    return y, where


def naive_maxpool_backward(dy, x, size, stride):
    _, where = naive_maxpool(x, size, stride)
    dx = np.zeros(x.shape)
    for (n, c, p, q), (h, w) in where.items():
        dx[n, c, h, w] += dy[n, c, p, q]
    return dx


M32 = 0xFFFFFFFF


def py_philox(ctr, key):
    """Scalar Philox-4x32-10 on Python ints (independent of the numpy version)."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for rnd in range(10):
        if rnd:
            k0 = (k0 + 0x9E3779B9) & M32
            k1 = (k1 + 0xBB67AE85) & M32
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & M32, (p0 >> 32) ^ c3 ^ k1, p0 & M32)
    return c0, c1, c2, c3


def py_dropout_keep(i, p, seed, offset):
    group, lane = divmod(i, 4)
    r = py_philox((group & M32, group >> 32, offset & M32, offset >> 32),
                  (seed & M32, seed >> 32))[lane]
    return (r >> 8) >= min(2 ** 24, math.ceil(p * 2 ** 24))


# ---------------------------------------------------------------------------
# Gradient checks
# ---------------------------------------------------------------------------

def test_gradchecks_pass():
    results = gradcheck.run_gradchecks(seed=0)
    ops = " ".join(r["op"] for r in results)
    for name in ("conv2d dx", "conv2d dw", "conv2d db", "linear dx", "linear dw", "linear db",
                 "relu", "tanh", "lrn", "maxpool", "dropout", "softmax_cross_entropy"):
        assert name in ops
    bad = [r for r in results if not r["passed"]]
    assert not bad, bad
    for r in results:
        assert r["max_rel_err"] <= r["threshold"] == gradcheck.THRESHOLD


def test_gradcheck_main_prints_table_and_returns_zero(capsys):
    from alexnet_cuda import cli
    assert cli.main(["gradcheck", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "max rel err" in out and "conv2d dx" in out and "softmax_cross_entropy" in out


def test_gradcheck_catches_a_wrong_backward(monkeypatch, capsys):
    # LRN backward without its cross-channel term must be caught.
    def lrn_backward_no_cross(dy, x, y, scale, *, size=5, alpha=1e-4, beta=0.75, k=2.0,
                              alpha_scaled=False):
        return dy * scale ** (-beta)

    monkeypatch.setattr(ref, "lrn_backward", lrn_backward_no_cross)
    results = gradcheck.run_gradchecks(seed=0)
    failed = {r["op"] for r in results if not r["passed"]}
    assert failed and all(op.startswith("lrn") for op in failed)
    from alexnet_cuda import cli
    assert cli.main(["gradcheck"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_max_rel_err():
    assert gradcheck.max_rel_err(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert gradcheck.max_rel_err(np.array([1.0, 4.0]), np.array([1.0, 2.0])) == pytest.approx(0.5)
    assert gradcheck.max_rel_err(np.zeros(3), np.zeros(3)) == 0.0


# ---------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------

CONV_CASES = [
    # (x shape, w shape, stride, padding, groups, bias)
    ((1, 2, 5, 5), (3, 2, 3, 3), 1, 0, 1, True),
    ((2, 4, 6, 5), (4, 2, 3, 2), 2, 1, 2, True),
    ((1, 3, 7, 7), (2, 3, 5, 5), 3, 2, 1, False),
    ((1, 6, 4, 4), (6, 1, 1, 1), 1, 0, 6, True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,ws,stride,padding,groups,bias", CONV_CASES)
def test_conv2d_forward_matches_loops(dtype, xs, ws, stride, padding, groups, bias):
    rng = np.random.default_rng(1)
    x, w = rand(rng, xs, dtype), rand(rng, ws, dtype)
    b = rand(rng, ws[0], dtype) if bias else None
    y = ref.conv2d_forward(x, w, b, stride=stride, padding=padding, groups=groups)
    assert y.dtype == dtype and y.flags.c_contiguous
    np.testing.assert_allclose(y, naive_conv(x, w, b, stride, padding, groups), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,ws,stride,padding,groups,bias", CONV_CASES)
def test_conv2d_backward_matches_loops(dtype, xs, ws, stride, padding, groups, bias):
    rng = np.random.default_rng(2)
    x, w = rand(rng, xs, dtype), rand(rng, ws, dtype)
    y = ref.conv2d_forward(x, w, None, stride=stride, padding=padding, groups=groups)
    dy = rand(rng, y.shape, dtype)
    dx, dw, db = ref.conv2d_backward(dy, x, w, stride=stride, padding=padding, groups=groups)
    ndx, ndw, ndb = naive_conv_backward(dy, x, w, stride, padding, groups)
    for got, want in ((dx, ndx), (dw, ndw), (db, ndb)):
        assert got.dtype == dtype and got.shape == want.shape and got.flags.c_contiguous
        np.testing.assert_allclose(got, want, **tol(dtype))


def test_conv2d_hand_example():
    # 1x1x3x3 input, 2x2 kernel of ones: each output is a 2x2 window sum.
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 2, 2))
    y = ref.conv2d_forward(x, w, np.array([0.5]))
    np.testing.assert_array_equal(y, [[[[8.5, 12.5], [20.5, 24.5]]]])
    # with padding 1 and stride 2 the corners see one input each
    y = ref.conv2d_forward(x, w, None, stride=2, padding=1)
    np.testing.assert_array_equal(y, [[[[0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]]]])


# ---------------------------------------------------------------------------
# Linear, ReLU
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_matches_loops(dtype):
    rng = np.random.default_rng(3)
    x, w, b = rand(rng, (3, 5), dtype), rand(rng, (4, 5), dtype), rand(rng, 4, dtype)
    dy = rand(rng, (3, 4), dtype)
    y = ref.linear_forward(x, w, b)
    want = np.array([[sum(float(x[n, i]) * float(w[o, i]) for i in range(5)) + float(b[o])
                      for o in range(4)] for n in range(3)])
    assert y.dtype == dtype
    np.testing.assert_allclose(y, want, **tol(dtype))
    np.testing.assert_allclose(ref.linear_forward(x, w, None), want - b.astype(np.float64), **tol(dtype))
    dx, dw, db = ref.linear_backward(dy, x, w)
    wdx = np.array([[sum(float(dy[n, o]) * float(w[o, i]) for o in range(4)) for i in range(5)]
                    for n in range(3)])
    wdw = np.array([[sum(float(dy[n, o]) * float(x[n, i]) for n in range(3)) for i in range(5)]
                    for o in range(4)])
    wdb = np.array([sum(float(dy[n, o]) for n in range(3)) for o in range(4)])
    for got, want in ((dx, wdx), (dw, wdw), (db, wdb)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu(dtype):
    x = np.array([[-2.0, -0.0, 0.0, 1e-30, 3.5]], dtype=dtype)
    y = ref.relu_forward(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, [[0, 0, 0, dtype(1e-30), 3.5]])
    dy = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]], dtype=dtype)
    dx = ref.relu_backward(dy, y)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, [[0, 0, 0, 4, 5]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh(dtype):
    x = np.array([[-30.0, -1.0, 0.0, 1e-30, 0.5, 30.0]], dtype=dtype)
    y = ref.tanh_forward(x)
    assert y.dtype == dtype
    want = [math.tanh(float(v)) for v in x[0]]
    np.testing.assert_allclose(y[0], want, **tol(dtype))
    assert y[0, 0] == -1 and y[0, 5] == 1 and y[0, 2] == 0  # saturated and exact
    dy = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], dtype=dtype)
    dx = ref.tanh_backward(dy, y)
    assert dx.dtype == dtype
    # 1 - tanh(x)^2 = 1 / cosh(x)^2
    np.testing.assert_allclose(dx[0], [float(g) / math.cosh(float(v)) ** 2 for g, v in zip(dy[0], x[0])],
                               **tol(dtype))
    assert dx[0, 0] == 0 and dx[0, 5] == 0  # no gradient through a saturated unit


# ---------------------------------------------------------------------------
# LRN
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,alpha,beta,k,alpha_scaled", [
    (5, 1e-4, 0.75, 2.0, False),
    (5, 1e-4, 0.75, 2.0, True),
    (3, 0.5, 0.6, 1.0, False),
    (1, 0.2, 0.75, 2.0, True),
    (9, 0.1, 0.75, 2.0, False),      # window wider than C: clipped at both ends
])
def test_lrn_forward_matches_loops(dtype, size, alpha, beta, k, alpha_scaled):
    rng = np.random.default_rng(4)
    x = (3 * rng.standard_normal((2, 6, 2, 3))).astype(dtype)
    y, scale = ref.lrn_forward(x, size=size, alpha=alpha, beta=beta, k=k, alpha_scaled=alpha_scaled)
    wy, wscale = naive_lrn(x, size, alpha, beta, k, alpha_scaled)
    assert y.dtype == dtype and scale.dtype == dtype
    np.testing.assert_allclose(scale, wscale, **tol(dtype))
    np.testing.assert_allclose(y, wy, **tol(dtype))


def test_lrn_conventions_differ_by_size():
    x = np.ones((1, 5, 1, 1))
    _, s_paper = ref.lrn_forward(x, size=5, alpha=1.0, k=0.0)
    _, s_scaled = ref.lrn_forward(x, size=5, alpha=1.0, k=0.0, alpha_scaled=True)
    np.testing.assert_allclose(s_paper[0, :, 0, 0], [3, 4, 5, 4, 3])
    np.testing.assert_allclose(s_scaled[0, :, 0, 0], [0.6, 0.8, 1.0, 0.8, 0.6])


@pytest.mark.parametrize("alpha_scaled", [False, True])
def test_lrn_backward_float32_matches_float64(alpha_scaled):
    rng = np.random.default_rng(5)
    x = 3 * rng.standard_normal((2, 7, 3, 2))
    dy = rng.standard_normal(x.shape)
    kw = dict(size=5, alpha=0.1, beta=0.75, k=2.0, alpha_scaled=alpha_scaled)
    outs = {}
    for dtype in DTYPES:
        xd, dyd = x.astype(dtype), dy.astype(dtype)
        y, scale = ref.lrn_forward(xd, **kw)
        outs[dtype] = ref.lrn_backward(dyd, xd, y, scale, **kw)
        assert outs[dtype].dtype == dtype
    np.testing.assert_allclose(outs[np.float32], outs[np.float64], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,size,stride", [
    ((2, 3, 7, 7), 3, 2), ((1, 2, 6, 5), 3, 2), ((1, 1, 4, 4), 2, 2), ((1, 2, 5, 4), 2, 1),
    ((1, 1, 3, 3), 3, 1),
])
def test_maxpool_matches_loops(dtype, shape, size, stride):
    rng = np.random.default_rng(6)
    # few distinct values, so many windows have tied maxima
    x = rng.integers(0, 3, size=shape).astype(dtype)
    y = ref.maxpool_forward(x, size=size, stride=stride)
    wy, _ = naive_maxpool(x, size, stride)
    assert y.dtype == dtype and y.flags.c_contiguous
    np.testing.assert_array_equal(y, wy)
    dy = rand(rng, y.shape, dtype)
    dx = ref.maxpool_backward(dy, x, y, size=size, stride=stride)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, naive_maxpool_backward(dy, x, size, stride), **tol(dtype))


def test_maxpool_backward_first_max_row_major():
    # Maxima at (0, 2) and (1, 0): row-major order (r then s) picks (0, 2);
    # column-major order would pick (1, 0).
    x = np.array([[[[0., 0., 5.], [5., 0., 0.], [0., 0., 0.]]]])
    y = ref.maxpool_forward(x, size=3, stride=1)
    dx = ref.maxpool_backward(np.array([[[[7.0]]]]), x, y, size=3, stride=1)
    want = np.zeros_like(x)
    want[0, 0, 0, 2] = 7
    np.testing.assert_array_equal(dx, want)


def test_maxpool_backward_all_tied_and_overlap_accumulates():
    # All equal: every window sends its gradient to its top-left element.
    x = np.ones((1, 1, 3, 3), dtype=np.float32)
    y = ref.maxpool_forward(x, size=2, stride=1)
    dy = np.array([[[[1., 2.], [3., 4.]]]], dtype=np.float32)
    dx = ref.maxpool_backward(dy, x, y, size=2, stride=1)
    np.testing.assert_array_equal(dx, [[[[1, 2, 0], [3, 4, 0], [0, 0, 0]]]])
    # One global maximum shared by all four windows: contributions add up.
    x = np.zeros((1, 1, 3, 3), dtype=np.float32)
    x[0, 0, 1, 1] = 1
    dx = ref.maxpool_backward(dy, x, ref.maxpool_forward(x, size=2, stride=1), size=2, stride=1)
    want = np.zeros_like(x)
    want[0, 0, 1, 1] = 10
    np.testing.assert_array_equal(dx, want)


def test_maxpool_shapes_paper():
    x = np.zeros((1, 2, 55, 55), dtype=np.float32)
    assert ref.maxpool_forward(x).shape == (1, 2, 27, 27)
    x = np.zeros((1, 2, 13, 13), dtype=np.float32)
    assert ref.maxpool_forward(x).shape == (1, 2, 6, 6)


# ---------------------------------------------------------------------------
# Philox and dropout
# ---------------------------------------------------------------------------

KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers(ctr, key, want):
    out = ref.philox4x32_10(np.array(ctr, dtype=np.uint32), np.array(key, dtype=np.uint32))
    assert out.dtype == np.uint32 and out.shape == (4,)
    assert tuple(int(v) for v in out) == want
    assert py_philox(ctr, key) == want           # the test's own Philox agrees too


def test_philox_vectorized_matches_scalar():
    rng = np.random.default_rng(7)
    ctr = rng.integers(0, 2 ** 32, size=(4, 3, 5), dtype=np.uint64).astype(np.uint32)
    keys = rng.integers(0, 2 ** 32, size=(2, 3, 5), dtype=np.uint64).astype(np.uint32)
    out = ref.philox4x32_10(ctr, keys)                  # per-element keys
    out1 = ref.philox4x32_10(ctr, np.ascontiguousarray(keys[:, 0, 0]))   # one key
    assert out.shape == (4, 3, 5) and out1.shape == (4, 3, 5)
    for i in range(3):
        for j in range(5):
            c = tuple(int(v) for v in ctr[:, i, j])
            assert tuple(int(v) for v in out[:, i, j]) == py_philox(c, tuple(int(v) for v in keys[:, i, j]))
            assert tuple(int(v) for v in out1[:, i, j]) == py_philox(c, tuple(int(v) for v in keys[:, 0, 0]))


@pytest.mark.parametrize("p,seed,offset", [
    (0.5, 0, 0), (0.3, 12345, 17), (0.9, 2 ** 40 + 3, 2 ** 35 + 1), (0.5, 2 ** 64 - 1, 2 ** 64 - 1),
])
def test_dropout_mask_matches_definition(p, seed, offset):
    shape = (3, 5, 7)                       # 105 elements: a partial last group of 4
    mask = ref.dropout_mask(shape, p=p, seed=seed, offset=offset)
    assert mask.dtype == np.uint8 and mask.shape == shape
    want = np.array([py_dropout_keep(i, p, seed, offset) for i in range(105)], dtype=np.uint8)
    np.testing.assert_array_equal(mask.reshape(-1), want)


@pytest.mark.parametrize("start", [2 ** 32 - 5, 2 ** 34 + 2, 2 ** 62 + 1])
def test_dropout_element_index_beyond_32_bits(start):
    # The high word of the group index (counter[1]) only matters past 2**34
    # elements; the private range helper reaches there without allocating.
    keep = ref._dropout_keep_range(start, 11, 0.5, 77, 2 ** 33 + 5)
    want = [py_dropout_keep(i, 0.5, 77, 2 ** 33 + 5) for i in range(start, start + 11)]
    assert keep.tolist() == want


def test_dropout_threshold_boundary_is_inclusive():
    # Choose p so that t == r >> 8 for element 0: it must be kept ((r >> 8) >= t);
    # nudging p up by half a step makes t == (r >> 8) + 1, and it must be dropped.
    seed = 2024
    r8 = py_philox((0, 0, 0, 0), (seed, 0))[0] >> 8
    assert 0 < r8 < 2 ** 24 - 1
    assert ref.dropout_mask((1,), p=r8 / 2 ** 24, seed=seed)[0] == 1
    assert ref.dropout_mask((1,), p=(r8 + 0.5) / 2 ** 24, seed=seed)[0] == 0


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keep_fraction(p):
    n = 200_000
    mask = ref.dropout_mask((n,), p=p, seed=99, offset=3)
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(mask.mean() - (1 - p)) < 6 * sigma
    assert set(np.unique(mask)) <= {0, 1}


def test_dropout_masks_depend_on_seed_and_offset_only():
    shape = (64, 33)
    a = ref.dropout_mask(shape, p=0.5, seed=1, offset=0)
    np.testing.assert_array_equal(a, ref.dropout_mask(shape, p=0.5, seed=1, offset=0))
    for other in (ref.dropout_mask(shape, p=0.5, seed=2, offset=0),
                  ref.dropout_mask(shape, p=0.5, seed=1, offset=1),
                  ref.dropout_mask(shape, p=0.5, seed=1 + 2 ** 32, offset=0),
                  ref.dropout_mask(shape, p=0.5, seed=1, offset=2 ** 32)):
        # independent masks agree on about half the elements
        assert 0.4 < np.mean(a == other) < 0.6
    # the mask of a shape is a prefix of the mask of a bigger flat shape
    np.testing.assert_array_equal(a.reshape(-1), ref.dropout_mask((64 * 33 + 5,), p=0.5, seed=1)[:-5])


def test_dropout_mask_edge_probabilities():
    assert ref.dropout_mask((1000,), p=0.0, seed=5).all()
    assert ref.dropout_mask((0,), p=0.5, seed=5).shape == (0,)
    tiny = ref.dropout_mask((100_000,), p=1 - 2 ** -20, seed=5)   # keep prob 2**-20
    assert tiny.sum() <= 3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5])
def test_dropout_forward_backward(dtype, p):
    rng = np.random.default_rng(8)
    x = rand(rng, (4, 50), dtype)
    y, mask = ref.dropout_forward(x, p=p, seed=42, offset=9)
    np.testing.assert_array_equal(mask, ref.dropout_mask(x.shape, p=p, seed=42, offset=9))
    scale = dtype(1.0 / (1.0 - p))
    assert y.dtype == dtype
    want = np.where(mask == 1, x * scale, dtype(0))
    np.testing.assert_array_equal(y, want)
    dy = rand(rng, x.shape, dtype)
    dx = ref.dropout_backward(dy, mask, p=p)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, np.where(mask == 1, dy * scale, dtype(0)))
    if p == 0.0:
        np.testing.assert_array_equal(y, x)


# ---------------------------------------------------------------------------
# Softmax cross-entropy, SGD, top-k
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_softmax_cross_entropy_matches_direct(dtype, label_dtype):
    rng = np.random.default_rng(9)
    logits = (2 * rng.standard_normal((4, 5))).astype(dtype)
    labels = np.array([0, 4, 2, 2], dtype=label_dtype)
    loss, dlogits = ref.softmax_cross_entropy(logits, labels)
    assert loss.shape == () and loss.dtype == dtype and dlogits.dtype == dtype
    want_loss, want_d = 0.0, np.zeros((4, 5))
    for n in range(4):
        e = [math.exp(float(v)) for v in logits[n]]
        tot = sum(e)
        want_loss += -math.log(e[labels[n]] / tot) / 4
        for j in range(5):
            want_d[n, j] = (e[j] / tot - (j == labels[n])) / 4
    np.testing.assert_allclose(loss, want_loss, **tol(dtype))
    np.testing.assert_allclose(dlogits, want_d, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_stable_at_1e4(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 0.0, -1e4], [-1e4, -1e4, -1e4]], dtype=dtype)
    labels = np.array([0, 1, 2], dtype=np.int64)
    loss, d = ref.softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    # row 0: loss 0; row 1: loss 1e4; row 2: uniform, loss log 3
    np.testing.assert_allclose(loss, (0 + 1e4 + math.log(3)) / 3, rtol=1e-6)
    np.testing.assert_allclose(d[0], [0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(d[1], [1 / 3, -1 / 3, 0], atol=1e-7)
    np.testing.assert_allclose(d[2], [1 / 9, 1 / 9, -2 / 9], rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update_hand_example(dtype):
    w = np.array([1.0, -2.0], dtype=dtype)
    dw = np.array([0.5, 0.0], dtype=dtype)
    v = np.array([0.2, 0.0], dtype=dtype)
    w_id, v_id = id(w), id(v)
    assert ref.sgd_update(w, dw, v, lr=0.1, momentum=0.9, weight_decay=5e-4) is None
    # v = 0.9*0.2 - 5e-4*0.1*1 - 0.1*0.5 = 0.12995 ; v2 = 0 + 5e-4*0.1*2 = 1e-4
    np.testing.assert_allclose(v, [0.12995, 1e-4], rtol=1e-6)
    np.testing.assert_allclose(w, [1.12995, -1.9999], rtol=1e-6)
    assert id(w) == w_id and id(v) == v_id and w.dtype == dtype and v.dtype == dtype
    # defaults are the paper's momentum 0.9 and weight decay 5e-4
    w2, v2 = np.array([1.0], dtype=dtype), np.array([0.2], dtype=dtype)
    ref.sgd_update(w2, np.array([0.5], dtype=dtype), v2, lr=0.1)
    np.testing.assert_allclose(w2, [1.12995], rtol=1e-6)


def test_topk_correct_ties():
    logits = np.array([[1.0, 2.0, 2.0, 0.0]] * 4)
    labels = np.array([1, 2, 0, 3], dtype=np.int32)
    # strictly greater counts: label 1 -> 0, label 2 -> 0, label 0 -> 2, label 3 -> 3
    got = [int(ref.topk_correct(logits, labels, k)) for k in (1, 2, 3, 4, 5)]
    assert got == [2, 2, 3, 4, 4]
    out = ref.topk_correct(logits, labels, 1)
    assert out.shape == () and out.dtype == np.int64


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_correct_random_matches_loop(dtype):
    rng = np.random.default_rng(10)
    logits = rng.integers(0, 4, size=(30, 6)).astype(dtype)    # many ties
    labels = rng.integers(0, 6, size=30).astype(np.int64)
    for k in (1, 2, 5):
        want = sum(sum(v > logits[n, labels[n]] for v in logits[n]) < k for n in range(30))
        assert int(ref.topk_correct(logits, labels, k)) == want


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------

f32 = np.float32
X = np.zeros((2, 6, 8, 8), f32)
W = np.zeros((4, 3, 3, 3), f32)
B = np.zeros(4, f32)
LX = np.zeros((3, 5), f32)
LW = np.zeros((4, 5), f32)
LOGITS = np.zeros((3, 4), f32)
LABELS = np.array([0, 1, 3], np.int64)


def noncontig(a):
    b = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)[..., ::2]
    assert not b.flags.c_contiguous
    return b


BAD_ARGS = [
    # conv
    (lambda: ref.conv2d_forward(X, W, B, groups=3), ValueError, r"conv2d_forward: w has K=4 .*groups=3"),
    (lambda: ref.conv2d_forward(X, np.zeros((4, 4, 3, 3), f32), B, groups=2), ValueError,
     r"conv2d_forward: w has 4 input channels per group, expected 3 \(x has C=6, groups=2\)"),
    (lambda: ref.conv2d_forward(np.zeros((2, 5, 8, 8), f32), np.zeros((4, 2, 3, 3), f32), None, groups=2),
     ValueError, r"x has C=5 .*groups=2"),
    (lambda: ref.conv2d_forward(X[0], W, B, groups=2), ValueError, r"conv2d_forward: x must be 4-D"),
    (lambda: ref.conv2d_forward(X, W[0], B, groups=2), ValueError, r"conv2d_forward: w must be 4-D"),
    (lambda: ref.conv2d_forward(X, W.astype(np.float64), B, groups=2), TypeError, r"w has dtype float64"),
    (lambda: ref.conv2d_forward(X.astype(np.float16), W, B, groups=2), TypeError, r"x has dtype float16"),
    (lambda: ref.conv2d_forward(X.astype(np.int32), W, B, groups=2), TypeError, r"x has dtype int32"),
    (lambda: ref.conv2d_forward(X.tolist(), W, B, groups=2), TypeError, r"x must be a numpy.ndarray"),
    (lambda: ref.conv2d_forward(noncontig(X), W, B, groups=2), ValueError, r"x must be C-contiguous"),
    (lambda: ref.conv2d_forward(X, W, np.zeros(5, f32), groups=2), ValueError, r"b has length 5, expected 4"),
    (lambda: ref.conv2d_forward(X, W, np.zeros(4), groups=2), TypeError, r"b has dtype float64"),
    (lambda: ref.conv2d_forward(X, W, B, stride=0, groups=2), ValueError, r"stride must be >= 1"),
    (lambda: ref.conv2d_forward(X, W, B, padding=-1, groups=2), ValueError, r"padding must be >= 0"),
    (lambda: ref.conv2d_forward(X, W, B, groups=0), ValueError, r"groups must be >= 1"),
    (lambda: ref.conv2d_forward(X, W, B, stride=1.0, groups=2), TypeError, r"stride must be an integer"),
    (lambda: ref.conv2d_forward(X, np.zeros((4, 3, 11, 3), f32), B, padding=1, groups=2), ValueError,
     r"w kernel 11x3 is larger than the padded input x 10x10"),
    (lambda: ref.conv2d_backward(np.zeros((2, 4, 5, 6), f32), X, W, groups=2), ValueError,
     r"conv2d_backward: dy has shape \(2, 4, 5, 6\), expected \(2, 4, 6, 6\)"),
    (lambda: ref.conv2d_backward(np.zeros((2, 4, 6, 6)), X, W, groups=2), TypeError,
     r"conv2d_backward: dy has dtype float64"),
    # linear
    (lambda: ref.linear_forward(LX, np.zeros((4, 6), f32), None), ValueError,
     r"linear_forward: w has 6 input features, expected 5"),
    (lambda: ref.linear_forward(LX[0], LW, None), ValueError, r"linear_forward: x must be 2-D"),
    (lambda: ref.linear_forward(LX, LW, np.zeros(3, f32)), ValueError, r"b has length 3, expected 4"),
    (lambda: ref.linear_forward(noncontig(LX), LW, None), ValueError, r"x must be C-contiguous"),
    (lambda: ref.linear_forward(LX, np.zeros((5, 4), f32).T, None), ValueError, r"w must be C-contiguous"),
    (lambda: ref.linear_backward(np.zeros((3, 5), f32), LX, LW), ValueError,
     r"linear_backward: dy has shape \(3, 5\), expected \(3, 4\)"),
    # relu
    (lambda: ref.relu_forward(np.zeros(3, np.int64)), TypeError, r"relu_forward: x has dtype int64"),
    (lambda: ref.relu_backward(np.zeros(3, f32), np.zeros(4, f32)), ValueError,
     r"relu_backward: dy has shape \(3,\), expected \(4,\)"),
    (lambda: ref.relu_backward(np.zeros(3), np.zeros(3, f32)), TypeError, r"relu_backward: dy has dtype"),
    # tanh
    (lambda: ref.tanh_forward(np.zeros(3, np.int64)), TypeError, r"tanh_forward: x has dtype int64"),
    (lambda: ref.tanh_backward(np.zeros(3, f32), np.zeros(4, f32)), ValueError,
     r"tanh_backward: dy has shape \(3,\), expected \(4,\)"),
    (lambda: ref.tanh_backward(np.zeros(3), np.zeros(3, f32)), TypeError, r"tanh_backward: dy has dtype"),
    # lrn
    (lambda: ref.lrn_forward(X, size=4), ValueError, r"lrn_forward: size must be odd"),
    (lambda: ref.lrn_forward(X, size=0), ValueError, r"lrn_forward: size must be >= 1"),
    (lambda: ref.lrn_forward(X[0]), ValueError, r"lrn_forward: x must be 4-D"),
    (lambda: ref.lrn_forward(X, alpha="big"), TypeError, r"lrn_forward: alpha must be a real number"),
    (lambda: ref.lrn_forward(X, beta=float("nan")), ValueError, r"lrn_forward: beta must be finite"),
    (lambda: ref.lrn_forward(X, alpha_scaled=1), TypeError, r"alpha_scaled must be a bool"),
    (lambda: ref.lrn_backward(X, X, X, X[:1]), ValueError, r"lrn_backward: scale has shape"),
    (lambda: ref.lrn_backward(X, X, X, X, size=2), ValueError, r"lrn_backward: size must be odd"),
    # maxpool
    (lambda: ref.maxpool_forward(np.zeros((1, 1, 2, 8), f32)), ValueError,
     r"maxpool_forward: size=3 pooling window is larger than the input x \(2x8\)"),
    (lambda: ref.maxpool_forward(X, stride=0), ValueError, r"maxpool_forward: stride must be >= 1"),
    (lambda: ref.maxpool_forward(X, size=0), ValueError, r"maxpool_forward: size must be >= 1"),
    (lambda: ref.maxpool_forward(X[0]), ValueError, r"maxpool_forward: x must be 4-D"),
    (lambda: ref.maxpool_backward(np.zeros((2, 6, 3, 3), f32), X, np.zeros((2, 6, 4, 3), f32)),
     ValueError, r"maxpool_backward: y has shape \(2, 6, 4, 3\), expected \(2, 6, 3, 3\)"),
    (lambda: ref.maxpool_backward(np.zeros((2, 6, 4, 4), f32), X, np.zeros((2, 6, 3, 3), f32)),
     ValueError, r"maxpool_backward: dy has shape \(2, 6, 4, 4\), expected \(2, 6, 3, 3\)"),
    # philox / dropout
    (lambda: ref.philox4x32_10(np.zeros(4, np.int32), np.zeros(2, np.uint32)), TypeError,
     r"philox4x32_10: counter has dtype int32"),
    (lambda: ref.philox4x32_10(np.zeros(3, np.uint32), np.zeros(2, np.uint32)), ValueError,
     r"philox4x32_10: counter must have shape \(4, \.\.\.\)"),
    (lambda: ref.philox4x32_10(np.zeros(4, np.uint32), np.zeros(3, np.uint32)), ValueError,
     r"philox4x32_10: key must have shape \(2,\)"),
    (lambda: ref.philox4x32_10(np.zeros((4, 3), np.uint32), np.zeros((2, 5), np.uint32)), ValueError,
     r"key trailing shape \(5,\) does not broadcast"),
    (lambda: ref.dropout_mask((3,), p=1.0, seed=0), ValueError, r"dropout_mask: p must be in \[0, 1\)"),
    (lambda: ref.dropout_mask((3,), p=-0.1, seed=0), ValueError, r"dropout_mask: p must be in \[0, 1\)"),
    (lambda: ref.dropout_mask((3,), p=0.5, seed=-1), ValueError, r"dropout_mask: seed must be >= 0"),
    (lambda: ref.dropout_mask((3,), p=0.5, seed=2 ** 64), ValueError, r"dropout_mask: seed must be < 2\*\*64"),
    (lambda: ref.dropout_mask((3,), p=0.5, seed=0, offset=1.5), TypeError, r"offset must be an integer"),
    (lambda: ref.dropout_mask((3, -1), p=0.5, seed=0), ValueError, r"shape\[1\] must be >= 0"),
    (lambda: ref.dropout_forward(LX, p=1.0, seed=0), ValueError, r"dropout_forward: p must be in \[0, 1\)"),
    (lambda: ref.dropout_forward(LX, p=0.5, seed=None), TypeError, r"seed must be an integer"),
    (lambda: ref.dropout_forward(noncontig(LX), p=0.5, seed=0), ValueError, r"x must be C-contiguous"),
    (lambda: ref.dropout_backward(LX, np.ones((3, 5), np.int8), p=0.5), TypeError,
     r"dropout_backward: mask has dtype int8, expected uint8"),
    (lambda: ref.dropout_backward(LX, np.ones((3, 4), np.uint8), p=0.5), ValueError,
     r"dropout_backward: mask has shape \(3, 4\), expected \(3, 5\)"),
    (lambda: ref.dropout_backward(LX, np.ones((3, 5), np.uint8), p=1.5), ValueError,
     r"dropout_backward: p must be in"),
    # softmax / topk
    (lambda: ref.softmax_cross_entropy(LOGITS, np.array([0, 1], np.int64)), ValueError,
     r"softmax_cross_entropy: labels has 2 entries, expected 3"),
    (lambda: ref.softmax_cross_entropy(LOGITS, np.array([0, 1, 4], np.int64)), ValueError,
     r"softmax_cross_entropy: labels must be in \[0, 4\), found 4"),
    (lambda: ref.softmax_cross_entropy(LOGITS, np.array([0, -1, 2], np.int32)), ValueError,
     r"labels must be in \[0, 4\), found -1"),
    (lambda: ref.softmax_cross_entropy(LOGITS, np.array([0, 1, 2], np.float32)), TypeError,
     r"softmax_cross_entropy: labels has dtype float32, expected int32 or int64"),
    (lambda: ref.softmax_cross_entropy(LOGITS, np.array([0, 1, 2], np.uint8)), TypeError,
     r"labels has dtype uint8"),
    (lambda: ref.softmax_cross_entropy(LOGITS[0], LABELS), ValueError, r"logits must be 2-D"),
    (lambda: ref.softmax_cross_entropy(np.zeros((0, 4), f32), LABELS[:0]), ValueError,
     r"logits must have at least one row"),
    (lambda: ref.topk_correct(LOGITS, LABELS, 0), ValueError, r"topk_correct: k must be >= 1"),
    (lambda: ref.topk_correct(LOGITS, LABELS, 1.0), TypeError, r"topk_correct: k must be an integer"),
    (lambda: ref.topk_correct(LOGITS, LABELS[:2], 1), ValueError, r"topk_correct: labels has 2 entries"),
    # sgd
    (lambda: ref.sgd_update(LX, LX[:2], np.zeros_like(LX), lr=0.1), ValueError,
     r"sgd_update: dw has shape \(2, 5\), expected \(3, 5\)"),
    (lambda: ref.sgd_update(LX.copy(), LX, np.zeros((3, 5)), lr=0.1), TypeError, r"sgd_update: v has dtype float64"),
    (lambda: ref.sgd_update(LX.copy(), LX, np.zeros_like(LX), lr="0.1"), TypeError, r"lr must be a real number"),
    (lambda: ref.sgd_update(LX.copy(), LX, np.zeros_like(LX), lr=float("inf")), ValueError, r"lr must be finite"),
    (lambda: ref.sgd_update(LX, LX, LX, lr=0.1), ValueError, r"v must not share memory with w"),
]


@pytest.mark.parametrize("call,exc,match", BAD_ARGS, ids=[m[2][:40] for m in BAD_ARGS])
def test_bad_arguments_raise_naming_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_failed_check_writes_nothing():
    w = np.ones(4, f32)
    v = np.full(4, 0.5, f32)
    with pytest.raises(TypeError, match="lr"):
        ref.sgd_update(w, np.ones(4, f32), v, lr=None)
    np.testing.assert_array_equal(w, 1)
    np.testing.assert_array_equal(v, 0.5)
    with pytest.raises(ValueError, match="dw has shape"):
        ref.sgd_update(w, np.ones(3, f32), v, lr=0.1)
    np.testing.assert_array_equal(w, 1)
    np.testing.assert_array_equal(v, 0.5)
