"""BF16 storage of the products at precision "bf16" (docs/design.md, "Reduced precision"):
conv2d_forward/backward and linear_forward/backward with BF16 x and dy (each backend's BF16
arrays: ml_dtypes.bfloat16 on numpy and emu, uint16 on cuda), the forward output's storage
chosen by out_dtype, dx in x's storage, dw and db float32.

Every tensor-core version runs on the kernel backends (in the three emu fiber orders on the
small odd shapes) against the numpy backend's result for the same BF16-valued inputs.

Tolerance. Both sides form the same exact products (BF16 x BF16 is exact in FP32) and sum them
in FP32 in different orders: each FP32 result s is within gamma_(n+2) * sum|terms| of the exact
sum, so the two differ by at most 2 gamma_(n+2) * sum|terms| = test_kernels_conv.bound, the
bound of the existing tensor-core tests. A BF16 output is then rounded once on each side:
|rn(s) - s| <= 2^-8 |s| <= 2^-8 |rn(s)| / (1 - 2^-8) (8 significant bits, nearest even; the ReLU
before it is 1-Lipschitz), so the two BF16 outputs differ by at most that bound plus
2^-8 / (1 - 2^-8) * (|got| + |want|): one BF16 step at the output's size, which is what
adjacent BF16 values are when the FP32 sums differ in their last bits. FP32 outputs get the
bound alone. Beyond the tolerance, each kernel's BF16 output is checked to be bit for bit
round_bf16 of its own FP32 output (same kernel, same summation order: one rounding, on store).
"""
from __future__ import annotations

import zlib

import ml_dtypes
import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda import reference as ref
from alexnet_cuda.precision import bf16_bits, from_bf16_bits, round_bf16, to_bf16

from test_kernels_conv import absf, bound

U_BF16 = 2.0 ** -8
BF16 = np.dtype(ml_dtypes.bfloat16)

# (N, C, H, W, K, R, S, stride, padding, groups)
CONV_CASES = {
    "conv1_like_s4": (2, 3, 27, 27, 8, 11, 11, 4, 0, 1),   # conv1's kernel and stride, odd sizes
    "g2_p1_odd": (3, 6, 7, 9, 10, 3, 3, 1, 1, 2),           # groups, padding, non-square
    "s4_p2_k3_g3": (2, 9, 13, 11, 6, 3, 3, 4, 2, 3),         # stride > kernel (gaps), 3 groups
    "k5_p2_s2_odd": (1, 4, 10, 9, 70, 5, 5, 2, 2, 1),        # two row tiles of 64 (Kg = 70)
}
CONV_ORDER_CASES = ("conv1_like_s4", "g2_p1_odd", "s4_p2_k3_g3")
# AlexNet's conv2 channels (96 -> 256, 5x5, pad 2, two groups) at tiny spatial size.
CONV_ALEXNET = (1, 96, 5, 5, 256, 5, 5, 1, 2, 2)
# (N, I, O)
LINEAR_CASES = {"odd": (5, 37, 19), "odd_k130": (33, 130, 67), "m129": (129, 45, 70)}
LINEAR_ALEXNET = (16, 1152, 130)  # fc-like: 36 k-tiles, 3 column tiles


def rng_for(name):
    return np.random.default_rng(zlib.crc32(str(name).encode()))


def bf16_values(rng, shape):
    """float32 values that are BF16 numbers (the stored activations)."""
    return round_bf16(rng.standard_normal(shape).astype(np.float32))


def to_be_bf16(be, a):
    """A BF16 array of backend `be` with the (BF16-valued) float32 a."""
    return be.to_bf16(be.asarray(a))


def f32_of(be, a):
    """numpy float32 of a backend's output in either storage (BF16 widened exactly)."""
    return np.asarray(be.to_numpy(be.from_bf16(a) if be.is_bf16(a) else a), dtype=np.float32)


def tc_versions(be, op, numbered_only=False):
    """The tensor-core versions of op at bf16 (and 0, the dispatcher's choice, unless numbered_only)."""
    return ([] if numbered_only else [0]) + be.versions(f"{op}_bf16")


def assert_near(name, got, want, abs_sum, n_terms, bf16_out):
    """got and want (float32 numpy) within the bound of the module docstring."""
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite values"
    tol = bound(n_terms, abs_sum)
    if bf16_out:
        tol = tol + U_BF16 / (1 - U_BF16) * (np.abs(got.astype(np.float64)) + np.abs(want.astype(np.float64)))
    err = np.abs(got.astype(np.float64) - want)
    bad = err > tol
    if bad.any():
        i = np.unravel_index(np.argmax(err - tol), err.shape)
        raise AssertionError(f"{name}: {int(bad.sum())} of {err.size} out of tolerance; worst at {i}: got {got[i]!r}, "
                             f"want {want[i]!r}, |err| {err[i]:.3g} > tol {tol[i]:.3g} ({n_terms} terms)")


def assert_same_bits(name, a, b):
    np.testing.assert_array_equal(bf16_bits(a), bf16_bits(b), err_msg=name)


# ---- conv2d ---------------------------------------------------------------------------------------

def conv_data(case):
    N, C, H, W, K, R, S, st, pad, g = CONV_CASES[case] if isinstance(case, str) else case
    rng = rng_for(case)
    P, Q = (H + 2 * pad - R) // st + 1, (W + 2 * pad - S) // st + 1
    x, dy = bf16_values(rng, (N, C, H, W)), bf16_values(rng, (N, K, P, Q))
    w = rng.standard_normal((K, C // g, R, S)).astype(np.float32)  # FP32 master weights
    b = rng.standard_normal(K).astype(np.float32)
    return x, w, b, dy, dict(stride=st, padding=pad, groups=g)


def check_conv(be, case, *, versions=None, activation="none"):
    x, w, b, dy, geo = conv_data(case)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    P, Q = dy.shape[2:]
    Kg = K // geo["groups"]
    X16, DY16, Wt, B = to_be_bf16(be, x), to_be_bf16(be, dy), be.asarray(w), be.asarray(b)
    X32 = be.asarray(x)
    x16, dy16 = to_bf16(x), to_bf16(dy)  # the numpy backend's BF16 arrays
    kw = dict(precision="bf16", **geo)
    # the oracle: the numpy backend on the same BF16 values (float32 sums, one rounding)
    want_y16 = ref.conv2d_forward(x16, w, b, activation=activation, **kw)
    want_y32 = ref.conv2d_forward(x16, w, b, activation=activation, out_dtype="fp32", **kw)
    want_dx, want_dw, want_db = ref.conv2d_backward(dy16, x16, w, **kw)
    aw = absf(round_bf16(w))  # the kernels multiply the weights rounded to BF16
    ay = ref.conv2d_forward(absf(x), aw, absf(b), **geo)
    adx, adw, _ = ref.conv2d_backward(absf(dy), absf(x), aw, **geo)
    adb = np.abs(dy.astype(np.float64)).sum(axis=(0, 2, 3))
    assert want_y16.dtype == BF16 and want_dx.dtype == BF16 and want_dw.dtype == np.float32
    assert be.versions("conv2d_forward_bf16") == be.versions("conv2d_backward_bf16")  # one list for both
    for v in tc_versions(be, "conv2d_forward") if versions is None else versions:
        name = f"{case} v{v}"
        y16 = be.conv2d_forward(X16, Wt, B, version=v, activation=activation, **kw)
        y32 = be.conv2d_forward(X16, Wt, B, version=v, activation=activation, out_dtype=np.float32, **kw)
        y16_from32 = be.conv2d_forward(X32, Wt, B, version=v, activation=activation, out_dtype="bf16", **kw)
        assert be.is_bf16(y16) and be.is_bf16(y16_from32) and y32.dtype == np.float32
        g16, g32 = f32_of(be, y16), f32_of(be, y32)
        assert_same_bits(f"{name} y16 = rn(y32)", g16, g32)
        assert_same_bits(f"{name} fp32 x, bf16 y", f32_of(be, y16_from32), g16)
        assert_near(f"{name} y bf16", g16, want_y16.astype(np.float32), ay, Cg * R * S + 1, True)
        assert_near(f"{name} y fp32", g32, want_y32, ay, Cg * R * S + 1, False)

        dx16, dw, db = be.conv2d_backward(DY16, X16, Wt, version=v, **kw)
        dx32 = be.conv2d_backward(DY16, X32, Wt, version=v, **kw)[0]  # FP32 x: dx FP32
        assert be.is_bf16(dx16) and dx32.dtype == np.float32 and dw.dtype == db.dtype == np.float32
        gdx = f32_of(be, dx16)
        assert_same_bits(f"{name} dx16 = rn(dx32)", gdx, f32_of(be, dx32))
        assert_near(f"{name} dx", gdx, want_dx.astype(np.float32), adx, Kg * R * S, True)
        assert_near(f"{name} dw", f32_of(be, dw), want_dw, adw, N * P * Q, False)
        assert_near(f"{name} db", f32_of(be, db), want_db, adb, N * P * Q, False)
        _, dw1, db1 = be.conv2d_backward(DY16, X16, Wt, version=v, need_dx=False, **kw)
        np.testing.assert_array_equal(be.to_numpy(dw1), be.to_numpy(dw))
        np.testing.assert_array_equal(be.to_numpy(db1), be.to_numpy(db))


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_bf16_storage_matches_numpy_backend(kernel_backend, case):
    check_conv(kernel_backend, case)


@pytest.mark.parametrize("case", CONV_ORDER_CASES)
def test_conv2d_bf16_storage_fiber_orders(kernel_backend, emu_order, case):
    be = kernel_backend
    check_conv(be, case, versions=tc_versions(be, "conv2d_forward", numbered_only=True), activation="relu")


def test_conv2d_bf16_storage_alexnet_channels(kernel_backend):
    check_conv(kernel_backend, CONV_ALEXNET, versions=[0])


# ---- linear ---------------------------------------------------------------------------------------

def linear_data(case):
    N, I, O = LINEAR_CASES[case] if isinstance(case, str) else case
    rng = rng_for(case)
    x, dy = bf16_values(rng, (N, I)), bf16_values(rng, (N, O))
    w = rng.standard_normal((O, I)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    return x, w, b, dy


def check_linear(be, case, *, versions=None, activation="none"):
    x, w, b, dy = linear_data(case)
    (N, I), O = x.shape, w.shape[0]
    X16, DY16, Wt, B = to_be_bf16(be, x), to_be_bf16(be, dy), be.asarray(w), be.asarray(b)
    X32 = be.asarray(x)
    x16, dy16 = to_bf16(x), to_bf16(dy)
    want_y16 = ref.linear_forward(x16, w, b, precision="bf16", activation=activation)
    want_y32 = ref.linear_forward(x16, w, b, precision="bf16", activation=activation, out_dtype=np.float32)
    want_dx, want_dw, want_db = ref.linear_backward(dy16, x16, w, precision="bf16")
    aw = absf(round_bf16(w))  # the kernels multiply the weights rounded to BF16
    ay = ref.linear_forward(absf(x), aw, absf(b))
    adx, adw, _ = ref.linear_backward(absf(dy), absf(x), aw)
    adb = np.abs(dy.astype(np.float64)).sum(axis=0)
    assert be.versions("linear_forward_bf16") == be.versions("linear_backward_bf16")  # one list for both
    for v in tc_versions(be, "linear_forward") if versions is None else versions:
        if v == 2 and (I % 8 or O % 8):  # gemm_tc version 2 (cp.async) takes rows of multiples of 8 only
            continue
        name = f"{case} v{v}"
        kw = dict(version=v, precision="bf16")
        y16 = be.linear_forward(X16, Wt, B, activation=activation, **kw)
        y32 = be.linear_forward(X16, Wt, B, activation=activation, out_dtype="fp32", **kw)
        y16_from32 = be.linear_forward(X32, Wt, B, activation=activation, out_dtype=be.bf16_dtype, **kw)
        assert be.is_bf16(y16) and be.is_bf16(y16_from32) and y32.dtype == np.float32
        g16, g32 = f32_of(be, y16), f32_of(be, y32)
        assert_same_bits(f"{name} y16 = rn(y32)", g16, g32)
        assert_same_bits(f"{name} fp32 x, bf16 y", f32_of(be, y16_from32), g16)
        assert_near(f"{name} y bf16", g16, want_y16.astype(np.float32), ay, I + 1, True)
        assert_near(f"{name} y fp32", g32, want_y32, ay, I + 1, False)

        dx16, dw, db = be.linear_backward(DY16, X16, Wt, **kw)
        dx32 = be.linear_backward(DY16, X32, Wt, **kw)[0]
        assert be.is_bf16(dx16) and dx32.dtype == np.float32 and dw.dtype == db.dtype == np.float32
        gdx = f32_of(be, dx16)
        assert_same_bits(f"{name} dx16 = rn(dx32)", gdx, f32_of(be, dx32))
        assert_near(f"{name} dx", gdx, want_dx.astype(np.float32), adx, O, True)
        assert_near(f"{name} dw", f32_of(be, dw), want_dw, adw, N, False)
        assert_near(f"{name} db", f32_of(be, db), want_db, adb, N, False)
        # fc8's mix: BF16 x with the FP32 gradient of the logits (the same values): the same results
        dxm, dwm, dbm = be.linear_backward(be.asarray(dy), X16, Wt, **kw)
        assert be.is_bf16(dxm)
        assert_same_bits(f"{name} dx, FP32 dy", f32_of(be, dxm), gdx)
        np.testing.assert_array_equal(f32_of(be, dwm), f32_of(be, dw))
        np.testing.assert_array_equal(f32_of(be, dbm), f32_of(be, db))


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_linear_bf16_storage_matches_numpy_backend(kernel_backend, case):
    check_linear(kernel_backend, case)


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_linear_bf16_storage_fiber_orders(kernel_backend, emu_order, case):
    be = kernel_backend
    check_linear(be, case, versions=tc_versions(be, "linear_forward", numbered_only=True), activation="relu")


def test_linear_bf16_storage_alexnet_like(kernel_backend):
    check_linear(kernel_backend, LINEAR_ALEXNET, versions=[0])


@pytest.mark.parametrize("splits", [2, 5])
def test_linear_bf16_storage_split_k(kernel_backend, emu_order, splits):
    """gemm_tc's split reduction ends in BF16 storage: the partials are FP32, splitk_reduce adds
    them in split order with the bias and the ReLU and rounds once (bit for bit rn of the FP32 C)."""
    be, m = kernel_backend, kernel_backend._mod
    x, w, b, dy = linear_data((37, 515, 70))
    X, DY, Wt, B = be.asarray(bf16_bits(x)), be.asarray(bf16_bits(dy)), be.asarray(w), be.asarray(b)
    kw = dict(version=1, splits=splits, precision="bf16")
    fplan = m.linear_check(X, Wt, B, None, **kw)["forward"]
    dplan = m.linear_check(X, Wt, None, DY, **kw)["data"]
    assert fplan["splits"] == splits and dplan["splits"] == min(splits, 3)  # K = 515, 70: 17 and 3 k-tiles
    work = be.xp.empty(max(fplan["workspace"], dplan["workspace"]), dtype=np.float32)
    out = {}
    for t in (np.float32, np.uint16):
        out[t] = y, dx = be.xp.empty((37, 70), dtype=t), be.xp.empty((37, 515), dtype=t)
        m.linear_forward(X, Wt, B, y, work, activation="relu", **kw)
        m.linear_backward_data(DY, X, Wt, dx, work, **kw)
    for name, g32, g16 in zip(("y", "dx"), out[np.float32], out[np.uint16]):
        np.testing.assert_array_equal(be.to_numpy(g16), bf16_bits(be.to_numpy(g32)), err_msg=name)
    want = ref.linear_forward(to_bf16(x), w, b, precision="bf16", activation="relu").astype(np.float32)
    got = from_bf16_bits(be.to_numpy(out[np.uint16][0]))
    assert_near("y split", got, want, ref.linear_forward(absf(x), absf(round_bf16(w)), absf(b)), 516, True)


# ---- the forms of the weights ----------------------------------------------------------------

def test_fp32_weights_rounded_in_the_kernels_equal_bf16_weights(kernel_backend):
    """At bf16 the FP32 master weights are rounded as the kernels stage them: bit for bit the
    results of the same weights rounded to BF16 bits first (the older form, still accepted)."""
    be = kernel_backend
    x, w, b, dy, geo = conv_data("g2_p1_odd")
    X, DY = to_be_bf16(be, x), to_be_bf16(be, dy)
    kw = dict(precision="bf16", **geo)
    forms = [be.asarray(w), be.asarray(bf16_bits(w))]
    ys = [f32_of(be, be.conv2d_forward(X, f, be.asarray(b), **kw)) for f in forms]
    dxs = [f32_of(be, be.conv2d_backward(DY, X, f, **kw)[0]) for f in forms]
    assert_same_bits("conv y", ys[0], ys[1])
    assert_same_bits("conv dx", dxs[0], dxs[1])
    x, w, b, dy = linear_data("odd_k130")
    X, DY = to_be_bf16(be, x), to_be_bf16(be, dy)
    forms = [be.asarray(w), be.asarray(bf16_bits(w))]
    ys = [f32_of(be, be.linear_forward(X, f, be.asarray(b), precision="bf16")) for f in forms]
    dxs = [f32_of(be, be.linear_backward(DY, X, f, precision="bf16")[0]) for f in forms]
    assert_same_bits("linear y", ys[0], ys[1])
    assert_same_bits("linear dx", dxs[0], dxs[1])


# ---- the numpy backend ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["conv1_like_s4", "g2_p1_odd"])
def test_numpy_backend_bf16_is_one_rounding_of_fp32_storage(case):
    """The numpy backend's BF16 outputs are round_bf16 of its FP32-storage outputs for the same
    BF16-valued inputs, bit for bit; dw and db do not depend on the storage."""
    x, w, b, dy, geo = conv_data(case)
    kw = dict(precision="bf16", **geo)
    x16, dy16 = to_bf16(x), to_bf16(dy)
    for act in ("none", "relu"):
        y16 = ref.conv2d_forward(x16, w, b, activation=act, **kw)
        y32 = ref.conv2d_forward(x, w, b, activation=act, **kw)
        assert y16.dtype == BF16 and y32.dtype == np.float32
        np.testing.assert_array_equal(y16.view(np.uint16), bf16_bits(y32))
        np.testing.assert_array_equal(ref.conv2d_forward(x16, w, b, activation=act, out_dtype="fp32", **kw), y32)
        y16_from32 = ref.conv2d_forward(x, w, b, activation=act, out_dtype="bf16", **kw)
        np.testing.assert_array_equal(y16_from32.view(np.uint16), bf16_bits(y32))
    dx16, dw16, db16 = ref.conv2d_backward(dy16, x16, w, **kw)
    dx32, dw32, db32 = ref.conv2d_backward(dy, x, w, **kw)
    assert dx16.dtype == BF16 and dw16.dtype == db16.dtype == np.float32
    np.testing.assert_array_equal(dx16.view(np.uint16), bf16_bits(dx32))
    np.testing.assert_array_equal(dw16, dw32)
    np.testing.assert_array_equal(db16, db32)
    np.testing.assert_array_equal(db16, dy.sum(axis=(0, 2, 3)))  # dy's stored values, summed in float32
    # mixed storage: conv1's FP32 image with BF16 dy (dx then FP32), fc8's BF16 x with FP32 dy
    dxm = ref.conv2d_backward(dy16, x, w, **kw)[0]
    np.testing.assert_array_equal(dxm, dx32)
    np.testing.assert_array_equal(ref.conv2d_backward(dy, x16, w, **kw)[0].view(np.uint16), bf16_bits(dx32))

    x, w, b, dy = linear_data("odd_k130")
    y16 = ref.linear_forward(to_bf16(x), w, b, precision="bf16", activation="relu")
    np.testing.assert_array_equal(y16.view(np.uint16),
                                  bf16_bits(ref.linear_forward(x, w, b, precision="bf16", activation="relu")))
    dx16, dw16, db16 = ref.linear_backward(to_bf16(dy), to_bf16(x), w, precision="bf16")
    dx32, dw32, db32 = ref.linear_backward(dy, x, w, precision="bf16")
    np.testing.assert_array_equal(dx16.view(np.uint16), bf16_bits(dx32))
    np.testing.assert_array_equal(dw16, dw32)
    np.testing.assert_array_equal(db16, db32)


# ---- errors ---------------------------------------------------------------------------------------

def _small(be):
    """Small conv and linear arguments of backend be: BF16 x and dy, FP32 w and b."""
    rng = rng_for("errors")
    xc, dyc = bf16_values(rng, (2, 4, 6, 6)), bf16_values(rng, (2, 6, 6, 6))
    xl, dyl = bf16_values(rng, (3, 5)), bf16_values(rng, (3, 4))
    wc, wl = rng.standard_normal((6, 2, 3, 3)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
    if be.name == "numpy":
        return to_bf16(xc), to_bf16(dyc), wc, to_bf16(xl), to_bf16(dyl), wl
    return (to_be_bf16(be, xc), to_be_bf16(be, dyc), be.asarray(wc), to_be_bf16(be, xl), to_be_bf16(be, dyl),
            be.asarray(wl))


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_bf16_storage_needs_precision_bf16(any_backend, precision):
    be = any_backend
    xc, dyc, wc, xl, dyl, wl = _small(be)
    geo = dict(padding=1, groups=2, precision=precision)
    xc32, dyc32, xl32, dyl32 = (be.asarray(np.zeros(a.shape, np.float32)) for a in (xc, dyc, xl, dyl))
    need = f"is BF16 storage, which needs precision='bf16', got precision='{precision}'"
    with pytest.raises(ValueError, match=f"conv2d_forward: x {need}"):
        be.conv2d_forward(xc, wc, None, **geo)
    with pytest.raises(ValueError, match=f"conv2d_backward: x {need}"):
        be.conv2d_backward(dyc32, xc, wc, **geo)
    with pytest.raises(ValueError, match=f"conv2d_backward: dy {need}"):
        be.conv2d_backward(dyc, xc32, wc, need_dx=False, **geo)
    with pytest.raises(ValueError, match=f"linear_forward: x {need}"):
        be.linear_forward(xl, wl, None, precision=precision)
    with pytest.raises(ValueError, match=f"linear_backward: x {need}"):
        be.linear_backward(dyl32, xl, wl, precision=precision)
    with pytest.raises(ValueError, match=f"linear_backward: dy {need}"):
        be.linear_backward(dyl, xl32, wl, precision=precision)
    with pytest.raises(ValueError, match=f"conv2d_forward: out_dtype='bf16' {need}"):
        be.conv2d_forward(xc32, wc, None, out_dtype="bf16", **geo)
    with pytest.raises(ValueError, match=f"linear_forward: out_dtype=.* {need}"):
        be.linear_forward(xl32, wl, None, precision=precision, out_dtype=be.bf16_dtype)


@pytest.mark.parametrize("bad", ["fp16", "bfloat", np.float64, np.int32, 3])
def test_bad_out_dtype(any_backend, bad):
    be = any_backend
    xc, _, wc, xl, _, wl = _small(be)
    msg = r"out_dtype must be None \(x's storage\), 'fp32', 'bf16', float32 or "
    with pytest.raises(ValueError, match="conv2d_forward: " + msg):
        be.conv2d_forward(xc, wc, None, padding=1, groups=2, precision="bf16", out_dtype=bad)
    with pytest.raises(ValueError, match="linear_forward: " + msg):
        be.linear_forward(xl, wl, None, precision="bf16", out_dtype=bad)


def test_uint16_is_not_bf16_storage_on_numpy_arrays():
    """On the numpy and emu backends BF16 storage is ml_dtypes.bfloat16; uint16 as out_dtype is refused."""
    be = alexnet_cuda.get_backend("numpy")
    xc, _, wc, _, _, _ = _small(be)
    assert be.bf16_dtype == BF16 and be.is_bf16(xc) and not be.is_bf16(xc.view(np.uint16))
    with pytest.raises(ValueError, match="out_dtype must be None"):
        be.conv2d_forward(xc, wc, None, padding=1, groups=2, precision="bf16", out_dtype=np.uint16)


def test_bindings_refuse_bf16_outputs_below_bf16_and_write_nothing(kernel_backend):
    """A uint16 (BF16) y or dx at fp32/tf32 is a ValueError before any launch: the output keeps its bytes."""
    be, m = kernel_backend, kernel_backend._mod
    x, w = be.xp.ones((2, 4, 6, 6), dtype=np.float32), be.xp.ones((6, 2, 3, 3), dtype=np.float32)
    dy = be.xp.ones((2, 6, 6, 6), dtype=np.float32)
    xl, wl = be.xp.ones((3, 5), dtype=np.float32), be.xp.ones((4, 5), dtype=np.float32)
    geo = dict(padding=1, groups=2)
    for p in ("fp32", "tf32"):
        y, dx = be.xp.full((2, 6, 6, 6), 7, dtype=np.uint16), be.xp.full(x.shape, 7, dtype=np.uint16)
        yl, dxl = be.xp.full((3, 4), 7, dtype=np.uint16), be.xp.full((3, 5), 7, dtype=np.uint16)
        with pytest.raises(ValueError, match="conv2d_forward: y is BF16 storage .* needs precision bf16"):
            m.conv2d_forward(x, w, None, y, precision=p, **geo)
        with pytest.raises(ValueError, match="conv2d_backward: dx is BF16 storage .* needs precision bf16"):
            m.conv2d_backward_data(dy, x, w, dx, precision=p, **geo)
        with pytest.raises(ValueError, match="linear_forward: y is BF16 storage .* needs precision bf16"):
            m.linear_forward(xl, wl, None, yl, precision=p)
        with pytest.raises(ValueError, match="linear_backward: dx is BF16 storage .* needs precision bf16"):
            m.linear_backward_data(be.xp.ones((3, 4), dtype=np.float32), xl, wl, dxl, precision=p)
        for a in (y, dx, yl, dxl):
            assert (be.to_numpy(a) == 7).all()
    with pytest.raises(TypeError, match="conv2d_forward: y must be float32 or uint16, got float64"):
        m.conv2d_forward(x, w, None, be.xp.zeros((2, 6, 6, 6)), **geo)
