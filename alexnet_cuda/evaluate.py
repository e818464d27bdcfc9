"""Evaluation: `evaluate_model` (the validation pass of training), `alexnet-cuda eval` and
`alexnet-cuda predict`.

eval: top-1 and top-5 error on the `val/` split of a dataset (raw image folder, prepared
automatically into the cache, or a prepared folder), with the centre crop or the paper's ten
patches (four corners, centre, and their horizontal reflections; the softmax averaged over the
ten).

predict: the top-k classes of each image with their probabilities. The class names and the
training mean image are stored in the checkpoint, so predict needs nothing but the checkpoint
and the images.
"""
from __future__ import annotations

import numpy as np

from .backends import resolve_backend
from .data import EvalLoader, PreparedDataset, ensure_prepared, list_classes, load_image_for_predict
from .errors import DataError, TrainError
from .reference import softmax
from .runfolder import check_classes, model_from_checkpoint, trained_data

__all__ = ["evaluate_model", "evaluate", "predict", "format_predictions"]


def _scores(model, x):
    """Class scores of a batch: the logits, or for ten-crop batches (B, 10, 3, c, c) the softmax
    averaged over the patches."""
    if x.ndim != 5:
        return model.forward(x)
    xp = model.backend.xp
    B, V = x.shape[:2]
    p = softmax(model.forward(x.reshape((B * V,) + x.shape[2:])), xp)
    return xp.ascontiguousarray(p.reshape(B, V, -1).mean(axis=1))


def evaluate_model(model, loader, *, stop=None, world=None):
    """(top1_err, top5_err, n) over an EvalLoader; None when `stop()` turns true. The counts stay on
    the backend (no logits are copied back). With `world` (distributed.World), each rank evaluates
    its shard of the loader and the counts are summed over the ranks (give no `stop` then: every
    rank must reach the sum)."""
    be = model.backend
    c1 = c5 = 0
    n = 0
    k5 = min(5, model.num_classes)
    with be.use_device(model.devices[0]):  # where the logits are
        bad = be.label_record()  # a label out of range, recorded on the device (no read per batch)
    for x, y in loader:
        if stop is not None and stop():
            return None
        yb = be.asarray(y, dtype=np.int64)
        scores = _scores(model, x)
        c1 = c1 + be.topk_correct(scores, yb, 1, bad_labels=bad)
        c5 = c5 + be.topk_correct(scores, yb, k5, bad_labels=bad)
        n += len(y)
    c1, c5 = int(be.to_numpy(c1)), int(be.to_numpy(c5))
    bad = be.read_label_record(bad)
    if bad is not None:
        raise DataError(f"a validation label is out of range: {bad[1]}; the model has {model.num_classes} classes")
    if world is not None:
        c1, c5, n = (int(v) for v in world.sum_values([c1, c5, n]))
    if n == 0:
        raise DataError("the validation set is empty")
    return (n - c1) / n, (n - c5) / n, n


def evaluate(checkpoint, data=None, *, ten_crop=False, batch_size=None, backend=None, log=print, devices=None,
             precision=None):
    """Top-1/top-5 error of `checkpoint` on `data`'s val split (the model on `devices` at `precision`,
    AlexNet's arguments; precision None: the one it trained at); returns a dict and logs one line."""
    be = resolve_backend(backend)
    model, info = model_from_checkpoint(checkpoint, backend=be, devices=devices, precision=precision)
    cfg = info["config"]
    data = trained_data(cfg, data)
    check_classes(cfg, list_classes(data, "val"), data, model.num_classes)  # before preparing anything
    ds = PreparedDataset(ensure_prepared(data, None, size=cfg.get("data_size", 256), log=log, splits=("val",)), "val")
    bs = batch_size or (32 if ten_crop else 256)
    loader = EvalLoader(ds, batch_size=bs, crop=model.input_size, ten_crop=ten_crop, scale=cfg.get("input_scale", 1.0),
                        mean=info["mean"])
    top1, top5, n = evaluate_model(model, loader)
    mode = "ten-crop" if ten_crop else "centre crop"
    log(f"eval: {n} val images of {data}, {mode}, backend {be.name}, precision {model.precision}: top-1 error "
        f"{top1:.2%}, top-5 error {top5:.2%}")
    return {"top1_err": top1, "top5_err": top5, "images": n, "ten_crop": bool(ten_crop), "precision": model.precision}


def predict(checkpoint, images, *, top=5, backend=None, on_error=None):
    """[(image path, [(class name, probability), ...]), ...] for each image, best first.

    An image that cannot be read raises DataError, or with `on_error(path, error)` given is reported
    there and left out, so the other images still get their predictions."""
    be = resolve_backend(backend)
    model, info = model_from_checkpoint(checkpoint, backend=be)
    cfg = info["config"]
    classes = cfg.get("class_names") or cfg.get("classes") or [str(i) for i in range(model.num_classes)]
    mean = info["mean"] if info.get("mean") is not None else cfg.get("prepared")
    if mean is None:
        raise TrainError(f"{checkpoint} holds no mean image and names no prepared dataset")
    k = max(1, min(int(top), model.num_classes))
    results = []
    for path in images:
        try:
            x = load_image_for_predict(path, mean, size=cfg.get("data_size", 256), crop=model.input_size,
                                       scale=cfg.get("input_scale", 1.0))
        except DataError as e:
            if on_error is None:
                raise
            on_error(path, e)
            continue
        p = softmax(be.to_numpy(model.forward(x)).astype(np.float64))[0]
        order = np.argsort(-p, kind="stable")[:k]
        results.append((str(path), [(classes[i], float(p[i])) for i in order]))
    return results


def format_predictions(results):
    lines = []
    for path, preds in results:
        lines.append(path)
        w = max(len(c) for c, _ in preds)
        for rank, (c, p) in enumerate(preds, 1):
            lines.append(f"  {rank}. {c:<{w}}  {p:7.2%}")
    return "\n".join(lines)
