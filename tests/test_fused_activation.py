"""The ReLU fused into the conv2d and linear forward (``activation="relu"``; issue 11, item 3).

The fused output is max(0, acc + b) taken on the FP32 value the unfused kernel stores, with the
same fmaxf as relu_forward (tile::epilogue, csrc/kernels/gemm_tile.cuh). So for every numbered
version, every conv/linear case of tests/test_kernels_conv.py, and every emu fiber order:

* bit for bit: fused == relu_forward(unfused) from the same version on the same backend;
* against the float64 reference relu(conv(...)) with test_kernels_conv's tolerance (the
  Higham bound of the unfused sum): ReLU is 1-Lipschitz, |relu(a) - relu(b)| <= |a - b|,
  so the bound of the sum bounds the ReLU of it;
* on the numpy backend (the reference in float32): fused == relu_forward(unfused), bit for bit.

Each case asserts that the unfused output has negative entries, so a fused path that skipped
the ReLU fails. The split-K path of linear (the ReLU applied in splitk_reduce) runs with forced
splits.

The tensor-core forwards (tf32, bf16) fuse it the same way (tile::epilogue on the FP32 accumulator
plus bias): fused == relu_forward(unfused) bit for bit, every version, in every fiber order; the
unfused tensor-core output is held to its reference by tests/test_kernels_tensor_cores.py, and the
1-Lipschitz ReLU carries that bound over.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from alexnet_cuda import reference as ref
from test_kernels_conv import (CONV_CASES, LINEAR_CASES, absf, assert_close, conv_inputs, conv_versions, f64,
                               linear_versions, on)


def _relu64(a):
    return np.maximum(a, 0.0)


def _check_fused(be, name, fused, unfused):
    """fused (backend array) equals relu_forward(unfused) bit for bit; unfused had negatives."""
    u = be.to_numpy(unfused)
    assert (u < 0).any(), f"{name}: the case has no negative output (the ReLU would not be exercised)"
    want = be.to_numpy(be.relu_forward(unfused))
    got = be.to_numpy(fused)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=name)
    assert (got >= 0).all()


def _conv_case(case):
    N, C, H, W, K, R, S, st, pad, g = CONV_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    x, w, b = conv_inputs(rng, N, C, H, W, K, R, S, g)
    return x, w, b, dict(stride=st, padding=pad, groups=g), (C // g) * R * S + 1


@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_conv2d_fused_relu(kernel_backend, emu_order, case):
    be = kernel_backend
    x, w, b, geo, terms = _conv_case(case)
    y = _relu64(ref.conv2d_forward(f64(x), f64(w), f64(b), **geo))
    ya = ref.conv2d_forward(absf(x), absf(w), absf(b), **geo)
    X, Wt, B = on(be, x), on(be, w), on(be, b)
    for v in conv_versions(be):
        fused = be.conv2d_forward(X, Wt, B, version=v, activation="relu", **geo)
        _check_fused(be, f"{case} v{v}", fused, be.conv2d_forward(X, Wt, B, version=v, **geo))
        assert_close(f"relu(y) v{v}", be.to_numpy(fused), y, ya, terms)
        # activation="none" is the plain forward
        plain = be.conv2d_forward(X, Wt, B, version=v, activation="none", **geo)
        np.testing.assert_array_equal(be.to_numpy(plain), be.to_numpy(be.conv2d_forward(X, Wt, B, version=v, **geo)))


def test_conv2d_fused_relu_without_bias(kernel_backend):
    be = kernel_backend
    x, w, _, geo, _ = _conv_case("conv4_3x3_p1_g2")
    X, Wt = on(be, x), on(be, w)
    for v in conv_versions(be):
        _check_fused(be, f"no bias v{v}", be.conv2d_forward(X, Wt, None, version=v, activation="relu", **geo),
                     be.conv2d_forward(X, Wt, None, version=v, **geo))


def _linear_case(case):
    N, I, O = LINEAR_CASES[case]
    rng = np.random.default_rng(N * 1000 + I + O)
    x = rng.standard_normal((N, I)).astype(np.float32)
    w = rng.standard_normal((O, I)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    return x, w, b


# "tiny" (1x1x1) has a single output, positive with this seed: it is skipped by the negative-output check
LINEAR_RELU_CASES = [c for c in LINEAR_CASES if c != "tiny"]


@pytest.mark.parametrize("case", LINEAR_RELU_CASES, ids=LINEAR_RELU_CASES)
def test_linear_fused_relu(kernel_backend, emu_order, case):
    be = kernel_backend
    x, w, b = _linear_case(case)
    y = _relu64(ref.linear_forward(f64(x), f64(w), f64(b)))
    ya = ref.linear_forward(absf(x), absf(w), absf(b))
    X, Wt, B = on(be, x), on(be, w), on(be, b)
    for v in linear_versions(be):
        fused = be.linear_forward(X, Wt, B, version=v, activation="relu")
        _check_fused(be, f"{case} v{v}", fused, be.linear_forward(X, Wt, B, version=v))
        assert_close(f"relu(y) v{v}", be.to_numpy(fused), y, ya, x.shape[1] + 1)
        _check_fused(be, f"{case} no bias v{v}", be.linear_forward(X, Wt, None, version=v, activation="relu"),
                     be.linear_forward(X, Wt, None, version=v))


@pytest.mark.parametrize("splits", [2, 3, 7])
def test_linear_fused_relu_split_k(kernel_backend, emu_order, splits):
    """The ReLU of a split reduction is applied by splitk_reduce, after the bias."""
    be, m = kernel_backend, kernel_backend._mod
    rng = np.random.default_rng(splits)
    N, I, O = 37, 515, 70
    X = be.asarray(rng.standard_normal((N, I)).astype(np.float32))
    Wt = be.asarray(rng.standard_normal((O, I)).astype(np.float32))
    B = be.asarray(rng.standard_normal(O).astype(np.float32))
    plan = m.linear_check(X, Wt, B, None, version=2, splits=splits)["forward"]
    assert plan["splits"] > 1
    work = be.xp.empty(plan["workspace"], dtype=np.float32)
    ys = {}
    for act in ("none", "relu"):
        ys[act] = be.xp.empty((N, O), dtype=np.float32)
        m.linear_forward(X, Wt, B, ys[act], work, version=2, splits=splits, activation=act)
    _check_fused(be, f"splits {splits}", ys["relu"], ys["none"])


@pytest.mark.parametrize("case", ["conv2_5x5_p2_g2", "odd_k130"])
def test_reference_fused_relu_is_relu_of_forward(case):
    """The numpy backend in float32 and float64: the fused forward is relu_forward of the plain one, bit for bit."""
    x, w, b, geo, _ = _conv_case(case)
    for dt in (np.float32, np.float64):
        xs, ws, bs = (a.astype(dt) for a in (x, w, b))
        got = ref.conv2d_forward(xs, ws, bs, activation="relu", **geo)
        plain = ref.conv2d_forward(xs, ws, bs, **geo)
        assert got.dtype == dt and (plain < 0).any()
        np.testing.assert_array_equal(got, ref.relu_forward(plain))
    xl, wl, bl = _linear_case("odd_k130")
    plain = ref.linear_forward(xl, wl, bl)
    assert (plain < 0).any()
    np.testing.assert_array_equal(ref.linear_forward(xl, wl, bl, activation="relu"), ref.relu_forward(plain))


def _forward_call(be, op, act, precision):
    rng = np.random.default_rng(0)
    if op == "conv2d_forward":
        x, w, b = (on(be, a) for a in conv_inputs(rng, 1, 2, 5, 5, 3, 3, 3, 1))
        return lambda: be.conv2d_forward(x, w, b, activation=act, precision=precision)
    x, w = on(be, rng.standard_normal((2, 4)).astype(np.float32)), on(be, rng.standard_normal((3, 4)).astype(np.float32))
    return lambda: be.linear_forward(x, w, None, activation=act, precision=precision)


@pytest.mark.parametrize("op", ["conv2d_forward", "linear_forward"])
@pytest.mark.parametrize("act, precision, pattern", [
    ("tanh", "fp32", r"activation must be one of none, relu, got 'tanh'"),
    (None, "fp32", r"activation must be one of none, relu, got None"),
    ("sigmoid", "bf16", r"activation must be one of none, relu, got 'sigmoid'"),
])
def test_fused_activation_bad_arguments(any_backend, op, act, precision, pattern):
    """The same ValueError on every backend (alexnet_cuda.checks.activation)."""
    with pytest.raises(ValueError, match=f"{op}: {pattern}"):
        _forward_call(any_backend, op, act, precision)()


def test_bindings_refuse_an_unknown_activation(kernel_backend):
    """The extension checks activation itself (a caller that skips the Python layer)."""
    be, m = kernel_backend, kernel_backend._mod
    x = be.xp.ones((1, 2, 5, 5), dtype=np.float32)
    w = be.xp.ones((3, 2, 3, 3), dtype=np.float32)
    y = be.xp.empty((1, 3, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="conv2d_forward: activation must be none or relu, got 'sigmoid'"):
        m.conv2d_forward(x, w, None, y, activation="sigmoid")
    a, wl, yl = (be.xp.ones(s, dtype=np.float32) for s in ((2, 4), (3, 4), (2, 3)))
    with pytest.raises(ValueError, match="linear_forward: activation must be none or relu, got 'RELU'"):
        m.linear_forward(a, wl, None, yl, activation="RELU")


TC_CONV_CASES = ["conv1_11x11_s4", "conv2_5x5_p2_g2", "odd_k130", "groups3"]


def tc_versions(be, op, precision):
    return [0] + be.versions(f"{op}_{precision}")


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("case", TC_CONV_CASES, ids=TC_CONV_CASES)
def test_conv2d_fused_relu_tensor_cores(kernel_backend, emu_order, precision, case):
    be = kernel_backend
    x, w, b, geo, _ = _conv_case(case)
    X, Wt, B = on(be, x), on(be, w), on(be, b)
    for v in tc_versions(be, "conv2d_forward", precision):
        kw = dict(version=v, precision=precision, **geo)
        _check_fused(be, f"{case} {precision} v{v}", be.conv2d_forward(X, Wt, B, activation="relu", **kw),
                     be.conv2d_forward(X, Wt, B, **kw))


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("case", LINEAR_RELU_CASES, ids=LINEAR_RELU_CASES)
def test_linear_fused_relu_tensor_cores(kernel_backend, emu_order, precision, case):
    be = kernel_backend
    X, Wt, B = (on(be, a) for a in _linear_case(case))
    _, I, O = LINEAR_CASES[case]
    for v in tc_versions(be, "linear_forward", precision):
        if v == 2 and (I % 8 or O % 8):  # bf16 version 2 takes rows of multiples of 8 only
            continue
        kw = dict(version=v, precision=precision)
        _check_fused(be, f"{case} {precision} v{v}", be.linear_forward(X, Wt, B, activation="relu", **kw),
                     be.linear_forward(X, Wt, B, **kw))


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_linear_fused_relu_tensor_cores_split_k(kernel_backend, precision):
    """gemm_tc's split reduction: the ReLU in splitk_reduce."""
    from alexnet_cuda.precision import bf16_bits
    be, m = kernel_backend, kernel_backend._mod
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((37, 1030)).astype(np.float32), rng.standard_normal((70, 1030)).astype(np.float32)
    X, Wt = (be.asarray(bf16_bits(a) if precision == "bf16" else a) for a in (x, w))
    B = be.asarray(rng.standard_normal(70).astype(np.float32))
    kw = dict(version=1, splits=3, precision=precision)
    plan = m.linear_check(X, Wt, B, None, **kw)["forward"]
    assert plan["splits"] > 1
    work = be.xp.empty(plan["workspace"], dtype=np.float32)
    ys = {}
    for act in ("none", "relu"):
        ys[act] = be.xp.empty((37, 70), dtype=np.float32)
        m.linear_forward(X, Wt, B, ys[act], work, activation=act, **kw)
    _check_fused(be, f"{precision} splits", ys["relu"], ys["none"])


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reference_fused_relu_at_reduced_precision(precision):
    x, w, b, geo, _ = _conv_case("conv2_5x5_p2_g2")
    plain = ref.conv2d_forward(x, w, b, precision=precision, **geo)
    assert (plain < 0).any()
    np.testing.assert_array_equal(ref.conv2d_forward(x, w, b, precision=precision, activation="relu", **geo),
                                  ref.relu_forward(plain))
    xl, wl, bl = _linear_case("odd_k130")
    np.testing.assert_array_equal(ref.linear_forward(xl, wl, bl, precision=precision, activation="relu"),
                                  ref.relu_forward(ref.linear_forward(xl, wl, bl, precision=precision)))
