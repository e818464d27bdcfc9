"""The model's fused conv/linear + ReLU forward (AlexNet.fuse_relus; on by default).

Each Conv2d or Linear followed by a ReLU (conv1..conv5, fc6, fc7) computes the ReLU in its kernel's
epilogue (activation="relu"), bit for bit relu_forward of its plain output, so the fused model and the
unfused one (fuse_relus(False)) must agree exactly: logits, losses, the ReLU activity masks and the
weights after a few SGD steps, on numpy and emu, at fp32 and on the tensor-core kernels (tf32). The
fused model must also skip relu_forward (the separate pass is what the fusion removes).
"""
import numpy as np
import pytest

from alexnet_cuda import available_backends, get_backend
from conftest import TINY_NET, run_with_fusion
from alexnet_cuda.model import AlexNet

TINY = TINY_NET
BACKENDS = [b for b in ("numpy", "emu") if b in available_backends()]
FUSED_PAIRS = [("conv1", "relu1"), ("conv2", "relu2"), ("conv3", "relu3"), ("conv4", "relu4"),
               ("conv5", "relu5"), ("fc6", "relu6"), ("fc7", "relu7")]


def _count_relu_calls(monkeypatch, be):
    calls = []
    real = be.relu_forward

    def counted(x, **kw):
        calls.append(x.shape)
        return real(x, **kw)

    monkeypatch.setattr(be, "relu_forward", counted, raising=False)
    return calls


def _run(backend, fused, steps=3, **kw):
    return run_with_fusion(backend, "fuse_relus", fused, steps, **kw)


def test_the_pairs_are_marked():
    m = AlexNet(backend="numpy", **TINY)
    by = {l.name: l for l in m.layers}
    for conv, relu in FUSED_PAIRS:
        assert by[conv].fuse_relu and by[relu].fused, conv
    assert not by["fc8"].fuse_relu
    m.fuse_relus(False)
    assert not any(getattr(l, "fuse_relu", False) or getattr(l, "fused", False) for l in m.layers)
    # tanh layers are never fused (no fused tanh epilogue)
    t = AlexNet(backend="numpy", activation="tanh", **TINY)
    assert not any(getattr(l, "fuse_relu", False) for l in t.layers)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_model_is_bitwise_the_unfused_one(backend, monkeypatch):
    be = get_backend(backend)
    calls = _count_relu_calls(monkeypatch, be)
    fused = _run(backend, True)
    assert calls == [], "the fused model ran a separate ReLU pass"
    unfused = _run(backend, False)
    assert len(calls) == 3 * 7 + 7  # 3 train steps and one eval forward, 7 ReLUs each
    np.testing.assert_array_equal(fused[0], unfused[0])  # losses
    np.testing.assert_array_equal(fused[1].view(np.uint32), unfused[1].view(np.uint32))  # logits
    assert fused[2].keys() == unfused[2].keys() and len(fused[2]) == 7
    for k in fused[2]:
        np.testing.assert_array_equal(fused[2][k], unfused[2][k], err_msg=k)
    for k in fused[3]:
        np.testing.assert_array_equal(fused[3][k].view(np.uint32), unfused[3][k].view(np.uint32), err_msg=k)
    assert np.all(np.isfinite(fused[0])) and fused[0][-1] != fused[0][0]


def test_fused_towers_on_two_devices(monkeypatch):
    """devices=(0, 0): the towers' copies of the layers (alexnet_cuda.towers) carry the marks, and
    fuse_relus switches them too."""
    calls = _count_relu_calls(monkeypatch, get_backend("numpy"))
    fused = _run("numpy", True, steps=2, devices=(0, 0))
    assert calls == []
    unfused = _run("numpy", False, steps=2, devices=(0, 0))
    assert len(calls) == 2 * (2 * 7 + 7)  # two towers' copies of every ReLU
    np.testing.assert_array_equal(fused[0], unfused[0])
    np.testing.assert_array_equal(fused[1], unfused[1])
    for k in fused[3]:
        np.testing.assert_array_equal(fused[3][k], unfused[3][k], err_msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_model_at_tf32(backend, monkeypatch):
    """At tf32 the conv/linear kernels are the tensor-core ones, with the same fused epilogue."""
    calls = _count_relu_calls(monkeypatch, get_backend(backend))
    fused = _run(backend, True, steps=2, precision="tf32")
    assert calls == []
    unfused = _run(backend, False, steps=2, precision="tf32")
    assert len(calls) == 3 * 7
    np.testing.assert_array_equal(fused[0], unfused[0])
    for k in fused[3]:
        np.testing.assert_array_equal(fused[3][k], unfused[3][k], err_msg=k)
