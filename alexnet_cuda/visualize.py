"""`alexnet-cuda visualize`: pictures of a trained network (the paper's section 6.1).

    alexnet-cuda visualize --checkpoint CKPT [--data DIR] --out DIR [--num-images N]
                           [--num-queries N] [--backend cuda|emu|numpy]

writes into DIR:

* conv1_filters.png  the conv1 kernels as 11x11 RGB tiles, one block of rows
                     per tower (Figure 3), each kernel contrast-normalized on
                     its own (min..max of its three channels to 0..255, so
                     colour is kept), scaled up with nearest-neighbour pixels.
* predictions.png    validation images with their true label and the model's
                     top-5 classes as probability bars; the true class's bar
                     is red when it is among the five (Figure 4, left).
* neighbours.png     for a few validation images, the six training images
                     whose fc7 activations (the last hidden layer, after its
                     ReLU) are nearest in Euclidean distance (Figure 4, right).
* curves.png         training loss, validation top-1/top-5 error and the
                     learning rate (log scale) per epoch, from the
                     metrics.jsonl next to the checkpoint, with dashed lines
                     where the learning rate was divided.
* health.png         when the metrics records carry the training's health
                     (alexnet_cuda.health): per layer the update ratio per
                     epoch (log scale) and per ReLU layer the dead fraction.

Everything is drawn with Pillow (no plotting library); the two pictures of
photographs are stored with a dithered 256-colour palette (a third of the
size, no visible difference). Files are written atomically (temporary file,
then os.replace). `alexnet-cuda train` redraws OUT/curves.png at every epoch
end through `write_curves(OUT)`.

The neighbour search runs on the model's backend: the training set goes
through `model.features` batch by batch, squared distances come from
||q||^2 + ||t||^2 - 2 q t^T (one matmul per batch), and a running top-k per
query is kept on the device; no feature vector of the training set is kept.
"""
from __future__ import annotations

import io
import math
import types
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .backends import resolve_backend
from .cliargs import add_backend_argument, non_negative_int, positive_int
from .data import EvalLoader, PreparedDataset, ensure_prepared
from .errors import AlexNetError
from .files import atomic_write_bytes
from .health import DEAD_MAX, UPDATE_RATIO_MAX, UPDATE_RATIO_MIN
from .reference import softmax
from .runfolder import CURVES, METRICS, check_classes, model_from_checkpoint, read_metrics, trained_data

__all__ = ["add_arguments", "run", "visualize", "nearest_neighbours", "write_curves", "lr_drops",
           "conv1_filters_image", "predictions_image", "neighbours_image", "curves_image", "health_image",
           "health_layout", "HEALTH_CELL", "HEALTH_COLS", "comparison_image", "COMPARISON_COLORS", "COMPARISON_SIZE",
           "FILTER_SCALE", "FILTER_GAP", "FILTER_MAX_COLS", "CURVES_SIZE"]

# conv1_filters.png: tile = kernel side * FILTER_SCALE, FILTER_GAP pixels between tiles
FILTER_SCALE = 5
FILTER_GAP = 3
FILTER_MAX_COLS = 16
# curves.png, in pixels
CURVES_SIZE = (800, 600)

_RESAMPLE = getattr(Image, "Resampling", Image)
_QUANTIZE = getattr(Image, "Quantize", Image)
_DITHER = getattr(Image, "Dither", Image)
_INK = (34, 34, 34)
_MUTED = (110, 110, 110)
_GRID = (228, 228, 228)
_FRAME = (160, 160, 160)
_BG = (255, 255, 255)
_BAR_TRACK = (236, 238, 242)
_BAR = (122, 160, 208)
_BAR_TRUE = (214, 69, 65)
_SAME = (30, 140, 60)
_OTHER = (200, 50, 50)
_C_LOSS = (31, 119, 180)
_C_TOP1 = (214, 39, 40)
_C_TOP5 = (255, 127, 14)
_C_LR = (44, 160, 44)
_C_DROP = (130, 130, 130)


class VisualizeError(AlexNetError):
    """A user error of `visualize` (printed as one line)."""


# ---------------------------------------------------------------------------
# Drawing helpers
# ---------------------------------------------------------------------------

_FONTS = {}


def _font(size):
    """Pillow's built-in font at `size` px (scalable from Pillow 10.1), else its bitmap font."""
    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.load_default(size=size)
        except (TypeError, OSError, AttributeError, ImportError):
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def _scalable():
    return isinstance(_font(12), ImageFont.FreeTypeFont)


def _text_w(draw, s, font):
    b = draw.textbbox((0, 0), s, font=font)
    return b[2] - b[0]


def _text(draw, x, y, s, font, fill=_INK, align="left", valign="top"):
    """Draw `s` with its ink box aligned at (x, y): align left/center/right, valign top/middle/bottom
    (vertical alignment uses the box of 'Hg', so lines of one font sit on one baseline)."""
    b = draw.textbbox((0, 0), s, font=font)
    hb = draw.textbbox((0, 0), "Hg", font=font)
    w = b[2] - b[0]
    if align == "center":
        x -= w / 2
    elif align == "right":
        x -= w
    h = hb[3] - hb[1]
    if valign == "middle":
        y -= h / 2
    elif valign == "bottom":
        y -= h
    draw.text((round(x - b[0]), round(y - hb[1])), s, font=font, fill=fill)


def _fit(draw, s, font, width):
    """`s`, shortened with '...' to fit in `width` pixels."""
    if _text_w(draw, s, font) <= width:
        return s
    while s and _text_w(draw, s + "...", font) > width:
        s = s[:-1]
    return s + "..."


def _tile(img, side):
    """A uint8 (H, W, 3) image as a side x side PIL image (bicubic)."""
    im = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8), "RGB")
    return im if im.size == (side, side) else im.resize((side, side), _RESAMPLE.BICUBIC)


def _png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_png(img, path, *, palette=False):
    """Write `img` as PNG to `path` atomically (a temporary file in the same folder, then os.replace).

    palette=True stores 256 colours with Floyd-Steinberg dithering: pictures of photographs become
    about three times smaller and look the same."""
    if palette and img.mode == "RGB":
        pal = img.quantize(256, method=_QUANTIZE.MEDIANCUT)
        img = img.quantize(palette=pal, dither=_DITHER.FLOYDSTEINBERG)
    data = _png_bytes(img)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, [data])
    return path


# ---------------------------------------------------------------------------
# conv1 filters (Figure 3)
# ---------------------------------------------------------------------------

def _normalize_kernel(w):
    """(3, R, S) float kernel -> (R, S, 3) uint8: its min..max (over all channels) to 0..255."""
    w = np.asarray(w, np.float64)
    lo, hi = w.min(), w.max()
    v = (w - lo) / (hi - lo) if hi > lo else np.full_like(w, 0.5)
    return np.round(v.transpose(1, 2, 0) * 255).astype(np.uint8)


def conv1_filters_layout(num_kernels, towers, kernel=11, scale=FILTER_SCALE, gap=FILTER_GAP,
                         max_cols=FILTER_MAX_COLS):
    """(width, height, cols, rows per tower, label height) of conv1_filters.png."""
    per = num_kernels // towers
    cols = max(1, min(per, max_cols))
    rows = -(-per // cols)
    t = kernel * scale
    label_h = 18
    width = gap + cols * (t + gap) + gap
    height = gap + towers * (label_h + rows * (t + gap) + gap)
    return width, height, cols, rows, label_h


def conv1_filters_image(weight, towers=2, *, out_slice=None, scale=FILTER_SCALE, gap=FILTER_GAP,
                        max_cols=FILTER_MAX_COLS):
    """The conv1 kernels `weight` (K, 3, R, R) as a PIL image: one labelled block of tiles per tower.

    `out_slice(t)` gives tower t's kernels (default: K split evenly, as AlexNet.tower_layout does)."""
    weight = np.asarray(weight)
    if weight.ndim != 4 or weight.shape[1] != 3 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"conv1 weight must be (K, 3, R, R), got {weight.shape}")
    K, _, R, _ = weight.shape
    if towers < 1 or K % towers:
        raise ValueError(f"{K} kernels do not split into {towers} towers")
    per = K // towers
    if out_slice is None:
        out_slice = lambda t: slice(t * per, (t + 1) * per)  # noqa: E731
    W, H, cols, rows, label_h = conv1_filters_layout(K, towers, R, scale, gap, max_cols)
    img = Image.new("RGB", (W, H), _BG)
    draw = ImageDraw.Draw(img)
    font = _font(12)
    t_px = R * scale
    y = gap
    for t in range(towers):
        ks = weight[out_slice(t)]
        label = f"tower {t + 1}: {len(ks)} kernels {R}x{R}x3" if towers > 1 else f"conv1: {len(ks)} kernels"
        _text(draw, gap + 1, y + label_h / 2, label, font, _MUTED, valign="middle")
        y += label_h
        for i, k in enumerate(ks):
            r, c = divmod(i, cols)
            tile = Image.fromarray(_normalize_kernel(k), "RGB").resize((t_px, t_px), _RESAMPLE.NEAREST)
            img.paste(tile, (gap + c * (t_px + gap), y + r * (t_px + gap)))
        y += rows * (t_px + gap) + gap
    return img


# ---------------------------------------------------------------------------
# Predictions (Figure 4, left)
# ---------------------------------------------------------------------------

PRED_CELL_W = 196
PRED_IMG = 128
PRED_COLS = 4
_PRED_ROW = 17
_HEADER_H = 26


def predictions_layout(n, k=5):
    """(width, height, cols, cell height) of predictions.png for n images with top-k bars."""
    cols = max(1, min(PRED_COLS, n))
    rows = -(-n // cols)
    cell_h = 6 + PRED_IMG + 4 + 18 + k * _PRED_ROW + 10
    return cols * PRED_CELL_W, _HEADER_H + rows * cell_h, cols, cell_h


def predictions_image(images, labels, probs, classes, k=5):
    """Images (N, H, W, 3) uint8, true labels (N,), probabilities (N, C), class names -> PIL image:
    each image with its true label under it and its top-k classes as bars (true class red)."""
    probs = np.asarray(probs, np.float64)
    n = len(images)
    k = max(1, min(k, probs.shape[1]))
    W, H, cols, cell_h = predictions_layout(n, k)
    img = Image.new("RGB", (W, H), _BG)
    draw = ImageDraw.Draw(img)
    f_head, f_lab, f_bar = _font(13), _font(13), _font(11)
    _text(draw, 8, _HEADER_H / 2, f"Top-{k} predictions on validation images (red bar: the true class)",
          f_head, _INK, valign="middle")
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = c * PRED_CELL_W, _HEADER_H + r * cell_h
        y = y0 + 6
        ix = x0 + (PRED_CELL_W - PRED_IMG) // 2
        img.paste(_tile(images[i], PRED_IMG), (ix, y))
        draw.rectangle([ix - 1, y - 1, ix + PRED_IMG, y + PRED_IMG], outline=_FRAME)
        y += PRED_IMG + 4
        true = int(labels[i])
        _text(draw, x0 + PRED_CELL_W / 2, y + 9, _fit(draw, classes[true], f_lab, PRED_CELL_W - 16), f_lab,
              _INK, align="center", valign="middle")
        y += 18
        order = np.argsort(-probs[i], kind="stable")[:k]
        bx0, bx1 = x0 + 10, x0 + PRED_CELL_W - 10
        for j in order:
            p = float(probs[i, j])
            draw.rectangle([bx0, y + 1, bx1, y + _PRED_ROW - 2], fill=_BAR_TRACK)
            fill = _BAR_TRUE if j == true else _BAR
            xe = bx0 + round(p * (bx1 - bx0))
            if xe > bx0:
                draw.rectangle([bx0, y + 1, xe, y + _PRED_ROW - 2], fill=fill)
            pct = f"{p:.0%}" if p >= 0.01 else ("<1%" if p > 0 else "0%")
            pw = _text_w(draw, pct, f_bar)
            name = _fit(draw, classes[j], f_bar, bx1 - bx0 - pw - 14)
            ink = (0, 0, 0)
            _text(draw, bx0 + 4, y + _PRED_ROW / 2, name, f_bar, ink, valign="middle")
            _text(draw, bx1 - 3, y + _PRED_ROW / 2, pct, f_bar, ink, align="right", valign="middle")
            y += _PRED_ROW
    return img


# ---------------------------------------------------------------------------
# Nearest neighbours in fc7 space (Figure 4, right)
# ---------------------------------------------------------------------------

def nearest_neighbours(model, queries_x, train_batches, k=6, layer="fc7"):
    """The k training images nearest to each query in `layer` activations (Euclidean).

    queries_x: (Q, 3, S, S) network inputs. train_batches: an iterable of network-input batches
    (B, 3, S, S), or of (x, labels) pairs as EvalLoader yields; the training images are numbered
    in the order they come. Features are computed batch by batch on the model's backend, the squared
    distances as ||q||^2 + ||t||^2 - 2 q t^T (float64), and a running top-k per query is kept on the
    backend. Returns (indices int64 (Q, k'), distances float64 (Q, k')) as numpy arrays, nearest first
    (ties: the lower index first), with k' = min(k, number of training images).
    """
    be = model.backend
    xp = be.xp
    k = int(k)
    if k < 1:
        raise ValueError(f"nearest_neighbours: k must be >= 1, got {k}")
    q = model.features(queries_x, layer=layer)
    q = q.reshape(q.shape[0], -1).astype(xp.float64)
    qn = (q * q).sum(axis=1)
    Q = q.shape[0]
    best_d = xp.full((Q, k), float("inf"), dtype=xp.float64)
    best_i = xp.full((Q, k), -1, dtype=xp.int64)
    seen = 0
    for batch in train_batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        f = model.features(x, layer=layer)
        f = f.reshape(f.shape[0], -1).astype(xp.float64)
        B = f.shape[0]
        if B == 0:
            continue
        d2 = qn[:, None] + (f * f).sum(axis=1)[None, :] - 2.0 * (q @ f.T)
        d2 = xp.maximum(d2, 0.0)
        idx = xp.broadcast_to(xp.arange(seen, seen + B, dtype=xp.int64)[None, :], (Q, B))
        cand_d = xp.concatenate([best_d, d2], axis=1)
        cand_i = xp.concatenate([best_i, idx], axis=1)
        # the current best come first and have lower indices, so a stable sort keeps ties by index
        # (cupy's argsort is always stable and older versions take no `kind`)
        order = xp.argsort(cand_d, axis=1, kind="stable") if xp is np else xp.argsort(cand_d, axis=1)
        order = order[:, :k]
        best_d = xp.take_along_axis(cand_d, order, axis=1)
        best_i = xp.take_along_axis(cand_i, order, axis=1)
        seen += B
        del f, d2, cand_d, cand_i
    kk = min(k, seen)
    ind = np.asarray(be.to_numpy(best_i[:, :kk]), np.int64)
    dist = np.sqrt(np.asarray(be.to_numpy(best_d[:, :kk]), np.float64))
    return ind, dist


NB_TILE = 96
_NB_GAP = 6
_NB_SEP = 22
_NB_CAP = 16


def _fmt_dist(d):
    d = float(d)
    return f"{d:.2f}" if d < 10 else (f"{d:.1f}" if d < 100 else f"{d:.0f}")


def neighbours_layout(num_queries, k):
    """(width, height, row height) of neighbours.png."""
    row_h = NB_TILE + _NB_CAP + 10
    width = 10 + NB_TILE + _NB_SEP + k * (NB_TILE + _NB_GAP) - _NB_GAP + 10
    return width, _HEADER_H + num_queries * row_h, row_h


def neighbours_image(query_images, query_labels, nb_images, nb_labels, nb_dist, classes, layer="fc7"):
    """Each query (left) with its k nearest training images (right); captions give the class (green:
    the query's class, red: another) and the distance."""
    Q = len(query_images)
    k = nb_images.shape[1] if Q else 0
    W, H, row_h = neighbours_layout(Q, k)
    img = Image.new("RGB", (W, H), _BG)
    draw = ImageDraw.Draw(img)
    f_head, f_cap = _font(13), _font(11)
    nx0 = 10 + NB_TILE + _NB_SEP
    _text(draw, 10 + NB_TILE / 2, _HEADER_H / 2, "val image", f_head, _INK, align="center", valign="middle")
    _text(draw, nx0, _HEADER_H / 2, f"its {k} nearest training images by {layer} distance "
          f"(green: same class)", f_head, _INK, valign="middle")
    for r in range(Q):
        y = _HEADER_H + r * row_h + 2
        img.paste(_tile(query_images[r], NB_TILE), (10, y))
        ql = int(query_labels[r])
        _text(draw, 10 + NB_TILE / 2, y + NB_TILE + 3, _fit(draw, classes[ql], f_cap, NB_TILE), f_cap, _INK,
              align="center")
        for j in range(k):
            x = nx0 + j * (NB_TILE + _NB_GAP)
            img.paste(_tile(nb_images[r, j], NB_TILE), (x, y))
            lab = int(nb_labels[r, j])
            cap = f"{classes[lab]}  {_fmt_dist(nb_dist[r, j])}"
            _text(draw, x + NB_TILE / 2, y + NB_TILE + 3, _fit(draw, cap, f_cap, NB_TILE), f_cap,
                  _SAME if lab == ql else _OTHER, align="center")
        if r:
            yl = y - 6
            draw.line([(10, yl), (W - 10, yl)], fill=_GRID)
    sx = 10 + NB_TILE + _NB_SEP // 2
    draw.line([(sx, _HEADER_H), (sx, H - 6)], fill=_FRAME)
    return img


# ---------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------

def _num(r, key):
    try:
        v = float(r.get(key))
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def lr_drops(records):
    """Epochs e after which the learning rate went down (the lr of epoch e+1 < that of epoch e)."""
    out = []
    for a, b in zip(records, records[1:]):
        la, lb = _num(a, "lr"), _num(b, "lr")
        if la is not None and lb is not None and lb < la:
            out.append(int(a["epoch"]))
    return out


def _nice_step(span, n):
    raw = span / max(n, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * mag >= raw * (1 - 1e-9):
            return m * mag
    return 10.0 * mag


def _linear_ticks(hi, n=5):
    """0..top with a nice step: (top, ticks, decimals)."""
    if not hi > 0:
        hi = 1.0
    step = _nice_step(hi, n)
    top = math.ceil(hi / step - 1e-9) * step
    ticks = [i * step for i in range(int(round(top / step)) + 1)]
    dec = max(0, -int(math.floor(math.log10(step) + 1e-9)))
    if abs(step / 10 ** -dec - round(step / 10 ** -dec)) > 1e-6:
        dec += 1
    return top, ticks, dec


def _epoch_ticks(xmax):
    step = 1
    for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        step = s
        if xmax / s <= 10:
            break
    return list(range(0, int(xmax) + 1, step))


def _fmt_lr(v):
    e = int(round(math.log10(v)))
    if abs(10.0 ** e - v) < 1e-9 * v:
        return f"1e{e}"
    return f"{v:.0e}".replace("e-0", "e-")


class _Canvas:
    """A drawing in logical pixels rendered at `s` times the size (downsampled later: antialiasing)."""

    def __init__(self, size, s):
        self.s = s
        self.img = Image.new("RGB", (size[0] * s, size[1] * s), _BG)
        self.d = ImageDraw.Draw(self.img)

    def font(self, size):
        return _font(size * self.s)

    def line(self, pts, fill, width=1):
        s = self.s
        self.d.line([(x * s, y * s) for x, y in pts], fill=fill, width=max(1, round(width * s)), joint="curve")

    def dashed(self, x, y0, y1, fill, width=1, dash=5, gap=4):
        y = y0
        while y < y1:
            self.line([(x, y), (x, min(y + dash, y1))], fill, width)
            y += dash + gap

    def rect(self, box, outline=None, fill=None, width=1):
        s = self.s
        self.d.rectangle([round(v * s) for v in box], outline=outline, fill=fill, width=max(1, round(width * s)))

    def dot(self, x, y, r, fill):
        s = self.s
        self.d.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=fill)

    def text(self, x, y, t, size, fill=_INK, align="left", valign="top"):
        _text(self.d, x * self.s, y * self.s, t, self.font(size), fill, align, valign)

    def text_w(self, t, size):
        return _text_w(self.d, t, self.font(size)) / self.s

    def result(self, size):
        if self.s == 1:
            return self.img
        return self.img.resize(size, _RESAMPLE.LANCZOS)


class _Curves:
    """The drawing state of curves.png: the canvas, the shared epoch axis and the lr drops."""

    FS = 12
    LEFT, RIGHT, TOP, BOTTOM = 66, 22, 8, 44
    GAP = 30        # between panels: room for the next panel's legend
    LEGEND_H = 22

    def __init__(self, records, size):
        self.records, self.size = records, size
        self.cv = _Canvas(size, 2 if _scalable() else 1)
        epochs = [int(r["epoch"]) for r in records]
        xmax = max(2, max(epochs) if epochs else 1)
        self.xticks = _epoch_ticks(xmax)
        self.xmax = max(xmax, self.xticks[-1])
        self.x0, self.x1 = self.LEFT, size[0] - self.RIGHT
        self.drops = lr_drops(records)
        self.dots = len(records) <= 40

    def X(self, e):
        return self.x0 + (self.x1 - self.x0) * e / self.xmax

    def series(self, key):
        return [(int(r["epoch"]), _num(r, key)) for r in self.records]

    def polyline(self, pts, Y, color, top):
        seg = []
        for e, v in pts + [(None, None)]:
            if v is None:
                if len(seg) > 1:
                    self.cv.line(seg, color, 2)
                if self.dots or len(seg) == 1:
                    for p in seg:
                        self.cv.dot(p[0], p[1], 2.6, color)
                seg = []
            else:
                seg.append((self.X(e), Y(min(max(v, 0.0), top))))

    def legend(self, y, items):
        cv, x = self.cv, self.x0
        for name, color, dashed in items:
            ym = y + self.LEGEND_H / 2
            if dashed:
                for xs in (x, x + 10):
                    cv.line([(xs, ym), (xs + 6, ym)], color, 2)
            else:
                cv.line([(x, ym), (x + 16, ym)], color, 2.5)
            cv.text(x + 22, ym, name, self.FS, _INK, valign="middle")
            x += 22 + cv.text_w(name, self.FS) + 22

    def frame(self, ytop, h, yticks, label, Y):
        cv, x0, x1, FS = self.cv, self.x0, self.x1, self.FS
        for v, s in yticks:
            yy = Y(v)
            cv.line([(x0, yy), (x1, yy)], _GRID, 1)
            cv.line([(x0 - 4, yy), (x0, yy)], _FRAME, 1)
            cv.text(x0 - 7, yy, s, FS, _MUTED, align="right", valign="middle")
        for e in self.xticks:
            cv.line([(self.X(e), ytop), (self.X(e), ytop + h)], _GRID, 1)
        for e in self.drops:
            cv.dashed(self.X(e), ytop, ytop + h, _C_DROP, 1.5)
        cv.rect([x0, ytop, x1, ytop + h], outline=_FRAME, width=1)
        # the axis label, rotated: draw on a small transparent image
        tw, th = cv.text_w(label, FS), 16
        lab = Image.new("RGBA", (round(tw * cv.s) + 4, th * cv.s), (255, 255, 255, 0))
        _text(ImageDraw.Draw(lab), 2, th * cv.s / 2, label, cv.font(FS), _MUTED, valign="middle")
        lab = lab.rotate(90, expand=True)
        cv.img.paste(lab, (round(4 * cv.s), round((ytop + h / 2) * cv.s - lab.size[1] / 2)), lab)

    def loss_panel(self, y, h):
        loss = self.series("train_loss")
        vals = [v for _, v in loss if v is not None]
        top, ticks, dec = _linear_ticks(max(vals) if vals else 1.0)
        self.legend(y, [("training loss", _C_LOSS, False)])
        y += self.LEGEND_H
        Y = lambda v: y + h - h * v / top  # noqa: E731
        self.frame(y, h, [(v, f"{v:.{dec}f}") for v in ticks], "loss", Y)
        self.polyline(loss, Y, _C_LOSS, top)
        return y + h

    def error_panel(self, y, h):
        t1, t5 = self.series("val_top1_err"), self.series("val_top5_err")
        vals = [v for _, v in t1 + t5 if v is not None]
        top, ticks, dec = _linear_ticks(min(1.0, max(vals)) if vals and max(vals) > 0 else 1.0)
        self.legend(y, [("validation top-1 error", _C_TOP1, False), ("validation top-5 error", _C_TOP5, False)])
        y += self.LEGEND_H
        Y = lambda v: y + h - h * v / top  # noqa: E731
        self.frame(y, h, [(v, f"{v * 100:.{max(0, dec - 2)}f}%") for v in ticks], "error", Y)
        self.polyline(t5, Y, _C_TOP5, top)
        self.polyline(t1, Y, _C_TOP1, top)
        return y + h

    def lr_panel(self, y, h):
        """The learning rate, log scale, as a step function (epoch e runs from e-1 to e)."""
        lr = self.series("lr")
        vals = [v for _, v in lr if v is not None and v > 0]
        lo = math.floor(math.log10(min(vals))) if vals else -3
        hi = math.ceil(math.log10(max(vals))) if vals else -2
        hi = hi + 1 if hi == lo else hi
        lo = lo - 1 if hi - lo < 2 else lo
        self.legend(y, [("learning rate (log scale)", _C_LR, False), ("lr divided", _C_DROP, True)])
        y += self.LEGEND_H
        pad = 0.08 * (hi - lo)  # keep the decades at the ends off the frame
        Y = lambda v: y + h - h * (math.log10(v) - lo + pad) / (hi - lo + 2 * pad)  # noqa: E731
        self.frame(y, h, [(10.0 ** e, _fmt_lr(10.0 ** e)) for e in range(lo, hi + 1)], "lr", Y)
        steps = []
        for e, v in lr:
            if v is None or v <= 0:
                continue
            if steps:
                steps.append((self.X(e - 1), steps[-1][1]))
            steps += [(self.X(e - 1), Y(v)), (self.X(e), Y(v))]
        if steps:
            self.cv.line(steps, _C_LR, 2.5)
        return y + h

    def epoch_axis(self, y):
        cv, H = self.cv, self.size[1]
        for e in self.xticks:
            cv.line([(self.X(e), y), (self.X(e), y + 4)], _FRAME, 1)
            cv.text(self.X(e), y + 7, str(e), self.FS, _MUTED, align="center")
        cv.text((self.x0 + self.x1) / 2, H - 5, "epoch", self.FS, _INK, align="center", valign="bottom")
        if not self.records:
            cv.text((self.x0 + self.x1) / 2, H / 2, "no epochs finished yet", 14, _MUTED, align="center",
                    valign="middle")


def curves_image(records, size=CURVES_SIZE):
    """Three panels against epochs: training loss; validation top-1 and top-5 error; learning rate
    (log scale). Dashed vertical lines mark the epochs after which the learning rate was divided."""
    c = _Curves(records, size)
    avail = size[1] - c.TOP - c.BOTTOM - 3 * c.LEGEND_H - 2 * c.GAP
    y = c.loss_panel(c.TOP, avail * 0.37) + c.GAP
    y = c.error_panel(y, avail * 0.37) + c.GAP
    c.epoch_axis(c.lr_panel(y, avail * 0.26))
    return c.cv.result(size)


# ---------------------------------------------------------------------------
# Training health (alexnet_cuda.health): one small chart per layer
# ---------------------------------------------------------------------------

HEALTH_COLS = 4
HEALTH_CELL = (200, 150)      # one chart, in pixels
_HEALTH_HEAD = 26             # a section's title line
_HEALTH_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
_HEALTH_RELUS = ("relu1", "relu2", "relu3", "relu4", "relu5", "relu6", "relu7")
_C_RATIO_MAX = (158, 202, 225)
_C_WARN = (214, 39, 40)


def _health_names(records, section, default):
    """The layer names of `section` ("layers" or "dead") in the records' order; `default` when no record
    has the section (a tanh network's records have an empty "dead": no ReLU, no charts)."""
    names, seen = [], False
    for r in records:
        part = (r.get("health") or {}).get(section)
        seen = seen or isinstance(part, dict)
        for n in (part or {}):
            if n not in names:
                names.append(n)
    return names if seen else list(default)


def _health_value(r, section, name, key=None):
    v = ((r.get("health") or {}).get(section) or {}).get(name)
    if key is not None:
        v = v.get(key) if isinstance(v, dict) else None
    return _num({"v": v}, "v")


def health_layout(num_layers=len(_HEALTH_LAYERS), num_relus=len(_HEALTH_RELUS)):
    """(width, height) of health.png: a titled section of charts for the parameter layers, one for the ReLUs."""
    rows = -(-num_layers // HEALTH_COLS) + -(-num_relus // HEALTH_COLS)
    heads = (num_layers > 0) + (num_relus > 0)
    return HEALTH_COLS * HEALTH_CELL[0], heads * _HEALTH_HEAD + rows * HEALTH_CELL[1]


def _few_ticks(xmax, n=4):
    step = 1
    for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        step = s
        if xmax / s <= n:
            break
    return list(range(0, int(xmax) + 1, step))


class _HealthChart(_Curves):
    """One chart of health.png: _Curves's epoch axis, lr drops and lines, in one cell of a shared canvas."""

    FS = 10

    def __init__(self, cv, records, box):
        self.cv, self.records = cv, records
        x, y, w, h = box
        self.x0, self.x1 = x + 46, x + w - 12
        self.ytop, self.ybot = y + 22, y + h - 24
        self.title_y = y + 11
        epochs = [int(r["epoch"]) for r in records]
        xmax = max(2, max(epochs) if epochs else 1)
        self.xticks = _few_ticks(xmax)
        self.xmax = max(xmax, self.xticks[-1])
        self.drops = lr_drops(records)
        self.dots = len(records) <= 40

    def Y(self, u, top):
        """Screen y of u in 0..top (a small margin inside the frame)."""
        h = self.ybot - self.ytop
        return self.ybot - 3 - (h - 6) * u / top

    def axes(self, title, note, yticks, top):
        cv, x0, x1, FS = self.cv, self.x0, self.x1, self.FS
        cv.text(x0 - 40, self.title_y, title, 12, _INK, valign="middle")
        cv.text(x1, self.title_y, note, FS, _MUTED, align="right", valign="middle")
        for u, s in yticks:
            yy = self.Y(u, top)
            cv.line([(x0, yy), (x1, yy)], _GRID, 1)
            cv.text(x0 - 5, yy, s, FS, _MUTED, align="right", valign="middle")
        for e in self.xticks:
            cv.line([(self.X(e), self.ytop), (self.X(e), self.ybot)], _GRID, 1)
            cv.text(self.X(e), self.ybot + 5, str(e), FS, _MUTED, align="center")
        for e in self.drops:
            cv.dashed(self.X(e), self.ytop, self.ybot, _C_DROP, 1)
        cv.rect([x0, self.ytop, x1, self.ybot], outline=_FRAME, width=1)

    def threshold(self, u, top):
        """A dashed horizontal line at u (a warning threshold), when it lies in 0..top."""
        if 0 <= u <= top:
            x, y = self.x0, self.Y(u, top)
            while x < self.x1:
                self.cv.line([(x, y), (min(x + 5, self.x1), y)], _C_WARN, 1)
                x += 9

    def empty(self):
        self.cv.text((self.x0 + self.x1) / 2, (self.ytop + self.ybot) / 2, "no data", self.FS, _MUTED,
                     align="center", valign="middle")


def _log_range(vals):
    """(lo, hi) decades around the positive `vals`, at least two decades apart."""
    lo = math.floor(math.log10(min(vals))) if vals else -4
    hi = math.ceil(math.log10(max(vals))) if vals else -2
    hi = hi + 1 if hi == lo else hi
    lo = lo - 1 if hi - lo < 2 else lo
    return lo, hi


def _ratio_chart(cv, records, box, name, ratio_min, ratio_max):
    """The update ratio of layer `name` per epoch (mean and max), log scale, with the warning thresholds."""
    c = _HealthChart(cv, records, box)
    mean = [(int(r["epoch"]), _health_value(r, "layers", name, "update_ratio")) for r in records]
    most = [(int(r["epoch"]), _health_value(r, "layers", name, "update_ratio_max")) for r in records]
    vals = [v for _, v in mean + most if v is not None and v > 0]
    lo, hi = _log_range(vals)
    top = hi - lo
    every = max(1, -(-top // 4))
    ticks = [(e - lo, _fmt_lr(10.0 ** e)) for e in range(lo, hi + 1) if (hi - e) % every == 0]
    last = next((v for _, v in reversed(mean) if v is not None), None)
    c.axes(name, f"last {last:.1e}" if last is not None else "", ticks, top)
    for t in (ratio_min, ratio_max):
        c.threshold(math.log10(t) - lo, top)
    if not vals:
        c.empty()
        return
    Y = lambda u: c.Y(u, top)  # noqa: E731
    to_u = lambda pts: [(e, None if v is None or v <= 0 else math.log10(v) - lo) for e, v in pts]  # noqa: E731
    c.polyline(to_u(most), Y, _C_RATIO_MAX, top)
    c.polyline(to_u(mean), Y, _C_LOSS, top)


def _dead_chart(cv, records, box, name, dead_max):
    """The fraction of dead units of ReLU layer `name` per epoch, 0..100%, with the warning threshold."""
    c = _HealthChart(cv, records, box)
    pts = [(int(r["epoch"]), _health_value(r, "dead", name)) for r in records]
    last = next((v for _, v in reversed(pts) if v is not None), None)
    c.axes(name, f"last {last:.0%} dead" if last is not None else "", [(0, "0%"), (0.5, "50%"), (1, "100%")], 1.0)
    c.threshold(dead_max, 1.0)
    if all(v is None for _, v in pts):
        c.empty()
        return
    c.polyline(pts, lambda u: c.Y(u, 1.0), _C_TOP5, 1.0)


def health_image(records):
    """health.png from metrics records: per parameter layer its update ratio ||update|| / ||weight|| per
    epoch (log scale; the epoch's mean, and in light blue its max), per ReLU layer the fraction of units
    dead for the whole epoch; dashed red lines at the warning thresholds of alexnet_cuda.health, dashed
    grey ones where the learning rate was divided. Records without health numbers draw empty charts."""
    layers, relus = _health_names(records, "layers", _HEALTH_LAYERS), _health_names(records, "dead", _HEALTH_RELUS)
    size = health_layout(len(layers), len(relus))
    cv = _Canvas(size, 2 if _scalable() else 1)
    (cw, ch), y = HEALTH_CELL, 0
    sections = [("update ratio ||update|| / ||weight|| per step: the epoch's mean (dark) and max (light), log scale", layers,
                 lambda box, n: _ratio_chart(cv, records, box, n, UPDATE_RATIO_MIN, UPDATE_RATIO_MAX)),
                ("dead units: zero for every training image of the epoch", relus,
                 lambda box, n: _dead_chart(cv, records, box, n, DEAD_MAX))]
    for title, names, draw in sections:
        if not names:
            continue
        cv.text(8, y + _HEALTH_HEAD / 2 + 2, title, 13, _INK, valign="middle")
        y += _HEALTH_HEAD
        for i, n in enumerate(names):
            r, col = divmod(i, HEALTH_COLS)
            draw((col * cw, y + r * ch, cw, ch), n)
        y += -(-len(names) // HEALTH_COLS) * ch
    return cv.result(size)


# ---------------------------------------------------------------------------
# Several runs on one chart (alexnet-cuda ablate: the variants, Figure 1)
# ---------------------------------------------------------------------------

COMPARISON_COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
                     (140, 86, 75), (227, 119, 194), (23, 190, 207), (127, 127, 127))
COMPARISON_SIZE = (800, 520)


def _wrapped_legend(c, y, items):
    """The legend of comparison_image in as many rows as it needs; returns the y below it."""
    cv, x = c.cv, c.x0
    for name, color in items:
        w = 22 + cv.text_w(name, c.FS) + 22
        if x > c.x0 and x + w > c.x1:
            x, y = c.x0, y + c.LEGEND_H
        ym = y + c.LEGEND_H / 2
        cv.line([(x, ym), (x + 16, ym)], color, 2.5)
        cv.text(x + 22, ym, name, c.FS, _INK, valign="middle")
        x += w
    return y + c.LEGEND_H


def comparison_image(curves, *, ylabel, target=None, note=None, bands=None, size=COMPARISON_SIZE, percent=True):
    """One panel of error curves against epochs, one line per run: `curves` is [(name, [(epoch, value or
    None), ...]), ...] with values in 0..1 (drawn as %; percent=False: any values >= 0, such as a loss,
    drawn as they are), coloured by COMPARISON_COLORS in order.
    `bands` (optional, by name): [(epoch, lo, hi), ...] drawn as thin vertical bars (the seeds' range).
    `target` draws a dashed horizontal line at that error, `note` a line of text above the panel."""
    records = [{"epoch": e} for _, pts in curves for e, _ in pts]
    c = _Curves(records, size)
    y = c.TOP
    if note:
        c.cv.text(c.x0, y + 9, note, 13, _INK, valign="middle")
        y += c.LEGEND_H
    colors = [COMPARISON_COLORS[i % len(COMPARISON_COLORS)] for i in range(len(curves))]
    y = _wrapped_legend(c, y, [(n, col) for (n, _), col in zip(curves, colors)])
    h = size[1] - y - c.BOTTOM
    vals = [v for _, pts in curves for _, v in pts if v is not None]
    hi = max(vals) if vals and max(vals) > 0 else 1.0
    top, ticks, dec = _linear_ticks(min(1.0, hi) if percent else hi)
    Y = lambda v: y + h - h * v / top  # noqa: E731
    label = (lambda v: f"{v * 100:.{max(0, dec - 2)}f}%") if percent else (lambda v: f"{v:.{dec}f}")  # noqa: E731
    c.frame(y, h, [(v, label(v)) for v in ticks], ylabel, Y)
    if target is not None and 0 <= target <= top:
        x = c.x0
        while x < c.x1:
            c.cv.line([(x, Y(target)), (min(x + 6, c.x1), Y(target))], _MUTED, 1.5)
            x += 10
        c.cv.text(c.x1 - 4, Y(target) - 3, f"{target:.0%}" if percent else f"{target:g}", c.FS, _MUTED,
                  align="right", valign="bottom")
    for (name, pts), col in zip(curves, colors):
        for e, lo, hi in (bands or {}).get(name, ()):
            c.cv.line([(c.X(e), Y(min(lo, top))), (c.X(e), Y(min(hi, top)))], col, 1)
        c.polyline(pts, Y, col, top)
    c.epoch_axis(y + h)
    return c.cv.result(size)


def write_curves(out_dir, *, metrics=None, path=None, log=None):
    """(Re)write `out_dir`/curves.png from `out_dir`/metrics.jsonl (or the given files), atomically.

    Returns the path written, or None when there is nothing to plot (no records yet). Never raises
    for a drawing failure (it is logged as a warning through `log` when given): it runs inside the
    training loop, which must not stop for a picture.
    """
    out_dir = Path(out_dir)
    metrics = Path(metrics) if metrics is not None else out_dir / METRICS
    path = Path(path) if path is not None else out_dir / CURVES
    try:
        records = read_metrics(metrics)
        if not records:
            return None
        return save_png(curves_image(records), path)
    except Exception as e:  # noqa: BLE001 - a picture must never stop training
        if log is not None:
            log(f"warning: could not write {path}: {type(e).__name__}: {e}")
        return None


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------

def _spread(n_total, n, phase=0.0):
    """n indices spread evenly over range(n_total) (datasets are ordered by class, so this visits
    many classes), starting `phase` of a step in."""
    n = max(0, min(int(n), n_total))
    if n == 0:
        return np.zeros(0, np.int64)
    step = n_total / n
    return np.minimum((np.arange(n) * step + phase * step).astype(np.int64), n_total - 1)


def _inputs(ds, idx, crop, scale):
    """The network inputs of images `idx` of `ds`: exactly what EvalLoader gives (centre crop, mean)."""
    sub = types.SimpleNamespace(images=np.ascontiguousarray(ds.images[idx]), labels=ds.labels[idx], mean=ds.mean)
    xs = [x for x, _ in EvalLoader(sub, batch_size=max(1, len(idx)), crop=crop, scale=scale)]
    return xs[0]


def visualize(checkpoint, data=None, out=None, *, num_images=8, num_queries=5, k=6, backend=None,
              batch_size=256, metrics=None, log=print):
    """Write the four pictures; returns {name: path}. Raises VisualizeError (and the data, train and
    checkpoint modules' errors) for user errors."""
    if out is None:
        raise VisualizeError("give --out DIR (the folder to write the pictures into)")
    if int(num_images) < 1 or int(num_queries) < 0 or int(k) < 1 or int(batch_size) < 1:
        raise VisualizeError("--num-images, --batch-size and k must be >= 1, --num-queries >= 0")
    ckpt_path = Path(checkpoint)
    if not ckpt_path.is_file():
        raise VisualizeError(f"checkpoint not found: {ckpt_path}")
    be = resolve_backend(backend)
    model, info = model_from_checkpoint(ckpt_path, backend=be)
    cfg = info["config"]

    # -- the data, checked before anything is written
    src = trained_data(cfg, data)
    prepared = ensure_prepared(src, None, size=cfg.get("data_size", 256), log=log)
    val_ds, train_ds = PreparedDataset(prepared, "val"), PreparedDataset(prepared, "train")
    check_classes(cfg, val_ds.classes, src, model.num_classes)
    classes = list(val_ds.class_names)  # what the pictures print: "tench" rather than n01440764
    if len(val_ds) == 0 or len(train_ds) == 0:
        raise VisualizeError(f"{prepared} has an empty train or val split")
    crop, scale = model.input_size, float(cfg.get("input_scale", 1.0))
    if crop > val_ds.size:
        raise VisualizeError(f"the model's {crop}px input does not fit the {val_ds.size}px images of {prepared}")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}

    def done(name, img, palette=False):
        p = save_png(img, out / name, palette=palette)
        written[name] = p
        log(f"visualize: wrote {p} ({img.size[0]}x{img.size[1]})")

    # 1. conv1 filters
    lay = model.tower_layout
    w1 = model.state_dict()["conv1.weight"]
    done("conv1_filters.png", conv1_filters_image(w1, lay.towers, out_slice=lambda t: lay.out_slice("conv1", t)))

    # 2. predictions
    idx = _spread(len(val_ds), num_images)
    probs = softmax(np.asarray(be.to_numpy(model.forward(_inputs(val_ds, idx, crop, scale))), np.float64))
    done("predictions.png", predictions_image(val_ds.images[idx], val_ds.labels[idx], probs, classes), palette=True)

    # 3. nearest neighbours
    if num_queries > 0:
        qidx = _spread(len(val_ds), num_queries, phase=0.5)
        log(f"visualize: fc7 features of {len(train_ds)} training images for the nearest neighbours "
            f"(backend {be.name})")
        loader = EvalLoader(train_ds, batch_size=batch_size, crop=crop, scale=scale)
        nb, dist = nearest_neighbours(model, _inputs(val_ds, qidx, crop, scale), loader, k=k)
        done("neighbours.png", neighbours_image(val_ds.images[qidx], val_ds.labels[qidx], train_ds.images[nb],
                                                train_ds.labels[nb], dist, classes), palette=True)

    # 4. curves
    mpath = Path(metrics) if metrics is not None else ckpt_path.parent / METRICS
    recs = read_metrics(mpath)
    if recs:
        done("curves.png", curves_image(recs))
        if any(r.get("health") for r in recs):
            done("health.png", health_image(recs))
    else:
        log(f"visualize: no training curves: {mpath} holds no epochs")
    return written


def add_arguments(p):
    """The options of `alexnet-cuda visualize`."""
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint.safetensors of a run")
    p.add_argument("--data", metavar="DIR", help="image folder or prepared folder with train/ and val/ "
                                                 "(default: the one the checkpoint was trained on)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the PNG files into")
    p.add_argument("--num-images", type=positive_int, default=8, metavar="N",
                   help="validation images in predictions.png (default 8)")
    p.add_argument("--num-queries", type=non_negative_int, default=5, metavar="N",
                   help="validation images in neighbours.png (default 5; 0 skips the neighbour search)")
    p.add_argument("--metrics", metavar="FILE",
                   help="metrics.jsonl for curves.png (default: the one next to the checkpoint)")
    p.add_argument("--batch-size", type=positive_int, default=256, metavar="N",
                   help="images per batch of the feature pass (default 256)")
    add_backend_argument(p)


def run(args, log=print):
    """`alexnet-cuda visualize` with parsed arguments."""
    visualize(args.checkpoint, args.data, args.out, num_images=args.num_images, num_queries=args.num_queries,
              backend=args.backend, batch_size=args.batch_size, metrics=args.metrics, log=log)
    return 0
