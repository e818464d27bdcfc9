"""Prepared folders know their source: fingerprint, stale cache entries, --force,
val-only preparation for eval, and the messages a new user meets first."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_cuda.data import (DataError, EvalLoader, PreparedDataset, ensure_prepared, is_prepared,
                               list_classes, prepare_dataset, prepared_cache_dir)
from alexnet_cuda.data import prepare as prepare_mod
from alexnet_cuda.data import source as source_mod
from test_data import Log  # noqa: E402 (tests/ is on sys.path under pytest)


def save_png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)


def make_raw(root: Path, classes=("a", "b"), train=3, val=2, splits=("train", "val")):
    for split, n in (("train", train), ("val", val)):
        if split not in splits:
            continue
        for ci, c in enumerate(classes):
            for i in range(n):
                save_png(root / split / c / f"{i}.png", hash((split, ci, i)) % 1000)
    return root


def bump(path: Path, seed=99):
    """Rewrite an image with other content and a later mtime."""
    st = path.stat()
    save_png(path, seed)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def no_decoding(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("decoded an image")
    monkeypatch.setattr(prepare_mod, "_process_chunk", fail)
    monkeypatch.setattr(prepare_mod, "load_resized", fail)


# ------------------------------------------------------------------ fingerprint
def test_fingerprint_follows_files_not_contents(tmp_path, monkeypatch):
    src = make_raw(tmp_path / "src")
    no_decoding(monkeypatch)
    a = source_mod.scan_source(src, size=8)
    assert a.fingerprint == source_mod.scan_source(src, size=8).fingerprint
    assert set(a.fingerprint) == {"train", "val"} and all(len(h) == 64 for h in a.fingerprint.values())
    assert source_mod.scan_source(src, size=16).fingerprint != a.fingerprint  # settings count
    f = src / "train" / "a" / "0.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    b = source_mod.scan_source(src, size=8)
    assert b.fingerprint["train"] != a.fingerprint["train"] and b.fingerprint["val"] == a.fingerprint["val"]
    (src / "val" / "b" / "notes.txt").write_text("not an image")  # ignored, like prepare ignores it
    assert source_mod.scan_source(src, size=8).fingerprint == b.fingerprint
    save_png(src / "val" / "b" / "new.png", 5)
    assert source_mod.scan_source(src, size=8).fingerprint["val"] != b.fingerprint["val"]


def test_fingerprint_is_cheap(tmp_path):
    src = tmp_path / "big"
    for split in ("train", "val"):
        for c in range(20):
            d = src / split / f"c{c:02d}"
            d.mkdir(parents=True)
            for i in range(250 if split == "train" else 50):
                (d / f"{i:05d}.jpg").write_bytes(b"")  # never opened: empty files will do
    t0 = time.perf_counter()
    scan = source_mod.scan_source(src, size=256)
    assert time.perf_counter() - t0 < 5.0
    assert len(scan.files["train"]) == 5000 and len(scan.files["val"]) == 1000


def test_meta_records_source_and_fingerprint(tmp_path):
    src = make_raw(tmp_path / "src")
    dst = prepare_dataset(src, tmp_path / "dst", size=8, log=None, workers=0)
    meta = json.loads((dst / "meta.json").read_text())
    scan = source_mod.scan_source(src, size=8)
    assert meta["version"] == 2 and meta["splits"] == ["train", "val"]
    assert meta["source"] == str(src.resolve()) and meta["fingerprint"] == scan.fingerprint
    assert (dst / meta["source_files"]).is_file()


# ------------------------------------------------------------------ stale cache entries
def test_ensure_prepared_prepares_a_changed_source_again(tmp_path, monkeypatch):
    src = make_raw(tmp_path / "src")
    cache = tmp_path / "cache"
    p = ensure_prepared(src, cache, size=8, log=None, workers=0)
    assert len(PreparedDataset(p, "train")) == 6
    save_png(src / "train" / "a" / "new1.png", 1)
    save_png(src / "train" / "b" / "new2.png", 2)
    bump(src / "val" / "a" / "0.png")
    # an interruption while preparing again leaves an entry that is not complete, never a stale one
    real = prepare_mod._process_chunk

    def broken(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_mod, "_process_chunk", broken)
    log = Log()
    with pytest.raises(KeyboardInterrupt):
        ensure_prepared(src, cache, size=8, log=log, workers=0)
    assert (f"prepare: {src.resolve()} changed since it was prepared (2 files added, 0 removed, "
            f"1 changed); preparing again") in log.lines
    assert not is_prepared(p) and not (p / "meta.json").exists()
    with pytest.raises(DataError):
        PreparedDataset(p, "train")
    monkeypatch.setattr(prepare_mod, "_process_chunk", real)
    assert ensure_prepared(src, cache, size=8, log=None, workers=0) == p
    assert len(PreparedDataset(p, "train")) == 8
    log = Log()
    assert ensure_prepared(src, cache, size=8, log=log, workers=0) == p and "reusing" in log.text
    (src / "train" / "a" / "new1.png").unlink()
    log = Log()
    ensure_prepared(src, cache, size=8, log=log, workers=0)
    assert "(0 files added, 1 removed, 0 changed)" in log.text
    assert len(PreparedDataset(p, "train")) == 7
    assert [x.name for x in p.parent.iterdir()] == [p.name]  # replaced in place, nothing beside it


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_CUDA_CACHE", str(tmp_path / "env"))
    assert prepared_cache_dir() == tmp_path / "env" / "prepared"
    assert prepared_cache_dir(tmp_path / "x") == tmp_path / "x" / "prepared"
    src = make_raw(tmp_path / "src", train=1, val=1)
    p = ensure_prepared(src, size=8, log=None, workers=0)
    assert p.parent == tmp_path / "env" / "prepared" and p.name.startswith("src-s8-")


# ------------------------------------------------------------------ explicit destinations
def test_prepare_dataset_refuses_another_source_unless_forced(tmp_path):
    src1 = make_raw(tmp_path / "src1")
    src2 = make_raw(tmp_path / "src2", classes=("x", "y", "z"))
    dst = prepare_dataset(src1, tmp_path / "dst", size=8, log=None, workers=0)
    with pytest.raises(DataError) as e:
        prepare_dataset(src2, dst, size=8, log=None, workers=0)
    msg = str(e.value)
    assert msg == (f"{dst} was prepared from {src1.resolve()}; pass force=True (--force on the "
                   f"command line) to overwrite it, or choose another destination")
    assert PreparedDataset(dst, "train").classes == ["a", "b"]  # untouched
    log = Log()
    prepare_dataset(src2, dst, size=8, log=log, workers=0, force=True)
    assert "overwriting" in log.text
    assert PreparedDataset(dst, "train").classes == ["x", "y", "z"] and is_prepared(dst)
    # the same source in another state
    save_png(src2 / "val" / "x" / "more.png", 7)
    with pytest.raises(DataError, match=r"older state of .*src2 \(1 file added, 0 removed, 0 changed\)"
                                        r"; pass force=True"):
        prepare_dataset(src2, dst, size=8, log=None, workers=0)
    prepare_dataset(src2, dst, size=8, log=None, workers=0, force=True)
    assert len(PreparedDataset(dst, "val")) == 7
    log = Log()
    assert prepare_dataset(src2, dst, size=8, log=log, workers=0) == dst and "reusing" in log.text
    with pytest.raises(DataError, match="at size 8, not 16; pass force=True"):
        prepare_dataset(src2, dst, size=16, log=None, workers=0)


def make_old(dst: Path):
    """Turn a prepared folder into what the previous version wrote."""
    meta = json.loads((dst / "meta.json").read_text())
    for k in ("splits", "fingerprint", "source_files"):
        del meta[k]
    meta["version"] = 1
    (dst / "source_files.txt.gz").unlink()
    (dst / "meta.json").write_text(json.dumps(meta))


def test_folders_of_the_previous_version(tmp_path):
    src = make_raw(tmp_path / "src")
    dst = prepare_dataset(src, tmp_path / "dst", size=8, log=None, workers=0)
    make_old(dst)
    assert is_prepared(dst)
    ds = PreparedDataset(dst, "train")
    assert len(ds) == 6 and ds.mean.shape == (8, 8, 3) and ds.eigvecs.shape == (3, 3)
    assert ensure_prepared(dst, None, size=8, log=None) == dst  # a prepared folder is used as is
    with pytest.raises(DataError, match="older version .*; pass force=True"):
        prepare_dataset(src, dst, size=8, log=None, workers=0)
    prepare_dataset(src, dst, size=8, log=None, workers=0, force=True)
    assert "fingerprint" in json.loads((dst / "meta.json").read_text())
    # an old cache entry is prepared again
    cache = tmp_path / "cache"
    p = ensure_prepared(src, cache, size=8, log=None, workers=0)
    make_old(p)
    log = Log()
    assert ensure_prepared(src, cache, size=8, log=log, workers=0) == p
    assert f"prepare: {p} was prepared by an older version" in log.text and "preparing again" in log.text
    assert "fingerprint" in json.loads((p / "meta.json").read_text())


# ------------------------------------------------------------------ val only (eval)
def test_val_only_preparation(tmp_path, monkeypatch):
    src = make_raw(tmp_path / "valonly", splits=("val",))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="no train/ folder"):
        ensure_prepared(src, cache, size=8, log=None, workers=0)
    p = ensure_prepared(src, cache, size=8, log=None, workers=0, splits=("val",))
    assert p.name.endswith("-val") and not (p / "train_images.npy").exists()
    assert is_prepared(p, ("val",)) and not is_prepared(p)
    assert json.loads((p / "meta.json").read_text())["splits"] == ["val"]
    ds = PreparedDataset(p, "val")
    assert len(ds) == 4 and ds.classes == ["a", "b"] and ds.mean is None
    with pytest.raises(DataError, match="only the val split"):
        PreparedDataset(p, "train")
    with pytest.raises(DataError, match="only the val split"):
        ensure_prepared(p, None, size=8, log=None)
    assert ensure_prepared(p, None, size=8, log=None, splits=("val",)) == p
    with pytest.raises(DataError, match="mean="):
        EvalLoader(ds, batch_size=2, crop=6)
    mean = np.random.default_rng(0).uniform(0, 255, (8, 8, 3)).astype(np.float32)
    x = np.concatenate([b[0] for b in EvalLoader(ds, batch_size=3, crop=6, mean=mean)])
    ref = (np.asarray(ds.images, np.float32)[:, 1:7, 1:7] - mean[1:7, 1:7]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x, ref, atol=1e-4)
    log = Log()
    assert ensure_prepared(src, cache, size=8, log=log, splits=("val",)) == p and "reusing" in log.text


def test_val_only_reuses_a_full_entry(tmp_path, monkeypatch):
    src = make_raw(tmp_path / "src")
    cache = tmp_path / "cache"
    full = ensure_prepared(src, cache, size=8, log=None, workers=0)
    bump(src / "train" / "a" / "0.png")  # a changed train/ does not matter to eval
    no_decoding(monkeypatch)
    assert ensure_prepared(src, cache, size=8, log=None, splits=("val",)) == full
    ds = PreparedDataset(full, "val")
    mean = np.zeros((8, 8, 3), np.float32)
    assert len(list(EvalLoader(ds, batch_size=4, crop=8, mean=mean))) == 1
    # a changed val/ does
    monkeypatch.undo()
    save_png(src / "val" / "b" / "new.png", 3)
    p = ensure_prepared(src, cache, size=8, log=None, workers=0, splits=("val",))
    assert p != full and p.name.endswith("-val") and len(PreparedDataset(p, "val")) == 5


def test_list_classes_without_decoding(tmp_path, monkeypatch):
    no_decoding(monkeypatch)
    monkeypatch.setattr(source_mod, "is_image_file", lambda n: pytest.fail("listed files"))
    src = tmp_path / "raw"
    for c in ("zebra", "ant", ".hidden"):
        (src / "val" / c).mkdir(parents=True)
    (src / "val" / "readme.txt").write_text("x")
    assert list_classes(src, "val") == ["ant", "zebra"]
    assert list_classes(src) == ["ant", "zebra"]
    with pytest.raises(DataError, match="no train/ folder"):
        list_classes(src, "train")
    with pytest.raises(DataError, match="not found"):
        list_classes(tmp_path / "nope")
    monkeypatch.undo()
    other = make_raw(tmp_path / "other", classes=("p", "q"))
    prepared = prepare_dataset(other, tmp_path / "prep", size=8, log=None, workers=0)
    assert list_classes(prepared, "val") == ["p", "q"]


# ------------------------------------------------------------------ first-hour messages
def test_a_file_given_as_data(tmp_path):
    f = tmp_path / "afile.txt"
    f.write_text("hello")
    expect = (f"{f} is a file, not a folder (expected an image folder with train/ and val/ "
              f"sub-folders, or a prepared folder)")
    for call in (lambda: ensure_prepared(f, tmp_path / "c", size=8, log=None),
                 lambda: prepare_dataset(f, tmp_path / "d", size=8, log=None),
                 lambda: list_classes(f, "train")):
        with pytest.raises(DataError) as e:
            call()
        assert str(e.value) == expect
    with pytest.raises(DataError, match="is a file, not a folder .expected an image folder with a val/"):
        ensure_prepared(f, tmp_path / "c", size=8, log=None, splits=("val",))
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
