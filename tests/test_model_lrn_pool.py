"""The model's fused LRN + max-pool layers (AlexNet.fuse_lrn_pools; on by default on one device).

lrn1 + pool1 and lrn2 + pool2 run lrn_maxpool_forward/backward, and the ReLU before each LRN (relu1,
relu2) leaves its backward to the LRN's (relu_input): the same bits as the separate layers, so the fused
model and the unfused one (fuse_lrn_pools(False)) must agree exactly: losses, logits, the ReLU activity
masks and the weights after a few SGD steps, on numpy and emu; also with non-overlapping pooling and with
tanh (no ReLU to fold). The fused model must skip the separate passes it replaces. With the towers on two
devices the LRN is a halo exchange (alexnet_cuda.towers) and nothing is fused.
"""
import numpy as np
import pytest

from alexnet_cuda import available_backends, get_backend
from conftest import TINY_NET, run_with_fusion
from alexnet_cuda.model import LRN, AlexNet, MaxPool, ReLU

TINY = TINY_NET
BACKENDS = [b for b in ("numpy", "emu") if b in available_backends()]
SEPARATE = ("lrn_forward", "lrn_backward", "maxpool_forward", "maxpool_backward", "relu_backward")
FUSED = ("lrn_maxpool_forward", "lrn_maxpool_backward")


def _count_calls(monkeypatch, be, ops):
    calls = {op: 0 for op in ops}
    for op in ops:
        real = getattr(be, op)

        def counted(*a, _op=op, _real=real, **kw):
            calls[_op] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(be, op, counted, raising=False)
    return calls


def _run(backend, fused, steps=3, **kw):
    return run_with_fusion(backend, "fuse_lrn_pools", fused, steps, **kw)


def _assert_same_runs(a, b):
    np.testing.assert_array_equal(a[0], b[0])  # losses
    np.testing.assert_array_equal(a[1].view(np.uint32), b[1].view(np.uint32))  # logits
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        np.testing.assert_array_equal(a[2][k], b[2][k], err_msg=k)
    for k in a[3]:
        np.testing.assert_array_equal(a[3][k].view(np.uint32), b[3][k].view(np.uint32), err_msg=k)
    assert np.all(np.isfinite(a[0])) and a[0][-1] != a[0][0]


def _marked(layers):
    """The layers carrying a mark of the LRN + max-pool fusion (_pair_lrn_pools, and the fold of the ReLU
    before a fused LRN; relu5's fold into pool5 is tests/test_relu_fold.py's)."""
    return [a.name for a, b in zip(layers, layers[1:] + [None]) if isinstance(a, MaxPool) and a.fused_in_lrn or
            isinstance(a, LRN) and (a.pool is not None or a.relu_input) or
            isinstance(a, ReLU) and isinstance(b, LRN) and a.backward_folded]


def test_the_layers_are_marked():
    m = AlexNet(backend="numpy", **TINY)
    by = {l.name: l for l in m.layers}
    for relu, lrn, pool in (("relu1", "lrn1", "pool1"), ("relu2", "lrn2", "pool2")):
        assert by[lrn].pool is by[pool] and by[pool].fused_in_lrn, lrn
        assert by[lrn].relu_input and by[relu].backward_folded, lrn
    assert not by["pool5"].fused_in_lrn
    assert [l.name for l in m.layers][:6] == ["conv1", "relu1", "lrn1", "pool1", "conv2", "relu2"]  # names kept
    m.fuse_lrn_pools(False)
    assert not _marked(m.layers)
    t = {l.name: l for l in AlexNet(backend="numpy", activation="tanh", **TINY).layers}
    assert t["lrn1"].pool is t["pool1"] and not t["lrn1"].relu_input  # no ReLU to fold
    assert not _marked(AlexNet(backend="numpy", lrn=False, **TINY).layers)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_model_is_bitwise_the_unfused_one(backend, monkeypatch):
    calls = _count_calls(monkeypatch, get_backend(backend), SEPARATE + FUSED)
    fused = _run(backend, True)
    # 3 train steps + 1 eval forward: the fused ops twice per pass; only pool5 pools separately; no
    # relu_backward (relu1, relu2 fold into the fused ops; relu3..relu7 into conv4, conv5, pool5 and the
    # dropouts either way)
    assert calls == dict(lrn_forward=0, lrn_backward=0, maxpool_forward=4, maxpool_backward=3, relu_backward=0,
                         lrn_maxpool_forward=8, lrn_maxpool_backward=6)
    for k in calls:
        calls[k] = 0
    unfused = _run(backend, False)
    assert calls == dict(lrn_forward=8, lrn_backward=6, maxpool_forward=12, maxpool_backward=9, relu_backward=3 * 2,
                         lrn_maxpool_forward=0, lrn_maxpool_backward=0)
    _assert_same_runs(fused, unfused)


@pytest.mark.parametrize("kw", [dict(pool="non-overlapping"), dict(activation="tanh")], ids=["pool2x2", "tanh"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_variants(backend, kw):
    _assert_same_runs(_run(backend, True, steps=2, **kw), _run(backend, False, steps=2, **kw))


def test_towers_on_two_devices_stay_separate(monkeypatch):
    """devices=(0, 0): the LRN is a HaloLRN stage; no tower copy is marked, fuse_lrn_pools does nothing,
    and the result is the one-device fused model's within tests/test_towers.py's tolerance (1e-5 of each
    tensor's largest value: the towers reorder some float32 sums)."""
    calls = _count_calls(monkeypatch, get_backend("numpy"), FUSED)
    m = AlexNet(backend="numpy", devices=(0, 0), **TINY)
    m.fuse_lrn_pools(True)
    assert not any(_marked(tower) for tower in m._split.towers)
    split = _run("numpy", True, steps=2, devices=(0, 0))
    assert calls == dict(lrn_maxpool_forward=0, lrn_maxpool_backward=0)
    one = _run("numpy", True, steps=2)
    np.testing.assert_allclose(split[0], one[0], rtol=1e-5)
    for k in split[3]:
        np.testing.assert_allclose(split[3][k], one[3][k], rtol=0, atol=1e-5 * float(np.abs(one[3][k]).max()),
                                   err_msg=k)
