"""Why the full preset (the paper's AlexNet and recipe) does not learn on the synthetic set, and what does.

Trains the paper-size network (width 1.0, 227x227 crops of 256x256 images, two towers, LRN, dropout
0.5, SGD lr 0.01, momentum 0.9, weight decay 5e-4 on weights, batch 128) on the numpy backend on the
built-in synthetic set (10 classes) for a few steps and prints, per step: lr, loss, its 10-step moving
average, the largest |logit|, per parameter layer the update-to-weight ratio ||w_after - w_before|| /
||w_before|| (weights), and per ReLU the fraction of outputs that are exactly 0. `lr*k8` is lr times
||mean h7||^2 / classes, h7 being fc8's input (after dropout): for a uniform softmax a lower bound on
the largest eigenvalue of the loss Hessian in fc8's weights. SGD with momentum 0.9 (heavy ball) is
stable along an eigenvector only while lr * eigenvalue < 2 * (1 + 0.9) = 3.8. --verbose adds the
weight and gradient norms; --out FILE.json writes everything.

A recipe is the paper's one with some departures (see RECIPES); flags override single constants:

    OPENBLAS_NUM_THREADS=1 python benchmarks/full_preset_cpu.py --recipe paper --steps 12 --verbose
    OPENBLAS_NUM_THREADS=1 python benchmarks/full_preset_cpu.py --recipe bias0.1 --steps 46

(about 25 s per step of 128 on one core of a 2-core CPU).

Results and the diagnosis: benchmarks/results/full_preset_cpu.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

PARAM_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
RELUS = ("relu1", "relu2", "relu3", "relu4", "relu5", "relu6", "relu7")
ONES = ("conv2", "conv4", "conv5", "fc6", "fc7")  # the layers whose bias the paper sets to 1

# A recipe: init, the model's init; bias, the bias of the ONES layers (None: as the init has it);
# fc_bias, the bias of fc6/fc7 (None: as `bias`); fc_std, std of the fc6/fc7 weights (None: as the
# init has it); scale, the input scale ((pixel - mean) * scale); warmup, steps of linear lr warm-up
# (lr * (step + 1) / warmup while step < warmup); conv1_gain, a factor on conv1's initial weights
# (with scale = 1 / conv1_gain the network computes the same function at init, and conv1 learns as
# with an lr conv1_gain^2 times smaller).
PAPER = dict(init="paper", bias=None, fc_bias=None, fc_std=None, scale=1.0, warmup=0, conv1_gain=1.0)
RECIPES = {
    "paper": PAPER,
    "warmup": {**PAPER, "warmup": 50},
    "bias0.1": {**PAPER, "bias": 0.1},                    # Caffe's bvlc_alexnet bias value
    "bias0": {**PAPER, "bias": 0.0},
    "fcbias0.1": {**PAPER, "fc_bias": 0.1},
    "caffe": {**PAPER, "bias": 0.1, "fc_std": 0.005},     # bvlc_alexnet's init
    "stable": {**PAPER, "bias": 0.1, "scale": 1.0 / 16, "conv1_gain": 16.0},
    "he": {**PAPER, "init": "he", "scale": 1.0 / 64},     # the small preset's init and input scale
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="paper", choices=sorted(RECIPES))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, help="override the recipe's warm-up steps")
    p.add_argument("--bias", type=float, help="override the bias of conv2, conv4, conv5, fc6, fc7")
    p.add_argument("--fc-bias", type=float, help="override the bias of fc6 and fc7")
    p.add_argument("--fc-std", type=float, help="override the std of the fc6/fc7 weights")
    p.add_argument("--scale", type=float, help="override the input scale")
    p.add_argument("--conv1-gain", type=float, help="override the factor on conv1's initial weights")
    p.add_argument("--verbose", action="store_true", help="also print weight and gradient norms")
    p.add_argument("--out", help="write the per-step records and the settings as JSON")
    return p.parse_args(argv)


def recipe_of(args):
    r = dict(RECIPES[args.recipe])
    for k in ("warmup", "bias", "fc_bias", "fc_std", "scale", "conv1_gain"):
        if getattr(args, k) is not None:
            r[k] = getattr(args, k)
    return r


def build_model(recipe, num_classes, seed):
    """The full-preset AlexNet with the recipe's init departures loaded over its init."""
    from alexnet_cuda.model import AlexNet
    model = AlexNet(num_classes=num_classes, input_size=227, width=1.0, towers=2, dropout=0.5, lrn=True,
                    backend="numpy", seed=seed, init=recipe["init"])
    sd = model.state_dict()
    rng = np.random.default_rng(seed + 1000)
    if recipe["fc_std"] is not None:
        for n in ("fc6", "fc7"):
            sd[f"{n}.weight"] = rng.standard_normal(sd[f"{n}.weight"].shape, dtype=np.float32) * recipe["fc_std"]
    if recipe["bias"] is not None:
        for n in ONES:
            sd[f"{n}.bias"][:] = recipe["bias"]
    sd["conv1.weight"] *= recipe["conv1_gain"]
    if recipe["fc_bias"] is not None:
        for n in ("fc6", "fc7"):
            sd[f"{n}.bias"][:] = recipe["fc_bias"]
    model.load_state_dict(sd)
    return model


def make_loader(batch_size, seed, scale):
    from alexnet_cuda.data import PreparedDataset, TrainLoader, ensure_prepared, make_synthetic_dataset
    src = make_synthetic_dataset(image_size=256, seed=0, workers=1)
    ds = PreparedDataset(ensure_prepared(src, None, size=256, workers=1), "train")
    loader = TrainLoader(ds, batch_size=batch_size, crop=227, seed=seed, workers=0, flip=True,
                         pca_std=0.1, scale=scale)
    return loader, ds.num_classes


def batches(loader):
    e = 0
    while True:
        yield from loader.epoch(e)
        e += 1


def instrument(model):
    """Record, per forward pass, each ReLU's zero fraction and the largest |logit| into the returned dict."""
    rec = {}
    for layer in model.layers:
        if layer.name in RELUS or layer.name == "fc8":
            orig = layer.forward

            def fwd(be, x, train, ctx, _orig=orig, _name=layer.name):
                y = _orig(be, x, train, ctx)
                a = np.asarray(y)
                if _name == "fc8":
                    rec["max_logit"] = float(np.abs(a).max())
                    # lower bound of fc8's top loss curvature (uniform softmax): ||mean input||^2 / classes
                    m = np.asarray(x, dtype=np.float64).mean(axis=0)
                    rec["curv_fc8"] = float(m @ m) / a.shape[1]
                else:
                    rec["dead_" + _name] = float(np.count_nonzero(a == 0) / a.size)
                    # units (channels of a conv) that are 0 for every image and position of the batch
                    alive = (a.reshape(a.shape[0], a.shape[1], -1) > 0).any(axis=(0, 2))
                    rec["deadunits_" + _name] = float(1.0 - alive.mean())
                return y
            layer.forward = fwd
    return rec


def norm(a):
    a = np.asarray(a, dtype=np.float32).ravel()
    return float(math.sqrt(np.dot(a, a)))


def step(model, x, y, lr, rec):
    """One SGD step (forward, backward, update) that records the per-layer norms into rec."""
    loss = float(model.loss_and_grads(x, y))
    grads = dict(model.gradients())
    params = dict(model.named_parameters())
    before = {n: np.array(params[n + ".weight"], copy=True) for n in PARAM_LAYERS}
    if math.isfinite(loss):
        model.apply_update(lr)
    model.step += 1
    rec["loss"] = loss
    for n in PARAM_LAYERS:
        w = np.asarray(dict(model.named_parameters())[n + ".weight"])
        rec["w_" + n] = norm(before[n])
        rec["g_" + n] = norm(grads[n + ".weight"])
        rec["upd_" + n] = norm(w - before[n]) / rec["w_" + n]
        rec["b_" + n] = float(np.mean(np.asarray(dict(model.named_parameters())[n + ".bias"])))
    return rec


def header(verbose):
    h = (f"{'step':>4} {'lr':>7} {'loss':>7} {'ma10':>6} {'max|z|':>7} {'lr*k8':>6} | upd/w x1e-3 "
         + " ".join(f"{n:>5}" for n in PARAM_LAYERS) + " | dead% " + " ".join(f"{r[4:]:>3}" for r in RELUS))
    if verbose:
        h += (" | ||w|| " + " ".join(f"{n:>6}" for n in PARAM_LAYERS)
              + " | ||g|| " + " ".join(f"{n:>7}" for n in PARAM_LAYERS))
    return h


def row(r, verbose):
    s = (f"{r['step']:>4} {r['lr']:>7.5f} {r['loss']:>7.3f} {r['ma10']:>6.3f} {r['max_logit']:>7.2f} "
         f"{r['lr'] * r['curv_fc8']:>6.2f} | " + " " * 11
         + " ".join(f"{1e3 * r['upd_' + n]:>5.1f}" for n in PARAM_LAYERS)
         + " |      " + " ".join(f"{100 * r['dead_' + x]:>3.0f}" for x in RELUS))
    if verbose:
        s += " |       " + " ".join(f"{r['w_' + n]:>6.2f}" for n in PARAM_LAYERS) + " |       " + \
             " ".join(f"{r['g_' + n]:>7.2e}" for n in PARAM_LAYERS)
    return s


def lr_at(recipe, base_lr, k):
    w = recipe["warmup"]
    return base_lr * (k + 1) / w if k < w else base_lr


def run(args):
    recipe = recipe_of(args)
    loader, num_classes = make_loader(args.batch_size, args.seed, recipe["scale"])
    model = build_model(recipe, num_classes, args.seed)
    rec = instrument(model)
    print(f"# recipe {args.recipe}: {recipe}; batch {args.batch_size}, lr {args.lr}, seed {args.seed}, "
          f"{num_classes} classes, chance ln {num_classes} = {math.log(num_classes):.3f}", flush=True)
    print(header(args.verbose), flush=True)
    records, losses, below, t0 = [], [], None, time.perf_counter()
    for k, (x, y) in zip(range(args.steps), batches(loader)):
        lr = lr_at(recipe, args.lr, k)
        rec.clear()
        rec.update(step=k + 1, lr=lr)
        step(model, x, y, lr, rec)
        losses.append(rec["loss"])
        rec["ma10"] = float(np.mean(losses[-10:]))
        rec["seconds"] = time.perf_counter() - t0
        if below is None and len(losses) >= 10 and rec["ma10"] < 2.0:
            below = k + 1
        records.append(dict(rec))
        print(row(rec, args.verbose), flush=True)
    sec = records[-1]["seconds"] / len(records)
    print(f"# {sec:.1f} s per step; 10-step mean loss below 2.0 first at step: {below}", flush=True)
    return dict(recipe_name=args.recipe, recipe=recipe, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                steps=args.steps, seconds_per_step=sec, ma10_below_2_at=below, records=records)


def main(argv=None):
    args = parse_args(argv)
    if os.environ.get("OPENBLAS_NUM_THREADS") is None:
        print("note: OPENBLAS_NUM_THREADS is not set; numpy may use every core", file=sys.stderr)
    result = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
