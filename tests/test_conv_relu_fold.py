"""conv2d_backward(..., relu_input=True): the ReLU's backward folded into the data gradient (issue 11).

When x is a ReLU's output (AlexNet's conv4 and conv5 read relu3's and relu4's), relu_input=True
makes dx = relu_backward(dx, x) in the data kernels' store (relu_fold, csrc/kernels/relu_math.cuh)
instead of a separate pass over dx. The contract is bit for bit the composed ops, so every check
here is exact:

* composed: on every backend, dx(relu_input=True) == relu_backward(dx(relu_input=False), x) bit for
  bit, and dw, db are the plain call's bits; for every FP32 implicit-GEMM version (direct loops,
  the four tile configurations, stride phases with and without taps), the tensor-core versions at
  tf32 and bf16 (FP32 and BF16 storage of x and dy), Winograd's versions, in the three emu fiber
  orders; the numpy backend in float32, float64, tf32 and bf16;
* the mask said directly (numpy's own comparison, not the backend's relu_backward, which shares
  the kernels' ReluMath): dx is +0 (bits 0) wherever x is not > 0 (+0, -0.0, negative, NaN) and the
  plain dx's bits wherever x > 0 (tiny and subnormal x included: x is read as given, not rounded
  to TF32/BF16, which would flush 1e-45 to zero);
* against the numpy backend: the folded dx of the kernels within the unfused dx's bound of the
  float64 reference with relu_input=True (test_kernels_conv.bound: 2 gamma_(n+2) sum|terms| with
  the operands rounded to the precision; one BF16 step more for BF16 storage,
  test_bf16_products.assert_near; Winograd's 4 u E, test_conv_winograd.assert_within). The ReLU's
  select is 1-Lipschitz and exact where it zeroes, so the unfused bound carries over.

x holds every kind of element the mask must get right, and each case asserts that the plain dx is
non-zero at some element of each kind, so a mask that mishandles one of them fails (checked by
mutation: see the report of the commit that added this file).
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from alexnet_cuda import reference as ref
from alexnet_cuda.precision import bf16_bits, from_bf16_bits, round_to
from test_bf16_products import assert_near
from test_conv_winograd import CASES as WINO_CASES, assert_within, data_filter, winograd64, wino_versions
from test_kernels_conv import CONV_CASES, absf, conv_versions, f64

# The elements of x the mask must get right (beside ordinary positives and the ReLU's +0): -0.0, a
# negative, NaN, and positives that TF32/BF16 rounding flushes to zero (1e-45, 1e-40) or keeps (2^-126).
SPECIAL = {"-0.0": -0.0, "negative": -1.5, "nan": np.nan, "1e-45": 1e-45, "1e-40": 1e-40, "2^-126": 2.0 ** -126}

# FP32 implicit GEMM: every tile configuration (by Cg: T8, T32, T64, T128 with two row tiles),
# stride phases (with and without taps), gaps, groups.
FP32_CASES = ["conv4_3x3_p1_g2", "tile32_k20", "tile64_k40", "odd_c133", "s4_p1_k3", "gaps_2x2_s3", "groups3"]
# Tensor cores (64 x 64 tiles): several row tiles (Cg 133), two column tiles (conv4: 72 columns),
# stride-2 phases, three groups.
TC_CASES = ["conv4_3x3_p1_g2", "odd_c133", "tile64_k40", "groups3"]
# Winograd's data gradient: groups and several tiles, two column tiles of its GEMM, padding 0 and 2.
WINO_FOLD_CASES = ["conv4_like_g2_13x13_batch3", "t144_col_tiles", "pad0_7x7", "pad2_5x6_g2"]


def relu_x(rng, shape):
    """A ReLU's output (half of it +0) with the SPECIAL elements spread over about a third of it."""
    x = np.maximum(rng.standard_normal(shape), 0.0).astype(np.float32).reshape(-1)
    at = rng.permutation(x.size)[: max(len(SPECIAL) * 2, x.size // 3)]
    x[at] = np.resize(np.array(list(SPECIAL.values()), dtype=np.float32), at.size)
    return x.reshape(shape)


def case_data(case):
    N, C, H, W, K, R, S, st, pad, g = CONV_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    P, Q = (H + 2 * pad - R) // st + 1, (W + 2 * pad - S) // st + 1
    x = relu_x(rng, (N, C, H, W))
    w = rng.standard_normal((K, C // g, R, S)).astype(np.float32)
    dy = rng.standard_normal((N, K, P, Q)).astype(np.float32)
    return dy, x, w, dict(stride=st, padding=pad, groups=g), (K // g) * R * S


def values(be, a):
    """float32 numpy values of a backend array in either storage (BF16 widened exactly)."""
    return np.asarray(be.to_numpy(be.from_bf16(a) if be.is_bf16(a) else a), dtype=np.float32)


def bits(be, a):
    a = np.asarray(be.to_numpy(a))
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32 if a.dtype.itemsize == 4 else np.uint64)


def assert_bits(be, name, got, want):
    np.testing.assert_array_equal(bits(be, got), bits(be, want), err_msg=name)


def assert_mask(be, name, x, folded, plain, bf16_values=False):
    """folded is +0 where x is not > 0 and plain's bits where it is; and the case exercises every kind
    of x element: the plain dx is non-zero at some element of each (x holding BF16 values, as BF16
    storage or widened: all but 1e-45 and 1e-40, which are not BF16 numbers)."""
    xv = values(be, x)
    pos = xv > 0
    fb, pb, pv = bits(be, folded), bits(be, plain), values(be, plain)
    assert (fb[~pos] == 0).all(), f"{name}: dx not +0 at {int((fb[~pos] != 0).sum())} elements where x <= 0"
    np.testing.assert_array_equal(fb[pos], pb[pos], err_msg=f"{name}: dx changed where x > 0")
    kinds = {"+0": (xv == 0) & ~np.signbit(xv), "positive": xv > 2.0 ** -100,
             **{k: (np.isnan(xv) if k == "nan" else xv == np.float32(v)) & (np.signbit(xv) == np.signbit(v))
                for k, v in SPECIAL.items()}}
    for kind, where in kinds.items():
        if kind in ("1e-45", "1e-40") and (bf16_values or be.is_bf16(x)):  # stored as 0 and 2^-133
            continue
        assert (where & (pv != 0)).any(), f"{name}: no non-zero plain dx where x is {kind}: the case does not test it"


def check_composed(be, name, dy, x, w, **kw):
    """relu_input=True gives relu_backward(plain dx, x) bit for bit and the plain dw, db; returns the folded dx."""
    dx, dw, db = be.conv2d_backward(dy, x, w, **kw)
    fdx, fdw, fdb = be.conv2d_backward(dy, x, w, relu_input=True, **kw)
    assert_bits(be, f"{name} dx", fdx, be.relu_backward(dx, x))
    assert_bits(be, f"{name} dw", fdw, dw)
    assert_bits(be, f"{name} db", fdb, db)
    assert_mask(be, name, x, fdx, dx)
    return fdx


def reference_fold(dy, x, w, precision, geo):
    """(dx, sum |terms| of dx) of the float64 reference with relu_input=True at `precision`."""
    dx = ref.conv2d_backward(f64(dy), f64(x), f64(w), precision=precision, relu_input=True, **geo)[0]
    adx = ref.conv2d_backward(absf(round_to(precision, dy)), np.ones(x.shape), absf(round_to(precision, w)), **geo)[0]
    return dx, adx


# ---- every version, precision, storage and algorithm on the kernel backends ---------------------------

@pytest.mark.parametrize("case", FP32_CASES)
def test_fp32_every_version(kernel_backend, emu_order, case):
    be = kernel_backend
    dy, x, w, geo, terms = case_data(case)
    want, adx = reference_fold(dy, x, w, "fp32", geo)
    DY, X, Wt = be.asarray(dy), be.asarray(x), be.asarray(w)
    for v in [0] + conv_versions(be):
        got = check_composed(be, f"{case} v{v}", DY, X, Wt, version=v, **geo)
        assert_near(f"{case} v{v} vs reference", values(be, got), want, adx, terms, False)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("case", TC_CASES)
def test_tensor_cores_every_version_and_storage(kernel_backend, emu_order, precision, case):
    be = kernel_backend
    dy, x, w, geo, terms = case_data(case)
    storages = ["fp32", "bf16"] if precision == "bf16" else ["fp32"]
    for storage in storages:
        if storage == "bf16":  # the stored values: BF16 x and dy, and their float32 values for the reference
            DY, X = be.to_bf16(be.asarray(dy)), be.to_bf16(be.asarray(x))
            dyv, xv = values(be, DY), values(be, X)
        else:
            DY, X, dyv, xv = be.asarray(dy), be.asarray(x), dy, x
        want, adx = reference_fold(dyv, xv, w, precision, geo)
        for v in [0] + be.versions(f"conv2d_backward_{precision}"):
            name = f"{case} {precision} {storage} storage v{v}"
            got = check_composed(be, name, DY, X, be.asarray(w), version=v, precision=precision, **geo)
            assert be.is_bf16(got) == (storage == "bf16")
            assert_near(f"{name} vs reference", values(be, got), want, adx, terms, storage == "bf16")


@pytest.mark.parametrize("case", WINO_FOLD_CASES)
def test_winograd_every_version(kernel_backend, emu_order, case):
    be = kernel_backend
    N, C, H, W, K, g, pad = WINO_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    x = relu_x(rng, (N, C, H, W))
    w = rng.standard_normal((K, C // g, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((N, K, H + 2 * pad - 2, W + 2 * pad - 2)).astype(np.float32)
    geo = dict(padding=pad, groups=g)
    want = ref.conv2d_backward(f64(dy), f64(x), f64(w), relu_input=True, **geo)[0]
    E = winograd64(dy, data_filter(w, g), None, 2 - pad, g, absolute=True)
    DY, X, Wt = be.asarray(dy), be.asarray(x), be.asarray(w)
    for v in wino_versions(be):
        got = check_composed(be, f"{case} winograd v{v}", DY, X, Wt, version=v, algorithm="winograd", **geo)
        assert_within(f"{case} winograd v{v} vs reference", values(be, got), want, E)


def test_non_finite_gradients_pass_where_x_is_positive(kernel_backend):
    """An infinite dy gives inf and NaN in the plain dx; the fold keeps them where x > 0 and zeroes them
    elsewhere, exactly as relu_backward does (every path)."""
    be = kernel_backend
    dy, x, w, geo, _ = case_data("conv4_3x3_p1_g2")
    dy[0, 1, 2, 3] = np.inf  # image 0: +-inf in dx
    dy[1, 1, 2, 3], dy[1, 2, 2, 3] = np.inf, -np.inf  # image 1: inf - inf, NaN
    DY, X, Wt = be.asarray(dy), be.asarray(x), be.asarray(w)
    runs = [dict(version=v) for v in conv_versions(be)] + [dict(precision="tf32"), dict(precision="bf16")]
    runs += [dict(version=v, algorithm="winograd") for v in wino_versions(be)]
    seen = set()
    for kw in runs:
        plain = be.conv2d_backward(DY, X, Wt, **kw, **geo)[0]
        pv, xv = values(be, plain), values(be, X)
        seen |= {k for k, f in (("nan", np.isnan), ("inf", np.isinf)) if (f(pv) & (xv > 0)).any()}
        folded = be.conv2d_backward(DY, X, Wt, relu_input=True, **kw, **geo)[0]
        assert_bits(be, f"{kw}", folded, be.relu_backward(plain, X))
        assert np.isfinite(values(be, folded)[~(xv > 0)]).all()
    assert seen == {"nan", "inf"}


# ---- the numpy backend (the contract) -------------------------------------------------------------------

@pytest.mark.parametrize("precision, storage", [("fp32", "float32"), ("tf32", "float32"), ("bf16", "float32"),
                                                ("bf16", "bf16")])
def test_every_backend_is_the_composed_ops(any_backend, precision, storage):
    """The reference's relu_input (the numpy backend's) and the kernel backends' version 0, on one call."""
    be = any_backend
    dy, x, w, geo, _ = case_data("tile64_k40")
    DY, X, Wt = be.asarray(dy), be.asarray(x), be.asarray(w)
    if storage == "bf16":
        DY, X = be.to_bf16(DY), be.to_bf16(X)
    check_composed(be, f"{be.name} {precision} {storage}", DY, X, Wt, precision=precision, **geo)


def test_reference_in_float64_is_the_composed_ops():
    dy, x, w, geo, _ = case_data("groups3")
    dy, x, w = dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64)
    dx, dw, db = ref.conv2d_backward(dy, x, w, **geo)
    fdx, fdw, fdb = ref.conv2d_backward(dy, x, w, relu_input=True, **geo)
    assert fdx.dtype == np.float64
    np.testing.assert_array_equal(fdx.view(np.uint64), ref.relu_backward(dx, x).view(np.uint64))
    np.testing.assert_array_equal(fdx.view(np.uint64), np.where(x > 0, dx, 0.0).view(np.uint64))
    assert (dx[~(x > 0)] != 0).all() and (fdx[~(x > 0)] == 0).all()
    np.testing.assert_array_equal(fdw, dw)
    np.testing.assert_array_equal(fdb, db)


def test_uint16_bits_as_x(kernel_backend):
    """x as uint16 BF16 bit patterns (cuda's BF16 arrays; on emu the older form of BF16 operands, whose
    dx is float32): the mask is taken on the BF16 values those bits hold."""
    be = kernel_backend
    dy, x, w, geo, _ = case_data("conv4_3x3_p1_g2")
    DY, X, Wt = be.asarray(bf16_bits(dy)), be.asarray(bf16_bits(x)), be.asarray(w)
    xv = X if be.is_bf16(X) else be.asarray(from_bf16_bits(bf16_bits(x)))  # what relu_backward takes with dx
    dx = be.conv2d_backward(DY, X, Wt, precision="bf16", **geo)[0]
    fdx = be.conv2d_backward(DY, X, Wt, precision="bf16", relu_input=True, **geo)[0]
    assert_bits(be, "dx", fdx, be.relu_backward(dx, xv))
    assert_mask(be, "uint16 x", xv, fdx, dx, bf16_values=True)


def test_need_dx_false_with_relu_input(any_backend):
    """Nothing to fold: dx None, dw and db the plain ones."""
    be = any_backend
    dy, x, w, geo, _ = case_data("conv4_3x3_p1_g2")
    DY, X, Wt = be.asarray(dy), be.asarray(x), be.asarray(w)
    dx, dw, db = be.conv2d_backward(DY, X, Wt, need_dx=False, relu_input=True, **geo)
    _, dw0, db0 = be.conv2d_backward(DY, X, Wt, **geo)
    assert dx is None
    assert_bits(be, "dw", dw, dw0)
    assert_bits(be, "db", db, db0)


# ---- bad arguments -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["yes", 1, None, np.float32(1)])
def test_relu_input_must_be_a_bool(any_backend, bad):
    be = any_backend
    dy, x, w, geo, _ = case_data("conv4_3x3_p1_g2")
    with pytest.raises(TypeError, match=f"conv2d_backward: relu_input must be a bool, got {type(bad).__name__}"):
        be.conv2d_backward(be.asarray(dy), be.asarray(x), be.asarray(w), relu_input=bad, **geo)
    be.conv2d_backward(be.asarray(dy), be.asarray(x), be.asarray(w), relu_input=np.bool_(True), **geo)  # numpy's bool


def test_binding_checks_relu_x_and_writes_nothing(kernel_backend):
    """The extension's relu_x (the ReLU output the data kernels read): dx's storage and x's shape, apart
    from dx; a refused call leaves dx as it was."""
    be, m = kernel_backend, kernel_backend._mod
    dy, x, w, geo, _ = case_data("conv4_3x3_p1_g2")
    DY, X, Wt = be.asarray(dy), be.asarray(x), be.asarray(w)
    dx = be.xp.full(x.shape, 7.0, dtype=np.float32)
    dy16, x16 = be.xp.zeros(dy.shape, dtype=np.uint16), be.xp.zeros(x.shape, dtype=np.uint16)
    dx16 = be.xp.full(x.shape, 0x40E0, dtype=np.uint16)  # 7.0 in BF16
    bad = [
        (TypeError, r"conv2d_backward: relu_x must be float32 or uint16, got float64", dict(relu_x=be.xp.zeros(x.shape)), dx),
        (ValueError, r"conv2d_backward: relu_x has shape \(2, 12, 6, 5\), expected \(2, 12, 6, 6\)",
         dict(relu_x=be.xp.zeros((2, 12, 6, 5), dtype=np.float32)), dx),
        (ValueError, r"conv2d_backward: relu_x must have 4 dimensions, got 3",
         dict(relu_x=be.xp.zeros((2, 12, 36), dtype=np.float32)), dx),
        (TypeError, r"conv2d_backward: relu_x is uint16 \(BF16 storage\) but dx is float32",
         dict(relu_x=be.xp.zeros(x.shape, dtype=np.uint16)), dx),
        (ValueError, r"conv2d_backward: .*overlap", dict(relu_x=dx), dx),
    ]
    for exc, pattern, kw, out in bad:
        with pytest.raises(exc, match=pattern):
            m.conv2d_backward_data(DY, X, Wt, out, **geo, **kw)
        assert (be.to_numpy(out) == 7.0).all(), pattern
    with pytest.raises(TypeError, match=r"conv2d_backward: relu_x is float32 but dx is uint16 \(BF16 storage\)"):
        m.conv2d_backward_data(dy16, x16, Wt, dx16, precision="bf16", relu_x=X, **geo)
    assert (be.to_numpy(dx16) == 0x40E0).all()
