"""BF16 storage of the memory-bound ops (relu, tanh, dropout, maxpool, LRN, transfer): every numbered
kernel version (and version 0) on every kernel backend, in the three emu fiber orders, against the
numpy backend's BF16 op; the numpy backend's BF16 op against round_bf16 of its float32 op on the
widened inputs; the backends' bf16 helpers; mixed storage and wrong dtypes.

Tolerances (kernel BF16 output vs the numpy backend's BF16 output; both round the FP32 result once):
* bit for bit where the FP32 kernel computes the same operation sequence as the FP32 reference:
  relu (a max, a select), dropout (two products rounded one at a time), maxpool forward (a max:
  one of the inputs) and backward (the FP32 sums in the reference's order, then one rounding),
  tanh backward (dy * ((1 - y) * (1 + y)), no contraction), transfer (a copy; one FP32 addition).
  Equal FP32 values round to equal BF16 values.
* within 1 BF16 ulp where the FP32 math itself legitimately differs: tanh forward (tanhf vs NumPy's
  tanh, a few FP32 ulp apart) and LRN's y and dx (powf, within 2 FP32 ulp on CUDA). Two FP32 values
  a few FP32 ulp (2^-23 relative) apart round to the same BF16 value unless a BF16 rounding boundary
  lies between them, and then to neighbours: 1 BF16 ulp apart, never more. LRN's dx is a difference
  of two terms; the FP32 tolerance of tests/test_kernels_layers.py (2e-6 * max|dx| for the
  cancellation) is allowed on top of the ulp.
* LRN's scale is FP32 storage in both and the same FP32 sum in the same order: rtol 1e-6 as in
  tests/test_kernels_layers.py (exact on emu).
"""
import ml_dtypes
import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda import reference as ref
from alexnet_cuda.precision import from_bf16_bits, round_bf16, to_bf16

BF16 = np.dtype(ml_dtypes.bfloat16)
NUMPY = alexnet_cuda.get_backend("numpy")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def bf16_values(rng, shape, scale=1.0):
    """A numpy BF16 array of normal random values (every value exactly representable)."""
    return to_bf16((rng.standard_normal(shape) * scale).astype(np.float32))


def put(be, a):
    """The numpy array a on backend be, in the same storage (BF16 stays BF16)."""
    if a.dtype == BF16:
        return be.to_bf16(be.asarray(a.astype(np.float32)))
    return be.asarray(a)


def bits(be, a):
    """The BF16 bit patterns (uint16, numpy) of a backend's BF16 array."""
    assert be.is_bf16(a), f"expected a BF16 array of {be.name}, got {a.dtype}"
    return np.asarray(be.to_numpy(a)).view(np.uint16)


def assert_bits(got, want, what):
    np.testing.assert_array_equal(got, want.view(np.uint16), err_msg=what)


def ordinal(b):
    """BF16 bit patterns as integers that count BF16 values in order (-0 and +0 both 0)."""
    b = b.astype(np.int32)
    return np.where(b & 0x8000, -(b & 0x7FFF), b)


def assert_ulps(got, want, what, atol=0.0):
    """got (bits) within 1 BF16 ulp of want (a BF16 array), or within atol of it; and, on 100 elements
    or more, at least 90% bit for bit: FP32 values a few FP32 ulp apart straddle a BF16 rounding
    boundary rarely (a few in 2^16), so a kernel that rounded wrongly (truncation: 1 ulp off half the
    time) fails here."""
    ulps = np.abs(ordinal(got) - ordinal(want.view(np.uint16)))
    near = np.abs(from_bf16_bits(got) - want.astype(np.float32)) <= atol
    bad = (ulps > 1) & ~near
    assert not bad.any(), f"{what}: {bad.sum()} elements more than 1 BF16 ulp apart, worst {ulps.max()} ulps"
    if got.size >= 100:
        assert (ulps == 0).mean() >= 0.9, f"{what}: only {(ulps == 0).mean():.1%} bit for bit"


def versions(be, op):
    vs = be.versions(op)
    assert 1 in vs and 2 in vs, f"{op}: numbered versions {vs}"
    return [0] + vs


# Odd sizes: not multiples of 4 or 8 (the vector versions' tails), and 1.
SIZES = [1, 3, 5, 8, 13, 1027]


# ---------------------------------------------------------------------------
# numpy backend: BF16 op = round_bf16(FP32 op on the widened inputs)
# ---------------------------------------------------------------------------

def test_numpy_bf16_ops_round_the_fp32_op_once(rng):
    w = lambda a: a.astype(np.float32)  # noqa: E731  (widen: exact)
    x, dy = bf16_values(rng, (2, 7, 5, 6), 3.0), bf16_values(rng, (2, 7, 5, 6))
    mask = (np.arange(dy.size) % 2).astype(np.uint8).reshape(dy.shape)
    cases = {
        "relu_forward": (ref.relu_forward(x), ref.relu_forward(w(x))),
        "relu_backward": (ref.relu_backward(dy, x), ref.relu_backward(w(dy), w(x))),
        "tanh_forward": (ref.tanh_forward(x), ref.tanh_forward(w(x))),
        "tanh_backward": (ref.tanh_backward(dy, to_bf16(np.tanh(w(x)))),
                          ref.tanh_backward(w(dy), round_bf16(np.tanh(w(x))))),
        "dropout_forward": (ref.dropout_forward(x, p=0.3, seed=5)[0], ref.dropout_forward(w(x), p=0.3, seed=5)[0]),
        "dropout_backward": (ref.dropout_backward(dy, mask, p=0.3), ref.dropout_backward(w(dy), mask, p=0.3)),
        "maxpool_forward": (ref.maxpool_forward(x), ref.maxpool_forward(w(x))),
        "transfer_backward": (ref.transfer_backward(x, offset=2, channels=3, local=dy),
                              ref.transfer_backward(w(x), offset=2, channels=3, local=w(dy))),
    }
    yp = ref.maxpool_forward(x)
    dyp = bf16_values(rng, yp.shape)
    cases["maxpool_backward"] = (ref.maxpool_backward(dyp, x, yp), ref.maxpool_backward(w(dyp), w(x), w(yp)))
    y, scale = ref.lrn_forward(x, alpha=0.1)
    y32, scale32 = ref.lrn_forward(w(x), alpha=0.1)
    cases["lrn_forward"] = (y, y32)
    assert scale.dtype == np.float32
    np.testing.assert_array_equal(scale, scale32)  # the saved sum stays FP32, not rounded
    cases["lrn_backward"] = (ref.lrn_backward(dy, x, y, scale, alpha=0.1),
                             ref.lrn_backward(w(dy), w(x), w(y), scale, alpha=0.1))
    for op, (got, fp32) in cases.items():
        assert got.dtype == BF16, op
        assert_bits(got.view(np.uint16), to_bf16(fp32), op)
        assert NUMPY.is_bf16(got), op
    # not vacuous: the FP32 results are not BF16 values, so the BF16 ops did round them
    assert (round_bf16(cases["tanh_forward"][1]) != cases["tanh_forward"][1]).any()


def test_numpy_transfer_forward_copies_bf16_as_it_is(rng):
    src, dst = bf16_values(rng, (2, 3, 2, 2)), bf16_values(rng, (2, 5, 2, 2))
    want = dst.copy()
    want[:, 1:4] = src
    out = ref.transfer_forward(src, dst, offset=1)
    assert out is dst
    assert_bits(dst.view(np.uint16), want, "transfer_forward")


# ---------------------------------------------------------------------------
# backend helpers
# ---------------------------------------------------------------------------

@pytest.fixture(params=["numpy"] + [b for b in ("emu", "cuda") if b in alexnet_cuda.available_backends()])
def every_backend(request):
    return alexnet_cuda.get_backend(request.param)


def test_bf16_helpers(every_backend, rng):
    be = every_backend
    assert be.bf16_dtype == (np.dtype(np.uint16) if be.name == "cuda" else BF16)
    x = rng.standard_normal(37).astype(np.float32)
    x[:3] = [np.inf, -0.0, 1 + 2.0 ** -8]  # a tie: rounds to even (1.0)
    b = be.to_bf16(be.asarray(x))
    assert be.is_bf16(b) and not be.is_bf16(be.asarray(x)) and not be.is_bf16(3.0)
    assert_bits(bits(be, b), to_bf16(x), "to_bf16")
    back = be.from_bf16(b)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(be.to_numpy(back), round_bf16(x))
    if be.name == "emu":  # memory of the current virtual device, like every emu array
        assert be.device_of(b) == be.current_device() == be.device_of(back)
    with pytest.raises(TypeError, match="from_bf16: a must be a BF16 array"):
        be.from_bf16(be.asarray(x))


# ---------------------------------------------------------------------------
# kernels: elementwise
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES)
def test_relu_tanh_bf16(kernel_backend, emu_order, rng, n):
    be = kernel_backend
    x, dy = bf16_values(rng, n, 3.0), bf16_values(rng, n)
    x[::5] = 0
    y_relu, y_tanh = ref.relu_forward(x), ref.tanh_forward(x)
    for v in versions(be, "relu_forward"):
        what = f"n={n} version {v}"
        assert_bits(bits(be, be.relu_forward(put(be, x), version=v)), y_relu, "relu_forward " + what)
        assert_bits(bits(be, be.relu_backward(put(be, dy), put(be, y_relu), version=v)),
                    ref.relu_backward(dy, y_relu), "relu_backward " + what)
        assert_ulps(bits(be, be.tanh_forward(put(be, x), version=v)), y_tanh, "tanh_forward " + what)
        assert_bits(bits(be, be.tanh_backward(put(be, dy), put(be, y_tanh), version=v)),
                    ref.tanh_backward(dy, y_tanh), "tanh_backward " + what)


def test_elementwise_bf16_alignment(kernel_backend, rng):
    """Version 2 moves four BF16 (8 bytes) per access: an array 8-byte aligned but not 16 runs it; one
    element off (2 bytes) does not, and the dispatcher takes version 1 there."""
    be = kernel_backend
    x = bf16_values(rng, 23)
    base = be.zeros(24, np.uint16).view(be.bf16_dtype)
    for off, v2 in ((4, True), (1, False)):
        xs = base[off:off + 16]
        xs[...] = put(be, x[:16])
        want = ref.relu_forward(x[:16])
        for v in (0, 1) + ((2,) if v2 else ()):
            assert_bits(bits(be, be.relu_forward(xs, version=v)), want, f"offset {off}, version {v}")
        if not v2:
            with pytest.raises(ValueError, match="relu_forward: version 2 needs 8-byte aligned arrays"):
                be.relu_forward(xs, version=2)


# ---------------------------------------------------------------------------
# kernels: dropout
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n,start", [(1, 0), (7, 0), (13, 2), (1030, 4)])
def test_dropout_bf16(kernel_backend, emu_order, rng, n, start):
    be = kernel_backend
    x, dy = bf16_values(rng, n), bf16_values(rng, n)
    y_ref, mask_ref = ref.dropout_forward(x, p=0.4, seed=11, offset=3, start=start)
    dx_ref = ref.dropout_backward(dy, mask_ref, p=0.4)
    for v in versions(be, "dropout_forward"):
        if v == 2 and start % 4:
            continue  # version 2 needs start % 4 == 0 (the Philox lanes)
        what = f"n={n} start={start} version {v}"
        y, mask = be.dropout_forward(put(be, x), p=0.4, seed=11, offset=3, start=start, version=v)
        assert_bits(bits(be, y), y_ref, "dropout_forward " + what)
        np.testing.assert_array_equal(be.to_numpy(mask), mask_ref, err_msg="mask " + what)
        assert_bits(bits(be, be.dropout_backward(put(be, dy), be.asarray(mask_ref), p=0.4, version=v)), dx_ref,
                    "dropout_backward " + what)
        assert_bits(bits(be, be.dropout_backward(put(be, dy), be.asarray(mask_ref), p=0.4, relu_y=put(be, x),
                                                 version=v)),
                    ref.dropout_backward(dy, mask_ref, p=0.4, relu_y=x), "dropout_backward relu_y " + what)


# ---------------------------------------------------------------------------
# kernels: max pooling
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape,size,stride", [((1, 1, 3, 3), 3, 2), ((1, 3, 9, 11), 3, 2), ((2, 2, 7, 6), 2, 1),
                                               ((1, 2, 12, 9), 3, 4), ((1, 1, 40, 200), 3, 2)])
def test_maxpool_bf16(kernel_backend, emu_order, rng, shape, size, stride):
    be = kernel_backend
    # BF16 values with many ties (a coarse grid) so the first-max rule matters; dy in BF16 with
    # distinct magnitudes so that overlapping sums round (the FP32 sum is rounded once at the end)
    x = to_bf16(rng.integers(-3, 4, shape).astype(np.float32) * np.float32(0.5))
    y_ref = ref.maxpool_forward(x, size=size, stride=stride)
    dy = bf16_values(rng, y_ref.shape)
    dx_ref = ref.maxpool_backward(dy, x, y_ref, size=size, stride=stride)
    for v in versions(be, "maxpool_forward"):  # (1, 1, 40, 200): version 2 splits the plane into bands
        what = f"{shape} size {size} stride {stride} version {v}"
        y = be.maxpool_forward(put(be, x), size=size, stride=stride, version=v)
        assert_bits(bits(be, y), y_ref, "maxpool_forward " + what)
        assert_bits(bits(be, be.maxpool_backward(put(be, dy), put(be, x), y, size=size, stride=stride, version=v)),
                    dx_ref, "maxpool_backward " + what)
        assert_bits(bits(be, be.maxpool_backward(put(be, dy), put(be, x), y, size=size, stride=stride,
                                                 relu_input=True, version=v)),
                    ref.maxpool_backward(dy, x, y_ref, size=size, stride=stride, relu_input=True),
                    "maxpool_backward relu_input " + what)


# ---------------------------------------------------------------------------
# kernels: LRN
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape,size,alpha", [((1, 3, 4, 5), 5, 1e-1), ((2, 7, 3, 3), 5, 5e-2),
                                              ((1, 35, 3, 11), 5, 1e-1), ((1, 4, 3, 3), 9, 1e-1)])
def test_lrn_bf16(kernel_backend, emu_order, rng, shape, size, alpha):
    be = kernel_backend
    hp = dict(size=size, alpha=alpha)
    x, dy = bf16_values(rng, shape, 3.0), bf16_values(rng, shape)
    y_ref, s_ref = ref.lrn_forward(x, **hp)
    dx_ref = ref.lrn_backward(dy, x, y_ref, s_ref, **hp)
    atol = 2e-6 * float(np.abs(dx_ref.astype(np.float32)).max())
    for v in versions(be, "lrn_forward"):
        what = f"{shape} size {size} version {v}"
        y, scale = be.lrn_forward(put(be, x), version=v, **hp)
        assert scale.dtype == np.float32
        np.testing.assert_allclose(be.to_numpy(scale), s_ref, rtol=1e-6, atol=0, err_msg="scale " + what)
        assert_ulps(bits(be, y), y_ref, "lrn_forward " + what)
        dx = be.lrn_backward(put(be, dy), put(be, x), put(be, y_ref), be.asarray(s_ref), version=v, **hp)
        assert_ulps(bits(be, dx), dx_ref, "lrn_backward " + what, atol=atol)


# ---------------------------------------------------------------------------
# kernels: transfer
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape,cat,off", [((3, 3, 5, 5), 7, 4), ((2, 3, 2, 2), 7, 4), ((1, 6), 13, 7),
                                           ((2, 8), 12, 4)])
def test_transfer_bf16(kernel_backend, emu_order, rng, shape, cat, off):
    be = kernel_backend
    per = int(np.prod(shape[2:])) if len(shape) == 4 else 1
    can2 = all(v * per % 4 == 0 for v in (shape[1], cat, off))
    src = bf16_values(rng, shape)
    cshape = shape[:1] + (cat,) + shape[2:]
    base, grad, local = bf16_values(rng, cshape), bf16_values(rng, cshape), bf16_values(rng, cshape)
    want = ref.transfer_forward(src, base.copy(), offset=off)
    for v in [0, 1] + ([2] if can2 else []):
        dst = put(be, base)
        assert be.transfer_forward(put(be, src), dst, offset=off, version=v) is dst
        assert_bits(bits(be, dst), want, f"transfer_forward version {v}")
        for loc in (None, local):
            got = be.transfer_backward(put(be, grad), offset=off, channels=shape[1],
                                       local=None if loc is None else put(be, loc), version=v)
            assert_bits(bits(be, got), ref.transfer_backward(grad, offset=off, channels=shape[1], local=loc),
                        f"transfer_backward version {v}, local {loc is not None}")


# ---------------------------------------------------------------------------
# mixed storage and wrong dtypes: clear errors, nothing written
# ---------------------------------------------------------------------------

def test_mixed_storage_is_a_type_error(every_backend, rng):
    be = every_backend
    x32 = be.asarray(rng.standard_normal((1, 2, 5, 5)).astype(np.float32))
    xb = be.to_bf16(x32)
    y32, yb = be.maxpool_forward(x32), be.maxpool_forward(xb)
    assert be.is_bf16(yb) and y32.dtype == np.float32
    kernel = be.name != "numpy"
    # the kernel backends' binding names the argument and both storages; the reference names the argument
    mixed = {
        "relu_backward": (lambda: be.relu_backward(xb, x32), "y is float32 but dy is uint16" if kernel else
                          "y has dtype float32, expected bfloat16"),
        "tanh_backward": (lambda: be.tanh_backward(x32, xb), "y is uint16 .BF16 storage. but dy is float32" if kernel
                          else r"dy has dtype float32, expected bfloat16 \(the storage of y"),
        "maxpool_backward": (lambda: be.maxpool_backward(yb, xb, y32), "y is float32 but x is uint16" if kernel
                             else "y has dtype float32, expected bfloat16"),
        "lrn_backward": (lambda: be.lrn_backward(xb, xb, xb, xb), "scale must be float32" if kernel
                         else "scale has dtype bfloat16, expected float32"),
        "dropout_backward": (lambda: be.dropout_backward(xb, be.asarray(np.ones((1, 2, 5, 5), np.float32))),
                             "mask must be uint8" if kernel else "mask has dtype float32, expected uint8"),
        "transfer_backward": (lambda: be.transfer_backward(xb, offset=0, channels=1, local=x32),
                              "local is float32 but grad is uint16" if kernel else
                              "local has dtype float32, expected bfloat16"),
    }
    for op, (call, msg) in mixed.items():
        with pytest.raises(TypeError, match=f"{op}: .*{msg}|{op}: {msg}"):
            call()
    # in place: nothing written into dst
    dst = be.asarray(np.full((1, 3, 5, 5), 7.0, np.float32))
    with pytest.raises(TypeError, match="transfer_forward: dst .*(float32|dtype)"):
        be.transfer_forward(xb, dst, offset=0)
    np.testing.assert_array_equal(be.to_numpy(dst), 7.0)
    if kernel:
        with pytest.raises(TypeError, match="relu_forward: x must be float32 or uint16, got float64"):
            be.relu_forward(be.xp.ones(8, dtype=be.xp.float64))
