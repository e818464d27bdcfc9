"""Compact storage of prepared images: each S x S image as a JPEG stream.

`prepare --storage jpeg` keeps, per split,

    <split>_jpeg.npy     uint8 (total bytes,): the JPEG streams one after the other
    <split>_offsets.npy  int64 (N + 1,): image i is bytes offsets[i]:offsets[i+1]

instead of <split>_images.npy (uint8 (N, S, S, 3)). The streams are baseline
JPEGs of the already resized and cropped S x S image, at the quality recorded
in meta.json ("storage": "jpeg", "jpeg_quality": q, default 90), without
chroma subsampling (4:4:4): at 76-256 px a colour edge covers a good part of
the image, and 4:2:0 doubled the error on the synthetic shapes (RMS 5.1 against
3.0 levels at 96 px, quality 90) for 20% fewer bytes. The mean image and
the PCA are those of the pixels before encoding, so a raw and a jpeg
preparation of the same source share them exactly.

JpegImages reads such a split back with the indexing the loaders use
(images[i], images[i, rows, cols], images[a:b], images[index array]), decoding
on access; a read of 8 images or more (an EvalLoader batch) is decoded by up to
8 shared threads. Pillow's JPEG decoder releases the GIL while it decodes (measured:
benchmarks/results/data_storage_cpu.md), so the loader's worker threads decode
in parallel.
"""
from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError
from .imageio import usable_cores

STORAGES = ("raw", "jpeg")
DEFAULT_JPEG_QUALITY = 90
_MAX_DECODE_THREADS = 8   # threads that decode a many-image read (EvalLoader's batches)
_pool, _pool_pid, _pool_lock = None, None, threading.Lock()


def _decode_pool():
    """The shared threads that decode the images of one many-image read, or None on one core.
    A forked child makes its own (it inherits the pool object, not its threads)."""
    global _pool, _pool_pid
    cores = usable_cores()
    if cores < 2:
        return None
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(min(_MAX_DECODE_THREADS, cores), thread_name_prefix="alexnet-cuda-jpeg")
            _pool_pid = os.getpid()
        return _pool


def storage_tag(storage: str = "raw", quality: int | None = None) -> str:
    """'raw', or 'jpeg-q<quality>': how the images are stored, as recorded in
    the fingerprint's header line and the cache entry's name. ValueError for an
    unknown storage or a quality outside 1..100."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if storage == "raw":
        return "raw"
    q = DEFAULT_JPEG_QUALITY if quality is None else int(quality)
    if not 1 <= q <= 100:
        raise ValueError(f"jpeg quality must be in 1..100, got {quality}")
    return f"jpeg-q{q}"


def parse_tag(tag: str):
    """(storage, quality or None) of a storage_tag."""
    if tag == "raw":
        return "raw", None
    if tag.startswith("jpeg-q") and tag[6:].isdigit():
        return "jpeg", int(tag[6:])
    raise ValueError(f"unknown storage {tag!r}")


def encode_jpeg(a: np.ndarray, quality: int) -> bytes:
    """The uint8 (S, S, 3) image `a` as a baseline JPEG at `quality`."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=int(quality), subsampling=0)  # 0: 4:4:4
    return buf.getvalue()


def decode_jpeg(data) -> np.ndarray:
    """A JPEG stream (bytes or a uint8 array) as uint8 (H, W, 3)."""
    with Image.open(io.BytesIO(memoryview(data))) as im:
        im.load()
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im)


class JpegImages:
    """The images of one split stored as JPEG (see the module doc), indexed
    like the uint8 (N, S, S, 3) array they stand for; each access decodes."""

    ndim, dtype = 4, np.dtype(np.uint8)

    def __init__(self, data_path, offsets_path, size: int):
        self.data = np.load(Path(data_path), mmap_mode="r")
        self.offsets = np.asarray(np.load(Path(offsets_path)), np.int64)
        self.size = int(size)
        if self.data.ndim != 1 or self.offsets.ndim != 1 or len(self.offsets) < 1 \
                or self.offsets[0] != 0 or self.offsets[-1] != len(self.data) \
                or np.any(np.diff(self.offsets) <= 0):
            raise DataError(f"{data_path}: the JPEG data and its offsets disagree; prepare again")
        self.shape = (len(self.offsets) - 1, self.size, self.size, 3)

    def __len__(self):
        return self.shape[0]

    def nbytes_of(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def image(self, i) -> np.ndarray:
        """Image i, decoded: uint8 (S, S, 3)."""
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"image {i} out of range ({n} images)")
        i %= n
        a = decode_jpeg(self.data[self.offsets[i]:self.offsets[i + 1]])
        if a.shape != self.shape[1:]:
            raise DataError(f"image {i} decodes to {a.shape}, expected {self.shape[1:]}; prepare again")
        return a

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            return self.image(key)[rest] if rest else self.image(key)
        idx = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            raise IndexError("JpegImages takes an int, a slice or an integer array")
        out = np.empty(idx.shape + self.shape[1:], np.uint8)
        flat = out.reshape((-1,) + self.shape[1:])

        def one(j_i):
            flat[j_i[0]] = self.image(j_i[1])
        pool = _decode_pool() if flat.shape[0] >= 8 else None
        jobs = list(enumerate(idx.reshape(-1).tolist()))
        for _ in (pool.map(one, jobs) if pool is not None else map(one, jobs)):
            pass  # (the Pillow decoder releases the GIL: a read of many images decodes in parallel)
        return out[(slice(None),) * idx.ndim + rest] if rest else out

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)
