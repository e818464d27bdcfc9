"""The model variants (activation, pooling, LRN, towers, dropout, lighting, flips): their shapes, the
same init for ReLU and tanh, training and exact resume on every CPU backend, the train options, the
training error per epoch, and `alexnet-cuda ablate` (a study, its resume, Figure 1)."""
import json

import numpy as np
import pytest

from alexnet_cuda import ablate, available_backends, cli, reference
from alexnet_cuda import visualize as V
from alexnet_cuda import runfolder as rf
from alexnet_cuda import train as T
from alexnet_cuda.data import PreparedDataset, TrainLoader, make_synthetic_dataset, prepare_dataset
from alexnet_cuda.model import AlexNet, MaxPool, ReLU, Tanh, feature_sizes, min_input_size
from test_train import strip_timing as no_timing

CPU_BACKENDS = [b for b in available_backends() if b in ("numpy", "emu")]
# one variant per choice the paper argues for (the paper's choice undone)
VARIANTS = {"tanh": dict(activation="tanh"), "no-lrn": dict(lrn=False), "non-overlapping": dict(pool="non-overlapping"),
            "one-tower": dict(towers=1), "no-dropout": dict(dropout=0.0),
            "no-augmentation": dict(pca_std=0.0, flip=False)}


def quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def two_class_data(tmp_path_factory):
    """2 classes, 12 training and 3 validation images each, prepared at 72 px: 3 steps of 8 per epoch."""
    root = tmp_path_factory.mktemp("variants")
    raw = make_synthetic_dataset(root, num_classes=2, train_per_class=12, val_per_class=3, image_size=24,
                                 log=None, workers=1)
    return str(prepare_dataset(raw, root / "prepared", size=72, log=quiet, workers=1))


def cfg_for(data, out, **kw):
    base = dict(data=data, out=str(out), preset="small", backend="numpy", epochs=2, batch_size=8, width=1 / 16,
                data_size=72, eval_batch_size=16, dropout=0.5)
    base.update(kw)
    return T.default_config(**base)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------

def test_feature_sizes_follow_the_pooling():
    assert feature_sizes(227, "non-overlapping") == feature_sizes(227) == (55, 27, 13, 6)
    assert feature_sizes(67, "non-overlapping") == (15, 7, 3, 1)
    assert min_input_size("non-overlapping") == 39 and min_input_size() == 67
    assert feature_sizes(39, "non-overlapping")[3] == 1 and feature_sizes(38, "non-overlapping")[3] == 0
    with pytest.raises(ValueError, match="smallest input is 39 with non-overlapping pooling"):
        AlexNet(num_classes=3, input_size=38, width=1 / 16, pool="non-overlapping")
    with pytest.raises(ValueError, match="pool must be one of"):
        feature_sizes(67, "average")
    m = AlexNet(num_classes=3, input_size=39, width=1 / 16, pool="non-overlapping")
    assert [(l.size, l.stride) for l in m.layers if isinstance(l, MaxPool)] == [(2, 2)] * 3
    assert m.forward(np.zeros((2, 3, 39, 39), np.float32)).shape == (2, 3)
    assert all((l.size, l.stride) == (3, 2) for l in AlexNet(3, 67, 1 / 16).layers if isinstance(l, MaxPool))


def test_relu_and_tanh_networks_start_from_the_same_weights():
    relu = AlexNet(num_classes=4, input_size=67, width=1 / 16, seed=3, init="he")
    tanh = AlexNet(num_classes=4, input_size=67, width=1 / 16, seed=3, init="he", activation="tanh")
    a, b = relu.state_dict(), tanh.state_dict()
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [l.name for l in tanh.layers if isinstance(l, Tanh)] == [f"tanh{i}" for i in range(1, 8)]
    assert not any(isinstance(l, ReLU) for l in tanh.layers) and tanh.config["activation"] == "tanh"
    x = np.random.default_rng(0).standard_normal((2, 3, 67, 67)).astype(np.float32)
    w, bias = a["conv1.weight"], a["conv1.bias"]
    want = reference.tanh_forward(reference.conv2d_forward(x, w, bias, stride=4))
    np.testing.assert_allclose(tanh.features(x, "conv1"), want, rtol=1e-5, atol=1e-6)  # the same float32 ops
    with pytest.raises(ValueError, match="activation must be one of"):
        AlexNet(num_classes=4, input_size=67, width=1 / 16, activation="sigmoid")


# ---------------------------------------------------------------------------
# Training: every variant on every CPU backend, and exact resume
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_trains_and_resumes_exactly(two_class_data, tmp_path, backend, variant):
    changes = VARIANTS[variant]
    a, b = tmp_path / "a", tmp_path / "b"
    logs = []
    assert T.train(cfg_for(two_class_data, a, backend=backend, **changes), log=logs.append) == 0
    assert T.train(cfg_for(two_class_data, b, backend=backend, epochs=1, **changes), log=quiet) == 0
    assert T.train(resume=True, out=b, overrides={"epochs": 2}, log=quiet) == 0
    ra, rb = rf.read_metrics(a / rf.METRICS), rf.read_metrics(b / rf.METRICS)
    assert len(ra) == 2 and no_timing(ra) == no_timing(rb)
    wa, _ = rf.load_checkpoint(a / rf.CHECKPOINT)
    wb, info = rf.load_checkpoint(b / rf.CHECKPOINT)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    cfg = json.loads((a / rf.CONFIG).read_text())
    for k, v in changes.items():      # recorded in config.json, the checkpoint's config and its model
        assert cfg[k] == v and info["config"][k] == v
        if k in cfg["model"]:
            assert cfg["model"][k] == info["model"][k] == v
    model, _ = rf.model_from_checkpoint(b / rf.CHECKPOINT)   # eval and predict rebuild the variant
    assert model.config == AlexNet(**info["model"]).config
    for r in ra:
        assert 0 <= r["train_top1_err"] <= 1 and np.isfinite(r["train_loss"])
        dead = r["health"]["dead"]
        assert set(dead) == (set() if variant == "tanh" else {f"relu{i}" for i in range(1, 8)})
    assert not any("dead" in l for l in logs if l.startswith("warning"))
    if variant == "tanh":   # health.png draws the layers' update ratios and no dead-unit charts
        assert V.health_image(ra).size == V.health_layout(8, 0)


def test_train_top1_err_is_the_error_on_the_training_batches(two_class_data, tmp_path):
    """At lr 1e-12 no weight moves (the update is below float32's rounding step) and dropout is off, so
    the recorded training error is the model's top-1 error on the epoch's batches as the loader made them."""
    out = tmp_path / "r"
    assert T.train(cfg_for(two_class_data, out, epochs=1, lr=1e-12, dropout=0.0), log=quiet) == 0
    rec = rf.read_metrics(out / rf.METRICS)[0]
    cfg = json.loads((out / rf.CONFIG).read_text())
    model, _ = rf.model_from_checkpoint(out / rf.CHECKPOINT)
    loader = TrainLoader(PreparedDataset(cfg["prepared"], "train"), batch_size=cfg["batch_size"],
                         crop=cfg["input_size"], seed=cfg["seed"], flip=cfg["flip"], pca_std=cfg["pca_std"],
                         scale=cfg["input_scale"])
    wrong = seen = 0
    for x, y in loader.epoch(0):
        wrong += int((np.argmax(model.forward(x), axis=1) != y).sum())
        seen += len(y)
    assert seen == 24 and rec["train_top1_err"] == pytest.approx(wrong / seen, abs=1e-12)


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------

def test_train_options_set_the_variant(raw_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALEXNET_CUDA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    rc = cli.main(["train", "--data", raw_data, "--out", str(out), "--epochs", "1", "--batch-size", "16",
                   "--backend", "numpy", "--preset", "small", "--activation", "tanh", "--no-lrn", "--pool",
                   "non-overlapping", "--towers", "1", "--dropout", "0.3", "--no-lighting", "--no-flip"])
    assert rc == 0
    cfg = json.loads((out / rf.CONFIG).read_text())
    assert {k: cfg[k] for k in ("activation", "lrn", "pool", "towers", "dropout", "pca_std", "flip")} == dict(
        activation="tanh", lrn=False, pool="non-overlapping", towers=1, dropout=0.3, pca_std=0.0, flip=False)
    defaults = T.default_config()
    assert (defaults["activation"], defaults["pool"], defaults["lrn"], defaults["towers"], defaults["flip"],
            defaults["pca_std"]) == ("relu", "overlapping", True, 2, True, T.PCA_STD)   # the paper's
    capsys.readouterr()
    assert cli.main(["train", "--out", str(out), "--resume", "--epochs", "2", "--activation", "relu"]) == 0
    assert "--activation is ignored with --resume" in capsys.readouterr().out
    assert json.loads((out / rf.CONFIG).read_text())["activation"] == "tanh"
    assert len(rf.read_metrics(out / rf.METRICS)) == 2
    for bad in (["--dropout", "1"], ["--towers", "3"], ["--pool", "average"], ["--activation", "sigmoid"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["train", "--out", str(tmp_path / "x"), *bad])
        assert e.value.code == 2
    assert "a probability in [0, 1)" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# alexnet-cuda ablate
# ---------------------------------------------------------------------------

def test_reach_epoch_interpolates_the_crossing():
    recs = [{"epoch": 1, "e": 0.6}, {"epoch": 2, "e": 0.4}, {"epoch": 3, "e": 0.2}]
    assert ablate.reach_epoch(recs, "e", 0.3) == pytest.approx(2.5)
    assert ablate.reach_epoch(recs, "e", 0.6) == 1.0
    assert ablate.reach_epoch(recs, "e", 0.1) is None
    assert ablate.reach_epoch(recs, "e", 0.7, start=0.9) == pytest.approx(2 / 3)   # from chance at epoch 0
    s = ablate.figure1_summary({"relu": [{"epoch": 1, "train_top1_err": 0.5}, {"epoch": 2, "train_top1_err": 0.1}],
                                "tanh": [{"epoch": e, "train_top1_err": 0.9 - 0.1 * e} for e in range(1, 8)]},
                               0.25, 10)
    # ReLU crosses 25% at 1 + (0.5 - 0.25) / 0.4 = 1.625, tanh at 6.5: 4.0x
    assert s["relu_epochs_to_target"] == pytest.approx(1.625) and s["tanh_epochs_to_target"] == pytest.approx(6.5)
    assert s["speedup"] == pytest.approx(4.0) and "4.0x faster" in s["text"]


def test_ablate_study_writes_its_files_and_resumes(raw_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALEXNET_CUDA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "study"
    args = ["ablate", "--data", raw_data, "--out", str(out), "--variants", "baseline,one-tower", "--seeds", "0,1",
            "--batch-size", "16", "--backend", "numpy", "--preset", "small", "--target", "0.5"]
    assert cli.main(args + ["--epochs", "1"]) == 0
    assert cli.main(args + ["--epochs", "2"]) == 0               # the half-finished study continues
    logs = capsys.readouterr().out
    assert logs.count(": trained (") == 4 and logs.count(": resumed (") == 4
    study = json.loads((out / ablate.ABLATION_JSON).read_text())
    assert study["study"]["seeds"] == [0, 1] and list(study["variants"]) == ["baseline", "one-tower"]
    for v in ("baseline", "one-tower"):
        runs = [rf.read_metrics(out / v / f"seed{s}" / rf.METRICS) for s in (0, 1)]
        assert [len(r) for r in runs] == [2, 2]
        finals = [r[-1]["val_top1_err"] for r in runs]
        got = study["variants"][v]
        assert got["final_val_top1_err"] == finals
        assert got["val_top1_err"]["mean"] == pytest.approx(np.mean(finals))
        assert got["val_top1_err"]["sd"] == pytest.approx(np.std(finals, ddof=1))
        assert got["epochs_to_target"] == [ablate.reach_epoch(r, "val_top1_err", 0.5) for r in runs]
        assert got["seconds_per_run"] == pytest.approx(np.mean([sum(x["seconds"] for x in r) for r in runs]))
        assert json.loads((out / v / "seed1" / rf.CONFIG).read_text())["towers"] == (1 if v == "one-tower" else 2)
    base = study["variants"]["baseline"]["val_top1_err"]["mean"]
    assert study["variants"]["one-tower"]["val_top1_err"]["minus_baseline"] == pytest.approx(
        study["variants"]["one-tower"]["val_top1_err"]["mean"] - base)
    md = (out / ablate.ABLATION_MD).read_text()
    assert "| baseline | none |" in md and "| one-tower | towers 1 |" in md and "epochs to 50%" in md
    from PIL import Image
    assert Image.open(out / ablate.ABLATION_PNG).size == V.COMPARISON_SIZE
    before = (out / ablate.ABLATION_JSON).read_text()
    assert cli.main(args + ["--epochs", "2"]) == 0                # a finished study is kept as it is
    assert capsys.readouterr().out.count(": kept (") == 4
    assert json.loads((out / ablate.ABLATION_JSON).read_text()) == json.loads(before)
    assert cli.main(args + ["--epochs", "2", "--lr", "0.02"]) == 2    # other settings: not silently reused
    assert "holds a run with other settings (lr 0.01, here 0.02)" in capsys.readouterr().err
    assert cli.main(args + ["--variants", "baseline,wide"]) == 2
    assert "unknown variant(s) wide" in capsys.readouterr().err


def test_ablate_figure1_trains_relu_and_tanh_from_the_same_weights(raw_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALEXNET_CUDA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "fig"
    assert cli.main(["ablate", "--figure1", "--data", raw_data, "--out", str(out), "--epochs", "2", "--seeds", "4",
                     "--batch-size", "16", "--backend", "numpy", "--preset", "small", "--target", "0.5"]) == 0
    relu, tanh = (json.loads((out / f"figure1-{a}" / rf.CONFIG).read_text()) for a in ("relu", "tanh"))
    assert (relu["activation"], tanh["activation"]) == ("relu", "tanh")
    assert {k: v for k, v in relu.items() if k not in ("activation", "out", "model")} == \
           {k: v for k, v in tanh.items() if k not in ("activation", "out", "model")}
    assert relu["seed"] == 4 and relu["dropout"] == 0.0
    fig = json.loads((out / ablate.FIGURE1_JSON).read_text())
    for a in ("relu", "tanh"):
        recs = rf.read_metrics(out / f"figure1-{a}" / rf.METRICS)
        assert fig["train_top1_err"][a] == [r["train_top1_err"] for r in recs] and len(recs) == 2
        assert fig[f"{a}_epochs_to_target"] == ablate.reach_epoch(recs, "train_top1_err", 0.5, start=2 / 3)
    if fig["speedup"] is not None:
        assert fig["speedup"] == pytest.approx(fig["tanh_epochs_to_target"] / fig["relu_epochs_to_target"])
    assert fig["text"] in (out / ablate.FIGURE1_MD).read_text() and (out / ablate.FIGURE1_PNG).is_file()
    assert fig["text"] in capsys.readouterr().out
