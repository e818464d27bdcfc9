"""Tensor-core linear layers (csrc/kernels/gemm_tc.cu), conv2d forward (conv.cu's
conv_fwd_tc_v1) and backward (conv_tc.cu) at TF32 and BF16 against the NumPy reference of
the same precision (alexnet_cuda.reference with precision=, which rounds the operands as the
kernels do: alexnet_cuda.precision).

Tolerance. The reference rounds x, w, dy to TF32 or BF16 and multiplies in float64. The
kernels multiply the same rounded values; a product of two TF32 (11-bit) or BF16 (8-bit)
significands is exact in FP32 (24 bits), so the only error left is the FP32 summation,
bounded exactly as for the FP32 kernels (test_kernels_conv's docstring: 2 gamma_(n+2)
times the sum of |terms|, evaluated on the rounded operands). Each test also checks that
the result is *not* within that bound of the unrounded FP32 product somewhere: the bound
is tight enough to see the rounding, so the kernels cannot pass by computing in FP32.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from alexnet_cuda import reference as ref
from alexnet_cuda.precision import bf16_bits, round_to

from test_kernels_conv import ALEXNET_LAYERS as REAL_LAYERS
from test_kernels_conv import (CONV_CASES, LINEAR_CASES, absf, assert_close, bound, check_linear_forced_splits,
                               conv_inputs, f64, on)

PRECISIONS = ("tf32", "bf16")
CASES = LINEAR_CASES  # (N, I, O); the tensor-core block tile is 64 x 64, the k-tile 32


def data(seed, N, I, O):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in ((N, I), (O, I), (O,), (N, O))]


def operand(be, p, a):
    """What the bindings take: float32 at tf32, uint16 BF16 bits at bf16. (The ops get float32, what
    a model with FP32 storage passes: a uint16 array is BF16 *storage* on cuda, whose outputs are
    BF16 too: tests/test_bf16_products.py.)"""
    return on(be, bf16_bits(a) if p == "bf16" else a)


def check_linear(be, p, x, w, b, dy, version=0):
    N, I = x.shape
    O = w.shape[0]
    X, Wt, DY = (on(be, a) for a in (x, w, dy))
    y = ref.linear_forward(f64(x), f64(w), f64(b), precision=p)
    ya = ref.linear_forward(absf(round_to(p, x)), absf(round_to(p, w)), absf(b))
    got_y = be.to_numpy(be.linear_forward(X, Wt, on(be, b), version=version, precision=p))
    assert_close(f"{p} y", got_y, y, ya, I + 1)
    dx, dw, db = ref.linear_backward(f64(dy), f64(x), f64(w), precision=p)
    rdy = round_to(p, dy) if p == "bf16" else dy
    adx, adw, adb = ref.linear_backward(absf(round_to(p, dy)), absf(round_to(p, x)), absf(round_to(p, w)))
    adb = np.abs(f64(rdy)).sum(axis=0)
    gdx, gdw, gdb = (be.to_numpy(a) for a in be.linear_backward(DY, X, Wt, version=version, precision=p))
    assert_close(f"{p} dx", gdx, dx, adx, O)
    assert_close(f"{p} dw", gdw, dw, adw, N)
    assert_close(f"{p} db", gdb, db, adb, N)
    return got_y, ya


def v2_takes(I, O):
    """Version 2 (bf16) copies 16-byte chunks of rows: x, w and dy need I and O multiples of 8."""
    return I % 8 == 0 and O % 8 == 0


@pytest.mark.parametrize("p", PRECISIONS)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_linear_tensor_cores_match_reference_of_same_precision(kernel_backend, p, case):
    be = kernel_backend
    versions = be.versions(f"linear_forward_{p}")
    assert versions == be.versions(f"linear_backward_{p}") == ([1, 2] if p == "bf16" else [1])
    N, I, O = CASES[case]
    x, w, b, dy = data(N * 1000 + I + O, N, I, O)
    for v in [0] + [v for v in versions if v != 2 or v2_takes(I, O)]:
        got_y, ya = check_linear(be, p, x, w, b, dy, version=v)
    if I >= 32:  # the rounding is visible beyond the FP32 bound somewhere (I <= 300 here)
        y32 = ref.linear_forward(f64(x), f64(w), f64(b))
        assert (np.abs(got_y - y32) > bound(I + 1, ya)).any()


@pytest.mark.parametrize("p", PRECISIONS)
def test_linear_tensor_cores_fiber_orders(kernel_backend, emu_order, p):
    """Shared tiles and barriers in every fiber order (a missing barrier shows up in one)."""
    x, w, b, dy = data(3, 70, 100, 90)
    check_linear(kernel_backend, p, x, w, b, dy)


@pytest.mark.parametrize("p", PRECISIONS)
@pytest.mark.parametrize("splits", [2, 5, 100])
def test_linear_tensor_cores_forced_splits(kernel_backend, p, splits):
    fplan, bplan = check_linear_forced_splits(kernel_backend, splits, p, version=0)
    # k-tiles of 32: forward and weight reduce over I = 515 (17 tiles), data over O = 70 (3)
    assert fplan["splits"] == min(splits, 17) and bplan["data"]["splits"] == min(splits, 3)


# ---- version 2 of the BF16 linear GEMM (gemm_tc.cu, tc_tile_async.cuh) ------------------------
# cp.async (16-byte chunks, 3 stages) and ldmatrix feed the same mma.sync m16n8k16 as version 1,
# on the same BF16 values, with FP32 accumulation and the same epilogue: the rounding points are
# version 1's, so check_linear's bound (2 gamma_(n+2) sum|terms| on the rounded operands) is the
# bound here too. Each accumulator also receives the same mma in the same order as in version
# 1, so with the same split of K the results are the same bits (test below).
# The shapes: I and O multiples of 8 (16-byte rows), everything else odd: partial block tiles
# in M and N, a partial last k-tile (I = 200: 6 k-tiles and 8 columns; O = 24 < 32), one row.
V2_CASES = {
    "one_row": (1, 8, 8),
    "odd_edges": (37, 72, 40),
    "partial_k": (70, 200, 24),
    "m129": (129, 40, 136),
}
# AlexNet's fully connected layers at batch 2: their real input widths I (the reduction of the
# forward and data GEMMs: 288 and 128 k-tiles, split by the planner) and their outputs cut to
# the last block tile's width (fc6, fc7: 4096 = 64 x 64, one full tile; fc8: 1000 = 15 x 64 + 40,
# so 64 + 40), because the full 4096 x 9216 products take minutes on emu. (I, O, O of the layer)
# ("alexnet_size" in the test's name keeps it out of device_check.sh's sanitizer runs.)
FC_LAYERS = {"fc6": (9216, 64, 4096), "fc7": (4096, 64, 4096), "fc8": (4096, 104, 1000)}


def linear_v1_v2(be, x, w, b, dy, splits):
    """[y, dx, dw] of versions 1 and 2 through the module, with `splits` forced on both."""
    m = be._mod
    X, Wt, DY = (operand(be, "bf16", a) for a in (x, w, dy))
    kw = dict(splits=splits, precision="bf16")
    outs = []
    for v in (1, 2):
        plan = m.linear_check(X, Wt, on(be, b), None, version=v, **kw)["forward"]
        bplan = m.linear_check(X, Wt, None, DY, version=v, **kw)
        need = max(plan["workspace"], bplan["data"]["workspace"], bplan["weight"]["workspace"])
        work = be.xp.empty(need, dtype=np.float32) if need else None
        y, dx, dw = (be.xp.empty(s, dtype=np.float32) for s in (DY.shape, X.shape, Wt.shape))
        m.linear_forward(X, Wt, on(be, b), y, work, version=v, **kw)
        m.linear_backward_data(DY, X, Wt, dx, work, version=v, **kw)
        m.linear_backward_weight(DY, X, Wt, dw, work, version=v, **kw)
        outs.append([be.to_numpy(a) for a in (y, dx, dw)])
    return outs


@pytest.mark.parametrize("case", list(V2_CASES), ids=list(V2_CASES))
def test_linear_bf16_v2_matches_reference(kernel_backend, case):
    N, I, O = V2_CASES[case]
    check_linear(kernel_backend, "bf16", *data(N * 1000 + I + O, N, I, O), version=2)


@pytest.mark.parametrize("splits", [1, 3])
def test_linear_bf16_v2_same_bits_as_v1_with_the_same_split(kernel_backend, splits):
    x, w, b, dy = data(5, 45, 200, 72)  # forward and weight: 7 k-tiles, data: 3
    v1, v2 = linear_v1_v2(kernel_backend, x, w, b, dy, splits)
    for name, a, c in zip(("y", "dx", "dw"), v1, v2):
        np.testing.assert_array_equal(c, a, err_msg=name)


def test_linear_bf16_v2_fiber_orders(kernel_backend, emu_order):
    """Three stages over 7 and 3 k-tiles (the ring wraps), every fiber order."""
    check_linear(kernel_backend, "bf16", *data(4, 70, 200, 72), version=2)


@pytest.mark.parametrize("layer", list(FC_LAYERS))
def test_linear_bf16_v2_alexnet_size_fc_layers(kernel_backend, layer):
    I, O, O_layer = FC_LAYERS[layer]
    assert O % 64 == O_layer % 64 and v2_takes(I, O_layer)
    check_linear(kernel_backend, "bf16", *data(I + O, 2, I, O), version=2)


def test_linear_bf16_v2_refuses_rows_it_cannot_copy(kernel_backend):
    be = kernel_backend
    x, w, b, dy = data(1, 4, 36, 16)
    X, Wt, DY = (operand(be, "bf16", a) for a in (x, w, dy))
    need = r"version 2 \(16-byte cp.async\) needs 16-byte aligned operands with rows of a multiple of 8 elements: "
    with pytest.raises(ValueError, match=r"linear_forward: " + need + "x has rows of 36 elements"):
        be.linear_forward(X, Wt, on(be, b), version=2, precision="bf16")
    with pytest.raises(ValueError, match=r"linear_backward: " + need + "w has rows of 36 elements"):
        be.linear_backward(DY, X, Wt, version=2, precision="bf16")
    x8, w8, _, dy20 = data(2, 4, 40, 20)
    with pytest.raises(ValueError, match=r"linear_backward: " + need + "dy has rows of 20 elements"):
        be.linear_backward(*(operand(be, "bf16", a) for a in (dy20, x8, w8)), version=2, precision="bf16")
    # A contiguous x that starts 2 bytes into an allocation.
    flat = be.xp.zeros(4 * 40 + 8, dtype=np.uint16)
    xs = flat[1:1 + 4 * 40].reshape(4, 40)
    xs[...] = be.xp.asarray(bf16_bits(x8))
    W8 = operand(be, "bf16", w8)
    with pytest.raises(ValueError, match=r"linear_forward: " + need + "x is not 16-byte aligned"):
        be.linear_forward(xs, W8, None, version=2, precision="bf16")
    # The dispatcher's choice (0) is version 1, which takes them all.
    y0 = be.to_numpy(be.linear_forward(xs, W8, None, precision="bf16"))
    y1 = be.to_numpy(be.linear_forward(operand(be, "bf16", x8), W8, None, version=1, precision="bf16"))
    np.testing.assert_array_equal(y0, y1)
    with pytest.raises(ValueError, match=r"no kernel version 2 \(have 1;"):
        be.linear_forward(x8, w8, None, version=2, precision="tf32")


def test_linear_tensor_cores_plan_splits_fc_shapes(kernel_backend):
    be = kernel_backend
    x = be.xp.zeros((128, 2048), dtype=np.uint16)
    w = be.xp.zeros((256, 2048), dtype=np.uint16)
    plan = be._mod.linear_check(x, w, None, None, precision="bf16")["forward"]
    assert plan["splits"] > 1 and plan["workspace"] == plan["splits"] * 128 * 256


def test_bf16_operands_in_every_form_give_the_same_result(kernel_backend):
    be = kernel_backend
    x, w, b, _ = data(9, 6, 40, 5)
    forms = [bf16_bits(x), x]  # bits, and float32 rounded by the op
    if be.name == "emu":  # numpy arrays: ml_dtypes' bfloat16 too
        import ml_dtypes

        forms.append(x.astype(ml_dtypes.bfloat16))
    # out_dtype float32: a BF16 x (bfloat16 on emu, the uint16 bits on cuda) is BF16 storage, whose
    # output would otherwise be BF16 too (tests/test_bf16_products.py)
    W, B = on(be, bf16_bits(w)), on(be, b)
    ys = [be.to_numpy(be.linear_forward(on(be, f), W, B, precision="bf16", out_dtype=np.float32)) for f in forms]
    for y in ys[1:]:
        np.testing.assert_array_equal(y, ys[0])


def test_bad_precision_arguments(kernel_backend):
    be, m = kernel_backend, kernel_backend._mod
    x = be.xp.zeros((2, 3), dtype=np.float32)
    w = be.xp.zeros((4, 3), dtype=np.float32)
    y = be.xp.zeros((2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"linear_forward: precision must be one of fp32, tf32, bf16, got 'fp16'"):
        be.linear_forward(x, w, None, precision="fp16")
    with pytest.raises(ValueError, match=r"linear_forward: precision must be fp32, tf32 or bf16, got 'fp8'"):
        m.linear_forward(x, w, None, y, precision="fp8")
    with pytest.raises(TypeError, match=r"linear_forward: x .*float32.*uint16|linear_forward: x"):
        m.linear_forward(x, w, None, y, precision="bf16")  # bf16 operands are uint16 bit patterns
    with pytest.raises(ValueError, match=r"no kernel version 2 \(have 1;"):
        be.linear_forward(x, w, None, precision="tf32", version=2)


# ---- conv2d forward on tensor cores -------------------------------------------------------
# Every conv case of test_kernels_conv (AlexNet's five layer configurations, odd tiles, gaps,
# padding beyond the kernel, groups 1-4, depthwise); the fiber orders on three of them.
CONV_TC_ORDER_CASES = ("conv2_5x5_p2_g2", "odd_k130", "s4_p1_k3")


def check_conv_forward(be, p, case):
    N, C, H, W, K, R, S, st, pad, g = CONV_CASES[case]
    x, w, b = conv_inputs(np.random.default_rng(zlib.crc32(case.encode())), N, C, H, W, K, R, S, g)
    geo = dict(stride=st, padding=pad, groups=g)
    y = ref.conv2d_forward(f64(x), f64(w), f64(b), precision=p, **geo)
    ya = ref.conv2d_forward(absf(round_to(p, x)), absf(round_to(p, w)), absf(b), **geo)
    got = be.to_numpy(be.conv2d_forward(on(be, x), on(be, w), on(be, b), precision=p, **geo))
    assert_close(f"{p} conv y", got, y, ya, C // g * R * S + 1)
    return got, ya, x, w, b, geo


@pytest.mark.parametrize("p", PRECISIONS)
@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_conv2d_forward_tensor_cores_match_reference_of_same_precision(kernel_backend, p, case):
    be = kernel_backend
    assert be.versions(f"conv2d_forward_{p}") == [1]
    got, ya, x, w, b, geo = check_conv_forward(be, p, case)
    N, C, H, W, K, R, S, st, pad, g = CONV_CASES[case]
    # The rounding is visible beyond the FP32 bound somewhere when the sums are not too long
    # (the bound grows as n, the rounding's effect on a sum of n random terms as sqrt(n)).
    if 32 <= C // g * R * S <= 300:
        y32 = ref.conv2d_forward(f64(x), f64(w), f64(b), **geo)
        assert (np.abs(got - y32) > bound(C // g * R * S + 1, ya)).any()


@pytest.mark.parametrize("p", PRECISIONS)
@pytest.mark.parametrize("case", CONV_TC_ORDER_CASES)
def test_conv2d_forward_tensor_cores_fiber_orders(kernel_backend, emu_order, p, case):
    check_conv_forward(kernel_backend, p, case)


# ---- conv2d backward on tensor cores (conv_tc.cu) -------------------------------------------
# The same cases and tolerance argument as the forward: dx is a sum of Kg*R*S products of BF16
# or TF32 values (exact in FP32) and dw one of N*P*Q, accumulated in FP32 in some order (k-tiles,
# mma steps, the filter's split reduction added in split order): 2 gamma_(n+2) sum|terms|, the
# sum of |terms| on the rounded operands. db sums dy as it is (tf32) or its BF16 values (bf16),
# in FP32, with the FP32 bias kernel.

def conv_backward_data(case, seed_offset=1):
    N, C, H, W, K, R, S, st, pad, g = CONV_CASES[case] if isinstance(case, str) else case
    rng = np.random.default_rng(zlib.crc32(str(case).encode()) + seed_offset)
    x, w, _ = conv_inputs(rng, N, C, H, W, K, R, S, g, bias=False)
    P, Q = (H + 2 * pad - R) // st + 1, (W + 2 * pad - S) // st + 1
    dy = rng.standard_normal((N, K, P, Q)).astype(np.float32)
    return dy, x, w, dict(stride=st, padding=pad, groups=g)


def check_conv_backward(be, p, dy, x, w, geo, version=0, need_dx=True):
    """Checks dx (when need_dx), dw and db of be's conv2d_backward at p; returns (got, terms)."""
    N, K, P, Q = dy.shape
    Kg, R, S = K // geo["groups"], w.shape[2], w.shape[3]
    dx, dw, db = ref.conv2d_backward(f64(dy), f64(x), f64(w), precision=p, need_dx=need_dx, **geo)
    adx, adw, _ = ref.conv2d_backward(*(absf(round_to(p, a)) for a in (dy, x, w)), need_dx=need_dx, **geo)
    adb = np.abs(f64(round_to(p, dy) if p == "bf16" else dy)).sum(axis=(0, 2, 3))
    got = be.conv2d_backward(on(be, dy), on(be, x), on(be, w), precision=p, version=version,
                             need_dx=need_dx, **geo)
    gdx, gdw, gdb = (None if a is None else be.to_numpy(a) for a in got)
    if need_dx:
        assert_close(f"{p} conv dx", gdx, dx, adx, Kg * R * S)
    else:
        assert gdx is None
    assert_close(f"{p} conv dw", gdw, dw, adw, N * P * Q)
    assert_close(f"{p} conv db", gdb, db, adb, N * P * Q)
    return (gdx, gdw), ((adx, Kg * R * S), (adw, N * P * Q))


@pytest.mark.parametrize("p", PRECISIONS)
@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_conv2d_backward_tensor_cores_match_reference_of_same_precision(kernel_backend, p, case):
    be = kernel_backend
    assert be.versions(f"conv2d_backward_{p}") == [1]
    dy, x, w, geo = conv_backward_data(case)
    for v in (0, 1):
        got, terms = check_conv_backward(be, p, dy, x, w, geo, version=v)
    # The rounding is visible beyond the FP32 bound somewhere, for the sums that are not too
    # long (as in the forward test).
    want32 = ref.conv2d_backward(f64(dy), f64(x), f64(w), **geo)[:2]
    for name, g, w32, (abs_sum, n) in zip(("dx", "dw"), got, want32, terms):
        if 32 <= n <= 300:
            assert (np.abs(g - w32) > bound(n, abs_sum)).any(), name


@pytest.mark.parametrize("p", PRECISIONS)
@pytest.mark.parametrize("case", CONV_TC_ORDER_CASES)
def test_conv2d_backward_tensor_cores_fiber_orders(kernel_backend, emu_order, p, case):
    check_conv_backward(kernel_backend, p, *conv_backward_data(case))


# AlexNet's five convolutions at their real geometry (227 x 227 input, the paper's channels,
# kernels, strides, padding, two groups where the towers split), batch 1. conv1's dx is never
# computed by the model (the image needs no gradient), so it is skipped here as there.
# ("alexnet_size" in the name keeps them out of device_check.sh's compute-sanitizer run.)
ALEXNET_LAYERS = {name: (1,) + layer for name, layer in REAL_LAYERS.items()}  # bench_conv.py's table


@pytest.mark.parametrize("p", PRECISIONS)
@pytest.mark.parametrize("layer", list(ALEXNET_LAYERS))
def test_conv2d_backward_tensor_cores_alexnet_size_layers(kernel_backend, p, layer):
    dy, x, w, geo = conv_backward_data(ALEXNET_LAYERS[layer])
    check_conv_backward(kernel_backend, p, dy, x, w, geo, need_dx=layer != "conv1")


@pytest.mark.parametrize("p", PRECISIONS)
@pytest.mark.parametrize("splits", [1, 2, 5, 100])
def test_conv2d_backward_filter_tensor_cores_forced_splits(kernel_backend, p, splits):
    be, m = kernel_backend, kernel_backend._mod
    dy, x, w, geo = conv_backward_data((3, 6, 10, 11, 10, 3, 3, 1, 1, 2), seed_offset=splits)
    DY, X, Wt = (operand(be, p, a) for a in (dy, x, w))
    plan = m.conv2d_backward_check(DY, X, Wt, splits=splits, precision=p, **geo)
    # k-tiles of 32 over N*P*Q = 330: 11
    assert plan["splits"] == min(splits, 11)
    assert plan["workspace"] == (0 if plan["splits"] == 1 else plan["splits"] * w.size)
    work = be.xp.empty(plan["workspace"], dtype=np.float32) if plan["workspace"] else None
    out = be.xp.empty(w.shape, dtype=np.float32)
    m.conv2d_backward_filter(DY, X, Wt, out, work, splits=splits, precision=p, **geo)
    dw = ref.conv2d_backward(f64(dy), f64(x), f64(w), precision=p, **geo)[1]
    adw = ref.conv2d_backward(*(absf(round_to(p, a)) for a in (dy, x, w)), **geo)[1]
    assert_close(f"{p} dw splits={splits}", be.to_numpy(out), dw, adw, 330)


def test_conv2d_backward_tensor_cores_plan_splits_long_reductions(kernel_backend):
    be = kernel_backend
    x = be.xp.zeros((4, 4, 16, 16), dtype=np.uint16)
    w = be.xp.zeros((8, 4, 3, 3), dtype=np.uint16)
    dy = be.xp.zeros((4, 8, 16, 16), dtype=np.uint16)
    plan = be._mod.conv2d_backward_check(dy, x, w, padding=1, precision="bf16")
    assert plan["splits"] > 1 and plan["workspace"] == plan["splits"] * 8 * 4 * 9


def test_conv2d_backward_tensor_cores_deterministic_across_fiber_orders(kernel_backend, monkeypatch):
    """No atomics: dx, and dw in 3 splits added in split order, bit for bit the same in any order."""
    be, m = kernel_backend, kernel_backend._mod
    dy, x, w, geo = conv_backward_data((4, 6, 12, 12, 8, 3, 3, 1, 1, 2))
    DY, X, Wt = (operand(be, "bf16", a) for a in (dy, x, w))
    work = be.xp.empty(3 * w.size, dtype=np.float32)
    outs = []
    for order in ["forward", "reverse", "shuffle:7"]:
        monkeypatch.setenv("ALEXNET_EMU_ORDER", order)
        dx, dw = be.xp.empty(x.shape, dtype=np.float32), be.xp.empty(w.shape, dtype=np.float32)
        m.conv2d_backward_data(DY, X, Wt, dx, precision="bf16", **geo)
        m.conv2d_backward_filter(DY, X, Wt, dw, work, splits=3, precision="bf16", **geo)
        outs.append((be.to_numpy(dx).copy(), be.to_numpy(dw).copy()))
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            np.testing.assert_array_equal(a, b)


def test_conv2d_backward_bad_precision_arguments(kernel_backend):
    be, m = kernel_backend, kernel_backend._mod
    x = be.xp.zeros((2, 4, 6, 6), dtype=np.float32)
    w = be.xp.zeros((6, 2, 3, 3), dtype=np.float32)
    dy = be.xp.zeros((2, 6, 6, 6), dtype=np.float32)
    dx = be.xp.zeros(x.shape, dtype=np.float32)
    geo = dict(padding=1, groups=2)
    with pytest.raises(ValueError, match=r"conv2d_backward: precision must be one of fp32, tf32, bf16, got 'fp16'"):
        be.conv2d_backward(dy, x, w, precision="fp16", **geo)
    with pytest.raises(ValueError, match=r"conv2d_backward: precision must be fp32, tf32 or bf16, got 'fp8'"):
        m.conv2d_backward_data(dy, x, w, dx, precision="fp8", **geo)
    with pytest.raises(TypeError, match=r"conv2d_backward: x"):
        m.conv2d_backward_data(dy, x, w, dx, precision="bf16", **geo)  # bf16 operands are uint16 bit patterns
    with pytest.raises(ValueError, match=r"no kernel version 2 \(have 1;"):
        be.conv2d_backward(dy, x, w, precision="tf32", version=2, **geo)
