"""Checkpoint format, LR schedule, the training loop: metrics, resume == uninterrupted, NaN stop, Ctrl-C.

A tiny generated dataset (3 classes, 67x67 crops of 72x72 images) and a 1/16-width model keep it fast.
"""
import json
import math
import os
import signal

import numpy as np
import pytest

from alexnet_cuda import available_backends, checkpoint as ck
from alexnet_cuda import train as T
from alexnet_cuda import runfolder as rf
from alexnet_cuda.backends import limit_blas_threads
from alexnet_cuda.health import Health
from alexnet_cuda.errors import AlexNetError, DivergedError, TrainingInterrupted
from alexnet_cuda.progress import Progress
from alexnet_cuda.schedule import LRSchedule
from alexnet_cuda.model import AlexNet

TIMING = ("images_per_sec", "seconds", "loader_images_per_sec", "data_wait_seconds")


# ---------------------------------------------------------------------------
# checkpoint.py
# ---------------------------------------------------------------------------

def test_safetensors_round_trip(tmp_path):
    t = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, -2], np.int64),
         "c": np.zeros((0, 5), np.float64), "d": np.array(7, np.uint8), "e": np.array([True, False])}
    p = tmp_path / "x.safetensors"
    ck.save_file(t, p, {"k": "v", "json": json.dumps({"x": 1})})
    got, meta = ck.load_file(p)
    assert list(got) == list(t)
    for k in t:
        assert got[k].dtype == t[k].dtype and got[k].shape == t[k].shape
        np.testing.assert_array_equal(got[k], t[k])
        assert got[k].flags.writeable
    assert meta == {"k": "v", "json": '{"x": 1}'}
    assert ck.read_metadata(p) == meta
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0
    header = json.loads(raw[8:8 + n])
    assert header["a"] == {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}
    assert raw[8 + n:8 + n + 48] == t["a"].astype("<f4").tobytes()
    assert [x for x in os.listdir(tmp_path)] == ["x.safetensors"]   # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == 0o666 & ~umask           # not mkstemp's 0600


def test_safetensors_readable_by_the_reference_library(tmp_path):
    import safetensors.numpy as st  # in the test extra: a missing package fails, it does not skip
    t = {"w": np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)}
    ck.save_file(t, tmp_path / "a.safetensors", {"m": "1"})
    np.testing.assert_array_equal(st.load_file(str(tmp_path / "a.safetensors"))["w"], t["w"])
    st.save_file(t, str(tmp_path / "b.safetensors"), metadata={"m": "2"})
    got, meta = ck.load_file(tmp_path / "b.safetensors")
    np.testing.assert_array_equal(got["w"], t["w"])
    assert meta == {"m": "2"}


def test_reader_validates(tmp_path):
    p = tmp_path / "c.safetensors"
    ck.save_file({"a": np.ones(4, np.float32)}, p)
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    cases = {
        "short": raw[:5],
        "truncated": raw[:-3],
        "hugeheader": (10 ** 12).to_bytes(8, "little") + raw[8:],
        "badjson": raw[:8] + b"x" + raw[9:],
        "extra": raw + b"\0\0\0\0",
    }
    header = json.loads(raw[8:8 + n])
    for name, mod in {"dtype": ("dtype", "F99"), "offsets": ("data_offsets", [0, 8]),
                      "shape": ("shape", [-1])}.items():
        h = json.loads(json.dumps(header))
        h["a"][mod[0]] = mod[1]
        hb = json.dumps(h).encode()
        cases[name] = len(hb).to_bytes(8, "little") + hb + raw[8 + n:]
    for name, data in cases.items():
        q = tmp_path / f"{name}.safetensors"
        q.write_bytes(data)
        with pytest.raises(ck.CheckpointError, match=str(q.name)):
            ck.load_file(q)
    with pytest.raises(ck.CheckpointError, match="cannot read"):
        ck.load_file(tmp_path / "missing.safetensors")
    with pytest.raises(TypeError):
        ck.save_file({"a": np.ones(2)}, tmp_path / "m.safetensors", {"k": 1})


def test_write_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "ckpt.safetensors"
    ck.save_file({"a": np.ones(3, np.float32)}, p, {"v": "old"})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        ck.save_file({"a": np.zeros(3, np.float32)}, p, {"v": "new"})
    monkeypatch.undo()
    got, meta = ck.load_file(p)
    assert meta["v"] == "old" and np.all(got["a"] == 1)
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]


# ---------------------------------------------------------------------------
# LR schedule
# ---------------------------------------------------------------------------

def test_default_workers_by_backend(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert T.default_workers("cuda") == 8          # the GPU waits for batches: prefetch
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert T.default_workers("cuda") == 1
    assert T.default_workers("numpy") == T.default_workers("emu") == 0  # the cores compute


def test_plateau_schedule_divides_by_10_at_most_three_times():
    s = LRSchedule.parse("plateau", 0.01, patience=2)
    lrs = []
    for e, err in enumerate([0.5, 0.4, 0.4, 0.41, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]):
        lrs.append(s.lr_for_epoch(e))
        s.end_epoch(e, err)
    assert lrs[:4] == [0.01] * 4
    assert lrs[4] == pytest.approx(0.001)       # 2 epochs without improvement after epoch 2
    assert min(lrs) == pytest.approx(1e-5) and s.reductions == 3
    st = s.state_dict()
    s2 = LRSchedule(1.0)
    s2.load_state_dict(json.loads(json.dumps(st)))
    assert s2.state_dict() == st


def test_step_schedule():
    s = LRSchedule.parse("step:2,4,5,6", 0.1, patience=1)
    lrs = []
    for e in range(8):
        lrs.append(s.lr_for_epoch(e))
        s.end_epoch(e, 0.5)
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 1e-4, 1e-4, 1e-4])
    for bad in ("step:", "step:a", "cosine", "step:0"):
        with pytest.raises(T.TrainError):
            LRSchedule.parse(bad, 0.1, 2)


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

def tiny_cfg(data, out, **kw):
    base = dict(data=data, out=str(out), preset="small", backend="numpy", epochs=2, batch_size=8,
                width=1 / 16, data_size=72, eval_batch_size=16, dropout=0.5)  # dropout on: resume must replay masks
    base.update(kw)
    return T.default_config(**base)


def read_metrics(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


def strip_timing(recs):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in recs]


def quiet(*a, **k):
    pass


def test_train_writes_metrics_config_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "run"
    logs = []
    assert T.train(tiny_cfg(tiny_data, out), log=logs.append) == 0
    recs = read_metrics(out)
    assert [r["epoch"] for r in recs] == [1, 2]
    for r in recs:
        assert set(r) >= {"epoch", "step", "lr", "train_loss", "val_top1_err", "val_top5_err",
                          "images_per_sec", "seconds"}
        assert tuple(r) == rf.EPOCH_FIELDS      # the documented fields, in order, and no others
        assert 0 <= r["val_top1_err"] <= 1 and 0 <= r["val_top5_err"] <= r["val_top1_err"]
        assert math.isfinite(r["train_loss"]) and r["images_per_sec"] > 0
        assert r["loader_images_per_sec"] > 0 and 0 <= r["data_wait_seconds"] <= r["seconds"]
    assert recs[1]["step"] == 2 * (48 // 8)
    assert sum(" img/s (loader " in l and "s for data), " in l for l in logs) == 2   # in each epoch's line
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"] == tiny_data and cfg["classes"] == ["circle", "square", "triangle"]
    assert cfg["model"]["width"] == 1 / 16 and cfg["num_classes"] == 3
    assert cfg["workers"] == 0  # resolved from None: no loader threads on the numpy backend
    tensors, info = rf.load_checkpoint(out / "checkpoint.safetensors")
    assert info["epoch"] == 2 and info["batch"] == 0 and info["step"] == 12
    assert "momentum.fc8.weight" in tensors and tensors["data.mean"].shape == (72, 72, 3)
    assert sum(1 for l in logs if l.startswith("epoch ")) == 2      # one summary line per epoch
    model, info = rf.model_from_checkpoint(out / "checkpoint.safetensors")
    assert model.step == 12 and model.num_classes == 3
    # a fresh run refuses to overwrite
    with pytest.raises(T.TrainError, match="--resume"):
        T.train(tiny_cfg(tiny_data, out), log=quiet)


@pytest.mark.parametrize("backend", [b for b in available_backends() if b in ("numpy", "emu")])
def test_resume_equals_uninterrupted(tiny_data, tmp_path, backend):
    a, b = tmp_path / "a", tmp_path / "b"
    assert T.train(tiny_cfg(tiny_data, a, epochs=2, backend=backend), log=quiet) == 0
    assert T.train(tiny_cfg(tiny_data, b, epochs=1, backend=backend), log=quiet) == 0
    assert T.train(resume=True, out=b, overrides={"epochs": 2}, log=quiet) == 0
    ra, rb = read_metrics(a), read_metrics(b)
    assert len(ra) == len(rb) == 2
    assert strip_timing(ra) == strip_timing(rb)
    wa, _ = rf.load_checkpoint(a / "checkpoint.safetensors")
    wb, _ = rf.load_checkpoint(b / "checkpoint.safetensors")
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_ctrl_c_mid_epoch_then_resume_equals_uninterrupted(tiny_data, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    assert T.train(tiny_cfg(tiny_data, a, epochs=2), log=quiet) == 0

    orig = AlexNet.train_step

    def step_then_sigint(self, *args, **kw):
        loss = orig(self, *args, **kw)
        if self.step == 9:                    # batch 3 of epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(AlexNet, "train_step", step_then_sigint)
    logs = []
    with pytest.raises(TrainingInterrupted):
        T.train(tiny_cfg(tiny_data, b, epochs=2), log=logs.append)
    monkeypatch.undo()
    assert any("interrupted at step 9" in l for l in logs)
    _, info = rf.load_checkpoint(b / "checkpoint.safetensors")
    assert (info["epoch"], info["batch"], info["step"]) == (1, 3, 9)
    assert len(read_metrics(b)) == 1
    assert T.train(resume=True, out=b, log=quiet) == 0
    assert strip_timing(read_metrics(a)) == strip_timing(read_metrics(b))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    orig = AlexNet.train_step

    def nan_at_8(self, *args, **kw):
        loss = orig(self, *args, **kw)
        return float("nan") if self.step == 8 else loss

    monkeypatch.setattr(AlexNet, "train_step", nan_at_8)
    logs = []
    with pytest.raises(DivergedError) as e:
        T.train(tiny_cfg(tiny_data, out, epochs=3), log=logs.append)
    msg = str(e.value)
    assert "nan" in msg and "step 8" in msg and "last good checkpoint" in msg and e.value.exit_code == 1
    _, info = rf.load_checkpoint(out / "checkpoint.safetensors")
    assert info["epoch"] == 1 and info["step"] == 6
    assert len(read_metrics(out)) == 1


def _same_run(a, b):
    """Two run folders with the same metrics (timing aside) and the same checkpoint tensors, bit for bit."""
    assert strip_timing(read_metrics(a)) == strip_timing(read_metrics(b))
    wa, ia = rf.load_checkpoint(a / "checkpoint.safetensors")
    wb, ib = rf.load_checkpoint(b / "checkpoint.safetensors")
    assert wa.keys() == wb.keys() and ia["step"] == ib["step"]
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_sync_every_changes_the_reads_not_the_results(tiny_data, tmp_path, monkeypatch):
    """--sync-every 5 on 6 steps per epoch: the losses and hits are read back after 5 steps and at the
    epoch's end; the metrics (loss sums, training error, health) and the checkpoint are those of
    --sync-every 1, bit for bit."""
    reads, take = [], T.StepTotals.take
    monkeypatch.setattr(T.StepTotals, "take", lambda self: reads.append(len(self)) or take(self))
    steps, step = [], AlexNet.train_step

    def recorded(self, *args, **kw):              # each step's loss and hits, read here (as before this option)
        loss = step(self, *args, **kw)
        steps.append((float(np.asarray(loss)), int(self.last_correct)))
        return loss

    monkeypatch.setattr(AlexNet, "train_step", recorded)
    runs = {}
    for every in (1, 5):
        reads.clear()
        steps.clear()
        runs[every] = tmp_path / f"every{every}"
        assert T.train(tiny_cfg(tiny_data, runs[every], sync_every=every), log=quiet) == 0
        assert reads == ([1] * 6 if every == 1 else [5, 1]) * 2
        assert json.loads((runs[every] / "config.json").read_text())["sync_every"] == every
        for epoch, rec in enumerate(read_metrics(runs[every])):          # the per-step sums of before
            mine = steps[6 * epoch:6 * epoch + 6]
            loss_sum = 0.0
            for loss, _ in mine:
                loss_sum += loss
            assert rec["train_loss"] == loss_sum / 6
            assert rec["train_top1_err"] == 1.0 - sum(h for _, h in mine) / (6 * 8)
    _same_run(runs[1], runs[5])
    assert T.default_sync_every("cuda") == 20 and T.default_sync_every("numpy") == T.default_sync_every("emu") == 1
    assert T.default_config()["sync_every"] is None                  # resolved from the backend at the start
    with pytest.raises(T.TrainError, match="sync_every must be >= 1"):
        T.train(tiny_cfg(tiny_data, tmp_path / "zero", sync_every=0), log=quiet)


def test_ctrl_c_inside_a_block_saves_the_steps_done_and_resumes_equal(tiny_data, tmp_path, monkeypatch):
    """Ctrl-C after step 9, in the middle of a block of 5 (steps 7..11): the pending steps are read back
    before the checkpoint, which holds exactly 9 steps; the resumed run (with another --sync-every, which
    --resume may change) equals an uninterrupted run with --sync-every 1."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert T.train(tiny_cfg(tiny_data, a, epochs=2, sync_every=1), log=quiet) == 0
    orig = AlexNet.train_step

    def step_then_sigint(self, *args, **kw):
        loss = orig(self, *args, **kw)
        if self.step == 9:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(AlexNet, "train_step", step_then_sigint)
    with pytest.raises(TrainingInterrupted):
        T.train(tiny_cfg(tiny_data, b, epochs=2, sync_every=5), log=quiet)
    monkeypatch.undo()
    _, info = rf.load_checkpoint(b / "checkpoint.safetensors")
    assert (info["epoch"], info["batch"], info["step"]) == (1, 3, 9)
    assert info["partial"].loss_count == 3 and info["partial"].train_seen == 3 * 8
    assert T.train(resume=True, out=b, overrides={"sync_every": 3}, log=quiet) == 0
    assert json.loads((b / "config.json").read_text())["sync_every"] == 3
    _same_run(a, b)


def test_a_nonfinite_loss_inside_a_block_names_its_step_and_keeps_the_weights_before_it(tiny_data, tmp_path,
                                                                                      monkeypatch):
    """A NaN loss at step 8, inside a block of 5 (steps 7..11): found at the read-back after step 11 and
    reported as step 8; the SGD kernels skipped steps 8 to 11, so the model holds the weights and momentum
    of step 7, bit for bit; the checkpoint of epoch 1 is kept."""
    seen = {}
    real = AlexNet.loss_and_grads

    def nan_at_step_8(self, *args, **kw):
        loss = real(self, *args, **kw)
        seen["model"] = self
        if self.step == 7:                                   # the 8th step's forward and backward
            seen["before"] = {**self.state_dict(), **self.momentum_state_dict()}
            loss = self.backend.xp.asarray(np.array(np.nan, np.float32))
        return loss

    monkeypatch.setattr(AlexNet, "loss_and_grads", nan_at_step_8)
    out = tmp_path / "nan"
    with pytest.raises(DivergedError, match=r"became nan at step 8 \(epoch 2, batch 2/6") as e:
        T.train(tiny_cfg(tiny_data, out, epochs=3, sync_every=5), log=quiet)
    assert "last good checkpoint" in str(e.value)
    m = seen["model"]
    assert m.step == 11
    after = {**m.state_dict(), **m.momentum_state_dict()}
    for k, v in seen["before"].items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    _, info = rf.load_checkpoint(out / "checkpoint.safetensors")
    assert (info["epoch"], info["step"]) == (1, 6) and len(read_metrics(out)) == 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_huge_lr_diverges_with_a_message(tiny_data, tmp_path):
    logs = []
    with pytest.raises(DivergedError, match=r"the loss became .* at step"):
        T.train(tiny_cfg(tiny_data, tmp_path / "big", epochs=2, lr=1e12), log=logs.append)


def test_warns_when_loss_sits_at_chance(tiny_data, tmp_path, monkeypatch):
    def flat(self, x, y, lr, **kw):   # a step that learns nothing: chance loss, no hits
        self.last_correct = np.array(0)
        return math.log(3)

    monkeypatch.setattr(AlexNet, "train_step", flat)
    monkeypatch.setattr(Health, "after_step", lambda self: None)      # the fake step makes no gradients
    logs = []
    assert T.train(tiny_cfg(tiny_data, tmp_path / "flat", epochs=2), log=logs.append, chance_warn_steps=5) == 0
    assert sum("chance" in l for l in logs) == 1


def test_the_chance_warning_fires_on_the_papers_recipe_and_says_what_to_try(tiny_data, tmp_path):
    """The paper's init on a network far smaller than the paper's stays at chance (docs/measurements.md)."""
    logs = []
    cfg = tiny_cfg(tiny_data, tmp_path / "paper", epochs=2, init="paper", input_scale=1.0, warmup=0)
    assert T.train(cfg, log=logs.append, chance_warn_steps=8) == 0
    warnings = [l for l in logs if "chance" in l]
    assert len(warnings) == 1 and "not learning" in warnings[0]
    assert "--warmup" in warnings[0] and "--init" in warnings[0] and "--lr" in warnings[0]


# Losses measured on the full preset, batch 128 (benchmarks/results/full_preset_cpu.md): the paper's
# recipe (12 steps, then at chance as the longer runs showed) and the default (60 steps).
PAPER_LOSSES = [3.081, 7.955, 17.275, 22.297, 26.219, 18.656, 12.725, 8.847, 2.98, 2.336, 2.346, 2.328]
DEFAULT_LOSSES = [2.331, 2.306, 2.315, 2.308, 2.296, 2.326, 2.294, 2.326, 2.3, 2.358, 2.319, 2.327, 2.301, 2.318,
                  2.313, 2.299, 2.296, 2.313, 2.286, 2.299, 2.294, 2.298, 2.319, 2.285, 2.289, 2.287, 2.301, 2.32,
                  2.259, 2.295, 2.301, 2.266, 2.277, 2.278, 2.251, 2.246, 2.234, 2.217, 2.261, 2.261, 2.229,
                  2.206, 2.157, 2.146, 2.174, 2.151, 2.14, 2.03, 2.019, 1.96, 2.053, 1.955, 2.011, 2.043, 2.039,
                  1.902, 1.848, 1.838, 1.891, 1.949]


def test_the_chance_watch_on_the_full_presets_measured_losses():
    after = max(50, min(500, 2 * 47))       # what train uses on the built-in set (47 steps per epoch)
    paper = T.ChanceWatch(10, after)
    said = [paper.update(x) for x in PAPER_LOSSES + [2.33] * after]
    assert sum(w is not None for w in said) == 1 and "--init paper-bias0.1" in next(w for w in said if w)
    default = T.ChanceWatch(10, after)
    assert all(default.update(x) is None for x in DEFAULT_LOSSES)


def test_every_epoch_records_the_layers_health_and_warns_by_name(tiny_data, tmp_path):
    logs = []
    assert T.train(tiny_cfg(tiny_data, tmp_path / "h", epochs=1, lr=1e-12), log=logs.append) == 0
    health = read_metrics(tmp_path / "h")[0]["health"]
    assert set(health["layers"]) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"}
    assert set(health["dead"]) == {f"relu{i}" for i in range(1, 8)} and health["steps"] == 6
    assert all(0 <= f <= 1 for f in health["dead"].values())
    # an lr of 1e-12 moves no weight: every layer's update ratio is below float32's rounding step
    warned = [l for l in logs if l.startswith("warning: ") and "update" in l]
    assert len(warned) == 8 and {l.split(":")[1].strip() for l in warned} == set(health["layers"])


def test_resume_errors(tiny_data, tmp_path):
    with pytest.raises(T.TrainError, match="no checkpoint"):
        T.train(resume=True, out=tmp_path / "none", log=quiet)
    out = tmp_path / "r"
    assert T.train(tiny_cfg(tiny_data, out, epochs=1), log=quiet) == 0
    with pytest.raises(T.TrainError, match="cannot change"):
        T.train(resume=True, out=out, overrides={"lr": 0.1}, log=quiet)
    (out / "checkpoint.safetensors").write_bytes(b"garbage!")
    with pytest.raises(AlexNetError, match="safetensors"):
        T.train(resume=True, out=out, log=quiet)


def test_progress_plain_lines_when_not_a_tty():
    import io
    s = io.StringIO()
    p = Progress(10, "epoch 1/2", stream=s, interval=0.0)
    p.start(0)
    for i in range(1, 11):
        p.update(i, 1.5, 0.01, 100.0)
    p.close()
    lines = s.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in s.getvalue()
    assert "loss 1.5000" in lines[-1] and "lr 0.01" in lines[-1] and "img/s" in lines[-1] and "ETA" in lines[-1]
    t = io.StringIO()
    p = Progress(4, "e", stream=t, tty=True)
    p.start(0)
    p.update(2, 1.0, 0.01, 10.0, force=True)
    assert t.getvalue().startswith("\r") and "[" in t.getvalue()


def test_limit_blas_threads_respects_explicit_settings(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    monkeypatch.delenv("ALEXNET_CUDA_BLAS_THREADS", raising=False)
    assert limit_blas_threads() is None                 # the user's explicit choice wins
    monkeypatch.setenv("ALEXNET_CUDA_BLAS_THREADS", "bad")
    assert limit_blas_threads() is None
    monkeypatch.setenv("ALEXNET_CUDA_BLAS_THREADS", "1")
    assert limit_blas_threads() in (1, None)            # None where numpy's BLAS is not OpenBLAS
