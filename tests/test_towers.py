"""The paper's two towers on two devices (alexnet_cuda/towers.py), on emu with ALEXNET_EMU_DEVICES=2:
step for step the same training as the one-device model (dropout and LRN on), the same checkpoint
in both directions, `devices=(0, 0)` on one device, the fallback without peer access, and the errors.

Tolerance: the two-device model computes every value with the one-device formula; only the order of
some float32 sums differs. The gradient of a meeting point's input (conv3, fc6, fc7, fc8) is the sum of
the two towers' partial sums (each over half of the layer's outputs) instead of one sum over all, and
a half-size GEMM or convolution may cut its reduction into different pieces. Each reordering moves a
float32 sum of K terms by a few units in the last place of its largest terms; SGD carries that into
the weights, where after four steps it measured 6e-7 of each tensor's largest value (and 1e-7 of the
loss). The tests allow 1e-5 of each tensor's largest value, and check that training moved every
weight tensor by more than 100 times that, so the comparison cannot pass by standing still.
"""
import json
import warnings

import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda import evaluate
from alexnet_cuda import runfolder as rf
from alexnet_cuda import train as T
from alexnet_cuda.health import Health
from alexnet_cuda.model import AlexNet
from alexnet_cuda.towers import Exchange, Sharded, parse_devices, tower_rows

from test_train import quiet, read_metrics, tiny_cfg

TOL = 1e-5
KW = dict(num_classes=5, input_size=67, width=1 / 8, dropout=0.5, init="he", seed=3)


@pytest.fixture
def emu2(monkeypatch):
    """The emu backend with two virtual devices and no peer access enabled, device 0 current."""
    monkeypatch.setenv("ALEXNET_EMU_DEVICES", "2")
    be = alexnet_cuda.get_backend("emu")

    def clean():
        for d in (0, 1):
            be._mod.set_device(d)
            try:
                be._mod.disable_peer_access(1 - d)
            except RuntimeError:
                pass
        be._mod.set_device(0)
    clean()
    yield be
    clean()


def batches(n, seed=0, size=67, classes=5):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((4, 3, size, size)).astype(np.float32), rng.integers(0, classes, 4))
            for _ in range(n)]


def assert_close(a, b, what):
    """Every array of the dicts a, b equal within TOL of the tensor's largest value."""
    assert a.keys() == b.keys()
    for k in a:
        scale = max(float(np.abs(a[k]).max()), 1e-30)
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=TOL * scale, err_msg=f"{what}: {k}")


def train_pair(m1, m2, data, lr=0.01):
    out = []
    for x, y in data:
        out.append((m1.train_step(x, y, lr), m2.train_step(x, y, lr)))
    return np.array(out)


def test_two_devices_train_step_for_step_like_one(emu2):
    one = AlexNet(backend="emu", **KW)
    two = AlexNet(backend="emu", devices=(0, 1), **KW)
    start = one.state_dict()
    assert_close(start, two.state_dict(), "init")
    for n, a in two.named_parameters():                        # tower t's half on device t
        assert isinstance(a, Sharded) and [emu2.device_of(p) for p in a] == [0, 1], n
        lo, hi = tower_rows(start[n].shape[0], 2, 1)
        assert a[1].shape == (hi - lo,) + start[n].shape[1:]
    assert all([emu2.device_of(v) for v in two.momentum[n]] == [0, 1] for n in two.momentum)
    losses = train_pair(one, two, batches(4))
    np.testing.assert_allclose(losses[:, 1], losses[:, 0], rtol=TOL)
    w1, w2 = one.state_dict(), two.state_dict()
    assert_close(w1, w2, "weights")
    assert_close(one.momentum_state_dict(), two.momentum_state_dict(), "momentum")
    g1 = {n: np.asarray(g) for n, g in one.gradients()}
    g2 = {n: np.concatenate([np.asarray(p) for p in g]) for n, g in two.gradients()}
    assert_close(g1, g2, "gradients")
    for n in w1:
        if n.endswith(".weight"):
            moved = np.abs(w1[n] - start[n]).max() / np.abs(w1[n]).max()
            assert moved > 100 * TOL, f"{n} moved only {moved:.1e}: the comparison would not show a difference"


def test_a_batch_already_on_a_device_reaches_both_towers_without_the_host(emu2):
    """The training feed uploads a batch to one device: the towers copy it from there (a peer copy), with
    the same logits and steps, bit for bit, as from the host, whichever device holds it."""
    x, y = batches(1, seed=7)[0]
    ref_model = AlexNet(backend="emu", devices=(0, 1), **KW)
    want_logits = np.asarray(ref_model.forward(x))
    want_loss = ref_model.train_step(x, y, 0.01)
    for holder in (0, 1):
        m = AlexNet(backend="emu", devices=(0, 1), **KW)
        with emu2.use_device(holder):
            xd = emu2.asarray(x)
        assert emu2.device_of(xd) == holder
        np.testing.assert_array_equal(np.asarray(m.forward(xd)), want_logits)
        assert m.train_step(xd, y, 0.01) == want_loss
        for k, v in ref_model.state_dict().items():
            np.testing.assert_array_equal(m.state_dict()[k], v, err_msg=f"{k} (batch on device {holder})")
        np.testing.assert_array_equal(np.asarray(xd), x)  # the holder's batch is read, not changed


def test_eval_forward_and_features_match(emu2):
    one = AlexNet(backend="emu", **KW)
    two = AlexNet(backend="emu", devices=(0, 1), **KW)
    x = batches(1, seed=5)[0][0]
    got = np.asarray(two.forward(x))
    assert emu2.device_of(two.forward(x)) == 0 and got.shape == (4, 5)
    assert_close({"logits": np.asarray(one.forward(x))}, {"logits": got}, "forward")
    for layer in ("conv1", "conv2", "conv3", "conv5", "fc6", "fc8"):
        f1, f2 = np.asarray(one.features(x, layer)), np.asarray(two.features(x, layer))
        assert f1.shape == f2.shape, layer
        assert_close({layer: f1}, {layer: f2}, "features")


@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_both_towers_on_one_device(backend):
    """devices=(0, 0): the exchange code with local reads, on a machine with one device."""
    one = AlexNet(backend=backend, **KW)
    two = AlexNet(backend=backend, devices=(0, 0), **KW)
    losses = train_pair(one, two, batches(3))
    np.testing.assert_allclose(losses[:, 1], losses[:, 0], rtol=TOL)
    assert_close(one.state_dict(), two.state_dict(), "weights")


def test_without_dropout_and_lrn(emu2):
    """The small preset's shape: no dropout (ReLU'd features cross, no whole-vector layer), no LRN."""
    kw = {**KW, "dropout": 0.0, "lrn": False}
    one, two = AlexNet(backend="emu", **kw), AlexNet(backend="emu", devices=(0, 1), **kw)
    losses = train_pair(one, two, batches(2, seed=4))
    np.testing.assert_allclose(losses[:, 1], losses[:, 0], rtol=TOL)
    assert_close(one.state_dict(), two.state_dict(), "weights")


def test_checkpoint_moves_between_device_counts(emu2):
    data = batches(4, seed=2)
    ref = AlexNet(backend="emu", **KW)
    for x, y in data:
        ref.train_step(x, y, 0.01)
    for first, second in (((0, 1), None), (None, (0, 1))):
        a = AlexNet(backend="emu", devices=first, **KW)
        for x, y in data[:2]:
            a.train_step(x, y, 0.01)
        b = AlexNet(backend="emu", devices=second, **KW)
        b.load_state_dict(a.state_dict())
        b.load_momentum_state_dict(a.momentum_state_dict())
        b.step = a.step
        for x, y in data[2:]:
            b.train_step(x, y, 0.01)
        assert_close(ref.state_dict(), b.state_dict(), f"{first} -> {second}")


def test_without_peer_access_the_towers_go_through_staging_and_say_so_once(emu2, monkeypatch):
    monkeypatch.setenv("ALEXNET_EMU_PEER", "0")
    monkeypatch.setattr(Exchange, "_said", set())
    with pytest.warns(RuntimeWarning) as said:
        two = AlexNet(backend="emu", devices=(0, 1), **KW)
    assert sorted(str(w.message)[:40] for w in said) == ["emu: device 0 cannot access device 1's m",
                                                         "emu: device 1 cannot access device 0's m"]
    assert "cudaMemcpyPeerAsync into a staging buffer" in str(said[0].message)
    assert not any(two._split.exchange.direct[r, s] for r, s in ((0, 1), (1, 0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # said once: a second model is silent
        AlexNet(backend="emu", devices=(0, 1), **KW)
    one = AlexNet(backend="emu", **KW)
    losses = train_pair(one, two, batches(2))
    np.testing.assert_allclose(losses[:, 1], losses[:, 0], rtol=TOL)
    assert_close(one.state_dict(), two.state_dict(), "weights")


def test_unsynced_steps_on_two_devices(emu2, monkeypatch):
    """train_step(sync=False) with the towers on two devices updates bit for bit as sync=True, and a
    non-finite loss on device 0 stops the update on both devices (device 1 tests its own copy)."""
    a, b = AlexNet(backend="emu", devices=(0, 1), **KW), AlexNet(backend="emu", devices=(0, 1), **KW)
    data = batches(2, seed=6)
    a.train_step(*data[0], 0.01)
    b.train_step(*data[0], 0.01, sync=False)

    def state(m):
        return {**m.state_dict(), **{"momentum." + k: v for k, v in m.momentum_state_dict().items()}}
    good = state(b)
    for k, v in state(a).items():
        np.testing.assert_array_equal(v, good[k], err_msg=f"sync=False vs sync=True: {k}")
    real = b.loss_and_grads

    def nan_loss(*args, **kw):
        real(*args, **kw)
        loss = emu2.zeros((), np.float32)             # on device 0, where the loss lives
        loss[...] = np.nan
        return loss
    monkeypatch.setattr(b, "loss_and_grads", nan_loss)
    b.train_step(*data[1], 0.01, sync=False)
    for k, v in state(b).items():
        np.testing.assert_array_equal(v, good[k], err_msg=f"after a NaN loss: {k}")


def test_health_on_two_devices_matches_one(emu2):
    one = AlexNet(backend="emu", **KW)
    two = AlexNet(backend="emu", devices=(0, 1), **KW)
    h1, h2 = Health(one), Health(two)
    for x, y in batches(2, seed=7):
        one.train_step(x, y, 0.01)
        two.train_step(x, y, 0.01)
        h1.after_step()
        h2.after_step()
    s1, s2 = h1.state(), h2.state()
    assert s1.keys() == s2.keys()
    r1, r2 = h1.record(), h2.record()
    assert r1["dead"] == r2["dead"]
    for name, v in r1["layers"].items():
        for k, x in v.items():
            assert x == pytest.approx(r2["layers"][name][k], rel=1e-4), (name, k)
    h2.load_state(s1)                               # a partial epoch saved on one device, resumed on two
    assert h2.record()["dead"] == r1["dead"]


@pytest.mark.parametrize("devices,kw,msg", [
    ((0, 2), {}, "the emu backend has 2 devices .* device 2 does not exist"),
    ((0, 1), {"towers": 1}, "needs towers=2 .got 1."),
    ((0, 1), {"num_classes": 1}, "at least 2 classes"),
    ((1,), {}, "a one-device model runs on the current device"),
    ((1, 0), {}, "devices\\[0\\] must be the current device"),
    ((0, 1, 0), {}, "one or two devices"),
    ((0, 1), {"width": 1 / 48}, "lrn1: a tower has 1 channels, fewer than the LRN's half window 2"),
    ("0;1", {}, "device numbers separated by commas"),
])
def test_bad_devices_are_clear_errors(emu2, devices, kw, msg):
    with pytest.raises(ValueError, match=msg):
        AlexNet(backend="emu", devices=devices, **{**KW, **kw})


def test_numpy_backend_has_one_device():
    with pytest.raises(ValueError, match="the numpy backend has 1 device"):
        AlexNet(backend="numpy", devices=(0, 1), **KW)
    assert parse_devices("0,1") == (0, 1) and parse_devices([0]) == (0,)


# ---- the training command ------------------------------------------------------------------

def test_train_on_two_devices_matches_one_and_resumes_on_one(emu2, tiny_data, tmp_path):  # noqa: F811
    a, b = tmp_path / "one", tmp_path / "two"
    assert T.train(tiny_cfg(tiny_data, a, epochs=2, backend="emu"), log=quiet) == 0
    logs = []
    assert T.train(tiny_cfg(tiny_data, b, epochs=1, backend="emu", devices=[0, 1]), log=logs.append) == 0
    assert any("devices=(0, 1)" in l for l in logs)
    assert json.loads((b / "config.json").read_text())["devices"] == [0, 1]
    assert T.train(resume=True, out=b, overrides={"epochs": 2, "devices": [0]}, log=logs.append) == 0
    assert any("resume: devices [0, 1] -> [0]" in l for l in logs)
    ra, rb = read_metrics(a), read_metrics(b)
    for x, y in zip(ra, rb):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=TOL)
        assert (x["val_top1_err"], x["val_top5_err"]) == (y["val_top1_err"], y["val_top5_err"])
    wa, _ = rf.load_checkpoint(a / "checkpoint.safetensors")
    wb, _ = rf.load_checkpoint(b / "checkpoint.safetensors")
    assert_close({k: v for k, v in wa.items() if k.split(".")[0] not in ("health", "data")},
                 {k: v for k, v in wb.items() if k.split(".")[0] not in ("health", "data")}, "checkpoint")
    # a checkpoint of a run on one device evaluates on two (alexnet-cuda eval --devices 0,1)
    ck = str(b / "checkpoint.safetensors")
    one = evaluate.evaluate(ck, backend="emu", log=quiet)
    two = evaluate.evaluate(ck, backend="emu", devices=[0, 1], log=quiet)
    assert one == two and one["images"] == 12


def test_cli_devices_option(emu2):
    from alexnet_cuda import cli
    p = cli.build_parser()
    assert p.parse_args(["train", "--devices", "0,1"]).devices == [0, 1]
    assert p.parse_args(["eval", "--checkpoint", "c", "--devices", "0,0"]).devices == [0, 0]
    with pytest.raises(SystemExit):
        p.parse_args(["train", "--devices", "0,1,2"])
