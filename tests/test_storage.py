"""Compact storage (prepare --storage jpeg): what it writes, the crops it gives
against raw storage, resuming, and training on it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from alexnet_cuda import cli
from alexnet_cuda.data import (DataError, EvalLoader, PreparedDataset, TrainLoader, ensure_prepared,
                               is_prepared, make_synthetic_dataset, prepare_dataset)
from alexnet_cuda.data import jpegstore
from alexnet_cuda.data import prepare as prepare_mod
from alexnet_cuda.data import source as source_mod
from test_data import Log, flaky_chunks, tree_digest  # noqa: E402 (tests/ is on sys.path under pytest)

# The codec error allowed between a JPEG-stored crop and the raw one: RMS over a
# crop's pixels and channels, in 0..255 levels. Quality 90 scales the standard
# quantization tables by 0.2 (mean step 11.5 for luma, 16 for chroma); a
# coefficient quantized with step q is off by at most q/2, q/sqrt(12) RMS when
# uniform, and the DCT is orthonormal, so the pixel-domain RMS is at most about
# 3.3 (Y) and 4.6 (Cb, Cr). Through YCbCr -> RGB (R = Y + 1.402 Cr,
# G = Y - 0.344 Cb - 0.714 Cr, B = Y + 1.772 Cb) that is 7.3, 4.9 and 8.8 per
# channel, 7.2 RMS over the three, plus 0.5 for the rounding to integers: 7.5.
# Measured on these edge-heavy synthetic images: 3.0 mean, 4.9 worst (96 px).
CODEC_RMS = 7.5
SIZE = 64


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    return make_synthetic_dataset(root, num_classes=10, train_per_class=3, val_per_class=2,
                                  image_size=96, seed=0, workers=1, log=None)


@pytest.fixture(scope="module")
def pair(syn, tmp_path_factory):
    """(raw prepared folder, jpeg prepared folder) of the same source."""
    root = tmp_path_factory.mktemp("prep")
    raw = prepare_dataset(syn, root / "raw", size=SIZE, log=None, workers=0)
    jpg = prepare_dataset(syn, root / "jpeg", size=SIZE, log=None, workers=0, storage="jpeg")
    return raw, jpg


def rms(a, b, axes):
    return np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, axis=axes))


def test_jpeg_folder_layout_and_meta(pair):
    raw, jpg = pair
    meta = json.loads((jpg / "meta.json").read_text())
    assert meta["storage"] == "jpeg" and meta["jpeg_quality"] == jpegstore.DEFAULT_JPEG_QUALITY
    assert json.loads((raw / "meta.json").read_text())["storage"] == "raw"
    assert meta["files"]["train"] == ["train_jpeg.npy", "train_offsets.npy", "train_labels.npy"]
    assert not (jpg / "train_images.npy").exists() and is_prepared(jpg)
    # the mean image and the PCA are the pixels' before encoding: the same bytes as raw storage's
    for name in ("mean.npy", "pca.npz", "train_labels.npy", "val_labels.npy"):
        assert (jpg / name).read_bytes() == (raw / name).read_bytes(), name
    for split in ("train", "val"):
        r, j = PreparedDataset(raw, split), PreparedDataset(jpg, split)
        assert j.storage == "jpeg-q90" and r.storage == "raw"
        assert j.images.shape == r.images.shape and len(j) == len(r)
        off = np.load(jpg / f"{split}_offsets.npy")
        data = np.load(jpg / f"{split}_jpeg.npy", mmap_mode="r")
        assert off[0] == 0 and off[-1] == len(data) and np.all(np.diff(off) > 0)
        for i in range(len(j)):  # every stream is a JPEG of its own
            assert bytes(data[off[i]:off[i] + 2]) == b"\xff\xd8"
        # a third of raw's bytes or less, even at 64 px on these sharp-edged images
        assert len(data) < 0.34 * r.images.size


def test_jpeg_decodes_to_the_raw_images_up_to_the_codec_error(pair):
    raw, jpg = pair
    for split in ("train", "val"):
        r, j = np.asarray(PreparedDataset(raw, split).images), PreparedDataset(jpg, split).images
        d = j[:]
        assert d.dtype == np.uint8 and d.shape == r.shape
        err = rms(d, r, (1, 2, 3))
        assert err.max() <= CODEC_RMS
        # each decoded image is nearest to its own raw image at the same position: not a neighbour's,
        # not shifted by a pixel, not mirrored
        for i in range(len(r)):
            own = err[i]
            others = rms(d[i], np.delete(r, i, axis=0), (1, 2, 3))
            shifted = [rms(d[i, 1:], r[i, :-1], None), rms(d[i, :, 1:], r[i, :, :-1], None),
                       rms(d[i], r[i, :, ::-1], None)]
            assert own < others.min() and own < min(shifted), i
        # every way of indexing gives the same pixels
        np.testing.assert_array_equal(j[3], d[3])
        np.testing.assert_array_equal(j[3, 5:9, 2:7], d[3, 5:9, 2:7])
        np.testing.assert_array_equal(j[np.array([[4, 1], [0, 4]])], d[[[4, 1], [0, 4]]])
        np.testing.assert_array_equal(j[-1], d[-1])
        with pytest.raises(IndexError):
            j[len(d)]


def test_jpeg_and_raw_storage_give_the_same_crops(pair):
    raw, jpg = pair
    tr = [PreparedDataset(p, "train") for p in (raw, jpg)]
    loaders = [TrainLoader(ds, batch_size=8, crop=57, seed=5, workers=w) for ds, w in zip(tr, (0, 2))]
    for epoch in (0, 1):
        for (xr, yr), (xj, yj) in zip(*(ld.epoch(epoch) for ld in loaders)):
            np.testing.assert_array_equal(yr, yj)       # same order, same augmentation draws
            assert rms(xr, xj, (1, 2, 3)).max() <= CODEC_RMS   # scale 1: the codec error itself
    va = [PreparedDataset(p, "val") for p in (raw, jpg)]
    for ten in (False, True):
        ev = [list(EvalLoader(ds, batch_size=7, crop=57, ten_crop=ten)) for ds in va]
        assert len(ev[0]) == len(ev[1])
        for (xr, yr), (xj, yj) in zip(*ev):
            np.testing.assert_array_equal(yr, yj)
            assert xr.shape == xj.shape and rms(xr, xj, tuple(range(1, xr.ndim))).max() <= CODEC_RMS


def test_raw_and_jpeg_preparations_do_not_mix(syn, pair, tmp_path):
    raw, jpg = pair
    with pytest.raises(DataError, match="with storage raw, not jpeg-q90"):
        prepare_dataset(syn, raw, size=SIZE, log=None, storage="jpeg")
    with pytest.raises(DataError, match="with storage jpeg-q90, not raw"):
        prepare_dataset(syn, jpg, size=SIZE, log=None)
    with pytest.raises(DataError, match="with storage jpeg-q90, not jpeg-q75"):
        prepare_dataset(syn, jpg, size=SIZE, log=None, storage="jpeg", jpeg_quality=75)
    log = Log()
    assert prepare_dataset(syn, jpg, size=SIZE, log=log, storage="jpeg", jpeg_quality=90) == jpg
    assert "reusing" in log.text
    with pytest.raises(DataError, match="storage must be one of"):
        prepare_dataset(syn, tmp_path / "x", size=SIZE, log=None, storage="png")
    with pytest.raises(DataError, match="quality must be in 1..100"):
        prepare_dataset(syn, tmp_path / "x", size=SIZE, log=None, storage="jpeg", jpeg_quality=0)
    # the storage is part of the fingerprint; raw storage keeps the header (and fingerprints) it had
    scan = source_mod.scan_source(syn, size=SIZE)
    raw_fp = dict(scan.fingerprint)
    assert json.loads((raw / "meta.json").read_text())["fingerprint"] == raw_fp
    source_mod.set_storage(scan, "jpeg-q90")
    assert all(scan.fingerprint[s] != raw_fp[s] for s in raw_fp)
    assert json.loads((jpg / "meta.json").read_text())["fingerprint"] == scan.fingerprint
    assert scan.text["val"].startswith(b"# alexnet-cuda-prepared 2 size=64 storage=jpeg-q90 split=val\n")
    # --force turns one into the other
    d = prepare_dataset(syn, tmp_path / "conv", size=SIZE, log=None, workers=0)
    log = Log()
    prepare_dataset(syn, d, size=SIZE, log=log, workers=0, storage="jpeg", force=True)
    assert "overwriting" in log.text and "with storage raw, not jpeg-q90" in log.text
    assert tree_digest(d) == tree_digest(jpg)
    # the cache keeps one entry per storage
    cache = tmp_path / "cache"
    a = ensure_prepared(syn, cache, size=SIZE, log=None, workers=0)
    b = ensure_prepared(syn, cache, size=SIZE, log=None, workers=0, storage="jpeg")
    assert a != b and b.name.endswith("-jpeg-q90") and PreparedDataset(b, "val").storage == "jpeg-q90"


def test_jpeg_prepare_resumes(syn, pair, tmp_path, monkeypatch):
    _, ref = pair
    calls, fail_at = flaky_chunks(monkeypatch)
    dst = tmp_path / "dst"
    fail_at[0] = 4
    with pytest.raises(RuntimeError, match="simulated"):
        prepare_dataset(syn, dst, size=SIZE, log=None, workers=0, chunk_size=4, storage="jpeg")
    assert not is_prepared(dst)
    calls.clear()
    fail_at[0] = None
    log = Log()
    prepare_dataset(syn, dst, size=SIZE, log=log, workers=2, storage="jpeg")  # resumed, in parallel
    # train: 30 files -> 8 chunks of which 3 were done; then val: 20 files -> 5 chunks
    assert calls == [("train", k) for k in range(3, 8)] + [("val", k) for k in range(5)]
    assert "resuming" in log.text and tree_digest(dst) == tree_digest(ref)


def test_jpeg_resume_cuts_off_a_torn_chunk(syn, pair, tmp_path, monkeypatch):
    """Interrupted after a chunk appended its streams but before its record was committed: the
    resumed run truncates them away and appends the chunk again."""
    _, ref = pair
    real_commit, n = prepare_mod._JpegSink.commit, [0]

    def torn(self):
        n[0] += 1
        if n[0] == 3:
            self.f.flush()
            raise KeyboardInterrupt
        return real_commit(self)

    monkeypatch.setattr(prepare_mod._JpegSink, "commit", torn)
    dst = tmp_path / "dst"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(syn, dst, size=SIZE, log=None, workers=0, chunk_size=4, storage="jpeg")
    part = dst / ".partial" / "train_jpeg.npy"
    recs = [np.load(p) for p in sorted((dst / ".partial").glob("train-*.npz"))]
    assert len(recs) == 2 and part.stat().st_size > 128 + sum(int(r["sizes"].sum()) for r in recs)
    with open(part, "ab") as f:  # and a torn write of something else
        f.write(b"\x00garbage" * 1000)
    monkeypatch.setattr(prepare_mod._JpegSink, "commit", real_commit)
    prepare_dataset(syn, dst, size=SIZE, log=None, workers=0, storage="jpeg")
    assert tree_digest(dst) == tree_digest(ref)
    # interrupted while finalizing: after the header was rewritten, before the rename
    real_replace = prepare_mod.os.replace
    seen = []

    def replace(a, b):
        if str(b).endswith("val_jpeg.npy") and not seen:
            seen.append(b)
            raise KeyboardInterrupt
        return real_replace(a, b)

    monkeypatch.setattr(prepare_mod.os, "replace", replace)
    d2 = tmp_path / "d2"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(syn, d2, size=SIZE, log=None, workers=0, storage="jpeg")
    monkeypatch.setattr(prepare_mod.os, "replace", real_replace)
    assert seen and not is_prepared(d2)
    prepare_dataset(syn, d2, size=SIZE, log=None, workers=0, storage="jpeg")
    assert tree_digest(d2) == tree_digest(ref)


def test_train_on_a_jpeg_prepared_folder(syn, tmp_path, capsys):
    dst = tmp_path / "jpeg76"
    assert cli.main(["prepare", str(syn), str(dst), "--storage", "jpeg", "--jpeg-quality", "85",
                     "--preset", "small", "--workers", "1"]) == 0
    meta = json.loads((dst / "meta.json").read_text())
    assert meta["storage"] == "jpeg" and meta["jpeg_quality"] == 85 and meta["size"] == 76
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(dst), "--out", str(out), "--epochs", "2", "--batch-size", "10",
                     "--backend", "numpy", "--preset", "small", "--seed", "1"]) == 0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2] and all(np.isfinite(r["train_loss"]) for r in recs)
    assert json.loads((out / "config.json").read_text())["prepared"] == str(dst)
    assert "stored as JPEG quality 85" in capsys.readouterr().out


def _read_all_in_child(path, q):
    q.put(PreparedDataset(path, "val").images[:])


def test_many_image_reads_work_in_a_forked_child(pair):
    """The decode threads of a many-image read are per process: a child forked after the parent
    used them (it inherits the pool object, not its threads) makes its own instead of hanging."""
    import multiprocessing as mp
    _, jpg = pair
    want = PreparedDataset(jpg, "val").images[:]           # the parent's pool exists now
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_read_all_in_child, args=(str(jpg), q))
    p.start()
    try:
        got = q.get(timeout=60)
    finally:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    np.testing.assert_array_equal(got, want)
