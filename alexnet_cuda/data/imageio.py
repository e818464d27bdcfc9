"""Decoding of user images into 8-bit RGB, and the paper's resize + crop.

Accepted inputs: JPEG and PNG (extensions .jpg .jpeg .png in any case).
Every mode Pillow can give for those becomes RGB uint8:
  - L, 1, P, CMYK, YCbCr, LAB, HSV       -> Pillow's convert("RGB")
  - RGBA, LA, PA, P with transparency    -> composited on black
  - I;16 (any byte order), I, F          -> scaled to 0..255 (16-bit / 257)
EXIF orientation is applied when present.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def is_image_file(name: str) -> bool:
    """True for a visible file whose extension is one we decode."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_class_images(folder: Path) -> list[str]:
    """Sorted names of the image files directly inside `folder`."""
    with os.scandir(folder) as it:
        names = [e.name for e in it if is_image_file(e.name) and e.is_file()]
    return sorted(names)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = np.clip(np.nan_to_num(a), 0, 255)
        elif mode.startswith("I;16") or a.size and a.max() > 255:
            a = np.clip(a.astype(np.float64) / 257.0, 0, 255)
        a = np.rint(a).astype(np.uint8)
        return Image.fromarray(np.repeat(a[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        rgb = (rgba[:, :, :3] * alpha + 127) // 255      # composite on black
        return Image.fromarray(rgb.astype(np.uint8))
    if mode == "1":
        im = im.convert("L")
    return im.convert("RGB")


def open_rgb(path, *, draft_size: int | None = None, info: dict | None = None) -> Image.Image:
    """Open and fully decode `path` (a path or a binary file object) as an RGB PIL image.

    `draft_size`: the shorter side that will be needed; lets the JPEG decoder
    scale down by a power of two while decoding (never below that size).
    `info`: a dict that receives the file's "format" (JPEG, PNG, ...) and "mode".
    Raises whatever Pillow raises for broken files (OSError, ValueError, ...).
    """
    with Image.open(path) as im:
        if info is not None:
            info.update(format=im.format, mode=im.mode)
        if draft_size is not None and im.format == "JPEG":
            w, h = im.size
            s = min(w, h)
            if s >= 2 * draft_size:
                im.draft("RGB", (max(1, w * draft_size // s), max(1, h * draft_size // s)))
        im.load()
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block is not a broken image
            pass
        return _to_rgb(im)


def resize_center_crop(im: Image.Image, size: int) -> np.ndarray:
    """Shorter side to `size` (bicubic, antialiased), then the central
    size x size patch; returns uint8 (size, size, 3)."""
    w, h = im.size
    if w <= h:
        nw, nh = size, max(size, int(round(h * size / w)))
    else:
        nw, nh = max(size, int(round(w * size / h))), size
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    a = np.asarray(im, dtype=np.uint8)
    assert a.shape == (size, size, 3), a.shape
    return a


def load_resized(path, size: int, info: dict | None = None) -> np.ndarray:
    """Decode `path` to RGB and apply the paper's preprocessing (`info`: see open_rgb)."""
    return resize_center_crop(open_rgb(path, draft_size=size, info=info), size)


def quirks(name: str, info: dict) -> list:
    """What was unusual about a decoded file: its mode when not RGB ("CMYK",
    "L", ...), "PNG named .JPEG" when the content and the extension disagree."""
    out = [] if info.get("mode") in (None, "RGB") else [str(info["mode"])]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    kind = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}.get(ext)
    if kind and info.get("format") and info["format"] != kind:
        out.append(f"{info['format']} named .{ext.upper()}")
    return out


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the system
    has one; else os.cpu_count()): how many decoders can run at once."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
