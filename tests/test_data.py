"""Tests of the data pipeline: synthetic set, prepare, loaders, predict input."""
from __future__ import annotations

import hashlib
import json
import pickle
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from alexnet_cuda import data as D
from alexnet_cuda.data import (DataError, EvalLoader, PreparedDataset, TrainLoader,
                               ensure_prepared, is_prepared, load_image_for_predict,
                               make_synthetic_dataset, prepare_dataset)
from alexnet_cuda.data import prepare as prepare_mod


class Log:
    def __init__(self):
        self.lines = []

    def __call__(self, *args):
        self.lines.append(" ".join(str(a) for a in args))

    @property
    def text(self):
        return "\n".join(self.lines)


def tree_digest(root: Path):
    """{relative path: sha256} of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def save_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("alexnet-cuda-TrainLoader")]


# ------------------------------------------------------------------ synthetic
SYN = dict(num_classes=10, train_per_class=2, val_per_class=1, image_size=32, seed=3)


def test_synthetic_layout_and_determinism(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", workers=1, log=None, **SYN)
    b = make_synthetic_dataset(tmp_path / "b", workers=2, log=None, **SYN)
    assert a.name == b.name and a.name.startswith("synthetic-v2-")
    da, db = tree_digest(a), tree_digest(b)
    assert da == db  # same seed -> identical files, whatever the number of processes
    for split, per in (("train", 2), ("val", 1)):
        classes = sorted(p.name for p in (a / split).iterdir() if p.is_dir())
        assert len(classes) >= 10 and len(set(classes)) == len(classes)
        for c in classes:
            files = sorted((a / split / c).iterdir())
            assert [f.suffix for f in files] == [".jpg"] * per
            with Image.open(files[0]) as im:
                assert im.format == "JPEG" and im.mode == "RGB" and im.size == (32, 32)
    meta = json.loads((a / "synthetic.json").read_text())
    assert sorted(meta["classes"]) == classes
    # no temporary folder left beside it
    assert [p.name for p in (tmp_path / "a").iterdir()] == [a.name]
    # another seed gives other images
    c = make_synthetic_dataset(tmp_path / "c", workers=1, log=None, **{**SYN, "seed": 4})
    dc = tree_digest(c)
    assert sum(da[k] != dc.get(k) for k in da if k.endswith(".jpg")) == 30


def test_synthetic_is_reused(tmp_path):
    log = Log()
    a = make_synthetic_dataset(tmp_path, workers=1, log=log, **SYN)
    assert log.lines
    f = next((a / "train").rglob("*.jpg"))
    mtime = f.stat().st_mtime_ns
    log2 = Log()
    assert make_synthetic_dataset(tmp_path, workers=1, log=log2, **SYN) == a
    assert f.stat().st_mtime_ns == mtime and not log2.lines
    assert a.stat().st_mode & 0o005 == 0o005  # readable by others, unlike a fresh mkdtemp


def test_synthetic_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_CUDA_CACHE", str(tmp_path / "cache"))
    p = make_synthetic_dataset(workers=1, log=None, **{**SYN, "train_per_class": 1})
    assert p.parent == tmp_path / "cache" and (p / "val").is_dir()


def test_synthetic_classes_not_separable_by_colour(tmp_path):
    """Nearest centroid on the mean colour and brightness of an image must be
    near chance (10 classes): the class is in the shape, not the colours."""
    p = make_synthetic_dataset(tmp_path, num_classes=10, train_per_class=30, val_per_class=10,
                               image_size=32, seed=0, workers=1, log=None)

    def feats(split):
        X, y = [], []
        for label, c in enumerate(sorted(q.name for q in (p / split).iterdir())):
            for f in sorted((p / split / c).iterdir()):
                a = np.asarray(Image.open(f), np.float64)
                X.append(np.r_[a.mean((0, 1)), a.std((0, 1))])
                y.append(label)
        return np.array(X), np.array(y)

    Xt, yt = feats("train")
    Xv, yv = feats("val")
    mu, sd = Xt.mean(0), Xt.std(0)
    cent = np.stack([((Xt - mu) / sd)[yt == k].mean(0) for k in range(10)])
    pred = np.argmin(((((Xv - mu) / sd)[:, None] - cent[None]) ** 2).sum(-1), 1)
    assert (pred == yv).mean() < 0.35


# ------------------------------------------------------------------ prepare: inputs
@pytest.fixture
def raw_modes(tmp_path):
    """A source folder with every kind of input image, 2 classes."""
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    t = src / "train"
    # class a: RGB jpg (upper-case ext), grayscale png, CMYK jpg, RGBA png, LA png
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    (t / "a").mkdir(parents=True)
    Image.fromarray(rgb).save(t / "a" / "rgb.JPG", quality=95)
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(t / "a" / "gray.png")  # mode L
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(t / "a" / "cmyk.jpeg", quality=95)  # red
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :4, 3] = 255   # left half opaque
    rgba[:, 4:, 3] = 0     # right half transparent -> black
    Image.fromarray(rgba).save(t / "a" / "rgba.png")
    Image.fromarray(np.stack([np.full((8, 8), 90, np.uint8), np.full((8, 8), 255, np.uint8)], -1),
                    ).convert("LA").save(t / "a" / "la.png")
    # class b: 16-bit png, palette png with transparency, broken files, a non-image
    (t / "b").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 51400, np.uint16)).save(t / "b" / "deep.png")  # I;16
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
    pal.info["transparency"] = 0
    pal.save(t / "b" / "pal.png", transparency=0)
    (t / "b" / "broken.jpg").write_bytes(b"this is not a jpeg")
    buf = (t / "a" / "rgb.JPG").read_bytes()
    (t / "b" / "truncated.jpg").write_bytes(buf[: len(buf) // 2])
    (t / "b" / "notes.txt").write_text("ignored")
    for c in ("a", "b"):
        save_png(src / "val" / c / "v.png", rng.integers(0, 256, (8, 8, 3)))
    return src, rgb


def test_prepare_modes_and_broken_files(tmp_path, raw_modes):
    src, rgb = raw_modes
    log = Log()
    dst = prepare_dataset(src, tmp_path / "dst", size=8, log=log, workers=0)
    assert is_prepared(dst)
    tr = PreparedDataset(dst, "train")
    assert tr.classes == ["a", "b"] and tr.size == 8 and tr.num_classes == 2
    # rows: class a sorted by name (cmyk, gray, la, rgb, rgba), then b (deep, pal)
    assert tr.labels.tolist() == [0, 0, 0, 0, 0, 1, 1]
    cmyk, gray, la, rgbj, rgba, deep, pal = np.asarray(tr.images, np.int64)
    assert np.abs(cmyk - [255, 0, 0]).max() <= 3
    assert (gray == 100).all()
    assert (la == 90).all()
    with Image.open(src / "train" / "a" / "rgb.JPG") as im:  # no resize at size 8: exact
        assert (rgbj == np.asarray(im.convert("RGB"))).all()
    assert np.abs(rgbj - rgb.astype(np.int64)).mean() < 60  # and it is that image
    assert (rgba[:, :4] == [200, 100, 50]).all() and (rgba[:, 4:] == 0).all()
    assert (deep == 200).all()  # 51400 / 257
    assert (pal == [10, 20, 30]).all()  # colour 1 is opaque
    meta = json.loads((dst / "meta.json").read_text())
    assert meta["skipped_count"] == 2
    assert sorted(meta["skipped"]["train"]) == ["train/b/broken.jpg", "train/b/truncated.jpg"]
    assert meta["counts"] == {"train": 7, "val": 2}
    assert "broken.jpg" in log.text and "truncated.jpg" in log.text
    assert "skipped 2" in log.text


def test_prepare_resize_and_centre_crop(tmp_path):
    src = tmp_path / "src"
    # 24 wide x 12 high, columns numbered: shorter side already 12 -> only the crop
    wide = np.zeros((12, 24, 3), np.uint8)
    wide[:, :, 0] = np.arange(24)[None, :] * 10
    wide[:, :, 1] = np.arange(12)[:, None] * 20
    save_png(src / "train" / "x" / "wide.png", wide)
    # 6 wide x 12 high: upscaled to 12 x 24, then the central 12 rows
    tall = np.zeros((12, 6, 3), np.uint8)
    tall[:6] = 255
    save_png(src / "train" / "x" / "tall.png", tall)
    save_png(src / "val" / "x" / "v.png", wide)
    dst = prepare_dataset(src, tmp_path / "dst", size=12, log=None, workers=0)
    tr = PreparedDataset(dst, "train")
    assert tr.images.shape == (2, 12, 12, 3)
    t, w = np.asarray(tr.images[0], np.int64), np.asarray(tr.images[1], np.int64)
    assert (w == wide[:, 6:18]).all()
    # tall: rows 0..5 of 12 were white -> after 2x upscale rows 0..11 of 24; crop rows 6..17
    assert (t[:4] == 255).all() and (t[-4:] == 0).all()


def test_prepare_rejects_bad_layouts(tmp_path):
    def attempt(src):
        dst = tmp_path / "dst"
        with pytest.raises(DataError) as e:
            prepare_dataset(src, dst, size=8, log=None, workers=0)
        assert not dst.exists()  # nothing done before the check
        msg = str(e.value)
        assert "\n" not in msg and msg
        return msg

    assert "not found" in attempt(tmp_path / "nope")
    src = tmp_path / "s1"
    save_png(src / "train" / "a" / "x.png", np.zeros((8, 8, 3)))
    assert "val/" in attempt(src)
    (src / "val").mkdir()
    assert "no class folders" in attempt(src)
    save_png(src / "val" / "b" / "x.png", np.zeros((8, 8, 3)))
    assert "different classes" in attempt(src)
    save_png(src / "val" / "a" / "x.png", np.zeros((8, 8, 3)))
    (src / "train" / "b").mkdir()
    (src / "train" / "b" / "readme.txt").write_text("no images here")
    msg = attempt(src)
    assert "no images" in msg and "b" in msg


def test_mean_and_pca_match_numpy(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    imgs = {}
    for c, tint in (("p", (40, 0, 0)), ("q", (0, 30, 60)), ("r", (0, 0, 0))):
        for i in range(5):
            a = np.clip(rng.normal(110, 40, (8, 8, 1)) + rng.normal(0, 15, (8, 8, 3)) + tint, 0, 255)
            a = a.astype(np.uint8)
            imgs[(c, i)] = a
            save_png(src / "train" / c / f"{i}.png", a)
        save_png(src / "val" / c / "0.png", rng.integers(0, 256, (8, 8, 3)))
    dst = prepare_dataset(src, tmp_path / "dst", size=8, log=None, workers=0)
    tr = PreparedDataset(dst, "train")
    X = np.stack([imgs[k] for k in sorted(imgs)])  # class-major, then name: same order
    assert (np.asarray(tr.images) == X).all()
    assert tr.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    Xf = X.astype(np.float64)
    np.testing.assert_allclose(tr.mean, Xf.mean(0), rtol=0, atol=1e-4)
    assert tr.mean.dtype == np.float32 and tr.mean.shape == (8, 8, 3)
    pix = Xf.reshape(-1, 3) / 255.0
    cov = np.cov(pix.T, bias=True)
    w, v = np.linalg.eigh(cov)
    w, v = w[::-1], v[:, ::-1]
    np.testing.assert_allclose(tr.eigvals, w, rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(tr.eigvals) <= 0)
    for i in range(3):  # eigenvectors up to sign; columns
        assert abs(abs(tr.eigvecs[:, i] @ v[:, i]) - 1) < 1e-9
        np.testing.assert_allclose(cov @ tr.eigvecs[:, i], tr.eigvals[i] * tr.eigvecs[:, i],
                                   atol=1e-12)
    with np.load(dst / "pca.npz") as z:
        np.testing.assert_allclose(z["cov"], cov, atol=1e-12)


def flaky_chunks(monkeypatch):
    """Record prepare's chunks as (split, k) in `calls`; the call numbered fail_at[0] (1-based)
    raises RuntimeError("simulated interruption"). Returns (calls, fail_at)."""
    real = prepare_mod._process_chunk
    calls, fail_at = [], [None]

    def flaky(split, k, *args, **kwargs):
        calls.append((split, k))
        if len(calls) == fail_at[0]:
            raise RuntimeError("simulated interruption")
        return real(split, k, *args, **kwargs)

    monkeypatch.setattr(prepare_mod, "_process_chunk", flaky)
    return calls, fail_at


def test_prepare_resumes_and_reuses(tmp_path, monkeypatch):
    src = make_synthetic_dataset(tmp_path / "syn", num_classes=10, train_per_class=3,
                                 val_per_class=2, image_size=24, seed=0, workers=1, log=None)
    bad = src / "train" / "circle" / "zz_broken.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    ref = prepare_dataset(src, tmp_path / "ref", size=16, log=None, workers=0, chunk_size=4)

    calls, fail_at = flaky_chunks(monkeypatch)
    dst = tmp_path / "dst"
    fail_at[0] = 4
    with pytest.raises(RuntimeError, match="simulated"):
        prepare_dataset(src, dst, size=16, log=None, workers=0, chunk_size=4)
    assert not is_prepared(dst) and (dst / ".partial").is_dir()
    calls.clear()
    fail_at[0] = None
    log = Log()
    prepare_dataset(src, dst, size=16, log=log, workers=2)  # resume (same chunks), in parallel
    # train: 31 files -> 8 chunks of which 3 were done; then val: 20 files -> 5 chunks
    assert calls == [("train", k) for k in range(3, 8)] + [("val", k) for k in range(5)]
    assert "resuming" in log.text
    assert tree_digest(dst) == tree_digest(ref)
    assert not (dst / ".partial").exists()
    # a finished destination is reused at once
    calls.clear()
    log = Log()
    assert prepare_dataset(src, dst, size=16, log=log, workers=0) == dst
    assert calls == [] and "reusing" in log.text
    with pytest.raises(DataError):
        prepare_dataset(src, dst, size=32, log=None)
    # interrupted in val/, after train/ was finalized
    dst3 = tmp_path / "dst3"
    calls.clear()
    fail_at[0] = 10
    with pytest.raises(RuntimeError):
        prepare_dataset(src, dst3, size=16, log=None, workers=0, chunk_size=4)
    calls.clear()
    fail_at[0] = None
    prepare_dataset(src, dst3, size=16, log=None, workers=0, chunk_size=4)
    assert calls == [("val", k) for k in range(1, 5)]
    assert tree_digest(dst3) == tree_digest(ref)
    # interrupted while finalizing: after truncating the image file, then after renaming it
    real_replace = prepare_mod.os.replace
    for n, target in ((4, "train_images.npy"), (5, "train_labels.npy")):
        d = tmp_path / f"fin{n}"
        seen = []

        def replace(a, b, target=target):
            if Path(b).name == target and not seen:
                seen.append(b)
                raise KeyboardInterrupt
            return real_replace(a, b)

        monkeypatch.setattr(prepare_mod.os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            prepare_dataset(src, d, size=16, log=None, workers=0, chunk_size=4)
        monkeypatch.setattr(prepare_mod.os, "replace", real_replace)
        assert seen and not is_prepared(d)
        calls.clear()
        prepare_dataset(src, d, size=16, log=None, workers=0, chunk_size=4)
        assert calls == [("val", k) for k in range(5)]  # no train chunk redone
        assert tree_digest(d) == tree_digest(ref)
    # a changed source restarts a half-done preparation instead of mixing files
    dst2 = tmp_path / "dst2"
    calls.clear()
    fail_at[0] = 2
    with pytest.raises(RuntimeError):
        prepare_dataset(src, dst2, size=16, log=None, workers=0, chunk_size=4)
    bad.unlink()
    calls.clear()
    fail_at[0] = None
    log = Log()
    prepare_dataset(src, dst2, size=16, log=log, workers=0, chunk_size=4)
    assert "starting over" in log.text and calls[0] == ("train", 0)
    assert len(PreparedDataset(dst2, "train")) == 30


def test_ensure_prepared_and_pickle(tmp_path):
    src = make_synthetic_dataset(tmp_path / "syn", num_classes=10, train_per_class=1,
                                 val_per_class=1, image_size=24, seed=0, workers=1, log=None)
    cache = tmp_path / "cache"
    p = ensure_prepared(src, cache, size=16, log=None)
    assert is_prepared(p) and p.is_relative_to(cache)
    assert not is_prepared(src)
    log = Log()
    assert ensure_prepared(src, cache, size=16, log=log) == p and "reusing" in log.text
    assert ensure_prepared(p, cache, size=16, log=None) == p  # a prepared folder as is
    assert ensure_prepared(src, cache, size=20, log=None) != p
    with pytest.raises(DataError):
        ensure_prepared(tmp_path / "missing", cache, size=16, log=None)
    ds = PreparedDataset(p, "val")
    assert len(ds) == 10 and ds.images.dtype == np.uint8 and ds.labels.dtype == np.int64
    assert ds.eigvecs.shape == (3, 3) and ds.eigvals.shape == (3,)
    ds2 = pickle.loads(pickle.dumps(ds))
    assert (np.asarray(ds2.images) == np.asarray(ds.images)).all() and ds2.split == "val"
    with pytest.raises(DataError):
        PreparedDataset(src, "train")


# ------------------------------------------------------------------ loaders
def coded_dataset(n=24, S=16, seed=0, mean=None):
    """Image i: channel 0 = 16*row + col, channel 1 = i, channel 2 = 255 - ch0."""
    rr, cc = np.mgrid[0:S, 0:S]
    code = (S * rr + cc).astype(np.uint8)
    imgs = np.empty((n, S, S, 3), np.uint8)
    imgs[..., 0] = code
    imgs[..., 1] = np.arange(n)[:, None, None]
    imgs[..., 2] = 255 - code
    if mean is None:
        mean = np.random.default_rng(seed).uniform(0, 50, (S, S, 3)).astype(np.float32)
    eigvecs, _ = np.linalg.qr(np.random.default_rng(seed + 1).normal(size=(3, 3)))
    return SimpleNamespace(images=imgs, labels=(np.arange(n) % 5).astype(np.int64), mean=mean,
                           eigvals=np.array([0.04, 0.01, 0.0025]), eigvecs=eigvecs, size=S)


def test_train_loader_geometry(tmp_path):
    ds = coded_dataset()
    S, c, B = 16, 10, 8
    L = TrainLoader(ds, batch_size=B, crop=c, seed=5, pca_std=0.0, scale=1.0)
    assert len(L) == 3
    perm = L.permutation(2)
    assert sorted(perm.tolist()) == list(range(24))
    seen, rows_all, flips_all = [], [], []
    for b, (x, y) in enumerate(L.epoch(2)):
        assert x.shape == (B, 3, c, c) and x.dtype == np.float32 and x.flags.c_contiguous
        assert y.shape == (B,) and y.dtype == np.int64
        rows, cols, flips, _ = L.augmentation(2, b, B)
        idx = perm[b * B:(b + 1) * B]
        assert (y == ds.labels[idx]).all()
        for k in range(B):
            i = idx[k]
            img = x[k] + ds.mean.transpose(2, 0, 1)[:, rows[k]:rows[k] + c, cols[k]:cols[k] + c][
                :, :, ::-1 if flips[k] else 1]
            assert np.allclose(img[1], i)  # the right image
            code = np.rint(img[0]).astype(int)
            r0, c0 = rows[k], cols[k]
            expect_cols = np.arange(c0, c0 + c)[::-1] if flips[k] else np.arange(c0, c0 + c)
            assert (code == S * np.arange(r0, r0 + c)[:, None] + expect_cols[None, :]).all()
            # direct slicing reference, including the mirrored mean
            ref = ds.images[i, r0:r0 + c, c0:c0 + c].astype(np.float32) - ds.mean[r0:r0 + c, c0:c0 + c]
            if flips[k]:
                ref = ref[:, ::-1]
            np.testing.assert_allclose(x[k], ref.transpose(2, 0, 1), atol=1e-5)
        seen.extend(idx)
        rows_all.extend(rows)
        flips_all.extend(flips)
    assert sorted(seen) == list(range(24))
    # windows and flips vary over many batches
    r_all, f_all = [], []
    for e in range(40):
        for b in range(3):
            r, cc, f, _ = L.augmentation(e, b, B)
            r_all.extend(r)
            r_all.extend(cc)
            f_all.extend(f)
    assert min(r_all) == 0 and max(r_all) == S - c
    assert 0.4 < np.mean(f_all) < 0.6
    # no flips when flip=False
    L2 = TrainLoader(ds, batch_size=B, crop=c, seed=5, pca_std=0.0, flip=False)
    x, _ = next(L2.epoch(0))
    rows, cols, flips, _ = L2.augmentation(0, 0, B)
    assert not flips.any()
    idx = L2.permutation(0)[:B]
    for k in range(B):
        ref = ds.images[idx[k], rows[k]:rows[k] + c, cols[k]:cols[k] + c].astype(np.float32) \
            - ds.mean[rows[k]:rows[k] + c, cols[k]:cols[k] + c]
        np.testing.assert_allclose(x[k], ref.transpose(2, 0, 1), atol=1e-5)


def test_train_loader_scale_and_drop_last():
    ds = coded_dataset(n=21)
    a = TrainLoader(ds, batch_size=8, crop=12, seed=1)
    b = TrainLoader(ds, batch_size=8, crop=12, seed=1, scale=0.25)
    assert len(a) == 2
    for (xa, ya), (xb, yb) in zip(a.epoch(0), b.epoch(0)):
        np.testing.assert_allclose(xb, 0.25 * xa, rtol=1e-6, atol=1e-5)
        assert (ya == yb).all()
    c = TrainLoader(ds, batch_size=8, crop=12, seed=1, drop_last=False)
    sizes = [len(y) for _, y in c.epoch(0)]
    assert len(c) == 3 and sizes == [8, 8, 5]
    with pytest.raises(DataError):
        TrainLoader(ds, batch_size=8, crop=17, seed=0)
    with pytest.raises(DataError) as e:
        TrainLoader(ds, batch_size=64, crop=8, seed=0)
    assert str(e.value) == ("the training set has 21 images, fewer than one batch of 64; "
                            "pass --batch-size N with N <= 21")


def test_train_loader_determinism_workers_and_restart():
    ds = coded_dataset(n=40)
    kw = dict(batch_size=8, crop=12, pca_std=0.1)
    ref = [(x.copy(), y.copy()) for x, y in TrainLoader(ds, seed=7, **kw).epoch(3)]
    assert len(ref) == 5
    for workers in (0, 1, 2, 3):
        got = list(TrainLoader(ds, seed=7, workers=workers, **kw).epoch(3))
        assert len(got) == 5
        for (x, y), (rx, ry) in zip(got, ref):
            assert np.array_equal(x, rx) and np.array_equal(y, ry)
    for start in (0, 2, 4, 5):
        for workers in (0, 2):
            got = list(TrainLoader(ds, seed=7, workers=workers, **kw).epoch(3, start_batch=start))
            assert len(got) == 5 - start
            for (x, y), (rx, ry) in zip(got, ref[start:]):
                assert np.array_equal(x, rx) and np.array_equal(y, ry)
    other_seed = next(TrainLoader(ds, seed=8, **kw).epoch(3))
    other_epoch = next(TrainLoader(ds, seed=7, **kw).epoch(4))
    assert not np.array_equal(other_seed[0], ref[0][0])
    assert not np.array_equal(other_epoch[0], ref[0][0])
    L = TrainLoader(ds, seed=7, **kw)
    assert not np.array_equal(L.permutation(3), L.permutation(4))
    # the augmentation is drawn from SeedSequence([seed, epoch, batch]), nothing else
    for e, b in ((3, 0), (3, 1), (4, 0)):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([7, e, b])))
        rows, cols, flips, offs = L.augmentation(e, b, 8)
        assert np.array_equal(rows, rng.integers(0, 5, 8)) and np.array_equal(cols, rng.integers(0, 5, 8))
        assert np.array_equal(flips, rng.random(8) < 0.5)
        np.testing.assert_allclose(offs, 255 * (0.1 * rng.standard_normal((8, 3)) * ds.eigvals)
                                   @ ds.eigvecs.T)
    assert not np.array_equal(L.augmentation(3, 0, 8)[3], L.augmentation(4, 0, 8)[3])
    assert not loader_threads()


def test_pca_offset_statistics():
    S, n = 8, 4000
    ds = coded_dataset(n=8, S=S)
    ds.images = np.full((n, S, S, 3), 128, np.uint8)
    ds.labels = np.zeros(n, np.int64)
    ds.mean = np.full((S, S, 3), 128, np.float32)  # x is then exactly the offset
    L = TrainLoader(ds, batch_size=500, crop=6, seed=0, pca_std=0.1)
    offs = []
    for x, _ in L.epoch(0):
        # one offset per image, the same at every pixel
        assert np.allclose(x, x[:, :, :1, :1], atol=1e-4)
        offs.append(x[:, :, 0, 0].astype(np.float64))
    offs = np.concatenate(offs)
    coef = offs @ ds.eigvecs / 255.0  # = a_i * eigval_i
    expect_std = 0.1 * ds.eigvals
    np.testing.assert_allclose(coef.std(0), expect_std, rtol=0.08)
    assert np.all(np.abs(coef.mean(0)) < 4 * expect_std / np.sqrt(n))
    assert np.abs(np.corrcoef(coef.T) - np.eye(3)).max() < 0.08
    # pca_std = 0: no offset
    L0 = TrainLoader(ds, batch_size=500, crop=6, seed=0, pca_std=0.0)
    assert np.abs(next(L0.epoch(0))[0]).max() == 0


def test_train_loader_early_close_and_errors(monkeypatch):
    ds = coded_dataset(n=64)
    L = TrainLoader(ds, batch_size=4, crop=8, seed=0, workers=3, prefetch=1)
    gen = L.epoch(0)
    next(gen)
    assert loader_threads()
    gen.close()
    assert not loader_threads()
    # an exception in the consumer (e.g. KeyboardInterrupt) stops the workers
    with pytest.raises(KeyboardInterrupt):
        for b, _ in enumerate(L.epoch(1)):
            if b == 2:
                raise KeyboardInterrupt
    assert not loader_threads()
    # an exception in a worker reaches the consumer
    real = TrainLoader.batch

    def broken(self, epoch, b, perm=None):
        if b == 5:
            raise ValueError("bad batch")
        return real(self, epoch, b, perm)

    monkeypatch.setattr(TrainLoader, "batch", broken)
    got = 0
    with pytest.raises(ValueError, match="bad batch"):
        for _ in L.epoch(0):
            got += 1
    assert got == 5 and not loader_threads()


def test_train_loader_on_prepared(tmp_path):
    src = make_synthetic_dataset(tmp_path / "syn", num_classes=10, train_per_class=2,
                                 val_per_class=1, image_size=24, seed=0, workers=1, log=None)
    p = prepare_dataset(src, tmp_path / "prep", size=20, log=None, workers=0)
    ds = PreparedDataset(p, "train")
    a = list(TrainLoader(ds, batch_size=6, crop=16, seed=0, workers=2).epoch(0))
    b = list(TrainLoader(pickle.loads(pickle.dumps(ds)), batch_size=6, crop=16, seed=0).epoch(0))
    assert len(a) == 3
    assert all(np.array_equal(x1, x2) and np.array_equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_eval_loader_centre_and_ten_crop():
    ds = coded_dataset(n=11, S=16)
    S, c = 16, 10
    imgs, mean = ds.images.astype(np.float32), ds.mean
    ev = EvalLoader(ds, batch_size=4, crop=c)
    assert len(ev) == 3
    batches = list(ev)
    assert [len(y) for _, y in batches] == [4, 4, 3]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert (y == ds.labels).all() and x.dtype == np.float32 and batches[0][0].flags.c_contiguous
    o = (S - c) // 2
    ref = (imgs[:, o:o + c, o:o + c] - mean[o:o + c, o:o + c]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x, ref, atol=1e-5)

    ev10 = EvalLoader(ds, batch_size=4, crop=c, ten_crop=True, scale=0.5)
    x10 = np.concatenate([b[0] for b in ev10])
    assert x10.shape == (11, 10, 3, c, c) and x10.dtype == np.float32
    corners = [(0, 0), (0, S - c), (S - c, 0), (S - c, S - c), (o, o)]
    for j, (r0, c0) in enumerate(corners):
        patch = (imgs[:, r0:r0 + c, c0:c0 + c] - mean[r0:r0 + c, c0:c0 + c]).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(x10[:, j], 0.5 * patch, atol=1e-5)
        np.testing.assert_allclose(x10[:, j + 5], 0.5 * patch[:, :, :, ::-1], atol=1e-5)
    # the top-left pixel code of the top-right patch is column S - c
    assert np.rint(x10[0, 1, 0, 0, 0] * 2 + mean[0, S - c, 0]) == S - c


def test_load_image_for_predict(tmp_path):
    rng = np.random.default_rng(3)
    S, c = 12, 8
    img = rng.integers(0, 256, (S, 2 * S, 3), dtype=np.uint8)  # wide: no resize at size 12
    save_png(tmp_path / "img.png", img)
    mean = rng.uniform(0, 255, (S, S, 3)).astype(np.float32)
    np.save(tmp_path / "mean.npy", mean)
    x = load_image_for_predict(tmp_path / "img.png", mean, size=S, crop=c, scale=0.5)
    sq = img[:, S // 2:S // 2 + S].astype(np.float32)
    o = (S - c) // 2
    ref = 0.5 * (sq[o:o + c, o:o + c] - mean[o:o + c, o:o + c]).transpose(2, 0, 1)[None]
    assert x.shape == (1, 3, c, c) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x, ref, atol=1e-4)
    x2 = load_image_for_predict(tmp_path / "img.png", tmp_path, size=S, crop=c, scale=0.5)
    np.testing.assert_array_equal(x, x2)  # a folder holding mean.npy
    with pytest.raises(DataError):
        load_image_for_predict(tmp_path / "nope.png", mean, size=S, crop=c)
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError):
        load_image_for_predict(tmp_path / "bad.jpg", mean, size=S, crop=c)
    with pytest.raises(DataError):
        load_image_for_predict(tmp_path / "img.png", mean, size=16, crop=c)


def test_public_api():
    for name in ("DataError", "make_synthetic_dataset", "prepare_dataset", "PreparedDataset",
                 "is_prepared", "ensure_prepared", "TrainLoader", "EvalLoader",
                 "load_image_for_predict"):
        assert hasattr(D, name), name
    assert issubclass(DataError, Exception)
