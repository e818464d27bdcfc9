"""Does bf16 follow the fp32 loss curve? The first N training steps of a preset at each precision,
from the same initial weights on the same batches, with every step's loss recorded.

    python benchmarks/precision_curve.py [--backend cuda] [--preset full] [--steps 1000]
                                         [--precisions fp32,bf16] [--data DIR]

Batches are a pure function of (seed, epoch, batch) and dropout masks of (seed, step), so the runs see
the same images and masks: any difference between the curves is the precision's. Writes
results/precision_curve_<preset>.json/.md (the mean loss over windows of steps and the largest gap
between the precisions' windows; card, driver, date, commit) and precision_curve_<preset>.png (each
run's loss per step, averaged over windows of 10 steps). Without --data it trains on the built-in
synthetic set, rendered and prepared once into the cache (ALEXNET_CUDA_CACHE).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from alexnet_cuda import data as D  # noqa: E402
from alexnet_cuda import train as T  # noqa: E402
from alexnet_cuda.backends import resolve_backend  # noqa: E402
from alexnet_cuda.model import PRESETS, from_preset  # noqa: E402
from alexnet_cuda.precision import check_precision  # noqa: E402
from alexnet_cuda.visualize import comparison_image, save_png  # noqa: E402

WINDOW = 10  # steps per point of the picture


def losses(be, preset, precision, ds, steps, seed=0):
    """Every step's loss for `steps` steps of `preset` at `precision` (constant lr: the preset's)."""
    p = PRESETS[preset]
    model = from_preset(preset, ds.num_classes, backend=be, seed=seed, precision=precision)
    loader = D.TrainLoader(ds, batch_size=p["batch_size"], crop=p["input_size"], seed=seed, scale=p["input_scale"])
    out, epoch = [], 0
    while len(out) < steps:
        for x, y in loader.epoch(epoch):
            out.append(model.train_step(x, y, p["lr"]))
            if len(out) == steps:
                break
        epoch += 1
    return out, len(loader)


def windows(values, w=WINDOW):
    return [sum(values[i:i + w]) / len(values[i:i + w]) for i in range(0, len(values), w)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default=None, help="default: cuda when a GPU is usable, else numpy")
    ap.add_argument("--preset", default="full", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--data", default=None, help="an image folder or prepared folder (default: the built-in set)")
    args = ap.parse_args(argv)
    precisions = [check_precision("--precisions", s.strip()) for s in args.precisions.split(",") if s.strip()]
    be = resolve_backend(args.backend)
    src = args.data or T.builtin_data(args.preset)
    ds = D.PreparedDataset(D.ensure_prepared(src, None, size=PRESETS[args.preset]["data_size"]), "train")
    runs = {}
    for prec in precisions:
        runs[prec], per_epoch = losses(be, args.preset, prec, ds, args.steps)
        print(f"precision_curve: {prec}: loss {runs[prec][0]:.4f} at step 1, {runs[prec][-1]:.4f} at step "
              f"{len(runs[prec])}")
    name = f"precision_curve_{args.preset}"
    means = {prec: windows(v, 100) for prec, v in runs.items()}
    base = means[precisions[0]]
    rows = [{"steps": f"{100 * i + 1}-{100 * (i + 1)}", **{prec: m[i] for prec, m in means.items()},
             **{f"{prec} - {precisions[0]}": means[prec][i] - base[i] for prec in precisions[1:]}}
            for i in range(len(base))]
    notes = [f"The {args.preset} preset on {args.data or 'the built-in synthetic set'} ({ds.num_classes} classes), "
             f"backend {be.name}, batch {PRESETS[args.preset]['batch_size']}, constant lr "
             f"{PRESETS[args.preset]['lr']}, seed 0: same initial weights, batches and dropout masks at every "
             f"precision. Mean training loss per 100 steps ({per_epoch} steps per epoch)."]
    cols = ["steps", *precisions, *[f"{prec} - {precisions[0]}" for prec in precisions[1:]]]
    print(common.write_results(name, rows, cols, title=f"Loss curve by precision ({args.preset} preset, first "
                               f"{args.steps} steps)", notes=notes))
    curves = [(prec, [((i + 1) * WINDOW / per_epoch, v) for i, v in enumerate(windows(vals))])
              for prec, vals in runs.items()]
    save_png(comparison_image(curves, ylabel="training loss", percent=False,
                              note=f"training loss per step (mean of {WINDOW}), {args.preset} preset, {be.name}"),
             common.RESULTS / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
