"""The built-in synthetic image-classification set.

Classes are rendered shapes and textures (circle, square, triangle, star,
cross, ring, ellipse, crescent, stripes, checker, and hexagon, arrow when more
than 10 classes are asked for). Every image gets a random position, scale,
rotation, slight anisotropic jitter, foreground and background colours, a
cluttered background (linear gradient + low-frequency blotches + random
strokes and dots), occasional strokes over the shape, and pixel noise, so
that no colour or brightness statistic identifies a class: the shape or the
texture has to be recognised. `stripes` and `checker` are a disc or a square
filled with that texture, so their outline is shared with other classes.

Layout (the ImageNet image-folder layout, JPEG):
    <root>/synthetic-v2-c10-t600-v100-s96-seed0/{train,val}/<class>/00000.jpg
    ... and synthetic.json (parameters, classes), written last.

Each image is a pure function of (seed, split, class, index), so the set is
identical whatever the number of worker processes. The folder is built in a
temporary sibling directory and renamed into place, so a folder that exists
is complete; it is reused on later calls.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import DataError

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "ellipse",
          "crescent", "stripes", "checker", "hexagon", "arrow")
VERSION = 2  # bump whenever the rendering changes: cached sets are keyed by it
_SPLIT_ID = {"train": 0, "val": 1}
_SS = 2  # supersampling factor of the shape mask (antialiased edges)


def default_cache_root() -> Path:
    """$ALEXNET_CUDA_CACHE, else ~/.cache/alexnet-cuda: the root of the synthetic set and of
    prepared/, where ensure_prepared keeps prepared copies of raw folders."""
    env = os.environ.get("ALEXNET_CUDA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "alexnet-cuda"


# ---------------------------------------------------------------- geometry
def _regular(n, phase=0.0):
    t = phase + np.arange(n) * (2 * np.pi / n)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _circle(k=72):
    return _regular(k)


def _star(inner):
    outer = _regular(5, -np.pi / 2)
    inn = _regular(5, -np.pi / 2 + np.pi / 5) * inner
    return np.stack([outer, inn], 1).reshape(10, 2)


def _cross(w):
    a = 1.0
    return np.array([(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w),
                     (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)])


def _arrow(w):
    return np.array([(-1, -w), (0.1, -w), (0.1, -0.75), (1, 0), (0.1, 0.75),
                     (0.1, w), (-1, w)])


def _shape_polys(name, rng):
    """Polygons in unit coordinates as (points, fill) pairs, drawn in order
    (fill 0 cuts holes), and the texture kind (None, 'stripes', 'checker')."""
    if name in ("stripes", "checker"):
        outline = _circle() if rng.random() < 0.5 else _regular(4, np.pi / 4) * 1.1
        return [(outline, 255)], name
    if name == "circle":
        return [(_circle(), 255)], None
    if name == "square":
        return [(_regular(4, np.pi / 4), 255)], None
    if name == "triangle":
        return [(_regular(3, -np.pi / 2) * 1.1, 255)], None
    if name == "hexagon":
        return [(_regular(6), 255)], None
    if name == "star":
        return [(_star(rng.uniform(0.38, 0.5)) * 1.1, 255)], None
    if name == "cross":
        return [(_cross(rng.uniform(0.24, 0.34)), 255)], None
    if name == "arrow":
        return [(_arrow(rng.uniform(0.22, 0.32)), 255)], None
    if name == "ring":
        return [(_circle(), 255), (_circle() * rng.uniform(0.5, 0.66), 0)], None
    if name == "ellipse":
        return [(_circle() * np.array([1.0, rng.uniform(0.4, 0.58)]), 255)], None
    if name == "crescent":
        d = rng.uniform(0.35, 0.5)
        return [(_circle(), 255), (_circle() * rng.uniform(0.8, 0.92) + [d, 0], 0)], None
    raise ValueError(name)


# ---------------------------------------------------------------- rendering
_LUMA = np.array([0.299, 0.587, 0.114])


def _contrasting(rng, ref, min_dist, min_luma):
    """A random colour at least `min_dist` (RGB distance) and `min_luma`
    (luminance difference) away from `ref`, or the best of 32 tries."""
    best, best_score = None, -1.0
    for _ in range(32):
        c = rng.uniform(0, 255, 3)
        score = min(float(np.linalg.norm(c - ref)) / min_dist, abs(float((c - ref) @ _LUMA)) / min_luma)
        if score >= 1.0:
            return c
        if score > best_score:
            best, best_score = c, score
    return best


def _background(rng, S):
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    t = np.clip((xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang) + 0.5, 0, 1)
    bg = c0 + (c1 - c0) * t[:, :, None]
    # low-frequency colour blotches
    g = int(rng.integers(3, 7))
    low = rng.uniform(0, 255, (g, g, 3)).astype(np.uint8)
    blot = np.asarray(Image.fromarray(low).resize((S, S), Image.BICUBIC), np.float32)
    bg += rng.uniform(0.0, 0.2) * (blot - 127.5)
    return np.clip(bg, 0, 255)


def _strokes(draw, rng, S, n):
    for _ in range(n):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        w = int(rng.integers(1, max(1, S // 48) + 1))
        kind = rng.random()
        if kind < 0.55:
            x0, y0, x1, y1 = (float(v) for v in rng.uniform(-0.1, 1.1, 4) * S)
            draw.line([(x0, y0), (x1, y1)], fill=col, width=w)
        elif kind < 0.85:
            cx, cy = rng.uniform(0, S, 2)
            r = rng.uniform(0.1, 0.5) * S
            a0 = float(rng.uniform(0, 360))
            draw.arc([cx - r, cy - r, cx + r, cy + r], a0, a0 + float(rng.uniform(30, 150)),
                     fill=col, width=w)
        else:
            cx, cy = rng.uniform(0, S, 2)
            r = rng.uniform(0.5, 1.5) * max(1.0, S / 64)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)


def render_image(name: str, rng: np.random.Generator, S: int) -> np.ndarray:
    """One synthetic image of class `name`: uint8 (S, S, 3)."""
    bg = _background(rng, S)
    img = Image.fromarray(bg.astype(np.uint8))
    _strokes(ImageDraw.Draw(img), rng, S, int(rng.integers(1, 5)))
    bg = np.asarray(img, np.float32)

    # geometry of the foreground object
    r = rng.uniform(0.28, 0.44) * S
    cx, cy = rng.uniform(0.9 * r, S - 0.9 * r, 2)
    theta = rng.uniform(0, 2 * np.pi)
    jitter = rng.uniform(0.88, 1.0, 2)  # slight anisotropy
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    polys, texture = _shape_polys(name, rng)

    big = Image.new("L", (S * _SS, S * _SS), 0)
    d = ImageDraw.Draw(big)
    for pts, fill in polys:
        p = (pts * jitter) @ rot.T * r + (cx, cy)
        d.polygon([(float(x) * _SS, float(y) * _SS) for x, y in p], fill=fill)
    mask = np.asarray(big.resize((S, S), Image.BOX), np.float32)[:, :, None] / 255.0

    iy, ix = min(S - 1, int(cy)), min(S - 1, int(cx))
    ca = _contrasting(rng, bg[iy, ix], 150.0, 70.0)
    if texture is None:
        fg = np.broadcast_to(ca.astype(np.float32), (S, S, 3))
    else:
        cb = _contrasting(rng, ca, 120.0, 60.0)
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
        phi = rng.uniform(0, np.pi)
        u = (xx - cx) * math.cos(phi) + (yy - cy) * math.sin(phi)
        if texture == "stripes":
            half = rng.uniform(0.035, 0.06) * S
            pat = np.floor(u / half) % 2
        else:
            v = -(xx - cx) * math.sin(phi) + (yy - cy) * math.cos(phi)
            cell = rng.uniform(0.06, 0.1) * S
            pat = (np.floor(u / cell) + np.floor(v / cell)) % 2
        fg = np.where(pat[:, :, None] > 0, cb, ca).astype(np.float32)
    out = bg * (1.0 - mask) + fg * mask

    img = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    _strokes(ImageDraw.Draw(img), rng, S, int(rng.random() < 0.1))  # an occluder
    out = np.asarray(img, np.float32)
    out += rng.normal(0.0, rng.uniform(2.0, 6.0), out.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _image_rng(seed, split, cls, i):
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_ID[split], cls, i]))


def _render_job(job):
    folder, split, cls, name, start, count, S, seed = job
    for i in range(start, start + count):
        a = render_image(name, _image_rng(seed, split, cls, i), S)
        Image.fromarray(a).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
    return count


# ---------------------------------------------------------------- public
def make_synthetic_dataset(root=None, *, num_classes: int = 10, train_per_class: int = 600,
                           val_per_class: int = 100, image_size: int = 96, seed: int = 0,
                           log=print, workers: int | None = None) -> Path:
    """Generate (once) the synthetic set and return its folder.

    `root` is the cache root (default $ALEXNET_CUDA_CACHE or
    ~/.cache/alexnet-cuda); the set lives in the subfolder
    synthetic-v2-c<classes>-t<train>-v<val>-s<size>-seed<seed>, which holds
    train/<class>/*.jpg and val/<class>/*.jpg. Reused when present.
    `workers`: processes for rendering (default: all cores for big sets);
    the result does not depend on it.
    """
    if not 1 <= num_classes <= len(SHAPES):
        raise DataError(f"synthetic dataset: num_classes must be 1..{len(SHAPES)}, got {num_classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise DataError("synthetic dataset: train_per_class and val_per_class must be >= 1")
    if image_size < 16:
        raise DataError(f"synthetic dataset: image_size must be >= 16, got {image_size}")
    if seed < 0:
        raise DataError(f"synthetic dataset: seed must be >= 0, got {seed}")
    log = log or (lambda *a, **k: None)
    root = Path(root).expanduser() if root is not None else default_cache_root()
    name = (f"synthetic-v{VERSION}-c{num_classes}-t{train_per_class}-v{val_per_class}"
            f"-s{image_size}-seed{seed}")
    final = root / name
    if final.is_dir():
        if not (final / "synthetic.json").is_file():
            raise DataError(f"{final} exists but is not a complete synthetic dataset; delete it")
        return final

    classes = list(SHAPES[:num_classes])
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    t0 = time.perf_counter()
    total = num_classes * (train_per_class + val_per_class)
    try:
        jobs = []
        for split, per in (("train", train_per_class), ("val", val_per_class)):
            for ci, cname in enumerate(classes):
                folder = tmp / split / cname
                folder.mkdir(parents=True)
                step = 100
                for start in range(0, per, step):
                    jobs.append((str(folder), split, SHAPES.index(cname), cname, start,
                                 min(step, per - start), image_size, seed))
        if workers is None:
            workers = min(os.cpu_count() or 1, 8) if total >= 400 else 1
        log(f"synthetic: rendering {total} images of {num_classes} classes "
            f"({image_size}x{image_size}) into {final} with {max(1, workers)} process(es)")
        done, next_report = 0, 0.0
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as ex:
                for n in ex.map(_render_job, jobs):
                    done += n
                    if time.perf_counter() - t0 >= next_report:
                        log(f"synthetic: {done}/{total} images")
                        next_report += 5.0
        else:
            for job in jobs:
                done += _render_job(job)
        meta = {"version": VERSION, "classes": classes, "num_classes": num_classes,
                "train_per_class": train_per_class, "val_per_class": val_per_class,
                "image_size": image_size, "seed": seed}
        (tmp / "synthetic.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / "synthetic.json").is_file():  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"synthetic: {total} images ready in {time.perf_counter() - t0:.1f}s at {final}")
    return final
