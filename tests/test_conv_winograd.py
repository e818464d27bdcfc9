"""Winograd F(4x4, 3x3) convolutions (csrc/kernels/conv_winograd.cu) against the float64 reference.

What runs: conv2d_forward and conv2d_backward's data gradient with algorithm="winograd", every
Winograd version, on every kernel backend and (emu) in the three fiber orders, on conv3/4/5-like
shapes scaled down (channels, groups 2, 13x13 maps and odd ones like 7x7 and 5x6, padding 0, 1, 2,
batch 1 and 3), shapes that make several row and column tiles of the batched GEMM, depthwise groups;
and conv5 at its real size (384 -> 256 channels in 2 groups, 13x13) at batch 1.

Tolerance. The transforms' rounding errors grow with their entries (B^T up to 5, A^T up to 8, G's
1/6 and 1/24). A first-order bound of the computed output (the header of conv_winograd.cu) is
    |y^ - y| <= gamma_n * E,    E = sum_c |A^T| ( |G||g||G^T| .* |B^T||d||B| ) |A| + |b|,
n = Cg + 24, gamma_n = n u / (1 - n u), u = 2^-24; `winograd64(..., absolute=True)` evaluates E in
float64 for every output. For inputs of one magnitude E is 16^2/9 = 28x (a tile's first output) to
48^2/9 = 256x (its last) the sum |x||w| that bounds direct summation; measured at conv3-5's sizes,
E / sum |x||w| is 72 on average and at most 291 (up to 900 at the edges of small maps with padding 2).
That bound assumes every rounding error has the same sign and is loose: measured (seeded normal
inputs, every shape of this file and conv3-5's real ones at batch 1, both directions, emu) the error
is at most 0.38 u E (0.14-0.20 u E at conv3-5's sizes; 0.77 u E on a 1-channel 9x9 map, where
nothing averages). We assert |y^ - y| <= 4 u E: a fixed multiple of u, 10x above the worst measured
here and 70x below n u at conv3. That fails a result missing one input channel of 256, and one whose
G has an entry off by 1e-4 of itself, which the rigorous 2 gamma_n E lets pass
(test_tolerance_catches_a_dropped_channel_and_a_wrong_constant). Checked by mutation of the kernels
(2026-12-02, emu): without wino_gemm_v2's __syncthreads every case of
test_winograd_matches_reference fails; with 1/24 in the filter transform made 1/24.0024 (1e-4 off)
they and test_alexnet_size_conv5 all fail.

Against the FP32 implicit GEMM (conv.cu version 2), max |error| / sum |x||w| at batch 1 (seed 3):
conv3 2.0e-6 (34 u) for Winograd against 2.8e-7 (5 u); conv4 1.5e-6 against 2.5e-7; conv5 1.3e-6
against 2.5e-7 (test_alexnet_size_conv5 asserts < 2^-16 and < 2^-19): 5-7x the implicit
GEMM's error. Relative to max |y| (bench_conv.py's column) that is 0.8-1.4e-5 for Winograd against
1.5-1.9e-6 at those sizes (2-3e-6 on this file's smaller shapes).
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from alexnet_cuda import reference as ref

U = 2.0 ** -24

# F(4x4, 3x3) with the points 0, 1, -1, 2, -2, infinity (the matrices of conv_winograd.cu's header,
# written again here and checked against direct summation by test_transform_matrices).
BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
              dtype=np.float64)


def winograd64(x, w, b, pad, groups, *, absolute=False, g_matrix=G, drop_channel=None):
    """The Winograd algorithm in float64: the convolution itself, or with absolute=True the E of the
    error bound (every matrix and input by its absolute value). drop_channel leaves one input
    channel out of the sums (test of the tolerance)."""
    f = np.abs if absolute else (lambda a: a)
    bt, gm, at, x, w = f(BT), f(g_matrix), f(AT), f(np.asarray(x, np.float64)), f(np.asarray(w, np.float64))
    N, C, H, W = x.shape
    K = w.shape[0]
    P, Q = H + 2 * pad - 2, W + 2 * pad - 2
    TH, TW = -(-P // 4), -(-Q // 4)
    xp = np.zeros((N, C, 4 * TH + 2, 4 * TW + 2))
    hh, ww = min(H, 4 * TH + 2 - pad), min(W, 4 * TW + 2 - pad)
    xp[:, :, pad:pad + hh, pad:pad + ww] = x[:, :, :hh, :ww]
    if drop_channel is not None:
        xp[:, drop_channel] = 0.0
    tiles = np.stack([np.stack([xp[:, :, 4 * i:4 * i + 6, 4 * j:4 * j + 6] for j in range(TW)], 2)
                      for i in range(TH)], 2)  # (N, C, TH, TW, 6, 6)
    V = np.einsum("ai,nctuij,bj->nctuab", bt, tiles, bt)
    Ut = np.einsum("ar,kcrs,bs->kcab", gm, w, gm)
    Cg, Kg = C // groups, K // groups
    M = np.concatenate([np.einsum("kcab,nctuab->nktuab", Ut[g * Kg:(g + 1) * Kg], V[:, g * Cg:(g + 1) * Cg])
                        for g in range(groups)], 1)
    Y = np.einsum("ia,nktuab,jb->nktuij", at, M, at)
    y = Y.transpose(0, 1, 2, 4, 3, 5).reshape(N, K, 4 * TH, 4 * TW)[:, :, :P, :Q]
    return y if b is None else y + f(np.asarray(b, np.float64))[None, :, None, None]


def data_filter(w, groups):
    """The filter of the data gradient as a forward convolution: f[c, k, r, s] = w[k, c, 2 - r, 2 - s] per group."""
    K = w.shape[0]
    Kg = K // groups
    return np.concatenate([w[g * Kg:(g + 1) * Kg].transpose(1, 0, 2, 3)[:, :, ::-1, ::-1] for g in range(groups)], 0)


def assert_within(name, got, want, E, factor=4.0):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite values"
    err = np.abs(got - want)
    tol = factor * U * E + 1e-30
    bad = err > tol
    if bad.any():
        i = np.unravel_index(np.argmax(err / tol), err.shape)
        raise AssertionError(f"{name}: {int(bad.sum())} of {err.size} elements out of tolerance; worst at {i}: "
                             f"got {got[i]!r}, want {want[i]!r}, |err| {err[i]:.3g} = {err[i] / (U * E[i]):.2f} u E "
                             f"> {factor} u E")


def inputs(seed, N, C, H, W, K, groups, pad):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    dy = rng.standard_normal((N, K, H + 2 * pad - 2, W + 2 * pad - 2)).astype(np.float32)
    return x, w, b, dy


def wino_versions(be):
    vs = be.versions("conv2d_forward_winograd")
    assert vs == be.versions("conv2d_backward_winograd") and vs == [1, 2]
    return vs


# (N, C, H, W, K, groups, padding)
CASES = {
    "conv3_like_13x13": (2, 16, 13, 13, 24, 1, 1),
    "conv4_like_g2_13x13_batch3": (3, 24, 13, 13, 24, 2, 1),
    "conv5_like_g2_7x7_batch1": (1, 24, 7, 7, 16, 2, 1),
    "odd_5x6_g2_batch3": (3, 8, 5, 6, 12, 2, 1),
    "pad0_7x7": (1, 4, 7, 7, 6, 1, 0),
    "pad2_5x6_g2": (2, 6, 5, 6, 4, 2, 2),
    "map_2x2_pad1": (1, 3, 2, 2, 5, 1, 1),
    # 130 output channels: two row tiles of 128 (forward); 130 input channels of the data GEMM: 9 k-tiles of 16
    "k130_row_tiles": (1, 4, 6, 6, 130, 1, 1),
    # 4 images of 6x6 tiles: 144 columns, two column tiles of 128; channels not multiples of 4
    "t144_col_tiles": (4, 6, 21, 23, 10, 2, 1),
    "depthwise": (2, 4, 6, 6, 4, 4, 1),
}


def winograd_data(be, dy, x, w, version, **geo):
    """dx through the extension's data binding with algorithm="winograd" (its workspace from the check)."""
    m = be._mod
    DY, X, Wt = be.asarray(dy), be.asarray(x), be.asarray(w)
    need = m.conv2d_winograd_check(X, Wt, version=version, direction="data", **geo)["workspace"]
    out = be.xp.empty(x.shape, dtype=np.float32)
    m.conv2d_backward_data(DY, X, Wt, out, version=version, algorithm="winograd",
                           work=be.xp.empty(need, dtype=np.float32) if need else None, **geo)
    return be.to_numpy(out)


def references(x, w, b, dy, pad, g):
    """(y, E of y, dx, E of dx) in float64."""
    geo = dict(padding=pad, groups=g)
    y = ref.conv2d_forward(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
                           **geo)
    dx = ref.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), **geo)[0]
    return (y, winograd64(x, w, b, pad, g, absolute=True), dx,
            winograd64(dy, data_filter(w, g), None, 2 - pad, g, absolute=True))


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_winograd_matches_reference(kernel_backend, emu_order, case):
    be = kernel_backend
    N, C, H, W, K, g, pad = CASES[case]
    x, w, b, dy = inputs(zlib.crc32(case.encode()), N, C, H, W, K, g, pad)
    y, Ey, dx, Edx = references(x, w, b, dy, pad, g)
    got = {}
    for v in wino_versions(be):
        yv = be.to_numpy(be.conv2d_forward(be.asarray(x), be.asarray(w), be.asarray(b), version=v,
                                           algorithm="winograd", padding=pad, groups=g))
        assert_within(f"y v{v}", yv, y, Ey)
        dxv = winograd_data(be, dy, x, w, v, padding=pad, groups=g)
        assert_within(f"dx v{v}", dxv, dx, Edx)
        got[v] = (yv, dxv)
    # version 2's GEMM sums every product in version 1's order (one FFMA chain per output over the
    # input channels): the same bits, whatever the copies and k-tiles.
    for a, c in zip(got[1], got[2]):
        np.testing.assert_array_equal(a, c)


def test_op_backward_and_version_zero(kernel_backend):
    """conv2d_backward(algorithm="winograd"): dx by Winograd, dw and db bit for bit the implicit GEMM's
    version 0 (the filter gradient stays conv.cu's / conv_wgrad.cu's); need_dx=False skips it; version 0
    is version 2."""
    be = kernel_backend
    x, w, b, dy = inputs(8, 3, 24, 13, 13, 24, 2, 1)
    _, _, dx, Edx = references(x, w, b, dy, 1, 2)
    X, Wt, B, DY = be.asarray(x), be.asarray(w), be.asarray(b), be.asarray(dy)
    geo = dict(padding=1, groups=2)
    _, dw_gemm, db_gemm = be.conv2d_backward(DY, X, Wt, **geo)
    for v in [0] + wino_versions(be):
        gdx, gdw, gdb = be.conv2d_backward(DY, X, Wt, version=v, algorithm="winograd", **geo)
        assert_within(f"dx v{v}", be.to_numpy(gdx), dx, Edx)
        np.testing.assert_array_equal(be.to_numpy(gdw), be.to_numpy(dw_gemm))
        np.testing.assert_array_equal(be.to_numpy(gdb), be.to_numpy(db_gemm))
    none, gdw, _ = be.conv2d_backward(DY, X, Wt, algorithm="winograd", need_dx=False, **geo)
    assert none is None
    np.testing.assert_array_equal(be.to_numpy(gdw), be.to_numpy(dw_gemm))
    kw = dict(algorithm="winograd", **geo)
    np.testing.assert_array_equal(be.to_numpy(be.conv2d_forward(X, Wt, B, version=0, **kw)),
                                  be.to_numpy(be.conv2d_forward(X, Wt, B, version=2, **kw)))
    np.testing.assert_array_equal(winograd_data(be, dy, x, w, 0, **geo), winograd_data(be, dy, x, w, 2, **geo))


def test_alexnet_size_conv5(kernel_backend):
    """conv5 at its real size (384 -> 256 channels in 2 groups, 13x13, padding 1) at batch 1: forward
    (version 2) and data gradient (version 1) within 4 u E, and the FP32 implicit GEMM beside it within
    test_kernels_conv.py's bound 2 gamma_(Cg*9+2) sum |x||w|. Measured here: max |error| / sum |x||w| =
    1.3e-6 for Winograd's forward (21 u), 2.5e-7 (4 u) for the implicit GEMM's."""
    be = kernel_backend
    N, C, H, W, K, g, pad = 1, 384, 13, 13, 256, 2, 1
    x, w, _, dy = inputs(3, N, C, H, W, K, g, pad)
    y, E, dx, Edx = references(x, w, None, dy, pad, g)
    abs_sum = ref.conv2d_forward(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), None, padding=pad,
                                 groups=g)
    X, Wt = be.asarray(x), be.asarray(w)
    got = be.to_numpy(be.conv2d_forward(X, Wt, None, padding=pad, groups=g, version=2, algorithm="winograd"))
    assert_within("conv5 y (winograd v2)", got, y, E)
    gemm = be.to_numpy(be.conv2d_forward(X, Wt, None, padding=pad, groups=g, version=2))
    n = C // g * 9 + 2
    assert np.all(np.abs(gemm - y) <= 2 * n * U / (1 - n * U) * abs_sum)
    wino_rel, gemm_rel = (np.abs(got - y) / abs_sum).max(), (np.abs(gemm - y) / abs_sum).max()
    assert wino_rel < 2.0 ** -16 and gemm_rel < 2.0 ** -19, (wino_rel, gemm_rel)
    assert_within("conv5 dx (winograd v1)", winograd_data(be, dy, x, w, 1, padding=pad, groups=g), dx, Edx)


def test_transform_matrices():
    """BT, G, AT compute the correlation exactly (float64), and the row sums of |A^T||G||B^T| over
    taps and inputs are the 16, 17, 24, 48 of the header (F(2x2, 3x3)'s are 8, 8)."""
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal(6), rng.standard_normal(3)
    np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), [d[i:i + 3] @ g for i in range(4)], rtol=0, atol=1e-14)
    x = rng.standard_normal((2, 4, 9, 7))
    w = rng.standard_normal((6, 2, 3, 3))
    for pad in (0, 1, 2):
        want = ref.conv2d_forward(x, w, None, padding=pad, groups=2)
        np.testing.assert_allclose(winograd64(x, w, None, pad, 2), want, rtol=0, atol=1e-12)
        dy = rng.standard_normal(want.shape)
        np.testing.assert_allclose(winograd64(dy, data_filter(w, 2), None, 2 - pad, 2),
                                   ref.conv2d_backward(dy, x, w, padding=pad, groups=2)[0], rtol=0, atol=1e-12)
    c = np.einsum("pa,ar,ai->p", np.abs(AT), np.abs(G), np.abs(BT))
    np.testing.assert_allclose(c, [16, 17, 24, 48], rtol=1e-12)


def test_tolerance_catches_a_dropped_channel_and_a_wrong_constant():
    """4 u E fails a result missing one input channel of conv3's 256 (by 2e4x), and each result whose
    G has one entry off by 1e-4 of itself (errors of 5-16 u E), which the rigorous 2 gamma_n E
    (n = 280: 560 u E) lets pass."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 256, 9, 9))
    w = rng.standard_normal((16, 256, 3, 3))
    exact = ref.conv2d_forward(x, w, None, padding=1)
    E = winograd64(x, w, None, 1, 1, absolute=True)
    with pytest.raises(AssertionError):
        assert_within("dropped channel", winograd64(x, w, None, 1, 1, drop_channel=77), exact, E)
    n = 256 + 24
    for i, j in ((0, 0), (1, 0), (3, 1), (5, 2)):
        wrong_g = G.copy()
        wrong_g[i, j] *= 1 + 1e-4
        bad = winograd64(x, w, None, 1, 1, g_matrix=wrong_g)
        with pytest.raises(AssertionError):
            assert_within(f"G[{i}, {j}] off by 1e-4", bad, exact, E)
        assert np.all(np.abs(bad - exact) <= 2 * n * U / (1 - n * U) * E)
    assert_within("float32 inputs, float64 Winograd", winograd64(x.astype(np.float32), w, None, 1, 1),
                  ref.conv2d_forward(x.astype(np.float32).astype(np.float64), w, None, padding=1), E)


def test_relu_fused_bit_for_bit(kernel_backend):
    """activation='relu' with algorithm='winograd' is relu_forward of the unfused output, bit for bit."""
    be = kernel_backend
    x, w, b, _ = inputs(4, 2, 6, 7, 5, 8, 2, 1)
    for v in wino_versions(be):
        kw = dict(padding=1, groups=2, version=v, algorithm="winograd")
        plain = be.conv2d_forward(be.asarray(x), be.asarray(w), be.asarray(b), **kw)
        fused = be.conv2d_forward(be.asarray(x), be.asarray(w), be.asarray(b), activation="relu", **kw)
        np.testing.assert_array_equal(be.to_numpy(fused), be.to_numpy(be.relu_forward(plain)))


def test_default_stays_implicit_gemm(kernel_backend):
    """Version 0 of the default algorithm is still conv.cu's (no card has measured Winograd): the
    same bits as gemm version 2, and not Winograd's."""
    be = kernel_backend
    x, w, b, dy = inputs(5, 2, 16, 13, 13, 24, 1, 1)
    X, Wt, B, DY = be.asarray(x), be.asarray(w), be.asarray(b), be.asarray(dy)
    y0 = be.to_numpy(be.conv2d_forward(X, Wt, B, padding=1))
    np.testing.assert_array_equal(y0, be.to_numpy(be.conv2d_forward(X, Wt, B, padding=1, version=2)))
    assert not np.array_equal(y0, be.to_numpy(be.conv2d_forward(X, Wt, B, padding=1, algorithm="winograd")))
    dx0 = be.to_numpy(be.conv2d_backward(DY, X, Wt, padding=1)[0])
    np.testing.assert_array_equal(dx0, be.to_numpy(be.conv2d_backward(DY, X, Wt, padding=1, version=2)[0]))
    assert not np.array_equal(dx0, be.to_numpy(be.conv2d_backward(DY, X, Wt, padding=1, algorithm="winograd")[0]))
    assert be.versions("conv2d_forward") == be.versions("conv2d_backward") == [1, 2]


def test_workspace_and_unaligned_workspace(kernel_backend):
    """The workspace is 36 * (Ci*ceil4(Cog) + Ci*ceil4(T) + Co*ceil4(T)) floats (T = tiles); a too small
    one is refused before anything is written; a workspace that is not 16-byte aligned runs version
    1's GEMM under version 2 (the same bits)."""
    be, m = kernel_backend, kernel_backend._mod
    N, C, H, W, K, g, pad = 3, 6, 9, 7, 10, 2, 1  # forward: Ci=6, Cog=5, T=3*3*2=18; data: Ci=10, Cog=3
    x, w, b, dy = inputs(6, N, C, H, W, K, g, pad)
    X, Wt, B, DY = be.asarray(x), be.asarray(w), be.asarray(b), be.asarray(dy)
    geo = dict(padding=pad, groups=g)
    assert m.conv2d_winograd_check(X, Wt, **geo)["workspace"] == 36 * (6 * 8 + 6 * 20 + 10 * 20)
    assert m.conv2d_winograd_check(X, Wt, direction="data", **geo)["workspace"] == 36 * (10 * 4 + 10 * 20 + 6 * 20)
    need = m.conv2d_winograd_check(X, Wt, version=2, **geo)["workspace"]
    want = be.to_numpy(be.conv2d_forward(X, Wt, B, version=1, algorithm="winograd", **geo))
    y = be.xp.full(want.shape, 7.0, dtype=np.float32)
    with pytest.raises(ValueError, match=r"conv2d_forward: work holds \d+ floats, \d+ needed"):
        m.conv2d_forward(X, Wt, B, y, version=2, algorithm="winograd", work=be.xp.empty(need - 1, np.float32), **geo)
    with pytest.raises(ValueError, match=r"conv2d_forward: work is None but this call needs a workspace"):
        m.conv2d_forward(X, Wt, B, y, version=2, algorithm="winograd", **geo)
    assert np.all(be.to_numpy(y) == 7.0)
    big = be.xp.empty(need + 1, dtype=np.float32)
    m.conv2d_forward(X, Wt, B, y, version=2, algorithm="winograd", work=big[1:], **geo)  # 4-byte offset
    np.testing.assert_array_equal(be.to_numpy(y), want)


BAD = {
    "5x5": ((1, 4, 9, 9), (4, 4, 5, 5), dict(padding=2), r"got 5x5 with stride 1 and padding 2"),
    "stride2": ((1, 4, 9, 9), (4, 4, 3, 3), dict(stride=2, padding=1), r"got 3x3 with stride 2 and padding 1"),
    "padding3": ((1, 4, 9, 9), (4, 4, 3, 3), dict(padding=3), r"got 3x3 with stride 1 and padding 3"),
    "conv1": ((1, 3, 35, 35), (8, 3, 11, 11), dict(stride=4), r"got 11x11 with stride 4 and padding 0"),
    "3x1": ((1, 4, 9, 9), (4, 4, 3, 1), dict(padding=1), r"got 3x1 with stride 1"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_geometry_raises(kernel_backend, case):
    be = kernel_backend
    xs, ws, geo, got = BAD[case]
    msg = r"takes a 3x3 kernel with stride 1 and padding 0, 1 or 2, " + got
    x, w = be.zeros(xs), be.zeros(ws)
    with pytest.raises(ValueError, match=r"conv2d_forward: algorithm 'winograd' " + msg):
        be.conv2d_forward(x, w, None, algorithm="winograd", **geo)
    dy = be.zeros(be.conv2d_forward(x, w, None, **geo).shape)
    for need_dx in (True, False):
        with pytest.raises(ValueError, match=r"conv2d_backward: algorithm 'winograd' " + msg):
            be.conv2d_backward(dy, x, w, algorithm="winograd", need_dx=need_dx, **geo)
    with pytest.raises(ValueError, match=r"conv2d_forward: algorithm 'winograd' " + msg):
        be._mod.conv2d_winograd_check(x, w, **geo)


def test_bad_arguments_raise(kernel_backend):
    be = kernel_backend
    x, w = be.zeros((1, 4, 6, 6)), be.zeros((4, 4, 3, 3))
    dy = be.zeros((1, 4, 6, 6))
    with pytest.raises(ValueError, match=r"conv2d_forward: algorithm must be one of gemm, winograd, got 'fft'"):
        be.conv2d_forward(x, w, None, padding=1, algorithm="fft")
    with pytest.raises(ValueError, match=r"conv2d_forward: algorithm 'winograd' runs at precision fp32 only"):
        be.conv2d_forward(x, w, None, padding=1, algorithm="winograd", precision="tf32")
    with pytest.raises(ValueError, match=r"conv2d_backward: algorithm 'winograd' runs at precision fp32 only"):
        be.conv2d_backward(dy, x, w, padding=1, algorithm="winograd", precision="bf16")
    with pytest.raises(ValueError, match=r"conv2d_forward: no kernel version 3 \(have 1, 2;"):
        be.conv2d_forward(x, w, None, padding=1, algorithm="winograd", version=3)
    with pytest.raises(ValueError, match=r"conv2d_backward: no kernel version 3 \(have 1, 2;"):
        be.conv2d_backward(dy, x, w, padding=1, algorithm="winograd", version=3)
    # the binding's own checks (what the Python layer checks first)
    y = be.zeros((1, 4, 6, 6))
    with pytest.raises(ValueError, match=r"conv2d_forward: algorithm must be gemm or winograd, got 'fft'"):
        be._mod.conv2d_forward(x, w, None, y, padding=1, algorithm="fft")
    with pytest.raises(ValueError, match=r"conv2d_winograd_check: direction must be forward or data"):
        be._mod.conv2d_winograd_check(x, w, padding=1, direction="filter")
