"""Raw against JPEG storage, and the training loader in threads against processes, on the CPU.

    python benchmarks/bench_storage.py [--out benchmarks/results] [--classes 8 --train 40 --val 5]
                                       [--seconds 8]

1. Makes (or reuses, under $TMPDIR/alexnet-bench-storage) a miniature of the official ImageNet
   downloads (alexnet_cuda.data.imagenet_bench: synthetic images scaled to 500x375 with grain, about
   the 110 KB of an average ImageNet JPEG) and prepares it at 256x256 twice, --storage raw and
   --storage jpeg (quality 90), in one process: bytes per image on disk, prepare's images per
   CPU-second (the JPEG encoding included).
2. Decodes the JPEG-stored training images (JpegImages) in 1 and 2 threads: images per CPU-second,
   and whether Pillow releases the GIL while decoding (a pure-Python thread counts while the main
   thread is inside one long decode call; with the GIL held it could not).
3. Runs TrainLoader (batch 128, 227x227 crops, flips, PCA lighting, mean subtraction) on both
   storages: workers=0 (the caller's thread), 1 and 2 worker threads, and 1 and 2 worker processes
   that each build whole batches and send them back (pickled through a pipe, as a process pool
   does); images/s and images per CPU-second (all threads, all processes).

CPU-seconds, not wall time, are the figure to project from: this machine's 2 cores are shared with
other jobs. Writes data_storage_cpu.json and data_storage_cpu.md to --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import PIL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alexnet_cuda.data import PreparedDataset, TrainLoader, prepare_dataset  # noqa: E402
from alexnet_cuda.data.imagenet import DEVKIT, TRAIN_TAR, VAL_TAR  # noqa: E402
from alexnet_cuda.data.imagenet_bench import make_imagenet_archives  # noqa: E402
from alexnet_cuda.data.jpegstore import decode_jpeg, encode_jpeg  # noqa: E402
from bench_data import commit, cpu_name  # noqa: E402

BATCH, CROP = 128, 227


def cpu_all() -> float:
    """CPU seconds of this process (all threads) and of its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    t0, c0 = time.perf_counter(), cpu_all()
    n = fn()
    return {"images": n, "wall_s": time.perf_counter() - t0, "cpu_s": cpu_all() - c0}


def rates(r: dict) -> dict:
    r["images_per_s"] = r["images"] / r["wall_s"]
    r["images_per_cpu_s"] = r["images"] / r["cpu_s"] if r["cpu_s"] > 0 else float("nan")
    return r


# ---------------------------------------------------------------- 1. storage
def prepare_both(src: Path, out: Path) -> dict:
    res = {}
    for storage in ("raw", "jpeg"):
        dst = out / f"prep-{storage}"
        shutil.rmtree(dst, ignore_errors=True)
        r = timed(lambda: (prepare_dataset(src, dst, size=256, workers=0, log=None, storage=storage),
                           sum(json.loads((dst / "meta.json").read_text())["counts"].values()))[1])
        files = [p for p in dst.iterdir() if p.name.startswith(("train_images", "train_jpeg", "train_offsets"))]
        n_train = json.loads((dst / "meta.json").read_text())["counts"]["train"]
        r["bytes_per_image"] = sum(p.stat().st_size for p in files) / n_train
        res[storage] = rates(r)
    return res


# ---------------------------------------------------------------- 2. decoding
def decode_rate(ds, threads: int, seconds: float) -> dict:
    imgs, n = ds.images, len(ds)

    def work(k, counts, stop_at):
        i = k
        while time.perf_counter() < stop_at:
            imgs.image(i % n)
            counts[k] += 1
            i += threads

    def run():
        counts, stop_at = [0] * threads, time.perf_counter() + seconds
        ts = [threading.Thread(target=work, args=(k, counts, stop_at)) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return sum(counts)
    r = rates(timed(run))
    r["threads"] = threads
    return r


def gil_check() -> dict:
    """Count in a pure-Python thread while the main thread decodes one 4000x4000 JPEG."""
    a = np.random.default_rng(0).integers(0, 256, (4000, 4000, 3), dtype=np.uint8)
    data = encode_jpeg(a, 90)
    count, stop = [0], [False]

    def spin():
        while not stop[0]:
            count[0] += 1
    t = threading.Thread(target=spin)
    t.start()
    time.sleep(0.3)
    c0, t0 = count[0], time.perf_counter()
    decode_jpeg(data)
    dt, during = time.perf_counter() - t0, count[0] - c0
    time.sleep(0.3)
    c1, t1 = count[0], time.perf_counter()
    time.sleep(0.5)
    alone = (count[0] - c1) / (time.perf_counter() - t1)
    stop[0] = True
    t.join()
    return {"decode_s": dt, "spinner_counts_during_decode": during, "spinner_counts_per_s_alone": alone,
            "released": during > 0.05 * alone * dt}


# ---------------------------------------------------------------- 3. the loader
def loader_threads(ds, workers: int, seconds: float) -> dict:
    ld = TrainLoader(ds, batch_size=BATCH, crop=CROP, seed=0, workers=workers)

    def run():
        n, epoch, t_end = 0, 0, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            for x, y in ld.epoch(epoch):
                n += len(y)
                if time.perf_counter() >= t_end:
                    break
            epoch += 1
        return n
    r = rates(timed(run))
    r.update(kind="threads", workers=workers)
    return r


_LD = None


def _init(path):
    global _LD
    _LD = TrainLoader(PreparedDataset(path, "train"), batch_size=BATCH, crop=CROP, seed=0)


def _one(b):
    return _LD.batch(0, b % len(_LD))


def loader_processes(path, procs: int, batches: int) -> dict:
    def run():
        n = 0
        with ProcessPoolExecutor(max_workers=procs, initializer=_init, initargs=(str(path),)) as pool:
            for x, y in pool.map(_one, range(batches)):
                n += len(y)
        return n
    r = rates(timed(run))  # the pool's start and its children's CPU time included
    r.update(kind="processes", workers=procs)
    return r


def transfer_cost() -> dict:
    """Seconds to pickle and unpickle one float32 batch (what a process pool adds per batch, before
    the pipe itself)."""
    x = np.random.default_rng(0).standard_normal((BATCH, 3, CROP, CROP)).astype(np.float32)
    t0 = time.perf_counter()
    for _ in range(3):
        pickle.loads(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL))
    return {"batch_bytes": x.nbytes, "pickle_round_trip_s": (time.perf_counter() - t0) / 3}


# ---------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "alexnet-bench-storage"))
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--train", type=int, default=40)
    ap.add_argument("--val", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=8.0, help="per loader / decoder configuration")
    ap.add_argument("--machine", default=None)
    a = ap.parse_args(argv)
    work = Path(a.work)
    src = work / f"archives-c{a.classes}-t{a.train}-v{a.val}"
    if not (src / DEVKIT).is_file():
        make_imagenet_archives(src, classes=a.classes, train_per_class=a.train, val_per_class=a.val)
    n_src = a.classes * (a.train + a.val)
    kb_src = sum((src / f).stat().st_size for f in (TRAIN_TAR, VAL_TAR)) / n_src / 1024
    load0 = os.getloadavg()[0]
    res = {"benchmark": "storage and loader", "date": datetime.datetime.now(datetime.timezone.utc)
           .strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
           "machine": a.machine or f"{os.cpu_count()}-core CPU box ({cpu_name()})",
           "python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__,
           "input": {"images": n_src, "kb_per_source_jpeg": kb_src}, "load_average_at_start": load0}
    print(f"input: {n_src} images, {kb_src:.0f} KB per source JPEG; load average {load0:.1f}", flush=True)
    res["prepare"] = prepare_both(src, work)
    for k, r in res["prepare"].items():
        print(f"prepare {k}: {r['bytes_per_image'] / 1024:.1f} KB per 256x256 image, "
              f"{r['images_per_cpu_s']:.0f} images per CPU-second", flush=True)
    raw, jpg = (PreparedDataset(work / f"prep-{s}", "train") for s in ("raw", "jpeg"))
    np.asarray(raw.images).sum(dtype=np.uint64)  # page in: measure the loader, not the disk
    res["gil"] = gil_check()
    print(f"GIL: {res['gil']}", flush=True)
    res["decode"] = [decode_rate(jpg, t, a.seconds) for t in (1, 2)]
    for r in res["decode"]:
        print(f"decode, {r['threads']} thread(s): {r['images_per_s']:.0f} images/s, "
              f"{r['images_per_cpu_s']:.0f} per CPU-second", flush=True)
    res["transfer"] = transfer_cost()
    res["loader"] = {}
    for name, ds in (("raw", raw), ("jpeg", jpg)):
        rows = [loader_threads(ds, w, a.seconds) for w in (0, 1, 2)]
        nb = max(4, int(rows[0]["images_per_s"] * a.seconds / BATCH))
        rows += [loader_processes(ds.path, p, nb) for p in (1, 2)]
        res["loader"][name] = rows
        for r in rows:
            print(f"loader {name}, {r['workers']} {r['kind']}: {r['images_per_s']:.0f} images/s, "
                  f"{r['images_per_cpu_s']:.0f} per CPU-second", flush=True)
    res["load_average_at_end"] = os.getloadavg()[0]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_storage_cpu.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out / 'data_storage_cpu.json'}")
    return res


if __name__ == "__main__":
    main()
