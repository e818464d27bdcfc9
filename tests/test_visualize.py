"""`alexnet-cuda visualize`: each picture from a tiny checkpoint, the nearest-neighbour search
against brute force, the training curves, and the command's errors."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from alexnet_cuda import runfolder as rf
from alexnet_cuda import train as T
from alexnet_cuda.schedule import LRSchedule
from alexnet_cuda import visualize as V
from alexnet_cuda.model import AlexNet

WIDTH, INPUT, SIZE = 1 / 16, 67, 72  # conv1: 6 kernels, 3 per tower


def quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A prepared 3-class dataset and the checkpoint of an (untrained) width-1/16 AlexNet, with the
    metadata `alexnet-cuda train` writes."""
    from alexnet_cuda.data import PreparedDataset, make_synthetic_dataset, prepare_dataset
    root = tmp_path_factory.mktemp("vis")
    raw = make_synthetic_dataset(root, num_classes=3, train_per_class=10, val_per_class=4, image_size=24,
                                 log=None, workers=1)
    prepared = prepare_dataset(raw, root / "prepared", size=SIZE, log=quiet, workers=1)
    ds = PreparedDataset(prepared, "train")
    cfg = T.default_config(preset="small", backend="numpy", data=str(raw), out=str(root / "run"), width=WIDTH,
                           data_size=SIZE, input_size=INPUT)
    cfg.update(prepared=str(prepared), classes=list(ds.classes), num_classes=ds.num_classes)
    model = AlexNet(num_classes=3, input_size=INPUT, width=WIDTH, init="he", seed=3, backend="numpy")
    cfg["model"] = dict(model.config)
    run = root / "run"
    run.mkdir()
    rf.save_checkpoint(run / rf.CHECKPOINT, model, cfg=cfg, epoch=1, batch=0, schedule=LRSchedule(0.01),
                      partial={"loss_sum": 0.0, "loss_count": 0, "train_seconds": 0.0, "seconds": 0.0},
                      mean=ds.mean)
    # the same network, whose dataset has since been deleted
    gone = dict(cfg, data=str(root / "deleted"), prepared=str(root / "deleted-prepared"))
    rf.save_checkpoint(root / "gone.safetensors", model, cfg=gone, epoch=1, batch=0, schedule=LRSchedule(0.01),
                      partial={"loss_sum": 0.0, "loss_count": 0, "train_seconds": 0.0, "seconds": 0.0})
    recs = [{"epoch": 1, "step": 3, "lr": 0.01, "train_loss": 1.1, "val_top1_err": 0.6, "val_top5_err": 0.0}]
    (run / rf.METRICS).write_text("".join(json.dumps(r) + "\n" for r in recs))
    return {"run": run, "ckpt": run / rf.CHECKPOINT, "prepared": prepared, "model": model,
            "ckpt_gone": root / "gone.safetensors"}


def assert_picture(path, size=None):
    img = Image.open(path).convert("RGB")   # photographs are stored with a 256-colour palette
    if size is not None:
        assert img.size == tuple(size)
    a = np.asarray(img, np.float64)
    assert a.std() > 10, f"{path.name} looks blank (pixel std {a.std():.1f})"
    colours = np.unique(a.reshape(-1, 3).astype(np.uint8), axis=0)
    assert len(colours) >= 20, f"{path.name} has only {len(colours)} colours"
    return img


def test_visualize_writes_every_picture(tiny_run, tmp_path):
    out = tmp_path / "pics"
    logs = []
    written = V.visualize(tiny_run["ckpt"], out=out, num_images=5, num_queries=2, log=logs.append)
    assert sorted(written) == ["conv1_filters.png", "curves.png", "neighbours.png", "predictions.png"]
    K = tiny_run["model"].channels["conv1"]
    assert K == 6
    W, H, cols, rows, _ = V.conv1_filters_layout(K, 2)
    assert (cols, rows) == (3, 1)
    assert (W, H) == (3 + 3 * (55 + 3) + 3, 3 + 2 * (18 + 55 + 3 + 3))
    assert_picture(out / "conv1_filters.png", (W, H))
    assert_picture(out / "predictions.png", V.predictions_layout(5, 3)[:2])
    assert V.predictions_layout(5, 3)[2] == 4                      # 4 columns, 2 rows
    assert_picture(out / "neighbours.png", V.neighbours_layout(2, 6)[:2])
    assert_picture(out / "curves.png", V.CURVES_SIZE)
    assert not [p for p in out.iterdir() if p.suffix != ".png"]   # no temporary files left
    assert sum("wrote" in l for l in logs) == 4


def test_conv1_tiles_are_the_normalized_kernels():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 11, 11)).astype(np.float32)
    img = np.asarray(V.conv1_filters_image(w, 2, scale=4, gap=2))
    label_h = V.conv1_filters_layout(4, 2, scale=4, gap=2)[4]
    # kernel 3 = tower 2's second tile: row block 2, column 1
    y0 = 2 + (label_h + 44 + 2 + 2) + label_h
    x0 = 2 + 1 * (44 + 2)
    tile = img[y0:y0 + 44:4, x0:x0 + 44:4]
    k = w[3].transpose(1, 2, 0).astype(np.float64)
    want = np.round((k - k.min()) / (k.max() - k.min()) * 255)
    assert np.array_equal(tile, want.astype(np.uint8))


@pytest.mark.parametrize("k", [6, 40])
def test_nearest_neighbours_equal_brute_force(any_backend, k):
    model = AlexNet(num_classes=4, input_size=INPUT, width=WIDTH, init="he", seed=1, backend=any_backend)
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((3, 3, INPUT, INPUT)).astype(np.float32)
    train = rng.standard_normal((23, 3, INPUT, INPUT)).astype(np.float32)
    train[7] = queries[1]   # an exact match: distance 0, first
    sizes = [8, 8, 7]
    batches = []
    s = 0
    for n in sizes:
        batches.append((train[s:s + n], np.zeros(n, np.int64)))  # (x, y) pairs as EvalLoader yields
        s += n
    ind, dist = V.nearest_neighbours(model, queries, iter(batches), k=k)
    kk = min(k, len(train))
    assert ind.shape == dist.shape == (3, kk)
    be = model.backend
    fq = be.to_numpy(model.features(queries)).astype(np.float64)
    ft = be.to_numpy(model.features(train)).astype(np.float64)
    d = np.sqrt(((fq[:, None, :] - ft[None, :, :]) ** 2).sum(-1))
    want = np.argsort(d, axis=1, kind="stable")[:, :kk]
    assert np.array_equal(ind, want)
    np.testing.assert_allclose(dist, np.take_along_axis(d, want, 1), rtol=1e-4, atol=1e-3)
    assert ind[1, 0] == 7 and dist[1, 0] < 1e-2
    # bare arrays work as batches too
    ind2, _ = V.nearest_neighbours(model, queries, (b[0] for b in batches), k=k)
    assert np.array_equal(ind2, ind)


METRICS = [
    {"epoch": 1, "step": 46, "lr": 0.01, "train_loss": 2.31, "val_top1_err": 0.90, "val_top5_err": 0.50},
    {"epoch": 2, "step": 92, "lr": 0.01, "train_loss": 1.70, "val_top1_err": 0.55, "val_top5_err": 0.12},
    {"epoch": 3, "step": 138, "lr": 0.01, "train_loss": 1.10, "val_top1_err": 0.30, "val_top5_err": 0.04},
    {"epoch": 4, "step": 184, "lr": 0.001, "train_loss": 0.60, "val_top1_err": 0.12, "val_top5_err": 0.01},
    {"epoch": 5, "step": 230, "lr": 0.001, "train_loss": 0.52, "val_top1_err": 0.10, "val_top5_err": 0.01},
    {"epoch": 6, "step": 276, "lr": 0.0001, "train_loss": float("nan"), "val_top1_err": 0.09,
     "val_top5_err": 0.0},
]


def test_curves_from_metrics_with_lr_drops(tmp_path):
    text = "".join(json.dumps(r) + "\n" for r in METRICS) + '{"epoch": 7, "lr"'   # a torn last line
    (tmp_path / "metrics.jsonl").write_text(text)
    recs = rf.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in recs] == [1, 2, 3, 4, 5, 6] and math.isnan(recs[-1]["train_loss"])
    assert V.lr_drops(recs) == [3, 5]
    logs = []
    p = V.write_curves(tmp_path, log=logs.append)
    assert p == tmp_path / "curves.png" and not logs
    img = assert_picture(p, V.CURVES_SIZE)
    a = np.asarray(img).astype(int)
    # each series' colour is drawn
    for colour in (V._C_LOSS, V._C_TOP1, V._C_TOP5, V._C_LR):
        near = (np.abs(a - np.array(colour)).sum(-1) < 40).sum()
        assert near > 50, colour
    # rewritten in place, nothing else left in the folder
    assert V.write_curves(tmp_path) == p
    assert sorted(x.name for x in tmp_path.iterdir()) == ["curves.png", "metrics.jsonl"]


def test_write_curves_without_records(tmp_path):
    assert V.write_curves(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text("")
    assert V.write_curves(tmp_path) is None
    assert not (tmp_path / "curves.png").exists()
    # a single epoch still plots
    (tmp_path / "metrics.jsonl").write_text(json.dumps(METRICS[0]) + "\n")
    assert_picture(V.write_curves(tmp_path), V.CURVES_SIZE)


def vmain(argv):
    from alexnet_cuda import cli
    return cli.main(["visualize"] + argv)


def test_main_errors_are_one_line(tiny_run, tmp_path, capsys):
    assert vmain(["--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not found" in err and "Traceback" not in err
    assert vmain(["--checkpoint", str(tiny_run["ckpt"]), "--data", str(tmp_path / "missing"),
                   "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()          # nothing written before the data is found
    assert vmain(["--checkpoint", str(tiny_run["ckpt_gone"]), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--data" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert vmain(["--checkpoint", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error:")
    with pytest.raises(SystemExit) as e:                          # argparse's usage error
        vmain(["--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_cli_dispatch(tiny_run, tmp_path, capsys):
    from alexnet_cuda import cli
    out = tmp_path / "pics"
    rc = cli.main(["visualize", "--checkpoint", str(tiny_run["ckpt"]), "--data", str(tiny_run["prepared"]),
                   "--out", str(out), "--num-images", "2", "--num-queries", "1", "--backend", "numpy"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["conv1_filters.png", "curves.png", "neighbours.png",
                                                     "predictions.png"]
    assert "wrote" in capsys.readouterr().out


def test_comparison_image_draws_plain_values_above_one():
    """percent=False (a loss curve, benchmarks/precision_curve.py): values above 1 are drawn, not clipped at 100%."""
    curves = [("fp32", [(0.5, 2.3), (1.0, 1.2)]), ("bf16", [(0.5, 2.31), (1.0, 1.25)])]
    img = np.asarray(V.comparison_image(curves, ylabel="training loss", percent=False))
    as_pct = np.asarray(V.comparison_image(curves, ylabel="training loss"))
    assert img.shape == as_pct.shape and img.ndim == 3
    assert not np.array_equal(img, as_pct)     # another axis: 0..3 instead of 0..100%
