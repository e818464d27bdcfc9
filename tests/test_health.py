"""alexnet_cuda.health: the per-layer norms and update ratios against numpy by hand, dead ReLU units,
the warnings, a checkpoint round trip mid-epoch, tracking that changes nothing, health.png, the cost."""
import json
import time

import numpy as np
import pytest
from PIL import Image

from alexnet_cuda import checkpoint as ck
from alexnet_cuda import runfolder as rf
from alexnet_cuda import train as T
from alexnet_cuda import model as M
from alexnet_cuda import visualize as V
from alexnet_cuda.data import PreparedDataset, make_synthetic_dataset, prepare_dataset
from alexnet_cuda.health import DEAD_MAX, STATE_PREFIX, UPDATE_RATIO_MAX, UPDATE_RATIO_MIN, Health, health_warnings
from alexnet_cuda.model import AlexNet
from alexnet_cuda.schedule import LRSchedule

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
RELUS = [f"relu{i}" for i in range(1, 8)]


def tiny(dropout=0.5, seed=0):
    return AlexNet(num_classes=3, input_size=67, width=1 / 16, backend="numpy", init="he", dropout=dropout, seed=seed)


def batches(n, size=6, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((size, 3, 67, 67)).astype(np.float32), rng.integers(0, 3, size)) for _ in range(n)]


def norm(a):
    return float(np.linalg.norm(np.asarray(a, np.float64)))


def test_norms_and_update_ratios_equal_numpys():
    model, data = tiny(), batches(3)
    health = Health(model)
    grads, ratios = {n: [] for n in LAYERS}, {n: [] for n in LAYERS}
    for x, y in data:
        model.train_step(x, y, 0.02)
        health.after_step()
        g, w = dict(model.gradients()), dict(model.named_parameters())
        for n in LAYERS:
            grads[n].append(norm(g[f"{n}.weight"]))
            ratios[n].append(norm(model.momentum[f"{n}.weight"]) / norm(w[f"{n}.weight"]))
    rec = health.record()
    json.dumps(rec, allow_nan=False)      # JSON as it is
    assert rec["steps"] == 3 and list(rec["layers"]) == LAYERS and list(rec["dead"]) == RELUS
    w = dict(model.named_parameters())
    for n in LAYERS:
        r = rec["layers"][n]
        assert r["weight_norm"] == pytest.approx(norm(w[f"{n}.weight"]), rel=1e-5)
        assert r["grad_norm"] == pytest.approx(np.mean(grads[n]), rel=1e-5)
        assert r["update_ratio"] == pytest.approx(np.mean(ratios[n]), rel=1e-5)
        assert r["update_ratio_max"] == pytest.approx(max(ratios[n]), rel=1e-5)
    assert health_warnings(rec) == health.warnings(rec)
    # the record reset everything: an epoch without steps measures nothing but the weights
    empty = health.record()
    assert empty["steps"] == 0 and empty["dead"] == {n: None for n in RELUS}
    assert empty["layers"]["fc8"]["grad_norm"] is None and empty["layers"]["fc8"]["weight_norm"] > 0
    assert health.warnings(empty) == []


def test_dead_fractions_equal_numpys():
    model, data = tiny(dropout=0.0), batches(3)   # no dropout: train-mode ReLU outputs = model.features
    health = Health(model)
    active = {}
    for x, y in data:
        for i, layer in enumerate(LAYERS[:-1]):
            f = model.features(x, layer=layer)                       # relu{i+1}'s output, before the step
            a = (f > 0).any(axis=0)
            active[RELUS[i]] = a if RELUS[i] not in active else active[RELUS[i]] | a
        model.train_step(x, y, 0.01)
        health.after_step()
    dead = health.record()["dead"]
    for n in RELUS:
        assert dead[n] == pytest.approx(1.0 - active[n].mean(), abs=1e-12), n
    assert all(dead[n] < DEAD_MAX for n in RELUS)


def test_a_dead_layer_is_measured_and_named():
    model, data = tiny(), batches(2)
    layer = next(l for l in model.layers if l.name == "conv5")
    layer.bias = layer.bias - np.float32(1e3)                        # every conv5 output < 0
    health = Health(model)
    for x, y in data:
        model.train_step(x, y, 0.01)
        health.after_step()
    rec = health.record()
    assert rec["dead"]["relu5"] == 1.0
    assert all(rec["dead"][n] < DEAD_MAX for n in RELUS[:4])
    named = [w for w in health.warnings(rec) if "relu5" in w]
    assert len(named) == 1 and "100.0%" in named[0] and "dead" in named[0]


@pytest.mark.parametrize("lr, word", [(100.0, f"above {UPDATE_RATIO_MAX:g}"), (1e-12, f"below {UPDATE_RATIO_MIN:g}")])
def test_update_ratio_out_of_range_warns_naming_the_layer(lr, word):
    model, (x, y) = tiny(), batches(1)[0]
    health = Health(model)
    assert np.isfinite(model.train_step(x, y, lr))
    health.after_step()
    warns = health.warnings(health.record())
    hits = [w for w in warns if "update ratio" in w and word in w]
    assert hits, warns
    assert all(w.startswith("warning: ") and "\n" not in w for w in warns)
    assert all(any(w.startswith(f"warning: {n}:") for n in LAYERS + RELUS) for w in warns)
    if word.startswith("above"):
        assert len(hits) == len(LAYERS)


def test_state_round_trip_mid_epoch_equals_one_whole_epoch(tmp_path):
    data = batches(4)
    whole = tiny()
    h = Health(whole)
    for x, y in data:
        whole.train_step(x, y, 0.02)
        h.after_step()
    expected = h.record()

    first = tiny()
    h1 = Health(first)
    for x, y in data[:2]:
        first.train_step(x, y, 0.02)
        h1.after_step()
    state = h1.state()
    assert set(state) == {STATE_PREFIX + k for k in ("steps", "grad_norm_sum", "update_ratio_sum", "update_ratio_max")} \
        | {f"{STATE_PREFIX}active.{n}" for n in RELUS}
    ck.save_file(state, tmp_path / "h.safetensors")                   # what a checkpoint holds
    loaded, _ = ck.load_file(tmp_path / "h.safetensors")

    second = tiny()
    second.load_state_dict(first.state_dict())
    second.load_momentum_state_dict(first.momentum_state_dict())
    second.step = first.step
    h2 = Health(second)
    h2.load_state(dict(loaded, **{"conv1.weight": np.zeros(1)}))     # other keys are ignored
    for x, y in data[2:]:
        second.train_step(x, y, 0.02)
        h2.after_step()
    assert h2.record() == expected
    # a checkpoint without health numbers starts an empty epoch
    h2.load_state({})
    assert h2.count == 0 and all(v is None for v in second.take_activity().values())


def test_tracking_changes_nothing():
    data = batches(3)
    runs = []
    for track in (False, True):
        model = tiny()
        health = Health(model) if track else None
        losses = []
        for x, y in data:
            losses.append(model.train_step(x, y, 0.02))
            if health:
                health.after_step()
        runs.append((losses, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for n in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][n], runs[1][1][n])
    off = tiny()
    assert all(v is None for v in off.take_activity().values())        # off by default: nothing held
    off.train_step(*data[0], 0.01)
    assert all(v is None for v in off.take_activity().values())


def _records(n):
    model, data = tiny(), batches(n)
    health = Health(model)
    recs = []
    for e, (x, y) in enumerate(data, 1):
        model.train_step(x, y, 0.02)
        health.after_step()
        recs.append({"epoch": e, "lr": 0.02 if e < 3 else 0.002, "train_loss": 1.0, "health": health.record()})
    return recs


def test_health_image_with_and_without_health():
    recs = _records(4)
    img = V.health_image(recs)
    assert img.size == V.health_layout(8, 7) == (4 * V.HEALTH_CELL[0], 2 * 26 + 4 * V.HEALTH_CELL[1])
    a = np.asarray(img.convert("RGB"), np.float64)
    assert a.std() > 10 and len(np.unique(a.reshape(-1, 3).astype(np.uint8), axis=0)) >= 20
    blank = V.health_image([{"epoch": 1, "lr": 0.01, "train_loss": 1.0}])
    assert blank.size == img.size
    assert isinstance(V.health_image([]), Image.Image)
    # a lone epoch, a missing value and a non-finite one draw too
    odd = json.loads(json.dumps(recs[:1]))
    odd[0]["health"]["layers"]["fc8"]["update_ratio"] = None
    odd[0]["health"]["layers"]["fc7"]["update_ratio"] = float("inf")
    assert V.health_image(odd).size == img.size


def test_visualize_writes_health_png_when_the_records_carry_health(tmp_path):
    raw = make_synthetic_dataset(tmp_path, num_classes=3, train_per_class=4, val_per_class=2, image_size=24,
                                 log=None, workers=1)
    prepared = prepare_dataset(raw, tmp_path / "prepared", size=72, log=lambda *a, **k: None, workers=1)
    ds = PreparedDataset(prepared, "train")
    cfg = T.default_config(preset="small", backend="numpy", data=str(raw), out=str(tmp_path / "run"), width=1 / 16,
                           data_size=72, input_size=67)
    cfg.update(prepared=str(prepared), classes=list(ds.classes), num_classes=ds.num_classes)
    model = tiny()
    cfg["model"] = dict(model.config)
    run = tmp_path / "run"
    run.mkdir()
    rf.save_checkpoint(run / rf.CHECKPOINT, model, cfg=cfg, epoch=1, batch=0, schedule=LRSchedule(0.01),
                       partial={"loss_sum": 0.0, "loss_count": 0, "train_seconds": 0.0, "seconds": 0.0}, mean=ds.mean)
    for recs, pictures in ((_records(2), 4), ([{"epoch": 1, "lr": 0.01, "train_loss": 1.0}], 3)):
        (run / rf.METRICS).write_text("".join(json.dumps(r) + "\n" for r in recs))
        out = tmp_path / f"pics{pictures}"
        written = V.visualize(run / rf.CHECKPOINT, out=out, num_images=2, num_queries=0, log=lambda *a: None)
        assert len(written) == pictures and ("health.png" in written) == (pictures == 4)
    with Image.open(tmp_path / "pics4" / "health.png") as img:
        assert img.size == V.health_layout()


def test_cost_of_health_on_numpy(monkeypatch):
    """Prints what Health adds to a step: the time in the ReLU observations and in after_step, beside the
    step's own time (speed is measured, never asserted; timing two models against each other on shared
    cores is noisier than the cost itself)."""
    data = batches(6, size=16)
    observed = [0.0]
    observe = M.ReLU._observe

    def timed(self, be, y):
        t0 = time.perf_counter()
        observe(self, be, y)
        observed[0] += time.perf_counter() - t0

    monkeypatch.setattr(M.ReLU, "_observe", timed)
    model = tiny(seed=2)
    health = Health(model)
    model.train_step(*data[0], 0.01)                                      # warm-up
    step, after = [], []
    for x, y in data[1:]:
        t0 = time.perf_counter()
        model.train_step(x, y, 0.01)
        t1 = time.perf_counter()
        health.after_step()
        step.append(t1 - t0)
        after.append(time.perf_counter() - t1)
    health.record()
    n = len(step)
    ms = lambda v: sum(v) / n * 1e3  # noqa: E731
    print(f"\nhealth cost on numpy (width 1/16, batch 16): step {ms(step):.2f} ms, of which ReLU tracking "
          f"{ms(observed):.3f} ms; after_step {ms(after):.3f} ms "
          f"({(sum(observed) + sum(after)) / (sum(step) - sum(observed)) * 100:.2f}% per step)")
