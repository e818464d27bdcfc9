"""The raw image folder: its layout, its classes, and its fingerprint.

A raw folder is   <src>/train/<class>/*.{jpg,jpeg,png}   <src>/val/<class>/*.{jpg,jpeg,png}
(only val/ is needed to evaluate). The ImageNet downloads (the official
archives, the Kaggle layout) are scanned by imagenet.py into the same Source,
with a "# layout=<kind>" line after the header of their canonical text.

The fingerprint of a split is the sha256 of a canonical text: one header line
with the preparation settings (format version, size, split), then one line
per image file, in the order prepare_dataset reads them:

    # alexnet-cuda-prepared 2 size=256 split=val
    val/<class>/<name>\\t<bytes>\\t<mtime in ns>

A preparation stored as JPEG (prepare --storage jpeg) says so in the header,
"# alexnet-cuda-prepared 2 size=256 storage=jpeg-q90 split=val" (set_storage),
so raw and jpeg preparations of one source never pass for each other; raw
storage keeps the header above.

It costs one stat per file (os.scandir), nothing is decoded or hashed but
that text; a file rewritten within the same mtime tick at the same size goes
unnoticed. The text itself is kept, gzipped, in the prepared folder
(source_files.txt.gz), so a change can be described (files added, removed,
changed).
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .imageio import is_image_file

FORMAT = "alexnet-cuda-prepared"
FORMAT_VERSION = 2      # 2: meta.json has splits, source fingerprint (1: neither)
SPLITS = ("train", "val")
SOURCE_FILES = "source_files.txt.gz"


@dataclass
class Source:
    """A scanned raw folder: what prepare_dataset reads, and its fingerprint."""
    path: Path                      # absolute
    size: int
    splits: tuple
    classes: list
    files: dict = field(default_factory=dict)        # split -> [(relpath, label)]
    text: dict = field(default_factory=dict)         # split -> canonical text (bytes)
    fingerprint: dict = field(default_factory=dict)  # split -> sha256 hex of text
    layout: str = "folder"          # "folder", "imagenet-archives" or "imagenet-kaggle"
    class_names: list = None        # human-readable name per class (None: the class ids)
    class_words: list = None        # the full synonym text per class, where known
    storage: str = "raw"            # jpegstore.storage_tag: "raw" or "jpeg-q<quality>"


class LazyFiles(dict):
    """split -> [(relpath, label[, where])], listed by `lister(split)` on first use
    (listing the members of an archive is not needed to check a fingerprint)."""

    def __init__(self, lister):
        super().__init__()
        self.lister = lister

    def __missing__(self, split):
        self[split] = value = self.lister(split)
        return value


def check_splits(splits) -> tuple:
    """The splits to prepare, in canonical order: ("train", "val") or ("val",)."""
    splits = tuple(s for s in SPLITS if s in set(splits))
    if splits not in (SPLITS, ("val",)):
        raise ValueError(f"splits must be ('train', 'val') or ('val',), got {splits!r}")
    return splits


def _layout_hint(splits) -> str:
    if "train" in splits:
        return "an image folder with train/ and val/ sub-folders, or a prepared folder"
    return "an image folder with a val/ sub-folder, or a prepared folder"


def check_folder(src: Path, splits=SPLITS):
    """DataError unless `src` is an existing folder."""
    if not src.exists():
        raise DataError(f"data folder not found: {src}")
    if not src.is_dir():
        raise DataError(f"{src} is a file, not a folder (expected {_layout_hint(splits)})")


def class_folders(src: Path, split: str) -> list:
    d = src / split
    if not d.is_dir():
        raise DataError(f"{src} has no {split}/ folder (expected {src}/{split}/<class>/*.jpg"
                        + (f" and {src}/val/<class>/*.jpg)" if split == "train" else ")"))
    with os.scandir(d) as it:
        names = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DataError(f"no class folders in {d} (expected {d}/<class>/*.jpg)")
    return names


def _same_classes(src: Path, found: dict) -> list:
    classes = found["train"]
    if found["val"] == classes:
        return classes
    only_t = sorted(set(classes) - set(found["val"]))
    only_v = sorted(set(found["val"]) - set(classes))
    parts = []
    if only_t:
        parts.append(f"only in train/: {', '.join(only_t[:5])}" + (" ..." if len(only_t) > 5 else ""))
    if only_v:
        parts.append(f"only in val/: {', '.join(only_v[:5])}" + (" ..." if len(only_v) > 5 else ""))
    raise DataError(f"train/ and val/ of {src} have different classes ({'; '.join(parts)})")


def _image_stats(folder: Path) -> list:
    """Sorted (name, bytes, mtime_ns) of the image files directly in `folder`."""
    with os.scandir(folder) as it:
        out = []
        for e in it:
            if is_image_file(e.name) and e.is_file():
                st = e.stat()
                out.append((e.name, st.st_size, st.st_mtime_ns))
    out.sort()
    return out


def header(split: str, size: int, storage: str = "raw") -> str:
    tag = "" if storage == "raw" else f"storage={storage} "
    return f"# {FORMAT} {FORMAT_VERSION} size={int(size)} {tag}split={split}\n"


def set_storage(scan: Source, storage: str):
    """Record the storage tag in `scan` and in its splits' header lines and fingerprints."""
    scan.storage = storage
    for split, text in scan.text.items():
        first, sep, rest = text.partition(b"\n")
        if not first.startswith(f"# {FORMAT} ".encode()):
            raise ValueError(f"the canonical text of {split} has no header line")
        scan.text[split] = header(split, scan.size, storage).encode() + rest
        scan.fingerprint[split] = hashlib.sha256(scan.text[split]).hexdigest()


def set_text(scan: Source, split: str, lines: list):
    """The canonical text of `split` (header + `lines`) and its fingerprint."""
    scan.text[split] = (header(split, scan.size) + "".join(lines)).encode("utf-8", "surrogateescape")
    scan.fingerprint[split] = hashlib.sha256(scan.text[split]).hexdigest()


def stat_line(src: Path, rel: str) -> str:
    """'<rel>\t<bytes>\t<mtime in ns>' of the file src/rel."""
    st = (src / rel).stat()
    return f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n"


def scan_source(src, splits=SPLITS, size: int = 256) -> Source:
    """Validate the layout of the raw folder `src` and list its images with
    their fingerprint (DataError for a bad layout)."""
    splits = check_splits(splits)
    src = Path(src).expanduser()
    check_folder(src, splits)
    src = src.resolve()
    found = {s: class_folders(src, s) for s in splits}
    classes = _same_classes(src, found) if len(splits) == 2 else found["val"]
    scan = Source(path=src, size=int(size), splits=splits, classes=classes)
    for split in splits:
        items, lines = [], [header(split, size)]
        for label, cname in enumerate(classes):
            stats = _image_stats(src / split / cname)
            if not stats:
                raise DataError(f"class folder {src / split / cname} has no images (.jpg, .jpeg, .png)")
            for name, nbytes, mtime in stats:
                rel = f"{split}/{cname}/{name}"
                items.append((rel, label))
                lines.append(f"{rel}\t{nbytes}\t{mtime}\n")
        scan.files[split] = items
        scan.text[split] = "".join(lines).encode("utf-8", "surrogateescape")
        scan.fingerprint[split] = hashlib.sha256(scan.text[split]).hexdigest()
    return scan


def source_files_blob(scan: Source) -> bytes:
    """The gzipped canonical texts of all splits (deterministic bytes)."""
    return gzip.compress(b"".join(scan.text[s] for s in scan.splits), compresslevel=1, mtime=0)


def _parse(text: bytes, splits) -> dict:
    """{(split, relpath): (bytes, mtime)} of the lines under the headers of `splits`."""
    out, split = {}, None
    for line in text.decode("utf-8", "surrogateescape").splitlines():
        if line.startswith(f"# {FORMAT} "):
            split = line.rsplit("split=", 1)[-1].strip()
        if not line or line.startswith("#") or "\t" not in line:
            continue
        rel, nbytes, mtime = line.rsplit("\t", 2)
        if split in splits:
            out[(split, rel)] = (nbytes, mtime)
    return out


def describe_change(old_blob_path: Path, scan: Source) -> str:
    """'(12 files added, 0 removed, 1 changed)' between the file list kept in
    a prepared folder and `scan`; '' when the old list cannot be read."""
    try:
        old = _parse(gzip.decompress(old_blob_path.read_bytes()), scan.splits)
    except (OSError, ValueError, EOFError):
        return ""
    new = _parse(b"".join(scan.text[s] for s in scan.splits), scan.splits)
    added = sum(1 for k in new if k not in old)
    removed = sum(1 for k in old if k not in new)
    changed = sum(1 for k, v in new.items() if k in old and old[k] != v)
    if not (added or removed or changed):
        return "(same files, other preparation settings)"
    return f"({added} file{'' if added == 1 else 's'} added, {removed} removed, {changed} changed)"
