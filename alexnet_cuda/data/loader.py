"""Batches for training and evaluation, and the single-image input of predict.

Training (TrainLoader), per the paper (section 4.1), for batch b of epoch e:
  - the epoch's order is a permutation of the dataset that depends only on
    (seed, e); batch b holds its entries b*B .. b*B+B-1;
  - the augmentation of batch b depends only on (seed, e, b), drawn from
    np.random.Generator(PCG64(SeedSequence([seed, e, b]))) in this order:
    crop rows (B,), crop columns (B,), flip draws (B,), PCA normals (B, 3);
  - per image: a random crop x crop window, mirrored with probability 0.5;
    PCA lighting: the RGB offset 255 * eigvecs @ (a * eigvals), a ~ N(0,
    pca_std) per component, added to every pixel (eigvals/eigvecs are in
    pixel/255 units, so the offset is the paper's formula in those units);
    the mean image's crop at the same window (mirrored with the image)
    subtracted; the result multiplied by `scale`.
So a batch never depends on the number of workers, and a run resumes exactly
at any batch (start_batch).

Layout of x: float32, C-contiguous, NCHW (B, 3, crop, crop); y: int64 (B,).
"""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import numpy as np

from .errors import DataError
from .imageio import load_resized
from .jpegstore import JpegImages

_PERM_KEY = (0x7065726D,)  # spawn key that separates the permutation stream from batch streams


def _plain(a):
    """A plain ndarray view of `a` (a memmap's slices are slow to make); JPEG
    storage as it is (it decodes on access)."""
    if isinstance(a, JpegImages):
        return a
    return a.view(np.ndarray) if isinstance(a, np.ndarray) else np.asarray(a)


def _check_common(dataset, batch_size, crop, scale, mean=None):
    images = dataset.images
    if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"dataset.images must be (N, S, S, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise TypeError(f"dataset.images must be uint8, got {images.dtype}")
    S = images.shape[1]
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 1 <= int(crop) <= S:
        raise DataError(f"crop {crop} does not fit in the prepared images of {S}x{S}")
    if mean is None:
        mean = getattr(dataset, "mean", None)
    if mean is None:
        raise DataError(f"{getattr(dataset, 'path', 'the dataset')} has no mean image (it was prepared "
                        f"for evaluation only); pass mean= (the checkpoint's training mean)")
    mean = np.asarray(mean, np.float32)
    if mean.shape != (S, S, 3):
        raise DataError(f"the mean image is {mean.shape}, expected ({S}, {S}, 3) for images of {S}x{S}")
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    # the mean image in CHW, so that a window of it matches a transposed crop
    return S, np.ascontiguousarray(mean.transpose(2, 0, 1))


def _check_shard(shard, batch_size=None):
    """(rank, ranks) of a data-parallel shard; a training batch must split evenly."""
    rank, ranks = (int(v) for v in shard)
    if not 0 <= rank < ranks:
        raise ValueError(f"shard must be (rank, ranks) with 0 <= rank < ranks, got {shard}")
    if batch_size is not None and batch_size % ranks:
        raise ValueError(f"the batch size {batch_size} does not divide by the {ranks} ranks")
    return rank, ranks


class LoaderStats:
    """What a TrainLoader did since its current epoch started (reset by epoch()).

    images, batches  built so far
    build_seconds    wall time spent building them, summed over the workers
    wait_seconds     time the consumer (the training step) waited for its next
                     batch: with workers=0 all of build_seconds, with worker
                     threads only what they had not built ahead
    """

    def __init__(self, workers: int = 0):
        self._lock = threading.Lock()
        self.reset(workers)

    def reset(self, workers: int | None = None):
        with self._lock:
            if workers is not None:
                self.workers = int(workers)
            self.images = self.batches = 0
            self.build_seconds = self.wait_seconds = 0.0

    def built(self, n: int, seconds: float):
        with self._lock:
            self.images += int(n)
            self.batches += 1
            self.build_seconds += seconds

    def images_per_sec(self) -> float:
        """The rate the workers built batches at while they were building
        (images per second of one worker's time, times the workers): what the
        loader can deliver, whether or not the step asked for it. 0 before the
        first batch."""
        if self.build_seconds <= 0:
            return 0.0
        return self.images * max(1, self.workers) / self.build_seconds


class TrainLoader:
    """Augmented training batches (see the module doc).

    workers=0 builds batches in the caller's thread when they are asked for;
    workers=n>0 builds them in n background threads (numpy releases the GIL
    in the copies and arithmetic, Pillow while it decodes the JPEG storage),
    `prefetch` batches ahead per thread at most, delivered in order. Closing
    the generator early (break, exception, KeyboardInterrupt, garbage
    collection) stops and joins the threads.

    `feed`: None (batches are numpy arrays), or a callable that takes the
    iterator of numpy batches and returns an iterator of the same batches
    elsewhere (feed.PinnedUploader: on the GPU, uploaded ahead); it must close
    the iterator it was given when it is closed.
    `stats` (LoaderStats): images/s of the loader and the time the consumer
    waited for data, reset at the start of each epoch().
    """

    def __init__(self, dataset, *, batch_size: int, crop: int, seed: int, workers: int = 0,
                 flip: bool = True, pca_std: float = 0.1, scale: float = 1.0,
                 drop_last: bool = True, prefetch: int = 2, feed=None, shard=(0, 1)):
        self.dataset = dataset
        self.S, self._mean_chw = _check_common(dataset, batch_size, crop, scale)
        self.batch_size, self.crop, self.seed = int(batch_size), int(crop), int(seed)
        self.rank, self.ranks = _check_shard(shard, int(batch_size))
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.workers, self.prefetch = int(workers), max(1, int(prefetch))
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.flip, self.pca_std, self.scale = bool(flip), float(pca_std), float(scale)
        if self.pca_std < 0:
            raise ValueError(f"pca_std must be >= 0, got {pca_std}")
        self.drop_last = bool(drop_last)
        self.feed, self.stats = feed, LoaderStats(self.workers)
        self._mean_chw_flipped = np.ascontiguousarray(self._mean_chw[:, :, ::-1])
        self._images = _plain(dataset.images)
        self._labels = np.asarray(dataset.labels, np.int64)
        self.eigvals = np.asarray(getattr(dataset, "eigvals", np.zeros(3)), np.float64).reshape(3)
        self.eigvecs = np.asarray(getattr(dataset, "eigvecs", np.eye(3)), np.float64).reshape(3, 3)
        n = len(self._labels)
        if n != len(self._images):
            raise ValueError(f"dataset has {len(self._images)} images but {n} labels")
        if n == 0:
            raise DataError("the training set has no images")
        if self.drop_last and n < self.batch_size:
            raise DataError(f"the training set has {n} images, fewer than one batch of "
                            f"{self.batch_size}; pass --batch-size N with N <= {n}")

    def __len__(self):
        n, b = len(self._labels), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    # -- pure functions of (seed, epoch[, batch])
    def permutation(self, epoch: int) -> np.ndarray:
        ss = np.random.SeedSequence([self.seed, int(epoch)], spawn_key=_PERM_KEY)
        return np.random.Generator(np.random.PCG64(ss)).permutation(len(self._labels))

    def augmentation(self, epoch: int, batch: int, n: int):
        """(rows, cols, flips, rgb_offsets) of batch `batch`, n images:
        window origins (n,), mirror flags (n,) bool, offsets (n, 3) float64
        in 0..255 pixel units (before `scale`)."""
        rng = np.random.Generator(np.random.PCG64(
            np.random.SeedSequence([self.seed, int(epoch), int(batch)])))
        span = self.S - self.crop + 1
        rows = rng.integers(0, span, n)
        cols = rng.integers(0, span, n)
        flips = rng.random(n) < 0.5
        if not self.flip:
            flips[:] = False
        a = rng.standard_normal((n, 3)) * self.pca_std
        offsets = 255.0 * (a * self.eigvals) @ self.eigvecs.T
        return rows, cols, flips, offsets

    @property
    def row0(self):
        """The index in the global batch of this shard's first row (0 without sharding)."""
        return self.rank * self.batch_size // self.ranks

    def batch(self, epoch: int, b: int, perm: np.ndarray | None = None):
        """Batch `b` of `epoch` as (x, y): with shard (rank, ranks), that rank's rows of it (the same
        images and augmentations as those rows of the unsharded batch)."""
        if not 0 <= b < len(self):
            raise IndexError(f"batch {b} out of range (epoch has {len(self)})")
        t0 = time.perf_counter()
        if perm is None:
            perm = self.permutation(epoch)
        idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
        aug = self.augmentation(epoch, b, len(idx))
        lo, hi = self.rank * len(idx) // self.ranks, (self.rank + 1) * len(idx) // self.ranks
        idx = idx[lo:hi]
        rows, cols, flips, offsets = (a[lo:hi] for a in aug)
        n, c = len(idx), self.crop
        offsets = offsets.astype(np.float32)
        x = np.empty((n, 3, c, c), np.float32)
        tmp = np.empty((3, c, c), np.uint8)
        images, mean, mean_f, S = self._images, self._mean_chw, self._mean_chw_flipped, self.S
        for k in range(n):
            r0, c0 = rows[k], cols[k]
            src = images[idx[k], r0:r0 + c, c0:c0 + c].transpose(2, 0, 1)
            if flips[k]:  # the mirrored mean window is a plain window of the mirrored mean
                src, m = src[:, :, ::-1], mean_f[:, r0:r0 + c, S - c0 - c:S - c0]
            else:
                m = mean[:, r0:r0 + c, c0:c0 + c]
            np.copyto(tmp, src)                       # gather (+ mirror) + HWC->CHW in uint8
            o = x[k]
            np.subtract(tmp, m, out=o, dtype=np.float32)   # to float32, minus the mean
            o += offsets[k][:, None, None]                 # PCA lighting
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        self.stats.built(n, time.perf_counter() - t0)
        return x, self._labels[idx]

    def epoch(self, epoch: int, start_batch: int = 0):
        """Yield the batches start_batch .. len(self)-1 of `epoch` as (x, y)
        (through `feed` when given); resets and fills `stats`."""
        nb = len(self)
        if not 0 <= start_batch <= nb:
            raise ValueError(f"start_batch must be in 0..{nb}, got {start_batch}")
        self.stats.reset(self.workers)
        perm = self.permutation(epoch)
        if self.workers == 0:
            it = (self.batch(epoch, b, perm) for b in range(start_batch, nb))
        else:
            it = self._threaded(epoch, start_batch, nb, perm)
        if self.feed is not None:
            it = self.feed(it)
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    return
                self.stats.wait_seconds += time.perf_counter() - t0
                yield item
        finally:
            if hasattr(it, "close"):
                it.close()

    def _threaded(self, epoch, start, nb, perm):
        W = min(self.workers, max(1, nb - start))
        stop = threading.Event()
        queues = [queue.Queue(maxsize=self.prefetch) for _ in range(W)]

        def put(q, item):
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        def work(w):
            try:
                for b in range(start + w, nb, W):
                    if stop.is_set() or not put(queues[w], (True, self.batch(epoch, b, perm))):
                        return
            except BaseException as e:  # handed to the consumer, re-raised there
                put(queues[w], (False, e))

        threads = [threading.Thread(target=work, args=(w,), daemon=True,
                                    name=f"alexnet-cuda-TrainLoader-{w}") for w in range(W)]
        for t in threads:
            t.start()
        try:
            for b in range(start, nb):
                w = (b - start) % W
                while True:
                    try:
                        ok, item = queues[w].get(timeout=0.1)
                        break
                    except queue.Empty:
                        if not threads[w].is_alive() and queues[w].empty():
                            raise RuntimeError("TrainLoader worker thread stopped unexpectedly")
                if not ok:
                    raise item
                yield item
        finally:
            stop.set()
            for q in queues:  # free the memory of unconsumed batches
                try:
                    while True:
                        q.get_nowait()
                except queue.Empty:
                    pass
            for t in threads:
                t.join()


class EvalLoader:
    """Evaluation batches in dataset order (the last one may be smaller).

    x: (B, 3, crop, crop), the centre crop minus the mean's centre crop, or
    with ten_crop=True (B, 10, 3, crop, crop): the patches at the top-left,
    top-right, bottom-left, bottom-right corners, the centre, then the
    horizontal reflections of those five in the same order (the paper's ten
    patches); all times `scale`. y: int64 (B,).

    `mean`: the mean image (S, S, 3) to subtract; default dataset.mean. A
    folder prepared for evaluation only has none: pass the checkpoint's.
    shard=(rank, ranks): only the batches b with b % ranks == rank.
    """

    def __init__(self, dataset, *, batch_size: int, crop: int, ten_crop: bool = False,
                 scale: float = 1.0, mean=None, shard=(0, 1)):
        self.dataset = dataset
        self.rank, self.ranks = _check_shard(shard)
        self.S, self._mean_chw = _check_common(dataset, batch_size, crop, scale, mean)
        self.batch_size, self.crop = int(batch_size), int(crop)
        self.ten_crop, self.scale = bool(ten_crop), float(scale)
        self._images = _plain(dataset.images)
        self._labels = np.asarray(dataset.labels, np.int64)

    def __len__(self):
        """The batches this shard yields."""
        return len(range(self.rank, -(-len(self._labels) // self.batch_size), self.ranks))

    def windows(self):
        """The (row, col) origins of the crops: centre only, or the five."""
        S, c = self.S, self.crop
        o = (S - c) // 2
        if not self.ten_crop:
            return [(o, o)]
        return [(0, 0), (0, S - c), (S - c, 0), (S - c, S - c), (o, o)]

    def __iter__(self):
        c, mean = self.crop, self._mean_chw
        wins = self.windows()
        starts = range(0, len(self._labels), self.batch_size)
        for start in starts[self.rank::self.ranks]:
            imgs = self._images[start:start + self.batch_size]
            n = len(imgs)
            if self.ten_crop:
                x = np.empty((n, 10, 3, c, c), np.float32)
                for j, (r0, c0) in enumerate(wins):
                    np.subtract(imgs[:, r0:r0 + c, c0:c0 + c].transpose(0, 3, 1, 2),
                                mean[:, r0:r0 + c, c0:c0 + c], out=x[:, j], dtype=np.float32)
                    x[:, j + 5] = x[:, j, :, :, ::-1]
            else:
                (r0, c0), = wins
                x = np.empty((n, 3, c, c), np.float32)
                np.subtract(imgs[:, r0:r0 + c, c0:c0 + c].transpose(0, 3, 1, 2),
                            mean[:, r0:r0 + c, c0:c0 + c], out=x, dtype=np.float32)
            if self.scale != 1.0:
                x *= np.float32(self.scale)
            yield x, self._labels[start:start + n]


def load_image_for_predict(path, dataset_meta_dir_or_mean, *, size: int, crop: int,
                           scale: float = 1.0) -> np.ndarray:
    """One image as the network input (1, 3, crop, crop) float32: decoded to
    RGB like prepare_dataset, shorter side to `size`, centre size x size
    crop, centre crop x crop patch, minus the mean image's centre patch,
    times `scale`. `dataset_meta_dir_or_mean`: a prepared folder, a mean.npy
    file, or the mean image (size, size, 3) itself."""
    m = dataset_meta_dir_or_mean
    if isinstance(m, (str, Path)):
        p = Path(m).expanduser()
        f = p / "mean.npy" if p.is_dir() else p
        if p.is_dir() and not f.is_file():
            raise DataError(f"{p} has no mean image (mean.npy); pass the checkpoint's training mean")
        try:
            m = np.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read the mean image {f}: {e}") from None
    mean = np.asarray(m, np.float32)
    if mean.shape != (size, size, 3):
        raise DataError(f"the mean image is {mean.shape}, expected ({size}, {size}, 3) for size {size}")
    if not 1 <= crop <= size:
        raise DataError(f"crop {crop} does not fit in size {size}")
    try:
        a = load_resized(Path(path).expanduser(), size)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except Exception as e:
        raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    o = (size - crop) // 2
    x = (a[o:o + crop, o:o + crop].astype(np.float32) - mean[o:o + crop, o:o + crop])
    if scale != 1.0:
        x *= np.float32(scale)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
