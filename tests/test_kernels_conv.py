"""conv2d and linear kernels (csrc/kernels/conv.cu, gemm.cu) against the NumPy reference.

Every numbered version of every direction (forward; backward data, filter/weight, bias) runs
on every kernel backend (`emu` always, `cuda` with a GPU) and, for conv, in the three emu
fiber orders, on: each AlexNet layer's configuration (kernel, stride, padding, groups) at
small batch, spatial size and channel counts; batch 1; sizes that are no multiple of any
tile (128, 64, 32, 8 rows; 128 or 64 columns; k-tiles of 8 or 4); stride larger than the
kernel; padding larger than the kernel; groups 1, 2, 3 and 4; every tile configuration
(M <= 8, <= 32, <= 64, > 128); forced and automatic split reductions.

Tolerance. Inputs are float32; the oracle is the reference evaluated in float64 on the same
values. Each output is a sum of n products (n = Cg*R*S terms for forward, Kg*R*S for data,
N*P*Q for filter, plus the bias), accumulated by the kernels in float32 with FMA in some
order (sequential per thread, blocked by k-tiles, split across blocks). For any such order
the rounding error is bounded by gamma_n * sum|terms| with gamma_n = n*u/(1 - n*u),
u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 4.2).
We allow 2 * gamma_(n+2) * sum|terms|, where sum|terms| is the same op evaluated on
|x|, |w|, |b|, |dy| in float64. For AlexNet's longest forward sum (conv3: 2,304 terms)
that is 2.7e-4 * sum|terms|, still below the size of one typical term (sum|terms| / 2,304
= 4.3e-4 * sum|terms|), so a dropped or doubled term fails; the alexnet_size_conv3_channels case has
exactly those 2,304-term sums. test_tolerance_catches_one_missing_term checks that claim.
"""
from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path

import numpy as np
import pytest

from alexnet_cuda import reference as ref
from alexnet_cuda.precision import bf16_bits, round_to

U = 2.0 ** -24


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def bound(n_terms, abs_sum):
    n = n_terms + 2
    return 2 * n * U / (1 - n * U) * abs_sum + 1e-30


def assert_close(name, got, want, abs_sum, n_terms):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite values"
    err = np.abs(got - want)
    tol = bound(n_terms, abs_sum)
    bad = err > tol
    if bad.any():
        i = np.unravel_index(np.argmax(err - tol), err.shape)
        raise AssertionError(f"{name}: {int(bad.sum())} of {err.size} elements out of tolerance; worst at {i}: "
                             f"got {got[i]!r}, want {want[i]!r}, |err| {err[i]:.3g} > tol {tol[i]:.3g} "
                             f"({n_terms} terms)")


def conv_inputs(rng, N, C, H, W, K, R, S, groups, bias=True):
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C // groups, R, S)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32) if bias else None
    return x, w, b


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def absf(a):
    return None if a is None else np.abs(np.asarray(a, dtype=np.float64))


def on(be, a):
    return None if a is None else be.asarray(a)


# (N, C, H, W, K, R, S, stride, padding, groups); ids say what each case covers.
CONV_CASES = {
    # AlexNet's five layers: kernel / stride / padding / groups as in the paper, small sizes
    "conv1_11x11_s4": (2, 3, 27, 27, 8, 11, 11, 4, 0, 1),
    "conv2_5x5_p2_g2": (2, 8, 9, 9, 12, 5, 5, 1, 2, 2),
    "conv3_3x3_p1": (2, 16, 7, 7, 12, 3, 3, 1, 1, 1),
    "conv4_3x3_p1_g2": (2, 12, 6, 6, 12, 3, 3, 1, 1, 2),
    "conv5_3x3_p1_g2": (2, 12, 6, 6, 8, 3, 3, 1, 1, 2),
    # AlexNet's real channel counts at tiny spatial size: conv2 (1,200-term sums, Kg = 128)
    # and conv3 (2,304-term sums, the longest of the network; Kg = 384 = three row tiles)
    # ("alexnet_size" in the id keeps them out of device_check.sh's compute-sanitizer run)
    "alexnet_size_conv2_channels": (1, 96, 5, 5, 256, 5, 5, 1, 2, 2),
    "alexnet_size_conv3_channels": (1, 256, 3, 3, 384, 3, 3, 1, 1, 1),
    # batch 1, non-square everything
    "batch1": (1, 5, 6, 9, 3, 3, 2, 1, 0, 1),
    # no multiple of any tile: M = 130 (> 128: two row tiles), N*P*Q = 429, Cg*R*S = 45
    "odd_k130": (3, 5, 11, 13, 130, 3, 3, 1, 1, 1),
    # Cg = 133 (two row tiles for the data GEMM), 150 k-tiles of 8 in forward
    "odd_c133": (1, 133, 5, 4, 70, 3, 3, 1, 1, 1),
    # M in (32, 64] and (8, 32] (the T64 and T32 configs), stride 2 with padding
    "tile64_k40": (2, 40, 7, 6, 40, 3, 3, 2, 1, 1),
    "tile32_k20": (2, 20, 6, 7, 20, 3, 3, 1, 1, 1),
    # stride larger than the kernel (gaps between windows; dx is zero at the gaps)
    "gaps_2x2_s3": (2, 4, 12, 11, 6, 2, 2, 3, 0, 1),
    "gaps_1x1_s2_g2": (2, 4, 9, 8, 6, 1, 1, 2, 0, 2),
    # padding larger than the kernel (windows entirely in the padding)
    "pad3_2x2": (1, 3, 4, 5, 4, 2, 2, 1, 3, 1),
    # kernel larger than the padding, stride 2, odd sizes
    "k5_p1_s2": (2, 4, 10, 9, 5, 5, 5, 2, 1, 1),
    # groups 3 and 4 (Cg = Kg = 2 or 3: the T8 config)
    "groups3": (2, 9, 6, 6, 12, 3, 3, 2, 1, 3),
    "groups4": (2, 8, 5, 5, 8, 3, 3, 1, 1, 4),
    # depthwise (groups = C)
    "depthwise": (2, 6, 5, 6, 6, 3, 3, 1, 1, 6),
    # stride 4 with padding and a kernel not a multiple of the stride (phases with 0 taps)
    "s4_p1_k3": (1, 2, 13, 12, 3, 3, 3, 4, 1, 1),
}


def conv_reference(x, w, b, dy, stride, padding, groups):
    geo = dict(stride=stride, padding=padding, groups=groups)
    y = ref.conv2d_forward(f64(x), f64(w), f64(b), **geo)
    y_abs = ref.conv2d_forward(absf(x), absf(w), absf(b), **geo)
    dx, dw, db = ref.conv2d_backward(f64(dy), f64(x), f64(w), **geo)
    adx, adw, _ = ref.conv2d_backward(absf(dy), absf(x), absf(w), **geo)
    adb = np.abs(f64(dy)).sum(axis=(0, 2, 3))
    return (y, y_abs), (dx, adx), (dw, adw), (db, adb)


def conv_versions(be):
    vs = be.versions("conv2d_forward")
    assert vs == be.versions("conv2d_backward") and 1 in vs and 2 in vs
    return [0] + vs


def filter_only_versions(be):
    """The backward-filter versions beyond the whole op's (kConvFilterVersions: 3 = conv_wgrad.cu)."""
    vs = be.versions("conv2d_backward_filter")
    assert vs[:len(be.versions("conv2d_backward"))] == be.versions("conv2d_backward") and 3 in vs
    return [v for v in vs if v not in be.versions("conv2d_backward")]


def backward_filter(be, dy, x, w, version, splits=0, **geo):
    """dw through the binding (plan, workspace, launch); returns (dw as numpy, plan)."""
    m = be._mod
    DY, X, Wt = be.asarray(dy), be.asarray(x), be.asarray(w)
    plan = m.conv2d_backward_check(DY, X, Wt, version=version, splits=splits, **geo)
    work = be.xp.empty(plan["workspace"], dtype=np.float32) if plan["workspace"] else None
    out = be.xp.empty(w.shape, dtype=np.float32)
    m.conv2d_backward_filter(DY, X, Wt, out, work, version=version, splits=splits, **geo)
    return be.to_numpy(out), plan


# ---------------------------------------------------------------------------
# conv2d: every case x every version x every backend x every fiber order
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_conv2d_matches_reference(kernel_backend, emu_order, case):
    be = kernel_backend
    N, C, H, W, K, R, S, st, pad, g = CONV_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    x, w, b = conv_inputs(rng, N, C, H, W, K, R, S, g)
    P, Q = (H + 2 * pad - R) // st + 1, (W + 2 * pad - S) // st + 1
    dy = rng.standard_normal((N, K, P, Q)).astype(np.float32)
    (y, ya), (dx, dxa), (dw, dwa), (db, dba) = conv_reference(x, w, b, dy, st, pad, g)
    Cg, Kg = C // g, K // g
    geo = dict(stride=st, padding=pad, groups=g)
    for v in conv_versions(be):
        got = be.conv2d_forward(on(be, x), on(be, w), on(be, b), version=v, **geo)
        assert_close(f"y v{v}", be.to_numpy(got), y, ya, Cg * R * S + 1)
        gdx, gdw, gdb = be.conv2d_backward(on(be, dy), on(be, x), on(be, w), version=v, **geo)
        assert_close(f"dx v{v}", be.to_numpy(gdx), dx, dxa, Kg * R * S)
        assert_close(f"dw v{v}", be.to_numpy(gdw), dw, dwa, N * P * Q)
        assert_close(f"db v{v}", be.to_numpy(gdb), db, dba, N * P * Q)
    for v in filter_only_versions(be):
        assert_close(f"dw filter v{v}", backward_filter(be, dy, x, w, v, **geo)[0], dw, dwa, N * P * Q)


def test_conv2d_backward_without_dx(any_backend):
    """need_dx=False (the first layer) returns None for dx and the same dw, db as a full backward."""
    be = any_backend
    rng = np.random.default_rng(9)
    x, w, _ = conv_inputs(rng, 2, 3, 19, 19, 8, 11, 11, 1)
    dy = rng.standard_normal((2, 8, 3, 3)).astype(np.float32)
    full = be.conv2d_backward(on(be, dy), on(be, x), on(be, w), stride=4)
    part = be.conv2d_backward(on(be, dy), on(be, x), on(be, w), stride=4, need_dx=False)
    assert part[0] is None
    # the same kernels on the same inputs: bit-identical
    np.testing.assert_array_equal(be.to_numpy(part[1]), be.to_numpy(full[1]))
    np.testing.assert_array_equal(be.to_numpy(part[2]), be.to_numpy(full[2]))


def test_conv2d_without_bias(kernel_backend):
    be = kernel_backend
    rng = np.random.default_rng(5)
    x, w, _ = conv_inputs(rng, 2, 6, 7, 7, 4, 3, 3, 2)
    y = ref.conv2d_forward(f64(x), f64(w), None, padding=1, groups=2)
    ya = ref.conv2d_forward(absf(x), absf(w), None, padding=1, groups=2)
    for v in conv_versions(be):
        got = be.conv2d_forward(on(be, x), on(be, w), None, padding=1, groups=2, version=v)
        assert_close(f"y v{v}", be.to_numpy(got), y, ya, 27)


@pytest.mark.parametrize("splits", [1, 2, 3, 7, 1000])
def test_conv2d_backward_filter_forced_splits(kernel_backend, splits):
    """The split reduction over N*P*Q with every split count (1000 is clamped to the k-tiles)."""
    be, m = kernel_backend, kernel_backend._mod
    rng = np.random.default_rng(splits)
    x, w, _ = conv_inputs(rng, 3, 6, 10, 11, 10, 3, 3, 2)
    dy = rng.standard_normal((3, 10, 10, 11)).astype(np.float32)
    _, _, (dw, dwa), _ = conv_reference(x, w, None, dy, 1, 1, 2)
    geo = dict(stride=1, padding=1, groups=2)
    X, Wt, DY = be.asarray(x), be.asarray(w), be.asarray(dy)
    plan = m.conv2d_backward_check(DY, X, Wt, version=2, splits=splits, **geo)
    # Kg = 5 uses the M <= 8 config, whose k-tile is 4: N*P*Q = 330 gives 83 k-tiles.
    assert plan["splits"] == min(splits, (3 * 10 * 11 + 3) // 4)
    assert plan["workspace"] == (0 if plan["splits"] == 1 else plan["splits"] * w.size)
    work = be.xp.empty(plan["workspace"], dtype=np.float32) if plan["workspace"] else None
    out = be.xp.empty(w.shape, dtype=np.float32)
    m.conv2d_backward_filter(DY, X, Wt, out, work, version=2, splits=splits, **geo)
    assert_close(f"dw splits={splits}", be.to_numpy(out), dw, dwa, 3 * 10 * 11)


@pytest.mark.parametrize("splits", [1, 2, 3, 7, 1000])
def test_conv2d_backward_filter_v3_forced_splits(kernel_backend, splits):
    """Version 3's split reduction with every split count; its workspace is the partials and then
    the zero-padded x. Its k-tiles (16) never straddle two images: 3 images of 10x11 = 110
    positions are 3 * 7 k-tiles, so 1000 is clamped to 21 (and a split may get none)."""
    rng = np.random.default_rng(100 + splits)
    x, w, _ = conv_inputs(rng, 3, 6, 10, 11, 10, 3, 3, 2)
    dy = rng.standard_normal((3, 10, 10, 11)).astype(np.float32)
    _, _, (dw, dwa), _ = conv_reference(x, w, None, dy, 1, 1, 2)
    got, plan = backward_filter(kernel_backend, dy, x, w, 3, splits, stride=1, padding=1, groups=2)
    assert plan["splits"] == min(splits, 3 * 7)
    padded_x = 3 * 6 * 12 * 13
    assert plan["workspace"] == (0 if plan["splits"] == 1 else plan["splits"] * w.size) + padded_x
    assert_close(f"dw v3 splits={splits}", got, dw, dwa, 3 * 10 * 11)


def alexnet_layers():
    """AlexNet's five convolutions at their real sizes, from bench_conv.py's LAYERS (the one table of
    them): name -> (C, H, W, K, R, S, stride, padding, groups)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_conv.py"
    spec = importlib.util.spec_from_file_location("bench_conv_layers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.LAYERS


ALEXNET_LAYERS = alexnet_layers()


@pytest.mark.parametrize("layer", list(ALEXNET_LAYERS))
def test_conv2d_backward_filter_v3_alexnet_sizes(kernel_backend, layer):
    """Version 3 on each real AlexNet layer at batch 1 (full channels and images; the 128x128 tile for
    Kg = 96, 128, 384 and the 64x128 tile for conv4's Kg = 192), with a forced split of 3 (the
    automatic plan is tested above), against float64."""
    be = kernel_backend
    N, (C, H, W, K, R, S, st, pad, g) = 1, ALEXNET_LAYERS[layer]
    rng = np.random.default_rng(zlib.crc32(layer.encode()))
    x, w, _ = conv_inputs(rng, N, C, H, W, K, R, S, g, bias=False)
    P, Q = (H + 2 * pad - R) // st + 1, (W + 2 * pad - S) // st + 1
    dy = rng.standard_normal((N, K, P, Q)).astype(np.float32)
    geo = dict(stride=st, padding=pad, groups=g)
    dw, _ = ref.conv2d_backward(f64(dy), f64(x), f64(w), **geo)[1:]
    dwa = ref.conv2d_backward(absf(dy), absf(x), absf(w), **geo)[1]
    got, plan = backward_filter(be, dy, x, w, 3, 3, **geo)
    assert plan["splits"] == 3
    assert_close(f"{layer} dw v3", got, dw, dwa, N * P * Q)


def test_conv2d_backward_filter_version_choice(kernel_backend):
    """Version 0 of the filter gradient is version 3 for Kg > 8 (its plan, with the padded x in
    the workspace) and version 2 below; the whole backward op (versions 1, 2) refuses 3, the
    filter binding refuses 4."""
    be, m = kernel_backend, kernel_backend._mod
    geo = dict(padding=1, groups=2)
    for K, want in ((18, 3), (16, 2)):
        x = be.xp.zeros((2, 4, 16, 16), dtype=np.float32)
        w = be.xp.zeros((K, 2, 3, 3), dtype=np.float32)
        dy = be.xp.zeros((2, K, 16, 16), dtype=np.float32)
        assert m.conv2d_backward_check(dy, x, w, **geo) == m.conv2d_backward_check(dy, x, w, version=want, **geo)
        assert m.conv2d_backward_check(dy, x, w, **geo) != m.conv2d_backward_check(dy, x, w, version=5 - want, **geo)
    with pytest.raises(ValueError, match=r"conv2d_backward: no kernel version 4 \(have 1, 2, 3;"):
        m.conv2d_backward_filter(dy, x, w, be.xp.zeros(w.shape, dtype=np.float32), None, version=4, **geo)
    with pytest.raises(ValueError, match=r"conv2d_backward: no kernel version 3 \(have 1, 2;"):
        be.conv2d_backward(dy, x, w, version=3, **geo)


def test_conv2d_backward_filter_v3_deterministic(kernel_backend, monkeypatch):
    """Version 3 with a split reduction: bitwise identical in every fiber order and run."""
    be = kernel_backend
    rng = np.random.default_rng(11)
    x, w, _ = conv_inputs(rng, 3, 8, 9, 9, 80, 5, 5, 2, bias=False)
    dy = rng.standard_normal((3, 80, 9, 9)).astype(np.float32)
    outs = []
    for order in ["forward", "reverse", "shuffle:3", "forward"]:
        monkeypatch.setenv("ALEXNET_EMU_ORDER", order)
        got, plan = backward_filter(be, dy, x, w, 3, 4, padding=2, groups=2)
        assert plan["splits"] == 4
        outs.append(got)
    for o in outs[1:]:
        assert np.array_equal(outs[0], o)


def test_conv2d_automatic_plan_splits_long_reductions(kernel_backend):
    """The planner splits a long N*P*Q reduction with few output tiles (the op path above runs it)."""
    be = kernel_backend
    x = be.xp.zeros((4, 4, 16, 16), dtype=np.float32)
    w = be.xp.zeros((8, 4, 3, 3), dtype=np.float32)
    dy = be.xp.zeros((4, 8, 16, 16), dtype=np.float32)
    plan = be._mod.conv2d_backward_check(dy, x, w, padding=1)
    assert plan["splits"] > 1 and plan["workspace"] == plan["splits"] * 8 * 4 * 9
    assert be._mod.conv2d_backward_check(dy, x, w, padding=1, version=1)["splits"] == 1


def test_balanced_splits_fill_whole_waves(kernel_backend):
    """The split planner minimizes waves x k-tiles per split (blocks of equal work)."""
    split = kernel_backend._mod.balanced_splits

    def cost(n, tiles, ktiles, slots):
        return -(-n * tiles // slots) * -(-ktiles // n)

    # conv2's filter gradient, batch 128, on 132 SMs x 2 blocks: 13 splits fill one wave
    # exactly (260 of 264 slots); 14 would leave a second wave of 16 blocks.
    assert split(20, 11664, 264) == 13
    for tiles, ktiles, slots in [(20, 11664, 264), (54, 2704, 264), (56, 2704, 264), (1, 100, 8), (7, 5000, 3),
                                 (500, 40, 264), (3, 31, 100)]:
        n = split(tiles, ktiles, slots)
        limit = max(1, ktiles // 32)
        assert 1 <= n <= limit
        best = min(cost(k, tiles, ktiles, slots) for k in range(1, limit + 1))
        assert cost(n, tiles, ktiles, slots) <= best * 1.03
        # nothing smaller is as good
        assert all(cost(k, tiles, ktiles, slots) > best * 1.03 for k in range(1, n))
    assert split(4, 10_000, 264, max_n=5) <= 5


def test_conv2d_deterministic_across_runs_and_fiber_orders(kernel_backend, monkeypatch):
    """No atomics: version 2 gives bitwise identical results every time, in any fiber order."""
    be = kernel_backend
    rng = np.random.default_rng(9)
    x, w, b = conv_inputs(rng, 4, 6, 12, 12, 8, 3, 3, 2)
    dy = rng.standard_normal((4, 8, 12, 12)).astype(np.float32)
    X, Wt, B, DY = be.asarray(x), be.asarray(w), be.asarray(b), be.asarray(dy)
    outs = []
    for order in ["forward", "reverse", "shuffle:7", "forward"]:
        monkeypatch.setenv("ALEXNET_EMU_ORDER", order)
        y = be.conv2d_forward(X, Wt, B, padding=1, groups=2)
        grads = be.conv2d_backward(DY, X, Wt, padding=1, groups=2)
        outs.append([be.to_numpy(a).copy() for a in (y, *grads)])
    for o in outs[1:]:
        for a, b_ in zip(outs[0], o):
            assert np.array_equal(a, b_)


def test_tolerance_catches_one_missing_term():
    """The bound is tight enough that dropping one product from a 2,304-term sum fails it."""
    rng = np.random.default_rng(0)
    n = 2304
    a = rng.standard_normal((64, n))
    b = rng.standard_normal(n)
    exact = a @ b
    abs_sum = np.abs(a) @ np.abs(b)
    f32 = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float64)  # a float32 evaluation passes
    assert_close("float32 dot", f32, (a.astype(np.float32).astype(np.float64) @ b.astype(np.float32)), abs_sum, n)
    dropped = exact - a[:, 17] * b[17]
    with pytest.raises(AssertionError):
        assert_close("one term dropped", dropped, exact, abs_sum, n)


# ---------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------

# (N, I, O); the GEMM tiles are 128x128 (M > 64), 64x128, 32x128, k-tile 8
LINEAR_CASES = {
    "tiny": (1, 1, 1),
    "odd_small": (5, 7, 3),
    "odd_k130": (33, 130, 67),
    "vec4_aligned": (16, 36, 20),
    "m129_odd": (129, 37, 131),
    "long_k": (3, 300, 129),
    "fc_like": (128, 144, 96),
}


def linear_versions(be):
    vs = be.versions("linear_forward")
    assert vs == be.versions("linear_backward") and 1 in vs and 2 in vs
    return [0] + vs


@pytest.mark.parametrize("case", list(LINEAR_CASES), ids=list(LINEAR_CASES))
def test_linear_matches_reference(kernel_backend, case):
    be = kernel_backend
    N, I, O = LINEAR_CASES[case]
    rng = np.random.default_rng(N * 1000 + I + O)
    x = rng.standard_normal((N, I)).astype(np.float32)
    w = rng.standard_normal((O, I)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    dy = rng.standard_normal((N, O)).astype(np.float32)
    y = ref.linear_forward(f64(x), f64(w), f64(b))
    ya = ref.linear_forward(absf(x), absf(w), absf(b))
    dx, dw, db = ref.linear_backward(f64(dy), f64(x), f64(w))
    adx, adw, adb = ref.linear_backward(absf(dy), absf(x), absf(w))
    for v in linear_versions(be):
        got = be.linear_forward(on(be, x), on(be, w), on(be, b), version=v)
        assert_close(f"y v{v}", be.to_numpy(got), y, ya, I + 1)
        got = be.linear_forward(on(be, x), on(be, w), None, version=v)
        assert_close(f"y (no bias) v{v}", be.to_numpy(got), y - b, ya - np.abs(b), I)
        gdx, gdw, gdb = be.linear_backward(on(be, dy), on(be, x), on(be, w), version=v)
        assert_close(f"dx v{v}", be.to_numpy(gdx), dx, adx, O)
        assert_close(f"dw v{v}", be.to_numpy(gdw), dw, adw, N)
        assert_close(f"db v{v}", be.to_numpy(gdb), db, adb, N)


def test_linear_fiber_orders(kernel_backend, emu_order):
    """The tiled GEMM in every fiber order (a missing barrier shows up in one of them)."""
    test_linear_matches_reference(kernel_backend, "m129_odd")


def check_linear_forced_splits(be, splits, precision="fp32", version=2):
    """The three linear GEMMs with a forced split of K on one (37, 515, 70) layer, at
    `precision` (tests/test_kernels_tensor_cores.py uses it for tf32 and bf16: the reference
    then rounds the operands as the kernels do). Returns the forward and backward plans."""
    m = be._mod
    N, I, O = 37, 515, 70
    rng = np.random.default_rng(splits)
    x = rng.standard_normal((N, I)).astype(np.float32)
    w = rng.standard_normal((O, I)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    dy = rng.standard_normal((N, O)).astype(np.float32)
    X, Wt, DY = (be.asarray(bf16_bits(a) if precision == "bf16" else a) for a in (x, w, dy))
    B = be.asarray(b)
    kw = dict(version=version, splits=splits, precision=precision)
    fplan = m.linear_check(X, Wt, B, None, **kw)["forward"]
    bplan = m.linear_check(X, Wt, None, DY, **kw)
    assert fplan["splits"] > 1
    need = max(fplan["workspace"], bplan["data"]["workspace"], bplan["weight"]["workspace"])
    work = be.xp.empty(need, dtype=np.float32)
    y = be.xp.empty((N, O), dtype=np.float32)
    dx = be.xp.empty((N, I), dtype=np.float32)
    dw = be.xp.empty((O, I), dtype=np.float32)
    m.linear_forward(X, Wt, B, y, work, **kw)
    m.linear_backward_data(DY, X, Wt, dx, work, **kw)
    m.linear_backward_weight(DY, X, Wt, dw, work, **kw)
    rdy, rx, rw = (round_to(precision, a) for a in (dy, x, w))
    gx, gw, _ = ref.linear_backward(f64(dy), f64(x), f64(w), precision=precision)
    ax, aw = ref.linear_backward(absf(rdy), absf(rx), absf(rw))[:2]
    assert_close("y", be.to_numpy(y), ref.linear_forward(f64(x), f64(w), f64(b), precision=precision),
                 ref.linear_forward(absf(rx), absf(rw), absf(b)), I + 1)
    assert_close("dx", be.to_numpy(dx), gx, ax, O)
    assert_close("dw", be.to_numpy(dw), gw, aw, N)
    return fplan, bplan


@pytest.mark.parametrize("splits", [2, 3, 7, 100])
def test_linear_forced_splits(kernel_backend, splits):
    check_linear_forced_splits(kernel_backend, splits)


def test_linear_automatic_plan_splits_fc_shapes(kernel_backend):
    """fc layers at batch 128 have few output tiles and long K: the planner splits K."""
    be = kernel_backend
    x = be.xp.zeros((128, 2048), dtype=np.float32)
    w = be.xp.zeros((256, 2048), dtype=np.float32)
    plan = be._mod.linear_check(x, w, None, None)["forward"]
    assert plan["splits"] > 1 and plan["workspace"] == plan["splits"] * 128 * 256


# ---------------------------------------------------------------------------
# bad arguments: the argument is named, nothing is launched, outputs stay untouched
# ---------------------------------------------------------------------------

def _conv_args(be, N=2, C=4, H=6, W=6, K=6, R=3, S=3, groups=2):
    rng = np.random.default_rng(0)
    x, w, b = conv_inputs(rng, N, C, H, W, K, R, S, groups)
    return be.asarray(x), be.asarray(w), be.asarray(b)


@pytest.mark.parametrize("kind, kw, exc, pattern", [
    ("channels", dict(w_shape=(6, 3, 3, 3)), ValueError, r"w has 3 input channels per group, expected 2"),
    ("groups_c", dict(groups=3), ValueError, r"x has C=4 channels, not divisible by groups=3"),
    ("groups_k", dict(w_shape=(5, 2, 3, 3)), ValueError, r"w has K=5 output channels, not divisible by groups=2"),
    ("kernel_too_big", dict(w_shape=(6, 2, 9, 3)), ValueError, r"w kernel 9x3 is larger than the padded input x 8x8"),
    ("stride0", dict(stride=0), ValueError, r"stride must be >= 1"),
    ("stride_bool", dict(stride=True), TypeError, r"stride must be an integer"),
    ("stride_float", dict(stride=1.0), TypeError, r"stride must be an integer"),
    ("padding_neg", dict(padding=-1), ValueError, r"padding must be >= 0"),
    ("bias_length", dict(b_len=5), ValueError, r"b has length 5, expected 6"),
    ("x_dtype", dict(x_dtype=np.float64), TypeError, r"x must be float32"),
    ("w_ndim", dict(w_shape=(6, 18)), ValueError, r"w must have 4 dimensions"),
    ("x_noncontig", dict(x_noncontig=True), ValueError, r"x must be C-contiguous"),
    ("version", dict(version=3), ValueError, r"no kernel version 3"),
])
def test_conv2d_forward_bad_arguments(kernel_backend, kind, kw, exc, pattern):
    be = kernel_backend
    x, w, b = _conv_args(be)
    if "w_shape" in kw:
        w = be.xp.zeros(kw["w_shape"], dtype=np.float32)
    if "b_len" in kw:
        b = be.xp.zeros(kw["b_len"], dtype=np.float32)
    if "x_dtype" in kw:
        x = x.astype(kw["x_dtype"])
    if kw.get("x_noncontig"):
        x = be.xp.zeros((2, 4, 6, 12), dtype=np.float32)[..., ::2]
    geo = {k: kw[k] for k in ("stride", "padding", "groups", "version") if k in kw}
    geo.setdefault("padding", 1)
    geo.setdefault("groups", 2)
    with pytest.raises(exc, match="conv2d_forward: " + pattern):
        be.conv2d_forward(x, w, b, **geo)


@pytest.mark.parametrize("kind", ["dy_shape", "groups", "channels", "stride0", "dy_dtype"])
def test_conv2d_backward_bad_arguments(kernel_backend, kind):
    be = kernel_backend
    x, w, _ = _conv_args(be)
    dy = be.xp.zeros((2, 6, 6, 6), dtype=np.float32)
    geo = dict(padding=1, groups=2)
    if kind == "dy_shape":
        dy, pattern = be.xp.zeros((2, 6, 5, 6), dtype=np.float32), r"dy has shape \(2, 6, 5, 6\), expected \(2, 6, 6, 6\)"
    elif kind == "groups":
        geo["groups"], pattern = 4, r"w has K=6 output channels, not divisible by groups=4"
    elif kind == "channels":
        w, pattern = be.xp.zeros((6, 4, 3, 3), dtype=np.float32), r"w has 4 input channels per group, expected 2"
    elif kind == "stride0":
        geo["stride"], pattern = 0, r"stride must be >= 1"
    else:
        dy, pattern = dy.astype(np.float64), r"dy must be float32"
    with pytest.raises((ValueError, TypeError), match="conv2d_backward: " + pattern):
        be.conv2d_backward(dy, x, w, **geo)


def test_conv2d_bad_arguments_leave_outputs_untouched(kernel_backend):
    """Binding level: outputs given by the caller keep their contents when a check fails."""
    be, m = kernel_backend, kernel_backend._mod
    x, w, b = _conv_args(be)
    sentinel = 7.25
    y = be.xp.full((2, 6, 6, 6), sentinel, dtype=np.float32)
    geo = dict(padding=1, groups=2)
    with pytest.raises(ValueError, match="b has length"):
        m.conv2d_forward(x, w, b[:5], y, **geo)
    with pytest.raises(ValueError, match="y has shape"):
        m.conv2d_forward(x, w, b, y[:1], **geo)
    with pytest.raises(ValueError, match="no kernel version 9"):
        m.conv2d_forward(x, w, b, y, version=9, **geo)
    with pytest.raises(ValueError, match="overlap"):
        m.conv2d_forward(y, be.xp.zeros((6, 3, 3, 3), dtype=np.float32), None, y, padding=1, groups=2)
    assert np.all(be.to_numpy(y) == sentinel)

    dy = be.xp.zeros((2, 6, 6, 6), dtype=np.float32)
    dx = be.xp.full(x.shape, sentinel, dtype=np.float32)
    dw = be.xp.full(w.shape, sentinel, dtype=np.float32)
    db = be.xp.full((6,), sentinel, dtype=np.float32)
    with pytest.raises(ValueError, match="dx has shape"):
        m.conv2d_backward_data(dy, x, w, dx[:1], **geo)
    with pytest.raises(ValueError, match="groups=3"):
        m.conv2d_backward_data(dy, x, w, dx, padding=1, groups=3)
    plan = m.conv2d_backward_check(dy, x, w, splits=3, **geo)
    assert plan["workspace"] > 0
    with pytest.raises(ValueError, match="work holds 1 floats"):
        m.conv2d_backward_filter(dy, x, w, dw, be.xp.empty(1, dtype=np.float32), splits=3, **geo)
    with pytest.raises(ValueError, match="work is None"):
        m.conv2d_backward_filter(dy, x, w, dw, None, splits=3, **geo)
    with pytest.raises(ValueError, match="db has shape"):
        m.conv2d_backward_bias(dy, db[:5])
    for a in (dx, dw, db):
        assert np.all(be.to_numpy(a) == sentinel)


def test_conv2d_read_only_output(kernel_backend):
    be = kernel_backend
    if be.name != "emu":
        pytest.skip("read-only arrays are a numpy notion")
    x, w, b = _conv_args(be)
    y = np.zeros((2, 6, 6, 6), dtype=np.float32)
    y.flags.writeable = False
    with pytest.raises(ValueError, match="y is read-only"):
        be._mod.conv2d_forward(x, w, b, y, padding=1, groups=2)


@pytest.mark.parametrize("kind, pattern", [
    ("features", r"linear_forward: w has 6 input features, expected 5"),
    ("bias", r"linear_forward: b has length 4, expected 3"),
    ("dtype", r"linear_forward: x must be float32"),
    ("ndim", r"linear_forward: x must have 2 dimensions"),
])
def test_linear_forward_bad_arguments(kernel_backend, kind, pattern):
    be = kernel_backend
    x = be.xp.zeros((2, 5), dtype=np.float32)
    w = be.xp.zeros((3, 5), dtype=np.float32)
    b = be.xp.zeros(3, dtype=np.float32)
    if kind == "features":
        w = be.xp.zeros((3, 6), dtype=np.float32)
    elif kind == "bias":
        b = be.xp.zeros(4, dtype=np.float32)
    elif kind == "dtype":
        x = x.astype(np.float64)
    else:
        x = be.xp.zeros((2, 5, 1), dtype=np.float32)
    with pytest.raises((ValueError, TypeError), match=pattern):
        be.linear_forward(x, w, b)


def test_linear_bad_arguments_leave_outputs_untouched(kernel_backend):
    be, m = kernel_backend, kernel_backend._mod
    x = be.xp.ones((4, 64), dtype=np.float32)  # 8 k-tiles, so splits=2 needs a workspace
    w = be.xp.ones((3, 64), dtype=np.float32)
    dy = be.xp.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"linear_backward: dy has shape \(4, 2\), expected \(4, 3\)"):
        be.linear_backward(be.xp.ones((4, 2), dtype=np.float32), x, w)
    sentinel = -3.5
    y = be.xp.full((4, 3), sentinel, dtype=np.float32)
    dx = be.xp.full((4, 64), sentinel, dtype=np.float32)
    dw = be.xp.full((3, 64), sentinel, dtype=np.float32)
    db = be.xp.full((3,), sentinel, dtype=np.float32)
    with pytest.raises(ValueError, match="b has length 2"):
        m.linear_forward(x, w, be.xp.ones(2, dtype=np.float32), y)
    with pytest.raises(ValueError, match="work is None"):
        m.linear_forward(x, w, None, y, None, splits=2)
    with pytest.raises(ValueError, match="dx has shape"):
        m.linear_backward_data(dy, x, w, dx[:2])
    with pytest.raises(ValueError, match="dw has shape"):
        m.linear_backward_weight(dy, x, w, dw[:2])
    buf = be.xp.full(1000, sentinel, dtype=np.float32)
    with pytest.raises(ValueError, match="overlap"):
        m.linear_backward_weight(dy, x, w, buf[:192].reshape(3, 64), buf, splits=2)
    with pytest.raises(ValueError, match="db has shape"):
        m.linear_backward_bias(dy, db[:1])
    for a in (y, dx, dw, db, buf):
        assert np.all(be.to_numpy(a) == sentinel)
