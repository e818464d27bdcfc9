"""On a GPU machine: the pinned-memory upload of the next batch (data/feed.py) against plain uploads.

    python benchmarks/feed_check.py [--batches 30] [--step-ms 40] [--workers 8]

Needs cupy and a GPU; prints, writes nothing. With an in-memory set of random 256x256 images
(no prepare needed) and the training loader (batch 128, 227x227 crops, workers threads):

1. every batch PinnedUploader delivers, copied back to the host, equals the loader's numpy batch
   of the same (seed, epoch, batch) bit for bit;
2. a stand-in step that keeps the GPU busy for about --step-ms per batch (matrix products on the
   current stream, then one read of the batch and a host sync, like train_step's loss) runs
   --batches batches (a) with x = cupy.asarray(x) in the loop and (b) through the feed; prints
   ms per batch and the loader's wait. (b) should be close to --step-ms when the loader keeps up:
   the upload then hides behind the step.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alexnet_cuda.data import TrainLoader  # noqa: E402
from alexnet_cuda.data.feed import PinnedUploader  # noqa: E402


def dataset(n=1024, size=256):
    rng = np.random.default_rng(0)
    return SimpleNamespace(images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                           labels=rng.integers(0, 1000, n).astype(np.int64),
                           mean=np.full((size, size, 3), 120.0, np.float32),
                           eigvals=np.array([0.2, 0.02, 0.005]), eigvecs=np.eye(3))


def stand_in_step(cp, a, reps):
    def step(x, y):
        b = a
        for _ in range(reps):
            b = b @ a
        return float(b[0, 0] + x[0, 0, 0, 0] + y[0])   # uses the batch; syncs like train_step
    return step


def calibrate(cp, step_ms):
    a = cp.random.rand(2048, 2048, dtype=cp.float32) / 2048
    x, y = cp.zeros((1, 1, 1, 1), cp.float32), cp.zeros(1, cp.int64)
    stand_in_step(cp, a, 3)(x, y)
    t0 = time.perf_counter()
    stand_in_step(cp, a, 20)(x, y)
    per = (time.perf_counter() - t0) / 20
    return stand_in_step(cp, a, max(1, int(step_ms / 1e3 / per)))


def run(loader, step, batches, to_device):
    it = loader.epoch(0)
    t0 = time.perf_counter()
    for b, (x, y) in zip(range(batches), it):
        step(*to_device(x, y))
    dt = time.perf_counter() - t0
    it.close()
    return dt / batches * 1e3, loader.stats.wait_seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--step-ms", type=float, default=40.0)
    ap.add_argument("--workers", type=int, default=8)
    a = ap.parse_args(argv)
    import cupy as cp
    ds = dataset()
    kw = dict(batch_size=128, crop=227, seed=0, workers=a.workers)
    plain, fed = TrainLoader(ds, **kw), TrainLoader(ds, feed=PinnedUploader(cp), **kw)
    for b, ((x, y), (dx, dy)) in enumerate(zip(plain.epoch(1), fed.epoch(1))):
        if not (np.array_equal(cp.asnumpy(dx), x) and np.array_equal(cp.asnumpy(dy), y)):
            print(f"FAIL: batch {b} differs after the upload")
            return 1
    print(f"ok: {len(plain)} batches uploaded through pinned memory equal the loader's")
    step = calibrate(cp, a.step_ms)
    ms, wait = run(plain, step, a.batches, lambda x, y: (cp.asarray(x), cp.asarray(y)))
    print(f"plain cupy.asarray upload: {ms:.1f} ms per batch (loader wait {wait:.2f} s)")
    ms, wait = run(fed, step, a.batches, lambda x, y: (x, y))
    print(f"PinnedUploader feed:       {ms:.1f} ms per batch (loader wait {wait:.2f} s); "
          f"stand-in step alone about {a.step_ms:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
