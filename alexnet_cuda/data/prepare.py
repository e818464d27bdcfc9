"""The paper's preprocessing, packed for fast loading.

prepare_dataset(src, dst) reads an image folder

    src/train/<class>/*.{jpg,jpeg,png}     src/val/<class>/*.{jpg,jpeg,png}

resizes every image so its shorter side is `size`, takes the central
size x size patch, and writes

    dst/train_images.npy   uint8 (N, S, S, 3), rows ordered by class, then name
    dst/train_labels.npy   int64 (N,)
    dst/val_images.npy, dst/val_labels.npy
    dst/mean.npy           float32 (S, S, 3): the per-pixel mean training image
    dst/pca.npz            cov (3,3), eigvals (3,), eigvecs (3,3) (column i is
                           eigenvector i, eigenvalues descending), rgb_mean (3,)
                           of the training pixels, in units of pixel/255
    dst/meta.json          classes, counts, size, skipped files; written last

The image files are .npy, so np.load(mmap_mode="r") maps them without reading.
The PCA is computed on pixel values scaled to [0, 1] (the convention behind the
paper's formula: offsets of eigvecs @ (a * eigvals) in [0, 1] units; the
loader multiplies them by 255 to apply them to 0..255 pixels).

Resuming: the work goes in chunks of files. Each split's image file is
preallocated as dst/.partial/<split>_images.npy; a chunk writes its rows in
place and then commits by writing its record (labels, skipped files, pixel
statistics) atomically (tmp file + os.replace). A rerun skips every chunk with
a record and redoes the first one without. At the end the image file's .npy
header is rewritten for the number of decoded images, the unused tail is
truncated, and the file is renamed into place; meta.json (written atomically,
last) marks dst as complete, and a complete dst is returned at once.
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

from ..files import atomic_save_npy, atomic_save_npz, atomic_write_bytes
from .errors import DataError
from .imageio import list_class_images, load_resized
from .synthetic import default_cache_root

FORMAT = "alexnet-cuda-prepared"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
_HEADER_LEN = 128  # fixed .npy header length, so the header can be rewritten in place
_MAX_NAMED = 50    # skipped files named one per line in the log; the rest in meta.json


def _nolog(*args, **kwargs):
    pass


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


# ---------------------------------------------------------------- scanning
def _scan(src: Path):
    """Validate the layout; returns (classes, {split: [(relpath, label), ...]})."""
    if not src.exists():
        raise DataError(f"data folder not found: {src}")
    if not src.is_dir():
        raise DataError(f"data path is not a folder: {src}")
    found = {}
    for split in SPLITS:
        d = src / split
        if not d.is_dir():
            raise DataError(f"{src} has no {split}/ folder (expected {src}/train/<class>/*.jpg "
                            f"and {src}/val/<class>/*.jpg)")
        with os.scandir(d) as it:
            found[split] = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
        if not found[split]:
            raise DataError(f"no class folders in {d} (expected {d}/<class>/*.jpg)")
    classes = found["train"]
    if found["val"] != classes:
        only_t = sorted(set(classes) - set(found["val"]))
        only_v = sorted(set(found["val"]) - set(classes))
        parts = []
        if only_t:
            parts.append(f"only in train/: {', '.join(only_t[:5])}" + (" ..." if len(only_t) > 5 else ""))
        if only_v:
            parts.append(f"only in val/: {', '.join(only_v[:5])}" + (" ..." if len(only_v) > 5 else ""))
        raise DataError(f"train/ and val/ of {src} have different classes ({'; '.join(parts)})")
    files = {}
    for split in SPLITS:
        items = []
        for label, cname in enumerate(classes):
            names = list_class_images(src / split / cname)
            if not names:
                raise DataError(f"class folder {src / split / cname} has no images (.jpg, .jpeg, .png)")
            items.extend((f"{split}/{cname}/{n}", label) for n in names)
        files[split] = items
    return classes, files


# ---------------------------------------------------------------- decoding (worker side)
def _decode_one(args):
    """Decode + resize one file; returns (uint8 image, pixel sum (3,),
    pixel outer-product sum (3,3)) or (None, error text)."""
    path, size = args
    try:
        a = load_resized(path, size)
    except Exception as e:  # broken / unreadable file: skipped, never a crash
        msg = str(e).splitlines()[0] if str(e) else ""
        return None, f"{type(e).__name__}: {msg}"[:200]
    x = a.reshape(-1, 3).astype(np.float64)
    # integer-valued products below 2**53: exact in float64 in any order
    return a, (x.sum(0), x.T @ x)


# ---------------------------------------------------------------- chunks (main side)
def _process_chunk(split, k, items, src, size, mm, offset, pool, record_path):
    """Decode chunk `k` of `split`, write its rows at mm[offset:], commit its
    record. Returns the record (dict)."""
    jobs = [(str(src / rel), size) for rel, _ in items]
    results = pool.map(_decode_one, jobs, chunksize=8) if pool is not None else map(_decode_one, jobs)
    labels, skipped, errors = [], [], []
    img_sum = np.zeros((size, size, 3) if split == "train" else (0,), np.uint32)
    pix_sum = np.zeros(3, np.float64)
    pix_outer = np.zeros((3, 3), np.float64)
    n = 0
    for (rel, label), (img, info) in zip(items, results):
        if img is None:
            skipped.append(rel)
            errors.append(info)
            continue
        mm[offset + n] = img
        if split == "train":
            img_sum += img
            pix_sum += info[0]
            pix_outer += info[1]
        labels.append(label)
        n += 1
    mm.flush()
    rec = {"n_ok": np.int64(n), "labels": np.asarray(labels, np.int64),
           "skipped": np.asarray(skipped, dtype=str), "errors": np.asarray(errors, dtype=str),
           "img_sum": img_sum, "pix_sum": pix_sum, "pix_outer": pix_outer}
    atomic_save_npz(record_path, **rec)
    return rec


def _load_record(path: Path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _plan_digest(src: Path, size: int, chunk_size: int, files) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([str(src.resolve()), size, chunk_size, FORMAT_VERSION]).encode())
    for split in SPLITS:
        for rel, label in files[split]:
            h.update(f"{rel}\0{label}\n".encode())
    return h.hexdigest()


def _npy_rows(path: Path) -> int:
    try:
        return int(np.load(path, mmap_mode="r").shape[0])
    except Exception:
        return -1


def _read_meta(path: Path):
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not meta.get("complete"):
        return None
    return meta


def is_prepared(path) -> bool:
    """True when `path` is a complete folder written by prepare_dataset."""
    path = Path(path)
    if _read_meta(path) is None:
        return False
    need = ["mean.npy", "pca.npz"] + [f"{s}_{k}.npy" for s in SPLITS for k in ("images", "labels")]
    return all((path / n).is_file() for n in need)


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


def prepare_dataset(src, dst, *, size: int = 256, log=print, workers: int | None = None,
                    chunk_size: int | None = None) -> Path:
    """Prepare the image folder `src` into `dst` (see the module doc).

    Returns `dst`. A complete `dst` is returned at once; an interrupted one is
    resumed. `workers`: decoding processes (default: all cores; 0 or 1: in
    this process). `chunk_size`: files per resumable chunk (default: about
    256 MB of decoded images, at most 1000 files).
    """
    log = log or _nolog
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    size = int(size)
    if size < 1:
        raise DataError(f"prepare: size must be positive, got {size}")
    meta = _read_meta(dst)
    if meta is not None and is_prepared(dst):
        if meta.get("size") != size:
            raise DataError(f"{dst} is already prepared at size {meta.get('size')}, not {size}; "
                            f"use another destination")
        log(f"prepare: {dst} is already prepared ({meta['counts']['train']} train, "
            f"{meta['counts']['val']} val images); reusing it")
        return dst

    classes, files = _scan(src)  # DataError before any work
    partial = dst / ".partial"
    if dst.exists():
        if not dst.is_dir():
            raise DataError(f"destination exists and is not a folder: {dst}")
        ours = {"meta.json", ".partial", "mean.npy", "pca.npz"} | {
            f"{s}_{k}.npy" for s in SPLITS for k in ("images", "labels")}
        strangers = [n for n in os.listdir(dst) if n not in ours and ".tmp" not in n]
        if strangers:
            raise DataError(f"destination {dst} is not empty and is not a prepared dataset "
                            f"(found {strangers[0]}); choose an empty or new folder")
    rowbytes = size * size * 3
    plan_file = partial / "plan.json"
    if chunk_size is None:  # the unfinished run's, else about 256 MB of images, at most 1000
        try:
            chunk_size = int(json.loads(plan_file.read_text())["chunk_size"])
        except (OSError, ValueError, KeyError, TypeError):
            chunk_size = int(max(1, min(1000, (256 << 20) // rowbytes)))
    if chunk_size < 1:
        raise DataError(f"prepare: chunk_size must be positive, got {chunk_size}")
    digest = _plan_digest(src, size, chunk_size, files)
    if partial.is_dir():
        try:
            old = json.loads(plan_file.read_text()).get("digest")
        except (OSError, ValueError):
            old = None
        if old != digest:
            log(f"prepare: the unfinished preparation in {dst} was for other files or settings; "
                f"starting over")
            shutil.rmtree(partial)
    if not partial.is_dir():  # outputs of an older, different run are stale
        for n in ["meta.json", "mean.npy", "pca.npz"] + [f"{s}_{k}.npy" for s in SPLITS
                                                          for k in ("images", "labels")]:
            (dst / n).unlink(missing_ok=True)
    resumed = partial.is_dir()
    partial.mkdir(parents=True, exist_ok=True)
    if not plan_file.is_file():
        atomic_write_bytes(plan_file, json.dumps({"digest": digest, "size": size,
                                                   "chunk_size": chunk_size}).encode())

    total = sum(len(files[s]) for s in SPLITS)
    if workers is None:  # all cores, unless the job is too small to pay for them
        workers = (os.cpu_count() or 1) if total >= 64 else 1
    use_pool = workers > 1
    log(f"prepare: {src} -> {dst}: {len(classes)} classes, {len(files['train'])} train and "
        f"{len(files['val'])} val files, {size}x{size}, chunks of {chunk_size}"
        + (f", {workers} processes" if use_pool else "") + (" (resuming)" if resumed else ""))

    t0 = time.perf_counter()
    done_files, decoded_now, named = 0, 0, 0
    pool = ProcessPoolExecutor(max_workers=workers) if use_pool else None
    records = {}
    try:
        for split in SPLITS:
            items = files[split]
            n_total = len(items)
            nchunks = (n_total + chunk_size - 1) // chunk_size
            rec_paths = [partial / f"{split}-{k:05d}.npz" for k in range(nchunks)]
            final_img = dst / f"{split}_images.npy"
            part_img = partial / f"{split}_images.npy"
            full_len = _HEADER_LEN + n_total * rowbytes
            # the committed chunks: the longest prefix of readable records
            recs = []
            for rp in rec_paths:
                try:
                    recs.append(_load_record(rp))
                except Exception:  # missing or torn: redo from here
                    break
            for rp in rec_paths[len(recs):]:
                rp.unlink(missing_ok=True)
            n_done = sum(int(r["n_ok"]) for r in recs)
            complete = len(recs) == nchunks
            done_files += sum(len(items[k * chunk_size:(k + 1) * chunk_size])
                              for k in range(len(recs)))
            if complete and final_img.is_file() and _npy_rows(final_img) == n_done:
                pass  # finalized by the interrupted run
            else:
                final_img.unlink(missing_ok=True)
                psize = part_img.stat().st_size if part_img.is_file() else -1
                truncated = complete and psize == _HEADER_LEN + n_done * rowbytes
                if psize != full_len and not truncated:
                    if recs:
                        log(f"prepare: the partial {split} image file is missing or damaged; "
                            f"redoing {split}/")
                    for rp in rec_paths:
                        rp.unlink(missing_ok=True)
                    recs, n_done, complete = [], 0, nchunks == 0
                    with open(part_img, "wb") as f:
                        f.write(_npy_header((n_total, size, size, 3)))
                        f.truncate(full_len)  # sparse
                if not truncated:
                    mm = np.memmap(part_img, np.uint8, "r+", offset=_HEADER_LEN,
                                   shape=(n_total, size, size, 3))
                    for k in range(len(recs), nchunks):
                        chunk = items[k * chunk_size:(k + 1) * chunk_size]
                        rec = _process_chunk(split, k, chunk, src, size, mm, n_done, pool,
                                             rec_paths[k])
                        for rel, err in zip(rec["skipped"], rec["errors"]):
                            named += 1
                            if named <= _MAX_NAMED:
                                log(f"prepare: skipped unreadable file {src / str(rel)} ({err})")
                        recs.append(rec)
                        n_done += int(rec["n_ok"])
                        done_files += len(chunk)
                        decoded_now += len(chunk)
                        rate = decoded_now / max(time.perf_counter() - t0, 1e-9)
                        log(f"prepare: {split} {min((k + 1) * chunk_size, n_total)}/{n_total} "
                            f"({done_files}/{total} overall, {rate:.0f} images/s)")
                    del mm
                if n_done == 0:
                    raise DataError(f"no readable images in {src / split}")
                # finalize: header for n_done rows, drop the unused tail, rename into place
                # (each step can be repeated if interrupted)
                with open(part_img, "r+b") as f:
                    f.write(_npy_header((n_done, size, size, 3)))
                    f.truncate(_HEADER_LEN + n_done * rowbytes)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(part_img, final_img)
            labels = np.concatenate([r["labels"] for r in recs]).astype(np.int64)
            atomic_save_npy(dst / f"{split}_labels.npy", labels)
            records[split] = recs
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    # statistics of the training set
    tr = records["train"]
    n_train = sum(int(r["n_ok"]) for r in tr)
    img_sum = np.zeros((size, size, 3), np.int64)
    for r in tr:
        img_sum += r["img_sum"]
    mean = (img_sum / n_train).astype(np.float32)
    pix_sum = np.sum([r["pix_sum"] for r in tr], axis=0)
    pix_outer = np.sum([r["pix_outer"] for r in tr], axis=0)
    cov, eigvals, eigvecs, rgb_mean = _pca(pix_sum, pix_outer, n_train * size * size)
    atomic_save_npy(dst / "mean.npy", mean)
    atomic_save_npz(dst / "pca.npz", cov=cov, eigvals=eigvals, eigvecs=eigvecs, rgb_mean=rgb_mean)

    skipped = {s: [str(x) for r in records[s] for x in r["skipped"]] for s in SPLITS}
    counts = {s: int(sum(int(r["n_ok"]) for r in records[s])) for s in SPLITS}
    per_class = {s: np.bincount(np.concatenate([r["labels"] for r in records[s]]),
                                minlength=len(classes)).tolist() for s in SPLITS}
    for s in SPLITS:
        for c, n in zip(classes, per_class[s]):
            if n == 0:
                log(f"prepare: warning: class {c} has no readable images in {s}/")
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "complete": True, "size": size,
            "classes": classes, "num_classes": len(classes), "counts": counts,
            "class_counts": per_class, "skipped_count": sum(len(v) for v in skipped.values()),
            "skipped": skipped, "source": str(src.resolve()), "pca_units": "pixel/255",
            "eigvals": eigvals.tolist(), "files": {
                "train": ["train_images.npy", "train_labels.npy"],
                "val": ["val_images.npy", "val_labels.npy"], "mean": "mean.npy", "pca": "pca.npz"}}
    atomic_write_bytes(dst / "meta.json", json.dumps(meta, indent=1).encode())
    shutil.rmtree(partial, ignore_errors=True)
    nskip = meta["skipped_count"]
    if nskip:
        names = skipped["train"] + skipped["val"]
        shown = ", ".join(names[:_MAX_NAMED]) + (f" ... and {nskip - _MAX_NAMED} more (see meta.json)"
                                                  if nskip > _MAX_NAMED else "")
        log(f"prepare: skipped {nskip} unreadable file(s): {shown}")
    log(f"prepare: done in {time.perf_counter() - t0:.1f}s: {counts['train']} train, "
        f"{counts['val']} val images of {size}x{size} in {dst}")
    return dst


# ---------------------------------------------------------------- reading
class PreparedDataset:
    """One split of a prepared folder.

    images  uint8 memmap (N, S, S, 3)     labels  int64 (N,)
    classes list[str] (sorted folder names); size S; num_classes
    mean    float32 (S, S, 3) of the training set
    eigvals (3,), eigvecs (3, 3) (eigvecs[:, i] is eigenvector i): PCA of the
            training pixels in pixel/255 units
    Pickles as (path, split), so worker processes reopen the memmap.
    """

    def __init__(self, path, split: str):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.path = Path(path)
        self.split = split
        meta = _read_meta(self.path)
        if meta is None or not is_prepared(self.path):
            raise DataError(f"{self.path} is not a prepared dataset (run prepare first)")
        self.meta = meta
        self.classes = list(meta["classes"])
        self.num_classes = len(self.classes)
        self.size = int(meta["size"])
        self.images = np.load(self.path / f"{split}_images.npy", mmap_mode="r")
        self.labels = np.asarray(np.load(self.path / f"{split}_labels.npy"), np.int64)
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


def ensure_prepared(data, cache_root=None, *, size: int = 256, log=print, workers=None) -> Path:
    """`data` itself if it is a prepared folder; otherwise prepare the raw
    image folder `data` into <cache_root>/prepared/<name>-s<size>-<key>, where
    key hashes the absolute source path and size (reused on later runs; a
    changed source folder is not detected, delete the cache entry)."""
    log = log or _nolog
    data = Path(data).expanduser()
    meta = _read_meta(data)
    if meta is not None and is_prepared(data):
        if int(meta["size"]) != int(size):
            log(f"note: {data} is prepared at size {meta['size']} (asked for {size}); using it as is")
        return data
    if not data.is_dir():
        raise DataError(f"data folder not found: {data}")
    src = data.resolve()
    key = hashlib.sha256(f"{src}\0{int(size)}".encode()).hexdigest()[:12]
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    dst = root / "prepared" / f"{src.name}-s{int(size)}-{key}"
    return prepare_dataset(src, dst, size=size, log=log, workers=workers)
