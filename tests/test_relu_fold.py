"""The backward of a ReLU folded into the backward of the layer after it (issue #11).

Ops: maxpool_backward(..., relu_input=True) and dropout_backward(..., relu_y=x) must equal
relu_backward(maxpool_backward(dy, x, y), x) and relu_backward(dropout_backward(dy, mask), x) bit for bit
(compared as bit patterns, so a -0 for relu_backward's +0 fails): the kernels apply the ReLU's own
backward (kernels/relu_math.cuh) to the value they would have stored. Every numbered version and version
0, FP32 and BF16 storage, the emulator's three fiber orders; the oracles are the same backend's separate
ops and the numpy backend (the reference), where NaN results only need to be NaN (a GPU writes the
canonical NaN, NumPy keeps the payload). The inputs hold what the fold acts on: x <= 0, -0.0, NaN, tied
window maxima (a coarse grid of values), and dy with -0.0, infinities and NaN (dropout: dy * 0 is -0 or
NaN, kept where x > 0, +0 where not).

Model: AlexNet.fold_relu_backwards (on by default) marks relu5 -> pool5, relu6 -> drop6, relu7 -> drop7
(and relu1/relu2 -> the fused LRN + pools) through one mechanism (Layer.can_fold_relu); the model with the
folds on must equal the model with them off bit for bit after a few SGD steps (losses, logits, ReLU
activity, weights), on numpy and emu, also at BF16 storage, without LRN and without dropout; with the
towers on two devices only relu5 -> pool5 (within a run of a tower's layers) is folded.
"""
import ml_dtypes
import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda import available_backends, get_backend
from alexnet_cuda.model import AlexNet, ReLU
from alexnet_cuda.precision import to_bf16
from conftest import TINY_NET, run_with_fusion

NUMPY = get_backend("numpy")
BF16 = np.dtype(ml_dtypes.bfloat16)
STORAGES = ("fp32", "bf16")
MODEL_BACKENDS = [b for b in ("numpy", "emu") if b in available_backends()]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def stored(a, storage):
    """A float32 numpy array in a storage: float32, or ml_dtypes.bfloat16 (rounded to nearest even)."""
    return a if storage == "fp32" else to_bf16(a)


def put(be, a):
    """The numpy array a on backend be in the same storage."""
    if a.dtype == BF16:
        return be.to_bf16(be.asarray(a.astype(np.float32)))
    return be.asarray(a)


def pattern(be, a):
    """The bit patterns of a backend array (uint16 for BF16 storage, uint32 for float32)."""
    h = np.asarray(be.to_numpy(a))
    return h.view(np.uint16 if h.dtype.itemsize == 2 else np.uint32)


def values(p):
    return (p.astype(np.uint32) << 16).view(np.float32) if p.dtype == np.uint16 else p.view(np.float32)


def assert_bits(got, want, what):
    np.testing.assert_array_equal(got, want, err_msg=what)


def assert_bits_nan(got, want, what):
    """Bit for bit, except that a NaN only needs to be a NaN (the payload may differ between devices)."""
    g, w = values(got), values(want)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=what)
    keep = ~np.isnan(w)
    np.testing.assert_array_equal(got[keep], want[keep], err_msg=what)


def versions(be, op):
    vs = be.versions(op)
    assert 1 in vs and 2 in vs, f"{op}: numbered versions {vs}"
    return [0] + vs


def pool_inputs(rng, shape, size, stride):
    """x on a coarse grid (ties) with negatives, zeros, -0.0 and a NaN; dy distinct, with -0.0 and negatives."""
    x = rng.integers(-2, 3, shape).astype(np.float32) * np.float32(0.5)
    x[(x == 0) & (rng.random(shape) < 0.5)] = -0.0
    x.flat[rng.integers(x.size)] = np.nan
    N, C, H, W = shape
    P, Q = (H - size) // stride + 1, (W - size) // stride + 1
    dy = (np.arange(N * C * P * Q).reshape(N, C, P, Q) % 97 - 40).astype(np.float32) * np.float32(0.37)
    dy[dy == 0] = -0.0
    return x, dy


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------

POOL_CASES = [
    # shape, size, stride
    ((2, 3, 9, 11), 3, 2),     # the paper's overlapping 3/2
    ((1, 2, 7, 6), 2, 1),      # every input in up to 4 windows
    ((1, 2, 12, 9), 3, 4),     # stride > size: inputs in no window (outside version 2's staged rows)
    ((3, 5, 13, 13), 3, 2),    # pool5: 13 -> 6, several planes per block
    ((1, 2, 40, 200), 3, 2),   # version 2 splits the plane into row bands
]


@pytest.mark.parametrize("shape,size,stride", POOL_CASES)
def test_maxpool_fold_is_relu_backward_of_maxpool_backward(kernel_backend, emu_order, rng, shape, size, stride):
    be = kernel_backend
    x32, dy32 = pool_inputs(rng, shape, size, stride)
    kw = dict(size=size, stride=stride)
    for storage in STORAGES:
        x, dy = stored(x32, storage), stored(dy32, storage)
        y = NUMPY.maxpool_forward(x, **kw)
        want = pattern(NUMPY, NUMPY.relu_backward(NUMPY.maxpool_backward(dy, x, y, **kw), x))
        assert_bits(pattern(NUMPY, NUMPY.maxpool_backward(dy, x, y, **kw, relu_input=True)), want,
                    f"numpy {storage}")
        assert (values(want)[~(x32 > 0)] == 0).all() and not np.signbit(values(want)[~(x32 > 0)]).any()
        xd, yd, dyd = put(be, x), put(be, y), put(be, dy)
        for v in versions(be, "maxpool_backward"):
            what = f"{storage} version {v} {shape} {size}/{stride}"
            composed = pattern(be, be.relu_backward(be.maxpool_backward(dyd, xd, yd, **kw, version=v), xd))
            folded = pattern(be, be.maxpool_backward(dyd, xd, yd, **kw, relu_input=True, version=v))
            assert_bits(folded, composed, "kernels, folded vs separate, " + what)
            assert_bits_nan(folded, want, "kernels vs numpy, " + what)


def test_maxpool_fold_zeroes_gradient_that_reaches_x_le_0(kernel_backend, rng):
    """What relu_input adds, said directly: the unfolded dx has gradient on inputs x <= 0 (windows whose
    first maximum is a 0 or -0), the folded one has +0 there and the same bits elsewhere."""
    be = kernel_backend
    x = np.maximum(rng.standard_normal((2, 4, 13, 13)).astype(np.float32) - 1.2, 0)  # a ReLU's, mostly dead
    x[x == 0] = np.where(rng.random(int((x == 0).sum())) < 0.5, np.float32(-0.0), np.float32(0))
    y = NUMPY.maxpool_forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    for v in versions(be, "maxpool_backward"):
        plain = pattern(be, be.maxpool_backward(put(be, dy), put(be, x), put(be, y), version=v))
        folded = pattern(be, be.maxpool_backward(put(be, dy), put(be, x), put(be, y), relu_input=True, version=v))
        assert np.count_nonzero(values(plain)[x <= 0]) > 0  # the mask has work to do
        assert_bits(folded, np.where(x > 0, plain, np.uint32(0)), f"version {v}")


# ---------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------

DROPOUT_CASES = [
    # n, p: sizes not multiples of 4 (version 2's tail), one element, fc6's rows
    (1, 0.5), (7, 0.5), (1030, 0.3), (2 * 4096, 0.5), (37, 0.0), (513, 0.9),
]


def dropout_inputs(rng, n, p):
    """relu_y with negatives, zeros, -0.0, NaN, inf; dy with -0.0, -inf, NaN; the reference's mask."""
    relu_y = rng.standard_normal(n).astype(np.float32)
    relu_y[rng.random(n) < 0.3] = 0
    relu_y[rng.random(n) < 0.2] = -0.0
    dy = rng.standard_normal(n).astype(np.float32)
    for i, v in zip(range(n), (np.nan, np.inf, 0.0, -0.0)):
        relu_y[(5 * i + 3) % n] = v
    for i, v in zip(range(n), (-0.0, -np.inf, np.nan, np.inf)):
        dy[(7 * i + 1) % n] = v
    return relu_y, dy, alexnet_cuda.reference.dropout_mask((n,), p=p, seed=9, offset=4)


@pytest.mark.parametrize("n,p", DROPOUT_CASES)
def test_dropout_fold_is_relu_backward_of_dropout_backward(kernel_backend, emu_order, rng, n, p):
    be = kernel_backend
    relu_y32, dy32, mask = dropout_inputs(rng, n, p)
    for storage in STORAGES:
        ry, dy = stored(relu_y32, storage), stored(dy32, storage)
        with np.errstate(invalid="ignore"):  # inf * 0
            want = pattern(NUMPY, NUMPY.relu_backward(NUMPY.dropout_backward(dy, mask, p=p), ry))
            assert_bits(pattern(NUMPY, NUMPY.dropout_backward(dy, mask, p=p, relu_y=ry)), want, f"numpy {storage}")
        off = ~(relu_y32 > 0)
        assert not np.signbit(values(want)[off]).any() and (values(want)[off] == 0).all()
        ryd, dyd, md = put(be, ry), put(be, dy), be.asarray(mask)
        for v in versions(be, "dropout_backward"):
            what = f"{storage} version {v} n={n} p={p}"
            composed = pattern(be, be.relu_backward(be.dropout_backward(dyd, md, p=p, version=v), ryd))
            folded = pattern(be, be.dropout_backward(dyd, md, p=p, relu_y=ryd, version=v))
            assert_bits(folded, composed, "kernels, folded vs separate, " + what)
            assert_bits_nan(folded, want, "kernels vs numpy, " + what)


def test_dropout_fold_is_not_a_mask_fold(rng):
    """Why relu_y is an argument and not the ReLU's mask ANDed into the dropout mask at forward time: a
    dropped or ReLU-masked element is dy * 0, which is -0 for negative dy (and NaN for inf, NaN), where
    relu_backward writes +0. The inputs here have such elements, so the tests above tell the two apart."""
    relu_y, dy, mask = dropout_inputs(rng, 1030, 0.5)
    with np.errstate(invalid="ignore"):
        masked = NUMPY.dropout_backward(dy, (mask & (relu_y > 0)).astype(np.uint8), p=0.5)
        folded = NUMPY.dropout_backward(dy, mask, p=0.5, relu_y=relu_y)
    diff = masked.view(np.uint32) != folded.view(np.uint32)
    assert diff.any()
    # where they differ, relu_backward's +0 against dy * 0: -0 (negative dy) or NaN (dy inf or NaN)
    assert (folded[diff] == 0).all() and not np.signbit(folded[diff]).any()
    assert (np.signbit(masked[diff]) | np.isnan(masked[diff])).all()


def test_dropout_fold_needs_relu_y_aligned_for_version_2(kernel_backend, rng):
    """relu_y starting 4 bytes into a buffer: version 2 refuses, version 0 runs version 1."""
    be = kernel_backend
    relu_y, dy, mask = dropout_inputs(rng, 1001, 0.5)
    base = be.asarray(np.concatenate([np.zeros(1, np.float32), relu_y]))
    ry = base[1:]
    dyd, md = be.asarray(dy), be.asarray(mask)
    with pytest.raises(ValueError, match="dropout_backward: version 2 needs .*relu_y"):
        be.dropout_backward(dyd, md, relu_y=ry, version=2)
    with np.errstate(invalid="ignore"):
        want = pattern(NUMPY, NUMPY.dropout_backward(dy, mask, relu_y=relu_y))
    assert_bits_nan(pattern(be, be.dropout_backward(dyd, md, relu_y=ry)), want, "version 0")


# ---------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------

def test_bad_fold_arguments(any_backend):
    be = any_backend
    x = be.asarray(np.ones((1, 2, 5, 5), np.float32))
    y = be.maxpool_forward(x)
    for bad in ("yes", 1, None):
        with pytest.raises(TypeError, match="maxpool_backward: relu_input must be a bool"):
            be.maxpool_backward(y, x, y, relu_input=bad)
    dy, mask = be.asarray(np.ones((3, 5), np.float32)), be.asarray(np.ones((3, 5), np.uint8))
    with pytest.raises(ValueError, match=r"dropout_backward: relu_y has shape \(3, 4\), expected \(3, 5\)"):
        be.dropout_backward(dy, mask, relu_y=be.asarray(np.ones((3, 4), np.float32)))
    with pytest.raises(TypeError, match="dropout_backward: relu_y (must be float32 or uint16, got|has dtype) float64"):
        be.dropout_backward(dy, mask, relu_y=be.asarray(np.ones((3, 5)), dtype=np.float64))
    with pytest.raises(TypeError, match="dropout_backward: relu_y must be a"):
        be.dropout_backward(dy, mask, relu_y=[[1.0] * 5] * 3)
    # mixed storage: BF16 dy, FP32 relu_y (and the other way round)
    dyb = be.to_bf16(dy)
    with pytest.raises(TypeError, match="dropout_backward: relu_y (is float32 but dy is uint16|has dtype float32)"):
        be.dropout_backward(dyb, mask, relu_y=dy)
    with pytest.raises(TypeError, match="dropout_backward: (relu_y is uint16 .BF16 storage. but dy is float32|"
                                        "dy has dtype float32, expected bfloat16 .the storage of relu_y)"):
        be.dropout_backward(dy, mask, relu_y=dyb)


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------

FOLDS = {"relu1": "lrn1", "relu2": "lrn2", "relu3": "conv4", "relu4": "conv5", "relu5": "pool5", "relu6": "drop6",
         "relu7": "drop7"}


def _folds(layers):
    """{relu name: the name of the layer its backward is folded into}, checking that the two marks agree."""
    out = {}
    for a, b in zip(layers, layers[1:]):
        assert b.relu_input == (isinstance(a, ReLU) and a.backward_folded), (a.name, b.name)
        if b.relu_input:
            out[a.name] = b.name
    assert not (isinstance(layers[-1], ReLU) and layers[-1].backward_folded)
    return out


def test_the_folds_are_marked():
    m = AlexNet(backend="numpy", **TINY_NET)
    assert _folds(m.layers) == FOLDS  # on by default: every ReLU
    m.fold_relu_backwards(False)
    assert _folds(m.layers) == {}
    m.fuse_lrn_pools(True)  # pairs the LRNs again, but folds nothing while the folds are off
    assert _folds(m.layers) == {}
    m.fold_relu_backwards(True)
    assert _folds(m.layers) == FOLDS
    m.fuse_lrn_pools(False)  # a plain LRN cannot fold
    assert _folds(m.layers) == {k: v for k, v in FOLDS.items() if k not in ("relu1", "relu2")}
    m.fuse_lrn_pools(True)
    assert _folds(m.layers) == FOLDS
    # without LRN relu1 and relu2 fold into the max-pools; at p = 0 the dropouts run nothing and fold nothing
    assert _folds(AlexNet(backend="numpy", lrn=False, **TINY_NET).layers) == dict(
        FOLDS, relu1="pool1", relu2="pool2")
    assert _folds(AlexNet(backend="numpy", dropout=0.0, **TINY_NET).layers) == dict(
        relu1="lrn1", relu2="lrn2", relu3="conv4", relu4="conv5", relu5="pool5")
    assert _folds(AlexNet(backend="numpy", activation="tanh", **TINY_NET).layers) == {}


def _count(monkeypatch, be, calls):
    """Counts relu_backward calls, and the maxpool/dropout backward calls that fold a ReLU."""
    def wrap(op, folds):
        real = getattr(be, op)

        def counted(*a, **kw):
            calls[op] += 1
            if folds(kw):
                calls[op + " folded"] += 1
            return real(*a, **kw)
        monkeypatch.setattr(be, op, counted, raising=False)
    wrap("relu_backward", lambda kw: False)
    wrap("maxpool_backward", lambda kw: kw.get("relu_input", False))
    wrap("dropout_backward", lambda kw: kw.get("relu_y") is not None)
    wrap("conv2d_backward", lambda kw: kw.get("relu_input", False))


def _assert_same_runs(a, b):
    np.testing.assert_array_equal(a[0], b[0])  # losses
    np.testing.assert_array_equal(a[1].view(np.uint32), b[1].view(np.uint32))  # logits
    assert a[2].keys() == b[2].keys() and len(a[2]) == 7
    for k in a[2]:
        np.testing.assert_array_equal(a[2][k], b[2][k], err_msg=k)  # the folded ReLUs still track activity
    assert a[3].keys() == b[3].keys()
    for k in a[3]:
        np.testing.assert_array_equal(a[3][k].view(np.uint32), b[3][k].view(np.uint32), err_msg=k)
    assert np.all(np.isfinite(a[0])) and a[0][-1] != a[0][0]


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_folded_model_is_bitwise_the_unfolded_one(backend, monkeypatch):
    calls = {k: 0 for k in ("relu_backward", "maxpool_backward", "maxpool_backward folded", "dropout_backward",
                            "dropout_backward folded", "conv2d_backward", "conv2d_backward folded")}
    _count(monkeypatch, get_backend(backend), calls)
    folded = run_with_fusion(backend, "fold_relu_backwards", True)
    # 3 steps: no relu_backward; conv4 and conv5 fold relu3 and relu4, pool5 and both dropouts relu5..relu7
    assert calls == {"relu_backward": 0, "maxpool_backward": 3, "maxpool_backward folded": 3,
                     "dropout_backward": 3 * 2, "dropout_backward folded": 3 * 2, "conv2d_backward": 3 * 5,
                     "conv2d_backward folded": 3 * 2}
    calls.update({k: 0 for k in calls})
    unfolded = run_with_fusion(backend, "fold_relu_backwards", False)
    assert calls == {"relu_backward": 3 * 7, "maxpool_backward": 3, "maxpool_backward folded": 0,
                     "dropout_backward": 3 * 2, "dropout_backward folded": 0, "conv2d_backward": 3 * 5,
                     "conv2d_backward folded": 0}
    _assert_same_runs(folded, unfolded)


VARIANTS = [dict(lrn=False), dict(dropout=0.0), dict(precision="bf16")]


@pytest.mark.parametrize("kw", VARIANTS, ids=["no-lrn", "no-dropout", "bf16"])
@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_folded_variants(backend, kw):
    """Without LRN (relu1, relu2 fold into the max-pools), without dropout (relu6, relu7 do not fold) and at
    BF16 storage (the folds on BF16 activations and gradients)."""
    _assert_same_runs(run_with_fusion(backend, "fold_relu_backwards", True, steps=2, **kw),
                      run_with_fusion(backend, "fold_relu_backwards", False, steps=2, **kw))


def test_towers_on_two_devices_fold_within_a_run():
    """devices=(0, 0): conv3 .. pool5 run one after the other on each tower's device, so each tower's
    relu3, relu4 (into conv4, conv5) and relu5 (into pool5) fold; relu6 and relu7 meet their dropout across
    a meeting point (the towers' gradients are summed there before the ReLU) and stay separate, as relu1
    and relu2, whose LRN is a HaloLRN stage. The folded towers equal the unfolded ones bit for bit."""
    m = AlexNet(backend="numpy", devices=(0, 0), **TINY_NET)
    inside = {"relu3": "conv4", "relu4": "conv5", "relu5": "pool5"}
    for run in m._split.runs():
        assert set(_folds(run)) <= set(inside)
    assert sum(_folds(run) == inside for run in m._split.runs()) == 2  # one per tower
    m.fold_relu_backwards(False)
    assert not any(_folds(run) for run in m._split.runs())
    _assert_same_runs(run_with_fusion("numpy", "fold_relu_backwards", True, steps=2, devices=(0, 0)),
                      run_with_fusion("numpy", "fold_relu_backwards", False, steps=2, devices=(0, 0)))


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_layer_pairs_fold_bit_for_bit(backend, rng):
    """ReLU -> MaxPool and ReLU -> Dropout as the model runs them, the gradient at the ReLU's input compared
    as bit patterns with the folds on and off: the model tests compare weights, which a -0 for a +0 in a
    gradient (a Dropout folding with its output instead of its input, say) would not change."""
    from alexnet_cuda.model import Dropout, MaxPool, _fold_relu_backwards
    be = get_backend(backend)
    ctx = dict(seed=3, step=2, row0=0, precision="fp32")
    for second, shape, out in ((MaxPool("pool", 3, 2), (2, 3, 9, 9), (2, 3, 4, 4)),
                               (Dropout("drop", 0.5, 0), (4, 33), (4, 33))):
        x = be.asarray(rng.standard_normal(shape).astype(np.float32))
        # negative: a dropped element's gradient is dy * 0 = -0, kept where x > 0
        dy = be.asarray(-np.abs(rng.standard_normal(out)).astype(np.float32) - np.float32(0.1))
        got = {}
        for on in (True, False):
            layers = [ReLU("relu"), second]
            _fold_relu_backwards(layers, on)
            assert layers[1].relu_input == on
            layers[1].forward(be, layers[0].forward(be, x, True, ctx), True, ctx)
            got[on] = pattern(be, layers[0].backward(be, layers[1].backward(be, dy)))
        off = ~(np.asarray(be.to_numpy(x)) > 0)
        assert (got[False][off] == 0).all(), second.name  # relu_backward's +0 (the unfolded gradient)
        assert_bits(got[True], got[False], second.name)
