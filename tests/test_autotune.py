"""alexnet_cuda.autotune: which convolutions have a choice, the choice following the measured times, the
model computing with it, and `train` keeping it with the run (config.json, the checkpoint, --resume).

The times come from a stand-in clock (the emulator's times say nothing about a GPU); the layers then run
for real on emu. Winograd F(4x4,3x3) rounds differently from the implicit GEMM (its error is a few times
the GEMM's, tests/test_conv_winograd.py), so a step with it is compared with the GEMM's step at 1e-4
relative on the loss: float32 sums of a few thousand terms, through a 5-class head."""
import json

import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda import autotune
from alexnet_cuda import train as T
from alexnet_cuda.errors import TrainError
from alexnet_cuda.model import AlexNet
from conftest import TINY_NET
from test_train import quiet, tiny_cfg


def emu_model(**kw):
    return AlexNet(backend=alexnet_cuda.get_backend("emu"), **TINY_NET, **kw)


def test_the_3x3_stride_1_convolutions_have_a_choice_at_fp32_on_one_device_of_a_kernel_backend():
    assert [l.name for l in autotune.eligible(emu_model())] == ["conv3", "conv4", "conv5"]
    assert autotune.eligible(emu_model(precision="bf16")) == []
    assert autotune.eligible(AlexNet(backend="numpy", **TINY_NET)) == []
    assert autotune.eligible(emu_model(devices=(0, 0))) == []
    assert not autotune.measures(emu_model())  # the emulator's times say nothing about a GPU


class StandInClock:
    """Calls fn and reports the milliseconds of `table` for the last convolution it ran (layer by the weight's
    shape, pass, algorithm)."""

    def __init__(self, be, monkeypatch, table):
        self.table, self.last = table, None
        for op, p in (("conv2d_forward", "forward"), ("conv2d_backward", "backward")):
            real = getattr(be, op)

            def wrapped(*a, _real=real, _p=p, **kw):
                w = a[1] if _p == "forward" else a[2]
                self.last = (tuple(w.shape), _p, kw.get("algorithm", "gemm"))
                return _real(*a, **kw)
            monkeypatch.setattr(be, op, wrapped, raising=False)

    def __call__(self, fn):
        out = fn()
        return out, self.table.get(self.last, 5.0)


def test_the_choice_follows_the_times(monkeypatch):
    m = emu_model()
    w = {l.name: tuple(l.shapes["weight"]) for l in autotune.eligible(m)}
    table = {(w["conv4"], "forward", "winograd"): 1.0, (w["conv3"], "backward", "winograd"): 2.0,
             (w["conv5"], "forward", "gemm"): 9.0}
    clock = StandInClock(m.backend, monkeypatch, table)
    choice, times = autotune.choose(m, 4, repeats=2, clock=clock)
    assert choice == {"conv3": {"forward": "gemm", "backward": "winograd"},
                      "conv4": {"forward": "winograd", "backward": "gemm"},
                      "conv5": {"forward": "winograd", "backward": "gemm"}}
    assert times["conv4"]["forward"] == {"gemm": 5.0, "winograd": 1.0}
    assert "conv4: forward gemm 5.000 ms / winograd 1.000 ms -> winograd" in autotune.describe(choice, times)


def test_the_model_computes_with_the_choice(monkeypatch):
    rng = np.random.default_rng(3)
    x, y = (rng.standard_normal((4, 3, 67, 67)) * 0.5).astype(np.float32), rng.integers(0, 5, 4)
    plain, chosen = emu_model(), emu_model()
    autotune.apply(chosen, {"conv4": {"forward": "winograd", "backward": "winograd"},
                            "conv5": {"forward": "gemm", "backward": "winograd"}})
    be, seen = chosen.backend, []
    for op in ("conv2d_forward", "conv2d_backward"):
        real = getattr(be, op)
        monkeypatch.setattr(be, op, lambda *a, _op=op, _real=real, **kw: (
            seen.append((_op, tuple(a[1 if _op == "conv2d_forward" else 2].shape), kw.get("algorithm"))),
            _real(*a, **kw))[1], raising=False)
    loss = chosen.train_step(x, y, 0.01)
    monkeypatch.undo()
    shapes = {l.name: tuple(l.shapes["weight"]) for l in chosen.layers if l.params}
    wino = {(op, name) for name, s in shapes.items() for op, shape, alg in seen if shape == s and alg == "winograd"}
    assert wino == {("conv2d_forward", "conv4"), ("conv2d_backward", "conv4"), ("conv2d_backward", "conv5")}
    assert loss == pytest.approx(plain.train_step(x, y, 0.01), rel=1e-4)


@pytest.mark.parametrize("bad", ["fast", 3, {"conv4": "winograd"}, {"conv4": {"forward": "winograd"}},
                                 {"conv4": {"forward": "fft", "backward": "gemm"}}])
def test_a_bad_choice_is_refused(bad):
    with pytest.raises(ValueError, match="conv_algorithms"):
        autotune.apply(emu_model(), bad)


def test_a_choice_naming_no_convolution_is_refused():
    with pytest.raises(ValueError, match="no convolution named conv9"):
        autotune.apply(emu_model(), {"conv9": {"forward": "gemm", "backward": "gemm"}})


def test_train_measures_once_and_keeps_the_choice_for_resume(tiny_data, tmp_path, monkeypatch):
    """With "auto" where it measures (cuda; here emu standing in), the run logs the times and stores the choice
    in config.json and the checkpoint; the resumed run applies it without measuring again."""
    measured = []
    real_choose = autotune.choose

    def choose(model, batch_size, **kw):
        measured.append(batch_size)
        return real_choose(model, batch_size, repeats=1, **kw)
    monkeypatch.setattr(autotune, "measures", lambda model, processes=1: True)
    monkeypatch.setattr(autotune, "choose", choose)
    out, logs = tmp_path / "tuned", []
    cfg = tiny_cfg(tiny_data, out, epochs=1, backend="emu", batch_size=4)
    assert T.train(cfg, log=logs.append) == 0
    kept = json.loads((out / "config.json").read_text())["conv_algorithms"]
    assert measured == [4] and set(kept) == {"conv3", "conv4", "conv5"} and autotune.check(kept) == kept
    assert any(l.startswith("conv algorithms: conv3: forward gemm") for l in logs)
    applied = []
    monkeypatch.setattr(autotune, "apply", lambda model, choice: applied.append(choice))
    assert T.train(resume=True, out=out, overrides={"epochs": 2}, log=quiet) == 0
    assert measured == [4] and applied == [kept]


def test_train_refuses_a_bad_configured_choice(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path / "bad", epochs=1, conv_algorithms={"conv4": {"forward": "x", "backward": "y"}})
    with pytest.raises(TrainError, match="conv_algorithms"):
        T.train(cfg, log=quiet)
