"""The inputs prepare recognizes by itself (detect_layout, scan_input):

"folder"             the sorted image folder of source.py:
                     <src>/train/<class>/*.jpg, <src>/val/<class>/*.jpg
"imagenet-archives"  the official ILSVRC2012 downloads, read where they lie
                     (nothing is extracted):
                       <src>/ILSVRC2012_img_train.tar   one <wnid>.tar per class,
                                                        each holding <wnid>_<n>.JPEG
                       <src>/ILSVRC2012_img_val.tar     ILSVRC2012_val_<8 digits>.JPEG
                       <src>/ILSVRC2012_devkit_t12.tar.gz
                         .../data/meta.mat              the synsets (read by matfile.py)
                         .../data/ILSVRC2012_validation_ground_truth.txt
                                                        ILSVRC2012_ID of val image i, line i
                     (only the val archive and the devkit are needed to evaluate)
"imagenet-kaggle"    the Kaggle download (imagenet-object-localization-challenge):
                       <src>/ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG
                       <src>/ILSVRC/Data/CLS-LOC/val/*.JPEG (flat)
                       <src>/LOC_val_solution.csv       ImageId,PredictionString (first token: wnid)
                       <src>/LOC_synset_mapping.txt     "<wnid> <comma-separated names>" per line

A folder with train/ or val/ sub-folders is an image folder, whatever else
it holds. Classes of the ImageNet layouts are the 1000 synsets (devkit: those
without children; Kaggle: the mapping file) in sorted WordNet-id order;
Source.class_words holds their synonyms ("tench, Tinca tinca") and
Source.class_names the first of them ("tench").

The archives' members are listed (their offsets; a pass over the tar
headers, nothing decoded) only when images are to be decoded: the
fingerprint of a split is the archives' names, bytes and mtimes (and the
layout), so checking a prepared folder costs a few stats. An item of an
archive is (name, label, (archive path, data offset, bytes)); the decoding
workers read the bytes themselves (load_item).
"""
from __future__ import annotations

import csv
import io
import re
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError
from .imageio import is_image_file
from .matfile import MatFileError, read_mat
from .source import (SPLITS, LazyFiles, Source, _image_stats, check_folder, check_splits,
                     class_folders, scan_source, set_text, stat_line)

FOLDER, ARCHIVES, KAGGLE = "folder", "imagenet-archives", "imagenet-kaggle"
TRAIN_TAR, VAL_TAR, DEVKIT = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
META_MAT, VAL_TRUTH = "data/meta.mat", "data/ILSVRC2012_validation_ground_truth.txt"
KAGGLE_DATA, KAGGLE_VAL, KAGGLE_MAPPING = "ILSVRC/Data/CLS-LOC", "LOC_val_solution.csv", "LOC_synset_mapping.txt"
LAYOUT_TEXT = {
    FOLDER: "an image folder (train/<class>/, val/<class>/)",
    ARCHIVES: f"the official ImageNet archives ({TRAIN_TAR}, {VAL_TAR}, {DEVKIT})",
    KAGGLE: f"the Kaggle ImageNet layout ({KAGGLE_DATA}/, {KAGGLE_VAL}, {KAGGLE_MAPPING})",
}
_VAL_NUMBER = re.compile(r"_(\d+)\.[A-Za-z]+$")


def detect_layout(src: Path) -> str:
    """FOLDER, ARCHIVES or KAGGLE (see the module doc), from names only."""
    src = Path(src)
    if src.is_file() and src.name in (TRAIN_TAR, VAL_TAR, DEVKIT):
        raise DataError(f"{src} is one of the ImageNet archives: pass the folder that holds them "
                        f"({src.parent})")
    top = src.resolve().parents[2] if len(src.resolve().parents) > 2 else src
    if src.resolve().as_posix().endswith("/" + KAGGLE_DATA) and (top / KAGGLE_MAPPING).is_file():
        raise DataError(f"{src} is the image part of the Kaggle ImageNet layout: pass {top} "
                        f"(the folder with {KAGGLE_MAPPING} and {KAGGLE_VAL})")
    if (src / "train").is_dir() or (src / "val").is_dir():
        return FOLDER
    if any((src / n).is_file() for n in (TRAIN_TAR, VAL_TAR, DEVKIT)):
        return ARCHIVES
    if (src / KAGGLE_DATA).is_dir():
        return KAGGLE
    return FOLDER


def scan_input(src, splits=SPLITS, size: int = 256) -> Source:
    """scan_source for any layout: the classes, the (lazy, for archives) file
    lists and the fingerprints of `src` (DataError for a bad input)."""
    splits = check_splits(splits)
    path = Path(src).expanduser()
    layout = detect_layout(path)
    check_folder(path, splits)
    if layout == FOLDER:
        return scan_source(path, splits, size)
    path = path.resolve()
    scan = _scan_archives(path, splits, int(size)) if layout == ARCHIVES else _scan_kaggle(path, splits, int(size))
    scan.layout = layout
    return scan


def input_classes(src: Path, split: str) -> list:
    """The classes of the raw input `src` (any layout), decoding nothing."""
    layout = detect_layout(src)
    check_folder(src, (split,))
    if layout == FOLDER:
        return class_folders(src, split)
    if layout == ARCHIVES:
        _need(src, [DEVKIT])
        return sorted(w for w, _ in read_devkit(src / DEVKIT)[0].values())
    _need(src, [KAGGLE_MAPPING])
    return sorted(read_synset_mapping(src / KAGGLE_MAPPING))


def load_item(where):
    """What the decoder opens for an item's `where`: a path, or the bytes of
    an archive member (archive, offset, nbytes) as a file object."""
    if isinstance(where, str):
        return where
    archive, offset, nbytes = where
    with open(archive, "rb") as f:
        f.seek(offset)
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise OSError(f"{archive} ends inside this member (truncated download?)")
    return io.BytesIO(data)


# ---------------------------------------------------------------- names of the classes
def _need(src: Path, names):
    missing = [n for n in names if not (src / n).is_file()]
    if missing:
        raise DataError(f"{src} looks like {_what(src)} but has no {' or '.join(missing)} "
                        f"(needed: {', '.join(names)})")


def _what(src: Path) -> str:
    return LAYOUT_TEXT[detect_layout(src)].split(" (")[0]


def _named(scan: Source, words: dict):
    scan.class_words = [words.get(c, c) for c in scan.classes]
    scan.class_names = [w.split(",")[0].strip() or c for w, c in zip(scan.class_words, scan.classes)]


def _same_wnids(want: list, found: list, want_from: str, found_in: str):
    if sorted(found) == want:
        return
    only_w, only_f = sorted(set(want) - set(found)), sorted(set(found) - set(want))
    parts = [f"{len(only_w)} only in {want_from} ({', '.join(only_w[:3])}{' ...' if len(only_w) > 3 else ''})"
             if only_w else "", f"{len(only_f)} only in {found_in} ({', '.join(only_f[:3])}"
             f"{' ...' if len(only_f) > 3 else ''})" if only_f else ""]
    raise DataError(f"the classes of {found_in} differ from those of {want_from}: "
                    + "; ".join(p for p in parts if p))


def read_synset_mapping(path: Path) -> dict:
    """{wnid: names} of a LOC_synset_mapping.txt ("<wnid> <names>" per line)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    out = {}
    for line in lines:
        wnid, _, names = line.strip().partition(" ")
        if wnid:
            out[wnid] = names.strip()
    if not out:
        raise DataError(f"{path} lists no synsets (expected lines '<wnid> <names>')")
    return out


# ---------------------------------------------------------------- the devkit
def read_devkit(path: Path):
    """({ILSVRC2012_ID: (wnid, words)} of the synsets without children (the
    classes), [ILSVRC2012_ID of val image 1, 2, ...]) of the devkit archive."""
    found = {}
    try:
        with tarfile.open(path, "r:*") as t:
            for m in t:
                for key in (META_MAT, VAL_TRUTH):
                    if m.isfile() and m.name.endswith(key):
                        found[key] = t.extractfile(m).read()
                if len(found) == 2:
                    break
    except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read the ImageNet devkit {path}: {e}") from None
    for key in (META_MAT, VAL_TRUTH):
        if key not in found:
            raise DataError(f"{path} has no {key}; is it the ILSVRC2012 devkit?")
    try:
        truth = [int(x) for x in found[VAL_TRUTH].split()]
    except ValueError:
        raise DataError(f"{path}: {VAL_TRUTH} is not one ILSVRC2012_ID per line") from None
    return _synsets(found[META_MAT], path), truth


def _first(v):
    a = np.asarray(v).ravel()
    return a[0] if a.size else None


def _synsets(raw: bytes, path: Path) -> dict:
    try:
        rows = read_mat(raw)["synsets"]
        out = {}
        for r in rows:
            kids = _first(r.get("num_children", 0))
            if kids is not None and int(kids) != 0:
                continue
            out[int(_first(r["ILSVRC2012_ID"]))] = (str(r["WNID"]).strip(), str(r.get("words", "")).strip())
    except (MatFileError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise DataError(f"cannot read the synsets of {path} ({META_MAT}): {type(e).__name__}: {e}") from None
    if not out:
        raise DataError(f"{path}: {META_MAT} has no synsets without children (the classes)")
    return out


# ---------------------------------------------------------------- the official archives
def _scan_archives(src: Path, splits, size: int) -> Source:
    _need(src, [DEVKIT, VAL_TAR] + ([TRAIN_TAR] if "train" in splits else []))
    synsets, truth = read_devkit(src / DEVKIT)
    words = {w: text for w, text in synsets.values()}
    classes = sorted(words)
    scan = Source(path=src, size=size, splits=splits, classes=classes, layout=ARCHIVES)
    _named(scan, words)
    for split in splits:
        archive = TRAIN_TAR if split == "train" else VAL_TAR
        set_text(scan, split, [f"# layout={ARCHIVES}\n", stat_line(src, DEVKIT), stat_line(src, archive)])
    index = {w: i for i, w in enumerate(classes)}
    label_of_id = {i: index[w] for i, (w, _) in synsets.items()}
    scan.files = LazyFiles(lambda split: _list_train(src, classes) if split == "train"
                           else _list_val(src, truth, label_of_id))
    return scan


def _images_in(t: tarfile.TarFile) -> list:
    return sorted((m for m in t if m.isfile() and is_image_file(m.name.rsplit("/", 1)[-1])),
                  key=lambda m: m.name)


def _list_train(src: Path, classes: list) -> list:
    """[(name, label, (archive, offset, nbytes))] of the train archive, by
    class, then name; the inner tars are read as members of the outer one."""
    path = src / TRAIN_TAR
    items = []
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as outer:
            inner = {m.name.rsplit("/", 1)[-1][:-4]: m for m in outer
                     if m.isfile() and m.name.endswith(".tar")}
            _same_wnids(classes, list(inner), f"the devkit {DEVKIT}", str(path))
            for label, wnid in enumerate(classes):
                m = inner[wnid]
                with tarfile.open(fileobj=outer.extractfile(m), mode="r:") as t:
                    items += [(f"{TRAIN_TAR}/{m.name}/{x.name}", label,
                               (str(path), m.offset_data + x.offset_data, x.size)) for x in _images_in(t)]
    except (OSError, tarfile.TarError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return items


def _list_val(src: Path, truth: list, label_of_id: dict) -> list:
    """[(name, label, (archive, offset, nbytes))] of the val archive, by name."""
    path = src / VAL_TAR
    try:
        with tarfile.open(path, "r:") as t:
            members = _images_in(t)
    except (OSError, tarfile.TarError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    items = []
    for m in members:
        hit = _VAL_NUMBER.search(m.name)
        i = int(hit.group(1)) if hit else 0
        if not 1 <= i <= len(truth):
            raise DataError(f"{path}: {m.name} has no line in the devkit's {VAL_TRUTH} "
                            f"(expected ILSVRC2012_val_<n>.JPEG, n from 1 to {len(truth)})")
        if truth[i - 1] not in label_of_id:
            raise DataError(f"the devkit's {VAL_TRUTH} gives {m.name} the ILSVRC2012_ID "
                            f"{truth[i - 1]}, which is not one of its {len(label_of_id)} classes")
        items.append((f"{VAL_TAR}/{m.name}", label_of_id[truth[i - 1]], (str(path), m.offset_data, m.size)))
    return items


# ---------------------------------------------------------------- the Kaggle layout
def read_val_solution(path: Path) -> dict:
    """{ImageId: wnid} of a LOC_val_solution.csv (the first token of PredictionString)."""
    out = {}
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            for row in csv.DictReader(f):
                tokens = (row.get("PredictionString") or "").split()
                if row.get("ImageId") and tokens:
                    out[row["ImageId"].strip()] = tokens[0]
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    except csv.Error as e:
        raise DataError(f"{path} is not a CSV file with ImageId,PredictionString columns: {e}") from None
    if not out:
        raise DataError(f"{path} has no rows with ImageId,PredictionString")
    return out


def _kaggle_items(src: Path, folder: str, label_of_name) -> tuple:
    """([(relpath, label)], [fingerprint line]) of the images in src/folder."""
    if not (src / folder).is_dir():
        raise DataError(f"{src} looks like the Kaggle ImageNet layout but has no {folder}/ folder")
    items, lines = [], []
    for name, nbytes, mtime in _image_stats(src / folder):
        rel = f"{folder}/{name}"
        items.append((rel, label_of_name(name)))
        lines.append(f"{rel}\t{nbytes}\t{mtime}\n")
    return items, lines


def _kaggle_val_labels(src: Path, index: dict):
    solution = read_val_solution(src / KAGGLE_VAL)

    def label(name):
        wnid = solution.get(name.rsplit(".", 1)[0])
        if wnid is None:
            raise DataError(f"{src / KAGGLE_DATA}/val/{name} has no row in {src / KAGGLE_VAL}")
        if wnid not in index:
            raise DataError(f"{src / KAGGLE_VAL} gives {name} the class {wnid}, which is not in "
                            f"{KAGGLE_MAPPING}")
        return index[wnid]
    return label


def _scan_kaggle(src: Path, splits, size: int) -> Source:
    _need(src, [KAGGLE_MAPPING] + ([KAGGLE_VAL] if "val" in splits else []))
    words = read_synset_mapping(src / KAGGLE_MAPPING)
    classes = sorted(words)
    scan = Source(path=src, size=size, splits=splits, classes=classes, layout=KAGGLE)
    _named(scan, words)
    index = {w: i for i, w in enumerate(classes)}
    for split in splits:
        lines = [f"# layout={KAGGLE}\n", stat_line(src, KAGGLE_MAPPING)]
        if split == "train":
            train = src / KAGGLE_DATA / "train"
            found = class_folders(src / KAGGLE_DATA, "train") if train.is_dir() else []
            _same_wnids(classes, found, KAGGLE_MAPPING, f"{train}/")
            items = []
            for label, wnid in enumerate(classes):
                got, more = _kaggle_items(src, f"{KAGGLE_DATA}/train/{wnid}", lambda _n, _l=label: _l)
                items += got
                lines += more
        else:
            lines.append(stat_line(src, KAGGLE_VAL))
            items, more = _kaggle_items(src, f"{KAGGLE_DATA}/val", _kaggle_val_labels(src, index))
            lines += more
        if not items:
            raise DataError(f"no images in {src / KAGGLE_DATA}/{split}/")
        scan.files[split] = items
        set_text(scan, split, lines)
    return scan
