"""`alexnet-cuda time` (alexnet_cuda.timing): a row per layer and direction from a real training step."""
import numpy as np
import pytest

from alexnet_cuda import AlexNet, available_backends, cli
from alexnet_cuda.timing import format_table, time_step


@pytest.mark.parametrize("backend", [b for b in available_backends() if b in ("numpy", "emu")])
def test_time_step_has_every_layer_both_ways_and_trains(backend):
    model = AlexNet(num_classes=5, input_size=67, width=1 / 16, dropout=0.5, backend=backend, seed=1)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    rows = time_step(model, 4, repeats=2, warmup=1)
    keys = [(r["layer"], r["direction"]) for r in rows]
    names = [l.name for l in model.layers]
    assert keys == ([(n, "forward") for n in names] + [("loss", "forward+backward")]
                    + [(n, "backward") for n in reversed(names)] + [("sgd", "update")])
    assert all(r["ms"] >= 0 for r in rows)
    assert model.step == 3                       # warm-up + repeats are real steps...
    after = model.state_dict()
    assert any(not np.array_equal(before[k], after[k]) for k in before)   # ...that update the weights
    for l in model.layers:                       # and leave no cached activations behind
        assert "_cache" not in l.__dict__


def test_format_table_with_and_without_torch():
    rows = [{"layer": "conv1", "direction": "forward", "ms": 2.0, "torch_ms": 1.0},
            {"layer": "flatten", "direction": "forward", "ms": 0.5, "torch_ms": None}]
    text = format_table(rows)
    assert "torch ms" in text and "2.00" in text             # the ratio 2.0 / 1.0
    assert text.splitlines()[-1].split()[:3] == ["total", "2.500", "1.000"]
    plain = format_table([{"layer": "conv1", "direction": "forward", "ms": 2.0}], "PyTorch not timed: x")
    assert "torch ms" not in plain and plain.endswith("PyTorch not timed: x")


def test_time_command(capsys):
    assert cli.main(["time", "--backend", "numpy", "--batch-size", "2", "--repeats", "1", "--warmup", "0",
                     "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "conv1      forward" in out and "sgd        update" in out and "PyTorch not timed (--no-torch)" in out


def test_time_command_at_bf16(capsys):
    assert cli.main(["time", "--backend", "numpy", "--batch-size", "2", "--repeats", "1", "--warmup", "0",
                     "--no-torch", "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "precision bf16" in out and "conv1      forward" in out
