"""`alexnet-cuda eval` and `alexnet-cuda predict`.

eval: top-1 and top-5 error on the `val/` split of a dataset (raw image folder,
prepared automatically into the cache, or a prepared folder), with the centre
crop or the paper's ten patches (four corners, centre, and their horizontal
reflections; the softmax averaged over the ten).

predict: the top-5 classes of each image with their probabilities. The class
names are the training set's folder names, stored in the checkpoint's config;
the training mean image is stored in the checkpoint too, so predict needs
nothing but the checkpoint and the images.
"""
from __future__ import annotations

import sys

import numpy as np

from .train import TrainError, evaluate_model, limit_blas_threads, model_from_checkpoint

__all__ = ["evaluate", "predict", "format_predictions"]


def _backend_name(name):
    from .backends import get_backend
    try:
        be = get_backend(name)
    except RuntimeError as e:
        raise TrainError(str(e)) from None
    if be.name in ("numpy", "emu"):
        limit_blas_threads()
    return be


def evaluate(checkpoint, data=None, *, ten_crop=False, batch_size=None, backend=None, log=print):
    """Top-1/top-5 error of `checkpoint` on `data`'s val split; returns a dict and logs one line."""
    from .data import EvalLoader, PreparedDataset, ensure_prepared

    be = _backend_name(backend)
    model, info = model_from_checkpoint(checkpoint, backend=be)
    cfg = info["config"]
    data = data if data is not None else (cfg.get("prepared") or cfg.get("data"))
    if data is None:
        raise TrainError("no --data given and the checkpoint names none")
    prepared = ensure_prepared(data, None, size=cfg.get("data_size", 256), log=log)
    ds = PreparedDataset(prepared, "val")
    classes = cfg.get("classes")
    if classes is not None and list(ds.classes) != list(classes):
        raise TrainError(f"the classes of {data} ({len(ds.classes)}: {', '.join(ds.classes[:5])}...) differ from "
                         f"the checkpoint's ({len(classes)}: {', '.join(classes[:5])}...)")
    if ds.num_classes != model.num_classes:
        raise TrainError(f"{data} has {ds.num_classes} classes, the model {model.num_classes}")
    crop = model.input_size
    bs = batch_size or (32 if ten_crop else 256)
    loader = EvalLoader(ds, batch_size=bs, crop=crop, ten_crop=ten_crop, scale=cfg.get("input_scale", 1.0))
    top1, top5, n = evaluate_model(model, loader)
    mode = "ten-crop" if ten_crop else "centre crop"
    log(f"eval: {n} val images of {data}, {mode}, backend {be.name}: "
        f"top-1 error {top1:.2%}, top-5 error {top5:.2%}")
    return {"top1_err": top1, "top5_err": top5, "images": n, "ten_crop": bool(ten_crop)}


def predict(checkpoint, images, *, top=5, backend=None):
    """[(image path, [(class name, probability), ...]), ...] for each image, best first."""
    from .data import load_image_for_predict

    be = _backend_name(backend)
    model, info = model_from_checkpoint(checkpoint, backend=be)
    cfg = info["config"]
    classes = cfg.get("classes") or [str(i) for i in range(model.num_classes)]
    mean = info.get("mean")
    if mean is None:
        src = cfg.get("prepared")
        if not src:
            raise TrainError(f"{checkpoint} holds no mean image and names no prepared dataset")
        mean = src
    size = cfg.get("data_size", 256)
    k = max(1, min(int(top), model.num_classes))
    results = []
    for path in images:
        x = load_image_for_predict(path, mean, size=size, crop=model.input_size, scale=cfg.get("input_scale", 1.0))
        logits = be.to_numpy(model.forward(x)).astype(np.float64)[0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
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


def main_eval(args, log=print):
    evaluate(args.checkpoint, args.data, ten_crop=args.ten_crop, batch_size=args.batch_size, backend=args.backend,
             log=log)
    return 0


def main_predict(args, out=sys.stdout):
    res = predict(args.checkpoint, args.images, top=args.top, backend=args.backend)
    print(format_predictions(res), file=out)
    return 0
