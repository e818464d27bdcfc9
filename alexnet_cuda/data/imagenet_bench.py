"""A miniature of the official ImageNet downloads, and how fast prepare reads it.

    python -m alexnet_cuda.data.imagenet_bench OUT [--classes 8] [--train 50] [--val 10]
                                                   [--workers 1 2] [--size 256]

writes OUT/archives-c<classes>-t<train>-v<val>/ -- ILSVRC2012_img_train.tar
(one <wnid>.tar per class), ILSVRC2012_img_val.tar and
ILSVRC2012_devkit_t12.tar.gz (meta.mat and the validation ground truth) --
made of the synthetic images (synthetic.py) rendered at 375x375, scaled to
500x375 (the typical ImageNet image size) and given luma grain so that the
JPEGs (quality 95) weigh about 110 KB, the average of ILSVRC2012's train set
(138 GB / 1.28 M files). Then prepares it into OUT/prep-w<workers> once per
--workers value and prints images/s, images/s per process, images per
CPU-second (all processes: the rate of one core that does nothing else), and
the projected time for the 1,331,167 images of ILSVRC2012 (1,281,167 train +
50,000 val) at that rate per core on 2 and 16 cores.
The archives are reused when present; they are read from the page cache, so
disk speed is not part of the figure.
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .imagenet import DEVKIT, TRAIN_TAR, VAL_TAR
from .matfile import write_struct_mat
from .prepare import prepare_dataset
from .synthetic import SHAPES, render_image

IMAGENET_IMAGES = 1_281_167 + 50_000


def _tar(files: dict, mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_330_000_000
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _jpeg(cls: int, key: int, seed: int) -> bytes:
    rng = np.random.default_rng(np.random.SeedSequence([seed, cls, key]))
    im = Image.fromarray(render_image(SHAPES[cls], rng, 375)).resize((500, 375), Image.BICUBIC)
    a = np.asarray(im, np.float32) + rng.normal(0.0, 12.0, (375, 500, 1)).astype(np.float32)
    buf = io.BytesIO()  # grain: about the 110 KB of an average ImageNet JPEG
    Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def make_imagenet_archives(root, *, classes: int = 8, train_per_class: int = 50,
                           val_per_class: int = 10, seed: int = 0) -> Path:
    """Write the three ImageNet downloads in miniature into `root` (see the
    module doc); the WordNet ids are n00000001, n00000002, ..."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    wnids = [f"n{c + 1:08d}" for c in range(classes)]
    inner = {f"{w}.tar": _tar({f"{w}_{i}.JPEG": _jpeg(c, i, seed) for i in range(train_per_class)})
             for c, w in enumerate(wnids)}
    val_cls = [i % classes for i in range(classes * val_per_class)]
    val = {f"ILSVRC2012_val_{i + 1:08d}.JPEG": _jpeg(c, 10**6 + i, seed) for i, c in enumerate(val_cls)}
    rows = [{"ILSVRC2012_ID": c + 1, "WNID": w, "words": f"{SHAPES[c]}, synthetic {SHAPES[c]}",
             "num_children": 0} for c, w in enumerate(wnids)]
    truth = "".join(f"{c + 1}\n" for c in val_cls).encode()
    devkit = {"ILSVRC2012_devkit_t12/data/meta.mat": write_struct_mat("synsets", rows),
              "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": truth}
    for name, data in ((TRAIN_TAR, _tar(inner)), (VAL_TAR, _tar(val)), (DEVKIT, _tar(devkit, "w:gz"))):
        (root / name).write_bytes(data)
    return root


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def time_prepare(src: Path, dst: Path, workers: int, size: int) -> dict:
    """Prepare `src` into a fresh `dst`; {images, seconds, cpu_seconds, ...}."""
    shutil.rmtree(dst, ignore_errors=True)
    c0, t0 = _cpu_seconds(), time.perf_counter()
    prepare_dataset(src, dst, size=size, workers=workers, log=None)
    dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    n = sum(json.loads((dst / "meta.json").read_text())["counts"].values())
    procs, rate = max(1, workers), n / dt
    return {"workers": workers, "processes": procs, "images": n, "seconds": dt,
            "cpu_seconds": cpu, "images_per_s": rate, "per_process": rate / procs,
            "per_cpu_second": n / cpu if cpu > 0 else float("nan")}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m alexnet_cuda.data.imagenet_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--train", type=int, default=50, help="train images per class")
    p.add_argument("--val", type=int, default=10, help="val images per class")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--size", type=int, default=256)
    a = p.parse_args(argv)
    src = a.out / f"archives-c{a.classes}-t{a.train}-v{a.val}"
    if not (src / DEVKIT).is_file():
        t0 = time.perf_counter()
        make_imagenet_archives(src, classes=a.classes, train_per_class=a.train, val_per_class=a.val)
        print(f"made {src} in {time.perf_counter() - t0:.0f}s", flush=True)
    mb = sum((src / n).stat().st_size for n in (TRAIN_TAR, VAL_TAR)) / 2**20
    n = a.classes * (a.train + a.val)
    print(f"{n} images of 500x375, {mb / n * 1024:.0f} KB per JPEG on average, prepared at {a.size}")
    print("| workers | processes | images/s | images/s per process | images per CPU-second "
          "| 1.33 M images, 2 cores | 1.33 M images, 16 cores |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for w in a.workers:
        r = time_prepare(src, a.out / f"prep-w{w}", w, a.size)
        proj = [IMAGENET_IMAGES / (r["per_cpu_second"] * c) / 3600 for c in (2, 16)]
        print(f"| {w} | {r['processes']} | {r['images_per_s']:.1f} | {r['per_process']:.1f} | "
              f"{r['per_cpu_second']:.1f} | {proj[0]:.1f} h | {proj[1]:.1f} h |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
