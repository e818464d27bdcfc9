"""The ImageNet inputs prepare recognizes by itself: the official archives
(read in place, the devkit's meta.mat included) and the Kaggle layout, each
built here in miniature with ImageNet's quirks (a CMYK JPEG, a PNG named
.JPEG, grayscale, a truncated file, garbage); and the MAT-file reader."""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_cuda.data import (DataError, PreparedDataset, ensure_prepared, is_prepared, list_classes,
                               prepare_dataset)
from alexnet_cuda.data import imagenet as imagenet_mod
from alexnet_cuda.data import prepare as prepare_mod
from alexnet_cuda.data.imagenet_bench import make_imagenet_archives
from alexnet_cuda.data.matfile import MatFileError, read_mat, write_struct_mat
from test_data import Log, tree_digest  # noqa: E402 (tests/ is on sys.path under pytest)

# ILSVRC2012_ID order differs from the sorted WordNet-id order, as in the real devkit
SYNSETS = [(1, "n02119789", "kit fox, Vulpes macrotis", (40, 40, 220)),
           (2, "n01440764", "tench, Tinca tinca", (220, 40, 40)),
           (3, "n01443537", "goldfish, Carassius auratus", (40, 200, 40))]
WNIDS = sorted(w for _, w, _, _ in SYNSETS)                      # the class order
COLOUR = {w: c for _, w, _, c in SYNSETS}
NAMES = {"n01440764": "tench", "n01443537": "goldfish", "n02119789": "kit fox"}
# validation image i (1-based) -> its synset; classes interleaved
VAL_WNIDS = ["n02119789", "n01440764", "n01443537", "n01440764", "n02119789",
             "n01443537", "n01443537", "n02119789", "n01440764"]
QUIRKS = {("train", 1): "cmyk", ("train", 2): "png", ("train", 3): "gray",
          ("val", 2): "cmyk", ("val", 3): "png", ("val", 5): "gray"}


# ---------------------------------------------------------------- images
def image_bytes(wnid: str, kind: str = "rgb") -> bytes:
    """A small solid image of the class colour (grayscale: its luminance), as
    the file an ImageNet archive would hold under a .JPEG name."""
    im = Image.new("RGB", (14, 10), COLOUR[wnid])
    buf = io.BytesIO()
    if kind == "cmyk":
        im.convert("CMYK").save(buf, "JPEG", quality=95)
    elif kind == "png":
        im.save(buf, "PNG")
    elif kind == "gray":
        im.convert("L").save(buf, "JPEG", quality=95)
    else:
        im.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    a = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG")
    return buf.getvalue()[:1500]


def classify(pixels) -> int:
    """The class whose colour (or its gray) is nearest the image's mean pixel."""
    m = np.asarray(pixels, np.float64).reshape(-1, 3).mean(0)
    refs = []
    for label, w in enumerate(WNIDS):
        c = np.array(COLOUR[w], np.float64)
        refs += [(label, c), (label, np.full(3, c @ [0.299, 0.587, 0.114]))]
    return min(refs, key=lambda r: np.abs(r[1] - m).sum())[0]


def train_files(per_class=4):
    """{wnid: {name: bytes}} with the quirks at image 1..3 of the first class."""
    out = {}
    for ci, w in enumerate(WNIDS):
        out[w] = {f"{w}_{i}.JPEG": image_bytes(w, QUIRKS.get(("train", i), "rgb") if ci == 0 else "rgb")
                  for i in range(1, per_class + 1)}
    out[WNIDS[1]][f"{WNIDS[1]}_99.JPEG"] = truncated_jpeg()
    return out


def val_files():
    out = {f"ILSVRC2012_val_{i:08d}.JPEG": image_bytes(w, QUIRKS.get(("val", i), "rgb"))
           for i, w in enumerate(VAL_WNIDS, 1)}
    out[f"ILSVRC2012_val_{len(VAL_WNIDS):08d}.JPEG"] = b"this is not an image"
    return out


# ---------------------------------------------------------------- a MATLAB v5 writer (what meta.mat is)
def _el(mtype: int, data: bytes) -> bytes:
    return struct.pack("<II", mtype, len(data)) + data + b"\0" * (-len(data) % 8)


def _matrix(cls: int, dims, name: str, body: bytes) -> bytes:
    head = _el(6, struct.pack("<II", cls, 0)) + _el(5, struct.pack(f"<{len(dims)}i", *dims))
    return _el(14, head + _el(1, name.encode()) + body)


def _value(v) -> bytes:
    if isinstance(v, str):
        return _matrix(4, (1, len(v)), "", _el(4, v.encode("utf-16-le")))
    a = np.atleast_2d(np.asarray(v, np.float64))
    return _matrix(6, a.shape, "", _el(9, a.T.tobytes()))


def write_mat(name: str, rows: list, compress: bool) -> bytes:
    """A MAT-file holding the struct array `name` (rows: dicts, same fields)."""
    fields = list(rows[0])
    body = _el(5, struct.pack("<i", 32)) + _el(1, b"".join(f.encode().ljust(32, b"\0") for f in fields))
    body += b"".join(_value(r[f]) for r in rows for f in fields)
    var = _matrix(2, (len(rows), 1), name, body)
    if compress:
        z = zlib.compress(var)
        var = struct.pack("<II", 15, len(z)) + z
    head = b"MATLAB 5.0 MAT-file, written by the alexnet-cuda tests".ljust(116, b" ")
    return head + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM" + var


def synset_rows():
    rows = [{"ILSVRC2012_ID": i, "WNID": w, "words": words, "gloss": "a gloss", "num_children": 0,
             "children": np.zeros((1, 0)), "wordnet_height": 0, "num_train_images": 4}
            for i, w, words, _ in SYNSETS]
    rows.append({"ILSVRC2012_ID": 4, "WNID": "n00001740", "words": "entity", "gloss": "a root",
                 "num_children": 3, "children": np.array([[1, 2, 3]]), "wordnet_height": 2,
                 "num_train_images": 0})  # not a class: it has children
    return rows


# ---------------------------------------------------------------- the miniatures
def tar_bytes(files: dict, mode="w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_archives(root: Path, train=True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if train:
        inner = {f"{w}.tar": tar_bytes(files) for w, files in reversed(train_files().items())}
        (root / imagenet_mod.TRAIN_TAR).write_bytes(tar_bytes(inner))
    (root / imagenet_mod.VAL_TAR).write_bytes(tar_bytes(val_files()))
    truth = "".join(f"{[i for i, w, _, _ in SYNSETS if w == v][0]}\n" for v in VAL_WNIDS)
    dev = {"ILSVRC2012_devkit_t12/data/meta.mat": write_mat("synsets", synset_rows(), compress=True),
           "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": truth.encode()}
    (root / imagenet_mod.DEVKIT).write_bytes(tar_bytes(dev, "w:gz"))
    return root


def make_kaggle(root: Path) -> Path:
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    for w, files in train_files().items():
        for name, b in files.items():
            (data / "train" / w).mkdir(parents=True, exist_ok=True)
            (data / "train" / w / name).write_bytes(b)
    (data / "val").mkdir(parents=True)
    (data / "test").mkdir()
    (data / "test" / "ILSVRC2012_test_00000001.JPEG").write_bytes(image_bytes(WNIDS[0]))
    for name, b in val_files().items():
        (data / "val" / name).write_bytes(b)
    with open(root / "LOC_val_solution.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["ImageId", "PredictionString"])
        for i, w in reversed(list(enumerate(VAL_WNIDS, 1))):
            out.writerow([f"ILSVRC2012_val_{i:08d}", f"{w} 1 2 30 40 {w} 5 6 70 80 "])
    lines = [f"{w} {words}\n" for _, w, words, _ in SYNSETS]  # not in sorted order
    (root / "LOC_synset_mapping.txt").write_text("".join(lines))
    return root


# ---------------------------------------------------------------- checks
def check_prepared(dst: Path, splits=("train", "val")):
    meta = json.loads((dst / "meta.json").read_text())
    assert meta["classes"] == WNIDS
    assert meta["class_names"] == [NAMES[w] for w in WNIDS]
    assert meta["class_words"][0] == "tench, Tinca tinca"
    val = PreparedDataset(dst, "val")
    assert val.class_names == ["tench", "goldfish", "kit fox"] and val.classes == WNIDS
    # every val image's label is the class its pixels show, in file order; the garbage one skipped
    assert len(val) == len(VAL_WNIDS) - 1
    assert [classify(im) for im in val.images] == val.labels.tolist()
    assert val.labels.tolist() == [WNIDS.index(w) for w in VAL_WNIDS[:-1]]
    skipped = [n for s in splits for n in meta["skipped"][s]]
    assert any(n.endswith(f"ILSVRC2012_val_{len(VAL_WNIDS):08d}.JPEG") for n in skipped)
    if "train" in splits:
        tr = PreparedDataset(dst, "train")
        assert len(tr) == 12 and [classify(im) for im in tr.images] == tr.labels.tolist()
        assert tr.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert any(n.endswith(f"{WNIDS[1]}_99.JPEG") for n in skipped) and meta["skipped_count"] == 2
        assert meta["conversions"] == {"CMYK": 2, "L": 2, "PNG named .JPEG": 2}
    return meta


# ---------------------------------------------------------------- tests
def test_official_archives(tmp_path):
    src = make_archives(tmp_path / "imagenet")
    log = Log()
    dst = prepare_dataset(src, tmp_path / "dst", size=8, log=log, workers=0)
    assert f"prepare: found the official ImageNet archives ({imagenet_mod.TRAIN_TAR}" in log.text
    assert "listed the 22 images of the archives" in log.text
    assert "skipped unreadable file" in log.text and "images/s" in log.text
    assert "decoded with conversions: 2 CMYK to RGB, 2 L to RGB, 2 PNG named .JPEG" in log.text
    meta = check_prepared(dst)
    assert meta["layout"] == "imagenet-archives" and not list(src.glob("n0*"))  # nothing extracted
    assert list_classes(src) == WNIDS and list_classes(src, "train") == WNIDS
    # workers read the members themselves: the same bytes
    par = prepare_dataset(src, tmp_path / "par", size=8, log=None, workers=2)
    assert tree_digest(par) == tree_digest(dst)


def test_archives_fingerprint_and_val_only(tmp_path):
    src = make_archives(tmp_path / "imagenet")
    cache = tmp_path / "cache"
    p = ensure_prepared(src, cache, size=8, log=None, workers=0)
    log = Log()
    assert ensure_prepared(src, cache, size=8, log=log, workers=0) == p and "reusing" in log.text
    st = (src / imagenet_mod.VAL_TAR).stat()
    os.utime(src / imagenet_mod.VAL_TAR, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(DataError, match="older state"):
        prepare_dataset(src, p, size=8, log=None, workers=0)
    log = Log()
    assert ensure_prepared(src, cache, size=8, log=log, workers=0) == p
    assert "(0 files added, 0 removed, 1 changed); preparing again" in log.text
    # evaluation needs only the val archive and the devkit
    (src / imagenet_mod.TRAIN_TAR).unlink()
    with pytest.raises(DataError, match=f"has no {imagenet_mod.TRAIN_TAR}"):
        prepare_dataset(src, tmp_path / "x", size=8, log=None)
    v = prepare_dataset(src, tmp_path / "v", size=8, log=None, workers=0, splits=("val",))
    check_prepared(v, ("val",))
    assert is_prepared(v, ("val",)) and not is_prepared(v)
    (src / imagenet_mod.DEVKIT).unlink()
    with pytest.raises(DataError, match=f"has no {imagenet_mod.DEVKIT}"):
        list_classes(src)


def test_archives_resume_after_an_interruption(tmp_path, monkeypatch):
    src = make_archives(tmp_path / "imagenet")
    ref = prepare_dataset(src, tmp_path / "ref", size=8, log=None, workers=0, chunk_size=2)
    real, calls = prepare_mod._process_chunk, []

    def flaky(split, k, *args, **kwargs):
        calls.append((split, k))
        if (split, k) == ("train", 3) and len(calls) == 4:
            raise RuntimeError("simulated interruption")
        return real(split, k, *args, **kwargs)

    monkeypatch.setattr(prepare_mod, "_process_chunk", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        prepare_dataset(src, tmp_path / "dst", size=8, log=None, workers=0, chunk_size=2)
    assert not is_prepared(tmp_path / "dst")
    calls.clear()
    log = Log()
    dst = prepare_dataset(src, tmp_path / "dst", size=8, log=log, workers=0)
    assert "resuming" in log.text and calls[0] == ("train", 3) and ("train", 0) not in calls
    assert tree_digest(dst) == tree_digest(ref)


def test_kaggle_layout(tmp_path):
    src = make_kaggle(tmp_path / "kaggle")
    log = Log()
    dst = prepare_dataset(src, tmp_path / "dst", size=8, log=log, workers=0)
    assert "prepare: found the Kaggle ImageNet layout (ILSVRC/Data/CLS-LOC/" in log.text
    meta = check_prepared(dst)
    assert meta["layout"] == "imagenet-kaggle" and list_classes(src, "val") == WNIDS
    # a new val image without a row in the solution file: one clear line
    (src / "ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000077.JPEG").write_bytes(image_bytes(WNIDS[0]))
    with pytest.raises(DataError, match="ILSVRC2012_val_00000077.JPEG has no row in"):
        prepare_dataset(src, tmp_path / "dst", size=8, log=None, force=True)
    (src / "ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000077.JPEG").unlink()
    (src / "ILSVRC/Data/CLS-LOC/train/n09999999").mkdir()
    with pytest.raises(DataError, match="1 only in .*n09999999"):
        prepare_dataset(src, tmp_path / "dst", size=8, log=None, force=True)


def test_an_image_folder_stays_an_image_folder(tmp_path):
    src = tmp_path / "folder"
    for split in ("train", "val"):
        for w in WNIDS:
            (src / split / w).mkdir(parents=True)
            (src / split / w / "a.jpg").write_bytes(image_bytes(w))
    (src / imagenet_mod.VAL_TAR).write_bytes(b"")  # train/ and val/ win over archives
    log = Log()
    dst = prepare_dataset(src, tmp_path / "dst", size=8, log=log, workers=0)
    assert "prepare: found an image folder (train/<class>/, val/<class>/)" in log.text
    meta = json.loads((dst / "meta.json").read_text())
    assert meta["layout"] == "folder" and meta["class_names"] == WNIDS and "class_words" not in meta
    assert PreparedDataset(dst, "val").class_names == WNIDS


def test_class_names_of_older_folders(tmp_path):
    meta = {"classes": ["a", "b"]}
    assert prepare_mod.class_names_of(meta) == ["a", "b"]
    assert prepare_mod.class_names_of({**meta, "class_names": ["A", "B"]}) == ["A", "B"]


@pytest.mark.parametrize("compress", [False, True])
def test_matfile_reader(compress):
    got = read_mat(write_mat("synsets", synset_rows(), compress))["synsets"]
    assert [r["WNID"] for r in got] == [w for _, w, _, _ in SYNSETS] + ["n00001740"]
    assert got[0]["words"] == "kit fox, Vulpes macrotis" and int(got[3]["num_children"][0, 0]) == 3
    assert got[0]["children"].shape == (1, 0) and got[3]["children"].tolist() == [[1, 2, 3]]
    with pytest.raises(MatFileError):
        read_mat(b"not a mat file" * 20)
    mine = read_mat(write_struct_mat("synsets", synset_rows()))["synsets"]  # the package's writer
    assert [(r["WNID"], r["words"]) for r in mine] == [(r["WNID"], r["words"]) for r in got]


def test_the_benchmark_miniature(tmp_path):
    src = make_imagenet_archives(tmp_path / "mini", classes=2, train_per_class=2, val_per_class=1)
    dst = prepare_dataset(src, tmp_path / "dst", size=16, log=None, workers=0)
    meta = json.loads((dst / "meta.json").read_text())
    assert meta["counts"] == {"train": 4, "val": 2} and meta["classes"] == ["n00000001", "n00000002"]
    assert meta["class_names"] == ["circle", "square"]
    assert PreparedDataset(dst, "val").labels.tolist() == [0, 1]


def test_matfile_reader_reads_scipy_files():
    import scipy.io as sio  # in the test extra: the reference writer of MAT files
    rows = synset_rows()
    dt = [(f, object) for f in rows[0]]
    s = np.zeros((len(rows), 1), dtype=dt)
    for i, r in enumerate(rows):
        for f in r:
            s[i, 0][f] = r[f]
    for compress in (False, True):
        buf = io.BytesIO()
        sio.savemat(buf, {"synsets": s, "grid": np.arange(6).reshape(2, 3)}, do_compression=compress)
        got = read_mat(buf.getvalue())
        assert [r["WNID"] for r in got["synsets"]] == [r["WNID"] for r in rows]
        assert got["grid"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_the_wrong_folder_of_a_layout_says_which_to_pass(tmp_path):
    src = make_archives(tmp_path / "imagenet", train=False)
    with pytest.raises(DataError, match=r"is one of the ImageNet archives: pass the folder"):
        prepare_dataset(src / imagenet_mod.VAL_TAR, tmp_path / "d", size=8, log=None)
    kaggle = make_kaggle(tmp_path / "kaggle")
    with pytest.raises(DataError, match=f"Kaggle ImageNet layout: pass {kaggle}"):
        list_classes(kaggle / "ILSVRC" / "Data" / "CLS-LOC")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no train/ folder"):  # the message of an image folder, as before
        prepare_dataset(tmp_path / "empty", tmp_path / "d", size=8, log=None)


def test_train_and_predict_on_the_archives_print_class_names(tmp_path, monkeypatch, capsys):
    from alexnet_cuda import cli
    monkeypatch.setenv("ALEXNET_CUDA_CACHE", str(tmp_path / "cache"))
    src = make_archives(tmp_path / "archives")
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(src), "--out", str(out), "--epochs", "1", "--backend", "numpy",
                     "--preset", "small"]) == 0
    assert "prepare: found the official ImageNet archives" in capsys.readouterr().out
    img = tmp_path / "tench.jpg"
    img.write_bytes(image_bytes("n01440764"))
    assert cli.main(["predict", "--checkpoint", str(out / "checkpoint.safetensors"), "--top", "3", str(img)]) == 0
    shown = {line.split(".", 1)[1].rsplit(None, 1)[0].strip() for line in capsys.readouterr().out.splitlines()[1:]}
    assert shown == {"tench", "goldfish", "kit fox"}                 # names, not WordNet ids
