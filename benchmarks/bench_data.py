"""Throughput of the training data loader (TrainLoader) on the CPU.

    python benchmarks/bench_data.py [--data FOLDER] [--seconds 10]

Measures images/s of TrainLoader (random crop 227 of prepared 256x256 images,
flips, PCA lighting, mean subtraction, NCHW float32; batch 128) with
workers=0 (the caller's thread, one core) and with one worker thread per core,
and reports images/s per core. Without --data it uses the built-in synthetic
set rendered at 256 px (10 classes x 200 train images, cached under
$ALEXNET_CUDA_CACHE). --data may be a prepared folder or a raw image folder
(prepared into the cache first). Writes data_loader_cpu.json and
data_loader_cpu.md to benchmarks/results/ (or --out).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alexnet_cuda.data import (PreparedDataset, TrainLoader, default_cache_root,  # noqa: E402
                               ensure_prepared, make_synthetic_dataset)

TARGET_PER_CORE = 625.0


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit():
    root = Path(__file__).resolve().parents[1]
    try:
        h = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                           text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
        return f"{h} + uncommitted working tree" if dirty else h
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted working tree"


def measure(ds, *, workers, batch_size, crop, seconds, seed=0):
    """(images, wall seconds, CPU seconds of this process, all threads) over
    whole epochs until `seconds` of wall time have passed (at least one)."""
    loader = TrainLoader(ds, batch_size=batch_size, crop=crop, seed=seed, workers=workers)
    n, epoch = 0, 1
    t0, c0 = time.perf_counter(), time.process_time()
    while True:
        for x, y in loader.epoch(epoch):
            n += len(y)
            float(x[-1, -1, -1, -1])  # touch the batch
        epoch += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n, dt, time.process_time() - c0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="prepared folder or raw image folder (default: synthetic)")
    ap.add_argument("--images", type=int, default=2000, help="synthetic training images")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--crop", type=int, default=227)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=10.0, help="per configuration")
    ap.add_argument("--workers", default=None,
                    help="comma-separated worker counts (default: 0 and the number of cores)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--machine", default=None, help="a description for the results")
    args = ap.parse_args(argv)

    cores = os.cpu_count() or 1
    cache = default_cache_root()
    if args.data:
        path = ensure_prepared(args.data, cache, size=args.size)
    else:
        per = max(1, args.images // 10)
        raw = make_synthetic_dataset(cache, num_classes=10, train_per_class=per, val_per_class=2,
                                     image_size=args.size, seed=0)
        path = ensure_prepared(raw, cache, size=args.size)
    ds = PreparedDataset(path, "train")
    print(f"data: {path} ({len(ds)} images, {ds.size}x{ds.size}); batch {args.batch_size}, "
          f"crop {args.crop}; {cores} cores ({cpu_name()})")
    np.asarray(ds.images).sum(dtype=np.uint64)  # page in the data: measure the loader, not the disk

    counts = ([int(w) for w in args.workers.split(",")] if args.workers else sorted({0, cores}))
    rows = []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for w in counts:
        measure(ds, workers=w, batch_size=args.batch_size, crop=args.crop, seconds=0.1)  # warm-up
        n, dt, cpu = measure(ds, workers=w, batch_size=args.batch_size, crop=args.crop,
                             seconds=args.seconds)
        used = 1 if w == 0 else min(w, cores)
        ips = n / dt
        rows.append({"workers": w, "cores": used, "images_per_s": round(ips, 1),
                     "images_per_s_per_core": round(ips / used, 1),
                     "images_per_cpu_s": round(n / cpu, 1), "images": n,
                     "wall_s": round(dt, 2), "cpu_s": round(cpu, 2)})
        print(f"workers={w:2d} ({used} core{'s' if used > 1 else ''}): {ips:8.1f} images/s, "
              f"{ips / used:7.1f} images/s per core (wall); {n / cpu:7.1f} images per CPU-second "
              f"({n} images, {dt:.1f}s wall, {cpu:.1f}s CPU)")
    best = max(r["images_per_s_per_core"] for r in rows)
    print(f"target: >= {TARGET_PER_CORE:.0f} images/s per core (wall): "
          f"{'met' if best >= TARGET_PER_CORE else 'NOT met'} (best {best:.0f}); "
          f"load average now {os.getloadavg()[0]:.1f}")

    result = {"benchmark": "TrainLoader", "date": args.date, "commit": commit(),
              "machine": args.machine or f"{cores}-core CPU box ({cpu_name()})",
              "python": platform.python_version(), "numpy": np.__version__,
              "data": str(path), "images": len(ds), "size": ds.size, "crop": args.crop,
              "batch_size": args.batch_size, "load_average_at_start": round(load, 2),
              "target_images_per_s_per_core": TARGET_PER_CORE, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_loader_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [f"# TrainLoader throughput on the CPU", "",
          f"- machine: {result['machine']}",
          f"- date: {args.date}", f"- commit: {result['commit']}",
          f"- python {result['python']}, numpy {result['numpy']}",
          f"- data: {len(ds)} prepared {ds.size}x{ds.size} images "
          f"({'synthetic' if not args.data else args.data}), page-cached",
          f"- per batch: {args.batch_size} random {args.crop}x{args.crop} crops, flips, PCA "
          f"lighting, mean subtraction, NCHW float32",
          f"- load average at start: {result['load_average_at_start']} "
          f"(other processes share this machine)", "",
          "| workers | cores | images/s (wall) | images/s per core (wall) | images per CPU-second "
          "| target per core |",
          "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['workers']} | {r['cores']} | {r['images_per_s']:.0f} | "
                  f"{r['images_per_s_per_core']:.0f} | {r['images_per_cpu_s']:.0f} | "
                  f"{TARGET_PER_CORE:.0f} |")
    md += ["", "images/s per core (wall) = images/s / cores used; images per CPU-second = "
           "images / CPU time of the process (all threads), the per-core rate when the cores "
           "are not shared with other work.", ""]
    (out / "data_loader_cpu.md").write_text("\n".join(md))
    print(f"wrote {out / 'data_loader_cpu.md'}")
    return result


if __name__ == "__main__":
    main()
