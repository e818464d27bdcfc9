"""The paper's preprocessing, packed for fast loading.

prepare_dataset(src, dst) reads an image folder

    src/train/<class>/*.{jpg,jpeg,png}     src/val/<class>/*.{jpg,jpeg,png}

-- or the official ImageNet archives, read in place, or the Kaggle ImageNet
layout (see imagenet.py; one log line says which input was found) --
resizes every image so its shorter side is `size`, takes the central
size x size patch, and writes

    dst/train_images.npy   uint8 (N, S, S, 3), rows ordered by class, then name
                           (the flat ImageNet val sets: by name)
    dst/train_labels.npy   int64 (N,)
    dst/val_images.npy, dst/val_labels.npy
    dst/mean.npy           float32 (S, S, 3): the per-pixel mean training image
    dst/pca.npz            cov (3,3), eigvals (3,), eigvecs (3,3) (column i is
                           eigenvector i, eigenvalues descending), rgb_mean (3,)
                           of the training pixels, in units of pixel/255
    dst/source_files.txt.gz  the source's file list (see source.py)
    dst/meta.json          classes, counts, size, skipped files, splits, source,
                           storage ("raw", or "jpeg" with "jpeg_quality")
                           and its fingerprint; written last. Also: "layout"
                           (folder, imagenet-archives, imagenet-kaggle),
                           "class_names" parallel to "classes" (ImageNet: the
                           first synonym, "tench"; else the class folder names),
                           "class_words" (ImageNet: "tench, Tinca tinca"),
                           "conversions" {"CMYK": n, "L": n, "PNG named .JPEG": n}:
                           images decoded from another mode or format

With storage="jpeg" (prepare --storage jpeg) each split's images are kept
as JPEG streams instead, dst/<split>_jpeg.npy + dst/<split>_offsets.npy (see
jpegstore.py), about an eighth of the bytes at 256x256, decoded by the loader.

With splits=("val",) only val/ is read (train/ may be absent) and only the
val files are written: no mean image, no PCA (evaluation takes the mean from
the checkpoint). Such a folder opens as PreparedDataset(dst, "val").

The image files are .npy, so np.load(mmap_mode="r") maps them without reading.
The PCA is computed on pixel values scaled to [0, 1] (the convention behind the
paper's formula: offsets of eigvecs @ (a * eigvals) in [0, 1] units; the
loader multiplies them by 255 to apply them to 0..255 pixels).

Staleness: meta.json records the source (absolute path) and, per split, the
fingerprint of its file list (relative path, bytes, mtime in ns, plus size
and format version; see source.py). A prepared dst is reused only when the
source, size and fingerprints match. prepare_dataset refuses another dst
(DataError) unless force=True; ensure_prepared re-prepares its cache entry.
A dst being redone loses its meta.json first, so an interrupted run never
leaves a folder that claims to be complete but is stale.

The cache: ensure_prepared(raw folder) prepares into
$ALEXNET_CUDA_CACHE/prepared/ (default ~/.cache/alexnet-cuda/prepared/; see
prepared_cache_dir), one entry per source folder and size:
<name>-s<size>-<key> (key: sha256 of the absolute path and size), and
<name>-s<size>-<key>-val for a val-only preparation. The same root holds the
built-in synthetic set. Delete an entry (or the whole folder) to free space.

Resuming: the work goes in chunks of files. Each split's image file is
preallocated as dst/.partial/<split>_images.npy; a chunk writes its rows in
place and then commits by writing its record (labels, skipped files, pixel
statistics) atomically (tmp file + os.replace). A rerun skips every chunk with
a record and redoes the first one without. At the end the image file's .npy
header is rewritten for the number of decoded images, the unused tail is
truncated, and the file is renamed into place; meta.json (written atomically,
last) marks dst as complete. With jpeg storage a chunk appends its streams to
dst/.partial/<split>_jpeg.npy (after a placeholder header) and records their
sizes; a rerun cuts the file back to the committed chunks' bytes before it
appends again, and the end writes the header and <split>_offsets.npy.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..files import atomic_save_npy, atomic_save_npz, atomic_write_bytes, atomic_write_json, fsync_dir
from .errors import DataError
from .imageio import load_resized, quirks, usable_cores
from .imagenet import LAYOUT_TEXT, input_classes, load_item, scan_input
from .jpegstore import JpegImages, encode_jpeg, parse_tag, storage_tag
from .source import (FORMAT, FORMAT_VERSION, SOURCE_FILES, SPLITS, check_splits, describe_change,
                     set_storage, source_files_blob)
from .synthetic import default_cache_root

_HEADER_LEN = 128  # fixed .npy header length, so the header can be rewritten in place
_MAX_NAMED = 50    # skipped files named one per line in the log; the rest in meta.json
_FORCE_HINT = "pass force=True (--force on the command line) to overwrite it, or choose another destination"


def _nolog(*args, **kwargs):
    pass


def _outputs(splits, storage: str = "raw") -> list:
    """The data files of a prepared folder holding `splits` (storage: "raw" or "jpeg")."""
    kinds = ("images", "labels") if storage == "raw" else ("jpeg", "offsets", "labels")
    names = [f"{s}_{k}.npy" for s in splits for k in kinds]
    return names + (["mean.npy", "pca.npz"] if "train" in splits else [])


ALL_OUTPUTS = ["meta.json", SOURCE_FILES] + sorted(set(_outputs(SPLITS)) | set(_outputs(SPLITS, "jpeg")))


# ---------------------------------------------------------------- small file helpers
def _npy_header(shape) -> bytes:
    """A version 1.0 .npy header for C-ordered uint8 of `shape`, padded to
    exactly _HEADER_LEN bytes."""
    shape = tuple(int(s) for s in shape)
    body = ("{'descr': '|u1', 'fortran_order': False, 'shape': %r, }" % (shape,)).encode("latin1")
    n = _HEADER_LEN - 10
    if len(body) + 1 > n:
        raise ValueError(f"shape {shape} too long for the .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", n) + body + b" " * (n - len(body) - 1) + b"\n"


# ---------------------------------------------------------------- decoding (worker side)
def _decode_one(args):
    """Decode + resize one file (`where`: a path, or an archive member, see
    imagenet.load_item); returns (uint8 image, (pixel sum (3,), pixel
    outer-product sum (3,3), quirks, the image as JPEG at `quality` or None))
    or (None, error text)."""
    where, size, name, quality = args
    info = {}
    try:
        a = load_resized(load_item(where), size, info=info)
    except Exception as e:  # broken / unreadable file: skipped, never a crash
        msg = str(e).splitlines()[0] if str(e) else ""
        return None, f"{type(e).__name__}: {msg}"[:200]
    # contiguous planes (3, pixels) and einsum (no BLAS threads in the workers): 4x faster
    # than (pixels, 3) @; integer-valued products below 2**53: exact in float64 in any order
    x = np.ascontiguousarray(a.reshape(-1, 3).T).astype(np.float64)
    jpeg = encode_jpeg(a, quality) if quality else None
    return a, (x.sum(1), np.einsum("ij,kj->ik", x, x), quirks(name, info), jpeg)


def _where(src: Path, item) -> object:
    """Where the decoder finds an item (relpath, label[, where])."""
    return item[2] if len(item) > 2 else str(src / item[0])


# ---------------------------------------------------------------- chunks (main side)
def _submit(items, src, size, pool, quality=None):
    """The decoding of `items` (and their encoding as JPEG at `quality`, if
    given), started in the pool (in order; lazy without a pool)."""
    jobs = [(_where(src, it), size, it[0], quality) for it in items]
    return pool.map(_decode_one, jobs, chunksize=8) if pool is not None else map(_decode_one, jobs)


class _RawSink:
    """Where the decoded images of a raw split go: rows of the preallocated
    .npy (memory-mapped), from row `n_done` on."""

    def __init__(self, part_img: Path, n_total: int, size: int, n_done: int):
        self.size, self.n = size, n_done
        self.mm = np.memmap(part_img, np.uint8, "r+", offset=_HEADER_LEN, shape=(n_total, size, size, 3))

    def write(self, img, info):
        self.mm[self.n] = img
        self.n += 1

    def commit(self) -> dict:
        """Make the rows written so far durable; the record's extra fields."""
        self.mm.flush()
        return {}

    def close(self):
        del self.mm


class _JpegSink:
    """Where the JPEG streams of a jpeg split go: appended to the partial
    <split>_jpeg.npy (after its placeholder header), each chunk's sizes in its
    record."""

    def __init__(self, part: Path, size: int, committed_bytes: int):
        self.size = size
        self.f = open(part, "r+b")
        self.f.truncate(_HEADER_LEN + committed_bytes)  # drop what an interrupted chunk appended
        self.f.seek(_HEADER_LEN + committed_bytes)
        self.sizes = []

    def write(self, img, info):
        self.f.write(info[3])
        self.sizes.append(len(info[3]))

    def commit(self) -> dict:
        self.f.flush()
        os.fsync(self.f.fileno())
        sizes, self.sizes = np.asarray(self.sizes, np.int64), []
        return {"sizes": sizes}

    def close(self):
        self.f.close()


def _process_chunk(split, k, items, sink, record_path, results):
    """Take chunk `k` of `split` (`results`: its decoding, started by
    _submit), write its images to `sink`, commit its record. Returns the
    record (dict)."""
    size = sink.size
    labels, skipped, errors, notes = [], [], [], []
    img_sum = np.zeros((size, size, 3) if split == "train" else (0,), np.uint32)
    pix_sum = np.zeros(3, np.float64)
    pix_outer = np.zeros((3, 3), np.float64)
    n = 0
    for (rel, label, *_), (img, info) in zip(items, results):
        if img is None:
            skipped.append(rel)
            errors.append(info)
            continue
        sink.write(img, info)
        if split == "train":
            img_sum += img
            pix_sum += info[0]
            pix_outer += info[1]
        labels.append(label)
        notes += info[2]
        n += 1
    rec = {"n_ok": np.int64(n), "labels": np.asarray(labels, np.int64),
           "skipped": np.asarray(skipped, dtype=str), "errors": np.asarray(errors, dtype=str),
           "notes": np.asarray(notes, dtype=str),
           "img_sum": img_sum, "pix_sum": pix_sum, "pix_outer": pix_outer, **sink.commit()}
    atomic_save_npz(record_path, **rec)
    return rec


def _load_record(path: Path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}

def _plan_digest(scan, chunk_size: int) -> str:
    """What an unfinished preparation was for: the fingerprint covers the file
    list, so a changed source starts over instead of mixing files."""
    key = [str(scan.path), scan.size, chunk_size, FORMAT_VERSION, list(scan.splits),
           [scan.fingerprint[s] for s in scan.splits]]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


def _npy_rows(path: Path) -> int:
    try:
        return int(np.load(path, mmap_mode="r").shape[0])
    except Exception:
        return -1


# ---------------------------------------------------------------- prepared folders
def read_meta(path):
    """The meta.json of a complete prepared folder, else None."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not meta.get("complete"):
        return None
    return meta


_read_meta = read_meta  # the old private name


def meta_splits(meta) -> tuple:
    """The splits a prepared folder holds (folders of format version 1: both)."""
    return tuple(meta.get("splits", SPLITS))


def meta_storage(meta) -> str:
    """The storage tag of a prepared folder: "raw" or "jpeg-q<quality>"."""
    if meta.get("storage", "raw") == "raw":
        return "raw"
    return storage_tag("jpeg", meta.get("jpeg_quality"))


def is_prepared(path, splits=SPLITS) -> bool:
    """True when `path` is a complete folder written by prepare_dataset that
    holds `splits` (default: train and val, what training needs; pass
    ("val",) to accept a folder prepared for evaluation only)."""
    path = Path(path)
    meta = read_meta(path)
    if meta is None:
        return False
    have = meta_splits(meta)
    if not set(splits) <= set(have):
        return False
    return all((path / n).is_file() for n in _outputs(have, meta.get("storage", "raw")))


def _mismatch(meta, dst: Path, scan):
    """Why the prepared `dst` does not hold `scan`: None when it does, else
    (kind, phrase, detail) where '<dst> was prepared <phrase>' reads as a
    sentence; detail: '(3 files added, 0 removed, 1 changed)' for a changed
    source ('' when the old file list is unreadable), else ''."""
    if int(meta.get("size", -1)) != scan.size:
        return "size", f"at size {meta.get('size')}, not {scan.size}", ""
    if meta_storage(meta) != scan.storage:
        return "storage", f"with storage {meta_storage(meta)}, not {scan.storage}", ""
    if meta.get("source") != str(scan.path):
        return "source", f"from {meta.get('source')}", ""
    have = meta_splits(meta)
    if not set(scan.splits) <= set(have):
        return "splits", f"for the {'/'.join(have)} split only", ""
    fp = meta.get("fingerprint")
    if not isinstance(fp, dict):
        return "old", "by an older version of alexnet-cuda, which kept no fingerprint of its source", ""
    if any(fp.get(s) != scan.fingerprint[s] for s in scan.splits):
        detail = describe_change(dst / meta.get("source_files", SOURCE_FILES), scan)
        return "changed", f"from an older state of {scan.path}" + (f" {detail}" if detail else ""), detail
    return None


def _counts_text(meta) -> str:
    return ", ".join(f"{meta['counts'][s]} {s}" for s in meta_splits(meta)) + " images"


def list_classes(data, split: str = "val") -> list:
    """The class names of `split` of `data`, without decoding anything: for a
    raw folder the sorted sub-folder names of <data>/<split>/, for the
    ImageNet archives or Kaggle layout the sorted WordNet ids, for a prepared
    folder the classes it records. DataError when there are none."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = Path(data).expanduser()
    meta = read_meta(data)
    if meta is not None:
        return list(meta["classes"])
    return input_classes(data, split)


def class_names_of(meta) -> list:
    """The human-readable class names a prepared folder records ("tench"),
    else its classes (folder names, WordNet ids)."""
    names = meta.get("class_names")
    classes = list(meta["classes"])
    return list(names) if isinstance(names, list) and len(names) == len(classes) else classes


# ---------------------------------------------------------------- preparing
def prepare_dataset(src, dst, *, size: int = 256, log=print, workers: int | None = None,
                    chunk_size: int | None = None, force: bool = False, splits=SPLITS,
                    storage: str = "raw", jpeg_quality: int | None = None) -> Path:
    """Prepare the image folder `src` into `dst` (see the module doc).

    Returns `dst`. A complete `dst` prepared from the same source in the same
    state (fingerprint) and size is returned at once; one prepared from
    another source, an older state of `src`, at another size, or by the
    previous version (no fingerprint) raises DataError unless `force`, which
    overwrites it. An interrupted `dst` is resumed. `workers`: decoding
    processes (default: all cores; 0 or 1: in this process). `chunk_size`:
    files per resumable chunk (default: about 256 MB of decoded images, at
    most 1000 files). `splits`: ("train", "val") or ("val",) (evaluation only).
    `storage`: "raw" (uint8 arrays) or "jpeg" (JPEG streams at `jpeg_quality`,
    default 90; see jpegstore.py); a dst prepared with the other storage
    counts as another preparation (refused unless `force`).
    """
    log = log or _nolog
    dst = Path(dst).expanduser()
    size = int(size)
    if size < 1:
        raise DataError(f"prepare: size must be positive, got {size}")
    scan = _scan(src, splits, size, storage, jpeg_quality)  # DataError before any work
    meta = read_meta(dst)
    if meta is not None:
        why = _mismatch(meta, dst, scan)
        if why is None and is_prepared(dst, scan.splits):
            log(f"prepare: {dst} is already prepared ({_counts_text(meta)}); reusing it")
            return dst
        if why is not None and not force:
            raise DataError(f"{dst} was prepared {why[1]}; {_FORCE_HINT}")
        if why is not None:
            log(f"prepare: overwriting {dst} (it was prepared {why[1]})")
    return _prepare(scan, dst, log=log, workers=workers, chunk_size=chunk_size)


def _scan(src, splits, size, storage, jpeg_quality):
    """scan_input with the storage in the fingerprint (DataError for a bad storage or input)."""
    try:
        tag = storage_tag(storage, jpeg_quality)
    except ValueError as e:
        raise DataError(f"prepare: {e}") from None
    scan = scan_input(src, splits, size)
    if tag != "raw":
        set_storage(scan, tag)
    return scan


def _check_destination(dst: Path):
    if not dst.exists():
        return
    if not dst.is_dir():
        raise DataError(f"destination exists and is not a folder: {dst}")
    ours = set(ALL_OUTPUTS) | {".partial"}
    strangers = [n for n in os.listdir(dst) if n not in ours and ".tmp" not in n]
    if strangers:
        raise DataError(f"destination {dst} is not empty and is not a prepared dataset "
                        f"(found {strangers[0]}); choose an empty or new folder")


def _open_plan(dst: Path, scan, chunk_size, log):
    """Make dst/.partial for `scan`, keeping an unfinished run's work when it
    was for the same files and settings. Returns (partial, chunk_size, resumed)."""
    partial = dst / ".partial"
    plan_file = partial / "plan.json"
    rowbytes = scan.size * scan.size * 3
    if chunk_size is None:  # the unfinished run's, else about 256 MB of images, at most 1000
        try:
            chunk_size = int(json.loads(plan_file.read_text())["chunk_size"])
        except (OSError, ValueError, KeyError, TypeError):
            chunk_size = int(max(1, min(1000, (256 << 20) // rowbytes)))
    if chunk_size < 1:
        raise DataError(f"prepare: chunk_size must be positive, got {chunk_size}")
    digest = _plan_digest(scan, chunk_size)
    if partial.is_dir():
        try:
            old = json.loads(plan_file.read_text()).get("digest")
        except (OSError, ValueError, AttributeError):
            old = None
        if old != digest:
            log(f"prepare: the unfinished preparation in {dst} was for other files or settings; "
                f"starting over")
            shutil.rmtree(partial)
    keep = set() if not partial.is_dir() else set(_outputs(scan.splits, parse_tag(scan.storage)[0]))
    for n in ALL_OUTPUTS:  # outputs of an older, different run are stale
        if n not in keep:
            (dst / n).unlink(missing_ok=True)
    resumed = partial.is_dir()
    partial.mkdir(parents=True, exist_ok=True)
    if not plan_file.is_file():
        atomic_write_json(plan_file, {"digest": digest, "size": scan.size, "chunk_size": chunk_size})
    return partial, chunk_size, resumed


class _Progress:
    """Counts and log lines of one preparation."""

    def __init__(self, src, total, log):
        self.src, self.total, self.log = src, total, log
        self.t0 = time.perf_counter()
        self.done = self.decoded = self.named = 0

    def chunk(self, split, k, chunk_size, n_split, rec, n_files):
        for rel, err in zip(rec["skipped"], rec["errors"]):
            self.named += 1
            if self.named <= _MAX_NAMED:
                self.log(f"prepare: skipped unreadable file {self.src / str(rel)} ({err})")
        self.done += n_files
        self.decoded += n_files
        rate = self.decoded / max(time.perf_counter() - self.t0, 1e-9)
        left = (self.total - self.done) / max(rate, 1e-9)
        eta = f", {left / 3600:.1f} h left" if left >= 3600 else f", {left / 60:.0f} min left" if left >= 60 else ""
        self.log(f"prepare: {split} {min((k + 1) * chunk_size, n_split)}/{n_split} "
                 f"({self.done}/{self.total} overall, {rate:.0f} images/s{eta})")


def _prepare(scan, dst: Path, *, log, workers, chunk_size) -> Path:
    """Prepare `scan` into `dst`, whatever dst holds now (resuming a matching
    unfinished run)."""
    _check_destination(dst)
    if (dst / "meta.json").exists():  # from here on dst never claims to be complete
        (dst / "meta.json").unlink()
        fsync_dir(dst)
    log(f"prepare: found {LAYOUT_TEXT[scan.layout]} in {scan.path}")
    partial, chunk_size, resumed = _open_plan(dst, scan, chunk_size, log)
    total = _list_files(scan, log)
    if workers is None:  # all cores, unless the job is too small to pay for them
        workers = usable_cores() if total >= 64 else 1
    use_pool = workers > 1
    counts = " and ".join(f"{len(scan.files[s])} {s}" for s in scan.splits)
    stored = "" if scan.storage == "raw" else f", stored as JPEG quality {parse_tag(scan.storage)[1]}"
    log(f"prepare: {scan.path} -> {dst}: {len(scan.classes)} classes, {counts} files, "
        f"{scan.size}x{scan.size}{stored}, chunks of {chunk_size}"
        + (f", {workers} processes" if use_pool else "") + (" (resuming)" if resumed else ""))
    progress = _Progress(scan.path, total, log)
    pool = ProcessPoolExecutor(max_workers=workers) if use_pool else None
    records = {}
    try:
        for split in scan.splits:
            records[split] = _prepare_split(split, scan, dst, partial, chunk_size, pool, progress)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    eigvals = _write_train_stats(dst, records["train"], scan.size) if "train" in records else None
    meta = _write_meta(dst, scan, records, eigvals, log)
    shutil.rmtree(partial, ignore_errors=True)
    _log_done(meta, progress, dst, log)
    return dst


def _list_files(scan, log) -> int:
    """List the images of every split (for archives: a pass over their tar
    headers, logged); returns how many there are."""
    t0 = time.perf_counter()
    total = sum(len(scan.files[s]) for s in scan.splits)
    if scan.layout == "imagenet-archives":
        log(f"prepare: listed the {total} images of the archives in {time.perf_counter() - t0:.1f}s")
    return total


def _committed(rec_paths) -> list:
    """The records of the committed chunks: the longest prefix of readable
    ones; the records after it are deleted (redone)."""
    recs = []
    for rp in rec_paths:
        try:
            recs.append(_load_record(rp))
        except Exception:  # missing or torn: redo from here
            break
    for rp in rec_paths[len(recs):]:
        rp.unlink(missing_ok=True)
    return recs


def _prepare_split(split, scan, dst, partial, chunk_size, pool, progress) -> list:
    """Decode (or resume) one split into dst/<split>_images.npy (jpeg storage:
    <split>_jpeg.npy and <split>_offsets.npy) and its labels; returns the
    chunk records."""
    items, size, jpeg = scan.files[split], scan.size, scan.storage != "raw"
    nchunks = (len(items) + chunk_size - 1) // chunk_size
    rec_paths = [partial / f"{split}-{k:05d}.npz" for k in range(nchunks)]
    kind = "jpeg" if jpeg else "images"
    final_img, part_img = dst / f"{split}_{kind}.npy", partial / f"{split}_{kind}.npy"
    recs = _committed(rec_paths)
    progress.done += len(items[:len(recs) * chunk_size])
    if not (len(recs) == nchunks and _is_final(final_img, dst / f"{split}_offsets.npy", recs, jpeg)):
        final_img.unlink(missing_ok=True)  # not finalized by the interrupted run
        recs, n_done = _decode_rest(split, scan, part_img, rec_paths, recs, chunk_size, pool,
                                    progress)
        if n_done == 0:
            raise DataError(f"no readable images in {scan.path / split}")
        if jpeg:
            _finalize_jpeg(part_img, final_img, dst / f"{split}_offsets.npy", recs)
        else:
            _finalize_image(part_img, final_img, n_done, size)
    labels = np.concatenate([r["labels"] for r in recs]).astype(np.int64)
    atomic_save_npy(dst / f"{split}_labels.npy", labels)
    return recs


def _jpeg_bytes(recs) -> int:
    return int(sum(int(np.sum(r["sizes"])) for r in recs))


def _is_final(final_img: Path, offsets: Path, recs, jpeg: bool) -> bool:
    """Whether the split's finished image file (and offsets) hold what `recs` committed."""
    n_done = sum(int(r["n_ok"]) for r in recs)
    if not jpeg:
        return final_img.is_file() and _npy_rows(final_img) == n_done
    return (final_img.is_file() and final_img.stat().st_size == _HEADER_LEN + _jpeg_bytes(recs)
            and offsets.is_file() and _npy_rows(offsets) == n_done + 1)


def _open_sink(split, scan, part_img, rec_paths, recs, chunk_size, progress):
    """(sink for the chunks after the committed `recs`, or None when every
    chunk is committed and the partial file is already final-sized; the
    records kept). A missing or damaged partial file starts the split over
    (records deleted); raw: preallocated (sparse) for every file."""
    items, size, jpeg = scan.files[split], scan.size, scan.storage != "raw"
    n_total, rowbytes = len(items), size * size * 3
    n_done = sum(int(r["n_ok"]) for r in recs)
    have = part_img.stat().st_size if part_img.is_file() else -1
    if jpeg:  # a torn append after the last committed chunk is cut off by the sink
        need = _HEADER_LEN + _jpeg_bytes(recs)
        complete, intact = have == need, have >= need
    else:
        complete, intact = have == _HEADER_LEN + n_done * rowbytes, have == _HEADER_LEN + n_total * rowbytes
    if len(recs) == len(rec_paths) and complete and not jpeg:
        return None, recs  # already truncated: only the rename was left
    if not intact:
        if recs:
            progress.log(f"prepare: the partial {split} image file is missing or damaged; "
                         f"redoing {split}/")
            progress.done -= len(items[:len(recs) * chunk_size])
        for rp in rec_paths:
            rp.unlink(missing_ok=True)
        recs, n_done = [], 0
        with open(part_img, "wb") as f:
            f.write(_npy_header((0,) if jpeg else (n_total, size, size, 3)))
            if not jpeg:
                f.truncate(_HEADER_LEN + n_total * rowbytes)  # sparse
    if jpeg:
        return _JpegSink(part_img, size, _jpeg_bytes(recs)), recs
    return _RawSink(part_img, n_total, size, n_done), recs


def _decode_rest(split, scan, part_img, rec_paths, recs, chunk_size, pool, progress):
    """Decode the chunks after the committed ones into the partial image file
    (made anew when missing or damaged); returns (records, images)."""
    items, size, nchunks = scan.files[split], scan.size, len(rec_paths)
    quality = parse_tag(scan.storage)[1]
    sink, recs = _open_sink(split, scan, part_img, rec_paths, recs, chunk_size, progress)
    n_done = sum(int(r["n_ok"]) for r in recs)
    if sink is None:
        return recs, n_done

    def start(k):  # chunk k's decoding: with a pool, chunk k+1 decodes while chunk k is written
        chunk = items[k * chunk_size:(k + 1) * chunk_size]
        return _submit(chunk, scan.path, size, pool, quality) if k < nchunks else None
    try:
        ahead = start(len(recs))
        for k in range(len(recs), nchunks):
            chunk = items[k * chunk_size:(k + 1) * chunk_size]
            # without a pool the decoding is lazy: it happens as chunk k is written
            results, ahead = ahead, start(k + 1)
            rec = _process_chunk(split, k, chunk, sink, rec_paths[k], results)
            progress.chunk(split, k, chunk_size, len(items), rec, len(chunk))
            recs.append(rec)
            n_done += int(rec["n_ok"])
    finally:
        sink.close()
    return recs, n_done


def _finalize_image(part_img: Path, final_img: Path, n_rows: int, size: int):
    """Header for n_rows, drop the unused tail, rename into place (each step
    can be repeated if interrupted)."""
    with open(part_img, "r+b") as f:
        f.write(_npy_header((n_rows, size, size, 3)))
        f.truncate(_HEADER_LEN + n_rows * size * size * 3)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part_img, final_img)


def _finalize_jpeg(part: Path, final: Path, offsets: Path, recs):
    """Header for the streams' bytes, the offsets, rename into place (each
    step can be repeated if interrupted)."""
    sizes = np.concatenate([r["sizes"] for r in recs]).astype(np.int64)
    total = int(sizes.sum())
    with open(part, "r+b") as f:
        f.write(_npy_header((total,)))
        f.truncate(_HEADER_LEN + total)
        f.flush()
        os.fsync(f.fileno())
    atomic_save_npy(offsets, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
    os.replace(part, final)


def _pca(pix_sum, pix_outer, n_pix):
    """Covariance (population) of RGB pixel values in pixel/255 units, and its
    eigen-decomposition, eigenvalues descending, each eigenvector's largest
    component positive."""
    m = pix_sum / n_pix
    cov = (pix_outer / n_pix - np.outer(m, m)) / 255.0 ** 2
    cov = (cov + cov.T) / 2
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    w, v = np.maximum(w[order], 0.0), v[:, order]
    for i in range(3):
        if v[np.argmax(np.abs(v[:, i])), i] < 0:
            v[:, i] = -v[:, i]
    return cov, w, v, m / 255.0


def _write_train_stats(dst: Path, recs, size: int):
    """mean.npy and pca.npz of the training records; returns the eigenvalues."""
    n_train = sum(int(r["n_ok"]) for r in recs)
    img_sum = np.zeros((size, size, 3), np.int64)
    for r in recs:
        img_sum += r["img_sum"]
    mean = (img_sum / n_train).astype(np.float32)
    pix_sum = np.sum([r["pix_sum"] for r in recs], axis=0)
    pix_outer = np.sum([r["pix_outer"] for r in recs], axis=0)
    cov, eigvals, eigvecs, rgb_mean = _pca(pix_sum, pix_outer, n_train * size * size)
    atomic_save_npy(dst / "mean.npy", mean)
    atomic_save_npz(dst / "pca.npz", cov=cov, eigvals=eigvals, eigvecs=eigvecs, rgb_mean=rgb_mean)
    return eigvals


def _write_meta(dst: Path, scan, records, eigvals, log) -> dict:
    """The source's file list, then meta.json (last: it marks dst complete)."""
    splits, classes = scan.splits, scan.classes
    skipped = {s: [str(x) for r in records[s] for x in r["skipped"]] for s in splits}
    counts = {s: int(sum(int(r["n_ok"]) for r in records[s])) for s in splits}
    per_class = {s: np.bincount(np.concatenate([r["labels"] for r in records[s]]),
                                minlength=len(classes)).tolist() for s in splits}
    for s in splits:
        for c, n in zip(classes, per_class[s]):
            if n == 0:
                log(f"prepare: warning: class {c} has no readable images in {s}/")
    storage, quality = parse_tag(scan.storage)
    files = {s: [f"{s}_{k}.npy" for k in (("images",) if storage == "raw" else ("jpeg", "offsets"))]
             + [f"{s}_labels.npy"] for s in splits}
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "complete": True, "size": scan.size,
            "splits": list(splits), "classes": classes, "num_classes": len(classes),
            "counts": counts, "class_counts": per_class,
            "skipped_count": sum(len(v) for v in skipped.values()), "skipped": skipped,
            "source": str(scan.path), "fingerprint": {s: scan.fingerprint[s] for s in splits},
            "source_files": SOURCE_FILES, "files": files, "layout": scan.layout,
            "class_names": list(scan.class_names or classes), "conversions": _conversions(records),
            "storage": storage}
    if quality is not None:
        meta["jpeg_quality"] = quality
    if scan.class_words is not None:
        meta["class_words"] = list(scan.class_words)
    if eigvals is not None:
        meta.update(pca_units="pixel/255", eigvals=eigvals.tolist())
        files.update(mean="mean.npy", pca="pca.npz")
    atomic_write_bytes(dst / SOURCE_FILES, source_files_blob(scan))
    atomic_write_bytes(dst / "meta.json", json.dumps(meta, indent=1).encode())
    return meta


def _conversions(records) -> dict:
    """{quirk: number of images} over all chunks ("CMYK": 3, "PNG named .JPEG": 1)."""
    counts = {}
    for recs in records.values():
        for r in recs:
            for q in r.get("notes", ()):
                counts[str(q)] = counts.get(str(q), 0) + 1
    return dict(sorted(counts.items()))


def _log_done(meta, progress, dst, log):
    conv = meta.get("conversions") or {}
    if conv:
        log("prepare: decoded with conversions: " + ", ".join(
            f"{n} {q}" if " named " in q else f"{n} {q} to RGB" for q, n in conv.items()))
    nskip = meta["skipped_count"]
    if nskip:
        names = [n for s in meta["splits"] for n in meta["skipped"][s]]
        shown = ", ".join(names[:_MAX_NAMED]) + (f" ... and {nskip - _MAX_NAMED} more (see meta.json)"
                                                  if nskip > _MAX_NAMED else "")
        log(f"prepare: skipped {nskip} unreadable file(s): {shown}")
    dt = time.perf_counter() - progress.t0
    rate = f" ({progress.decoded / dt:.0f} images/s)" if progress.decoded and dt > 0 else ""
    log(f"prepare: done in {dt:.1f}s{rate}: {_counts_text(meta)} of "
        f"{meta['size']}x{meta['size']} in {dst}")


# ---------------------------------------------------------------- reading
class PreparedDataset:
    """One split of a prepared folder.

    images  uint8 memmap (N, S, S, 3)     labels  int64 (N,)
            (jpeg storage: a JpegImages, indexed the same way, decoding on access)
    storage "raw" or "jpeg-q<quality>"
    classes list[str] (sorted folder names, or WordNet ids); size S; num_classes
    class_names list[str] parallel to classes: the human-readable names
            ("tench") where the source had them (ImageNet), else the classes
    mean    float32 (S, S, 3) of the training set; None in a folder prepared
            for evaluation only (splits=("val",)): take the checkpoint's
    eigvals (3,), eigvecs (3, 3) (eigvecs[:, i] is eigenvector i): PCA of the
            training pixels in pixel/255 units; None without a training split
    Pickles as (path, split), so worker processes reopen the memmap.
    """

    def __init__(self, path, split: str):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.path = Path(path)
        self.split = split
        meta = read_meta(self.path)
        if meta is None:
            raise DataError(f"{self.path} is not a prepared dataset (run prepare first)")
        have = meta_splits(meta)
        if split not in have:
            raise DataError(f"{self.path} holds only the {'/'.join(have)} split (prepared for "
                            f"evaluation); pass the image folder {meta.get('source')} to train")
        if not is_prepared(self.path, (split,)):
            raise DataError(f"{self.path} is missing some of its files; prepare it again")
        self.meta = meta
        self.classes = list(meta["classes"])
        self.class_names = class_names_of(meta)
        self.num_classes = len(self.classes)
        self.size = int(meta["size"])
        self.storage = meta_storage(meta)
        if self.storage == "raw":
            self.images = np.load(self.path / f"{split}_images.npy", mmap_mode="r")
        else:
            self.images = JpegImages(self.path / f"{split}_jpeg.npy", self.path / f"{split}_offsets.npy",
                                     self.size)
        self.labels = np.asarray(np.load(self.path / f"{split}_labels.npy"), np.int64)
        self.mean = self.eigvals = self.eigvecs = None
        if "train" in have:
            self.mean = np.asarray(np.load(self.path / "mean.npy"), np.float32)
            with np.load(self.path / "pca.npz") as z:
                self.eigvals = np.asarray(z["eigvals"], np.float64)
                self.eigvecs = np.asarray(z["eigvecs"], np.float64)
        S = self.size
        if self.images.shape[1:] != (S, S, 3) or len(self.labels) != len(self.images):
            raise DataError(f"{self.path}: {split} files are inconsistent; prepare again")

    def __len__(self):
        return len(self.labels)

    def __reduce__(self):
        return (PreparedDataset, (str(self.path), self.split))

    def __repr__(self):
        return (f"PreparedDataset({str(self.path)!r}, {self.split!r}: {len(self)} images, "
                f"{self.num_classes} classes, {self.size}px)")


# ---------------------------------------------------------------- the cache
def prepared_cache_dir(cache_root=None) -> Path:
    """Where ensure_prepared puts prepared copies of raw folders:
    <cache_root>/prepared, cache_root defaulting to $ALEXNET_CUDA_CACHE, else
    ~/.cache/alexnet-cuda (default_cache_root())."""
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    return root / "prepared"


def cache_entry(src, size: int = 256, splits=SPLITS, cache_root=None, storage: str = "raw") -> Path:
    """The cache folder of the raw folder `src` at `size`:
    <name>-s<size>-<key>, with the suffix -val for a val-only preparation and
    -<storage> (-jpeg-q90) for one not stored raw."""
    src = Path(src).expanduser().resolve()
    key = hashlib.sha256(f"{src}\0{int(size)}".encode()).hexdigest()[:12]
    tail = ("" if check_splits(splits) == SPLITS else "-val") + ("" if storage == "raw" else f"-{storage}")
    return prepared_cache_dir(cache_root) / f"{src.name}-s{int(size)}-{key}{tail}"


def _use_prepared(data: Path, meta, size, splits, log) -> Path:
    """A prepared folder given as data: used as is, if it holds `splits`."""
    have = meta_splits(meta)
    if not set(splits) <= set(have):
        raise DataError(f"{data} holds only the {'/'.join(have)} split (prepared for evaluation); "
                        f"pass the image folder {meta.get('source')} to train")
    if not is_prepared(data, splits):
        raise DataError(f"{data} is missing some of its files; prepare it again")
    if int(meta["size"]) != int(size):
        log(f"note: {data} is prepared at size {meta['size']} (asked for {size}); using it as is")
    return data


def _reuse_cached(dst: Path, scan, log) -> bool:
    """True when the cache entry `dst` holds `scan` (logged); when it is
    stale, says why (it is then prepared again)."""
    meta = read_meta(dst)
    if meta is None:
        return False
    why = _mismatch(meta, dst, scan)
    if why is None and is_prepared(dst, scan.splits):
        log(f"prepare: {dst} is already prepared ({_counts_text(meta)}); reusing it")
        return True
    if why is None:
        log(f"prepare: {dst} is missing some of its files; preparing again")
    elif why[0] == "changed":
        detail = f" {why[2]}" if why[2] else ""
        log(f"prepare: {scan.path} changed since it was prepared{detail}; preparing again")
    else:
        log(f"prepare: {dst} was prepared {why[1]}; preparing again")
    return False


def ensure_prepared(data, cache_root=None, *, size: int = 256, log=print, workers=None,
                    splits=SPLITS, storage: str = "raw", jpeg_quality: int | None = None) -> Path:
    """A prepared folder holding `splits` for `data`.

    `data` itself if it is a prepared folder; otherwise the raw image folder
    `data` is prepared into its cache entry (see cache_entry; cache_root
    default: $ALEXNET_CUDA_CACHE, else ~/.cache/alexnet-cuda), which is
    reused while the source's fingerprint is unchanged and prepared again
    (one log line saying why) when files were added, removed or changed.
    splits=("val",): only val/ is needed and prepared (no mean image: take the
    checkpoint's); a full cache entry of the same source in the same state
    serves too. `storage`, `jpeg_quality`: see prepare_dataset (one cache
    entry per storage).
    """
    log = log or _nolog
    splits = check_splits(splits)
    data = Path(data).expanduser()
    meta = read_meta(data)
    if meta is not None:
        return _use_prepared(data, meta, size, splits, log)
    scan = _scan(data, splits, int(size), storage, jpeg_quality)
    if splits != SPLITS:
        full = cache_entry(scan.path, size, SPLITS, cache_root, scan.storage)
        meta = read_meta(full)
        if meta is not None and _mismatch(meta, full, scan) is None and is_prepared(full, splits):
            log(f"prepare: {full} is already prepared ({_counts_text(meta)}); reusing it")
            return full
    dst = cache_entry(scan.path, size, splits, cache_root, scan.storage)
    if _reuse_cached(dst, scan, log):
        return dst
    return _prepare(scan, dst, log=log, workers=workers, chunk_size=None)
