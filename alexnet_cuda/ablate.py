"""`alexnet-cuda ablate`: the paper's arguments for its choices, measured by command.

    alexnet-cuda ablate [--variants baseline,no-lrn,...] [--seeds 0,1] [--epochs N] [--out DIR]
    alexnet-cuda ablate --figure1 [--seeds 0] [--epochs N] [--out DIR]

A study trains every chosen variant (VARIANTS: the baseline with one of the paper's choices undone)
once per seed, each run in its own run folder OUT/<variant>/seed<k> (an ordinary `alexnet-cuda train`
run folder: config.json, metrics.jsonl, checkpoint, curves.png), on the built-in synthetic set unless
--data is given, and writes (atomically, after every variant, so a partial study is readable):

* ablation.json  the study's settings and per variant: the final validation top-1 and top-5 error
                 as mean and sample standard deviation over the seeds, the difference to the
                 baseline, the epochs to reach the stated validation top-1 error (`--target`), the
                 wall time of a run, and the per-seed numbers;
* ablation.md    the same as a table, with what the paper claims for each choice;
* ablation.png   the validation top-1 error per epoch of every variant (mean over the seeds, with
                 a thin bar spanning the seeds at each epoch).

The baseline is the paper's choices (PAPER_CHOICES: ReLU, LRN, overlapping pooling, two towers,
dropout 0.5, PCA lighting, flips) on the preset's network size, init and learning rate; note that the
"small" preset's own default trains without dropout, while the study's baseline has the paper's 0.5.

`--figure1` trains the ReLU and tanh versions of the same network from the same initial weights (the
same seed gives the same init: the activation changes no shape) without dropout (the paper's
Figure 1 network had no regularization) into OUT/figure1-relu and OUT/figure1-tanh, and draws their
training error per epoch (figure1.png, figure1.json, figure1.md) with the epochs each needs to reach
the target (25%, the paper's) and the speed-up. The training error of an epoch is recorded by
`train` as `train_top1_err`: the top-1 error on the epoch's training batches in their train-mode
forward (see runfolder.EpochTotals). The epoch at which a curve reaches the target is interpolated
linearly between the epochs around the crossing, from the chance error 1 - 1/classes at epoch 0.

Re-running the same command resumes a half-finished study: a run that has all its epochs is kept, a
run with a checkpoint is continued through train's resume (exactly), a missing run is started. A run
folder whose checkpoint was trained with other settings is an error, not silently reused.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from . import checkpoint as ckpt
from . import runfolder as rf
from . import train as T
from .cliargs import add_backend_argument, positive_float, positive_int
from .errors import TrainError
from .files import atomic_write_json, atomic_write_text
from .model import PRESETS
from .visualize import comparison_image, save_png

__all__ = ["VARIANTS", "DEFAULT_VARIANTS", "PAPER_CHOICES", "PAPER_CLAIMS", "add_arguments", "run_study",
           "run_figure1", "summarize", "reach_epoch", "ABLATION_JSON", "ABLATION_MD", "ABLATION_PNG",
           "FIGURE1_JSON", "FIGURE1_MD", "FIGURE1_PNG"]

ABLATION_JSON, ABLATION_MD, ABLATION_PNG = "ablation.json", "ablation.md", "ablation.png"
FIGURE1_JSON, FIGURE1_MD, FIGURE1_PNG = "figure1.json", "figure1.md", "figure1.png"

# The paper's choices (the study's baseline), as `train` config keys.
PAPER_CHOICES = dict(activation="relu", lrn=True, pool="overlapping", towers=2, dropout=0.5, pca_std=T.PCA_STD,
                     flip=True)
# variant -> the config keys it changes from the baseline
VARIANTS = {
    "baseline": {},
    "no-lrn": {"lrn": False},
    "non-overlapping-pool": {"pool": "non-overlapping"},
    "one-tower": {"towers": 1},
    "no-dropout": {"dropout": 0.0},
    "tanh": {"activation": "tanh"},
    "no-lighting": {"pca_std": 0.0},
    "no-flip": {"flip": False},
}
DEFAULT_VARIANTS = ("baseline", "no-lrn", "non-overlapping-pool", "one-tower", "no-dropout", "tanh")
# What the paper measured for each choice (ImageNet, the full network; docs/PAPER notes, sections 3-4).
PAPER_CLAIMS = {
    "baseline": "the paper's network",
    "no-lrn": "LRN lowers top-1/top-5 error by 1.4/1.2 points (section 3.3)",
    "non-overlapping-pool": "overlapping pooling lowers top-1/top-5 error by 0.4/0.3 points, slightly less "
                            "overfitting (section 3.4)",
    "one-tower": "two towers beat one tower of HALF the width by 1.7/1.2 points (section 3.2); ours keeps "
                 "the width, so one tower has more connections",
    "no-dropout": "without dropout, substantial overfitting; dropout roughly doubles the iterations to "
                  "converge (section 4.2)",
    "tanh": "ReLUs reach 25% training error six times faster than tanh (Figure 1, CIFAR-10)",
    "no-lighting": "PCA lighting lowers top-1 error by over 1 point (section 4.1)",
    "no-flip": "without the translations and reflections, substantial overfitting (section 4.1)",
}
# The config keys a kept or resumed run must share with the study's (else its folder belongs to another study).
_SAME = ("preset", "batch_size", "lr", "seed", "width", "input_size", "init", *PAPER_CHOICES)


# ---------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------

def parse_variants(text):
    names = [v.strip() for v in str(text).split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise TrainError(f"--variants: unknown variant(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(VARIANTS)}")
    return list(dict.fromkeys(names))


def parse_seeds(text):
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise TrainError(f"--seeds: expected a comma-separated list of integers such as 0,1,2, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise TrainError(f"--seeds: expected integers >= 0, got {text!r}")
    return list(dict.fromkeys(seeds))


def run_config(base, changes, seed, out):
    """The `train` config of one run: the study's `base` keys, the paper's choices, the variant's `changes`."""
    return T.default_config(**{**base, **PAPER_CHOICES, **changes, "seed": seed, "out": str(out)})


def _check_same(cfg, folder):
    meta = ckpt.read_metadata(Path(folder) / rf.CHECKPOINT)
    have = json.loads(meta.get("config", "{}"))
    have.setdefault("activation", "relu")
    have.setdefault("pool", "overlapping")
    diff = [k for k in _SAME if have.get(k) != cfg.get(k)]
    if diff:
        said = ", ".join(f"{k} {have.get(k)!r}, here {cfg.get(k)!r}" for k in diff)
        raise TrainError(f"{folder} holds a run with other settings ({said}); choose another --out or remove "
                         f"that folder")
    return int(meta.get("epoch", 0))


def ensure_run(cfg, log):
    """Train the run of `cfg` to cfg["epochs"]: keep it when done, resume it when started, else start it.
    Returns "kept", "resumed" or "trained"."""
    folder = Path(cfg["out"])
    if (folder / rf.CHECKPOINT).is_file():
        if _check_same(cfg, folder) >= cfg["epochs"]:
            return "kept"
        T.train(resume=True, out=folder, overrides={"epochs": cfg["epochs"]}, log=log)
        return "resumed"
    T.train(cfg, log=log)
    return "trained"


def _records(folder, epochs):
    return [r for r in rf.read_metrics(Path(folder) / rf.METRICS) if int(r["epoch"]) <= epochs]


def _prefixed(log, prefix):
    return lambda *a, **k: log(prefix + " ".join(str(x) for x in a))


# ---------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------

def _mean_sd(values):
    """(mean, sample standard deviation) of the values that are not None; (None, None) when none are."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None, None
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, sd


def reach_epoch(records, key, target, start=None):
    """The (fractional) epoch at which `key` first drops to `target` or below, linearly interpolated
    between the records around the crossing (from `start` at epoch 0 when given, else the first record
    counts as reached at its own epoch); None when it never does."""
    prev = (0.0, start) if start is not None else None
    for r in records:
        e, v = float(r["epoch"]), r.get(key)
        if v is None:
            continue
        if v <= target:
            if prev is None or prev[1] is None or prev[1] <= v:
                return e
            e0, v0 = prev
            return e0 + (e - e0) * (v0 - target) / (v0 - v)
        prev = (e, v)
    return None


def summarize_runs(runs, target):
    """The numbers of one variant from its runs [(seed, records), ...]."""
    last = [(s, recs[-1]) for s, recs in runs if recs]
    t1 = _mean_sd([r["val_top1_err"] for _, r in last])
    t5 = _mean_sd([r["val_top5_err"] for _, r in last])
    reach = [reach_epoch(recs, "val_top1_err", target) for _, recs in runs]
    secs = [sum(float(r.get("seconds") or 0.0) for r in recs) for _, recs in runs if recs]
    return {"seeds": [s for s, _ in runs], "epochs": [len(recs) for _, recs in runs],
            "val_top1_err": {"mean": t1[0], "sd": t1[1]}, "val_top5_err": {"mean": t5[0], "sd": t5[1]},
            "final_val_top1_err": [r["val_top1_err"] for _, r in last],
            "final_val_top5_err": [r["val_top5_err"] for _, r in last],
            "epochs_to_target": reach, "epochs_to_target_mean": _mean_sd(reach)[0] if None not in reach else None,
            "seconds_per_run": _mean_sd(secs)[0]}


def summarize(per_variant, target):
    """{variant: numbers} from {variant: [(seed, records), ...]}, with the top-1/top-5 difference to the baseline."""
    out = {v: summarize_runs(runs, target) for v, runs in per_variant.items()}
    base = out.get("baseline")
    for v, s in out.items():
        for key in ("val_top1_err", "val_top5_err"):
            b = base[key]["mean"] if base else None
            s[key]["minus_baseline"] = None if b is None or s[key]["mean"] is None else s[key]["mean"] - b
    return out


# ---------------------------------------------------------------------------
# The files
# ---------------------------------------------------------------------------

def _pct(v, sd=None):
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def _duration(secs):
    if secs is None:
        return "n/a"
    return f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.1f} min"


def _changes(v):
    return ", ".join(f"{k} {val}" for k, val in VARIANTS[v].items()) or "none"


def ablation_markdown(study, summary):
    t = study["target"]
    lines = [f"# Ablation: {study['preset']} preset, {study['epochs']} epochs, seeds {study['seeds']}", "",
             f"Data: {Path(study['data']).name}. Backend: {study['backend']}. Baseline: the paper's choices "
             f"({', '.join(f'{k} {v}' for k, v in PAPER_CHOICES.items())}) on the preset's network. Errors are the "
             f"final epoch's validation errors (centre crops), mean ± sample standard deviation over the seeds; "
             f"\"epochs to {t:.0%}\" is the (interpolated) epoch at which the validation top-1 error first reached "
             f"{t:.0%} (mean over seeds; n/a when a seed never did); time is the wall time of one run.", "",
             f"| variant | changes | val top-1 err | val top-5 err | top-1 − baseline | epochs to {t:.0%} | "
             f"time per run | the paper |", "|---|---|---|---|---|---|---|---|"]
    for v, s in summary.items():
        d = s["val_top1_err"]["minus_baseline"]
        reach = s["epochs_to_target_mean"]
        secs = s["seconds_per_run"]
        lines.append(f"| {v} | {_changes(v)} | {_pct(s['val_top1_err']['mean'], s['val_top1_err']['sd'])} | "
                     f"{_pct(s['val_top5_err']['mean'], s['val_top5_err']['sd'])} | "
                     f"{'n/a' if d is None else f'{100 * d:+.1f} points'} | "
                     f"{'n/a' if reach is None else f'{reach:.1f}'} | "
                     f"{_duration(secs)} | {PAPER_CLAIMS[v]} |")
    return "\n".join(lines) + "\n"


def _mean_curve(runs, key):
    """[(epoch, mean over the runs that have it)], [(epoch, lo, hi)]."""
    by = {}
    for _, recs in runs:
        for r in recs:
            if r.get(key) is not None:
                by.setdefault(int(r["epoch"]), []).append(float(r[key]))
    pts = [(e, sum(v) / len(v)) for e, v in sorted(by.items())]
    return pts, [(e, min(v), max(v)) for e, v in sorted(by.items()) if len(v) > 1]


def write_study_files(out, study, per_variant):
    summary = summarize(per_variant, study["target"])
    out = Path(out)
    atomic_write_json(out / ABLATION_JSON, {"study": study, "paper_choices": PAPER_CHOICES,
                                            "variants": {v: {"changes": VARIANTS[v], "paper": PAPER_CLAIMS[v], **s}
                                                         for v, s in summary.items()}})
    atomic_write_text(out / ABLATION_MD, ablation_markdown(study, summary))
    curves = [(v, _mean_curve(runs, "val_top1_err")[0]) for v, runs in per_variant.items()]
    bands = {v: _mean_curve(runs, "val_top1_err")[1] for v, runs in per_variant.items()}
    note = (f"validation top-1 error, {study['preset']} preset, mean of seeds {','.join(map(str, study['seeds']))} "
            f"(bars: the seeds' range)")
    save_png(comparison_image(curves, ylabel="validation top-1 error", target=study["target"], note=note,
                              bands=bands), out / ABLATION_PNG)
    return summary


# ---------------------------------------------------------------------------
# The study and Figure 1
# ---------------------------------------------------------------------------

def _base(args, backend, preset, data):
    if not 0 < args.target < 1:
        raise TrainError(f"--target: expected an error between 0 and 1 (0.25 for 25%), got {args.target}")
    base = dict(preset=preset, backend=backend, data=str(data))
    for k in ("epochs", "batch_size", "lr"):
        if getattr(args, k, None) is not None:
            base[k] = getattr(args, k)
    base["epochs"] = base.get("epochs") or T.default_config(preset=preset)["epochs"]
    return base


def run_study(args, backend, preset, data, log=print):
    """Train every (variant, seed) run that is not done yet and write the study's files; returns 0."""
    variants, seeds, out = parse_variants(args.variants), parse_seeds(args.seeds), Path(args.out)
    base = _base(args, backend, preset, data)
    study = {"preset": preset, "backend": backend, "data": str(data), "epochs": base["epochs"], "seeds": seeds,
             "target": args.target, "variants": variants}
    out.mkdir(parents=True, exist_ok=True)
    per_variant = {}
    for v in variants:
        runs = []
        for s in seeds:
            cfg = run_config(base, VARIANTS[v], s, out / v / f"seed{s}")
            how = ensure_run(cfg, _prefixed(log, f"[{v} seed {s}] "))
            log(f"ablate: {v} seed {s}: {how} ({cfg['out']})")
            runs.append((s, _records(cfg["out"], base["epochs"])))
        per_variant[v] = runs
        write_study_files(out, study, per_variant)
    summary = write_study_files(out, study, per_variant)
    log(f"ablate: wrote {out / ABLATION_MD}, {out / ABLATION_JSON} and {out / ABLATION_PNG}")
    for v, s in summary.items():
        log(f"  {v:22s} val top-1 {_pct(s['val_top1_err']['mean'], s['val_top1_err']['sd'])}, "
            f"top-5 {_pct(s['val_top5_err']['mean'], s['val_top5_err']['sd'])}")
    return 0


def figure1_summary(curves, target, num_classes):
    """{"relu": epochs to target or None, "tanh": ..., "speedup": tanh / relu or None, "text": a line}."""
    chance = 1.0 - 1.0 / num_classes
    reach = {a: reach_epoch(recs, "train_top1_err", target, start=chance) for a, recs in curves.items()}
    r, t = reach.get("relu"), reach.get("tanh")
    epochs = max((len(recs) for recs in curves.values()), default=0)
    if r is not None and t is not None:
        speed = t / r
        text = (f"{target:.0%} training error: ReLU at epoch {r:.2f}, tanh at {t:.2f}: ReLU {speed:.1f}x faster "
                f"(paper: 6x)")
    elif r is not None:
        speed = None
        text = (f"{target:.0%} training error: ReLU at epoch {r:.2f}; tanh not in {epochs} epochs: ReLU more than "
                f"{epochs / r:.1f}x faster (paper: 6x)")
    else:
        speed, text = None, f"ReLU did not reach {target:.0%} training error in {epochs} epochs"
    return {"relu_epochs_to_target": r, "tanh_epochs_to_target": t, "speedup": speed, "text": text,
            "chance_error": chance}


def run_figure1(args, backend, preset, data, log=print):
    """The paper's Figure 1: ReLU and tanh from the same initial weights; returns 0."""
    seed, out = parse_seeds(args.seeds)[0], Path(args.out)
    base = _base(args, backend, preset, data)
    out.mkdir(parents=True, exist_ok=True)
    curves, num_classes = {}, None
    for act in ("relu", "tanh"):
        cfg = run_config(base, {"activation": act, "dropout": 0.0}, seed, out / f"figure1-{act}")
        how = ensure_run(cfg, _prefixed(log, f"[figure1 {act}] "))
        log(f"ablate --figure1: {act}: {how} ({cfg['out']})")
        curves[act] = _records(cfg["out"], base["epochs"])
        num_classes = json.loads((Path(cfg["out"]) / rf.CONFIG).read_text())["num_classes"]
    s = figure1_summary(curves, args.target, num_classes)
    atomic_write_json(out / FIGURE1_JSON, {"preset": preset, "backend": backend, "data": str(data), "seed": seed,
                                           "epochs": base["epochs"], "target": args.target, **s,
                                           "train_top1_err": {a: [r.get("train_top1_err") for r in recs]
                                                              for a, recs in curves.items()}})
    pts = [(name, [(int(r["epoch"]), r.get("train_top1_err")) for r in curves[a]])
           for name, a in (("ReLU", "relu"), ("tanh", "tanh"))]
    save_png(comparison_image(pts, ylabel="training error", target=args.target, note=s["text"]), out / FIGURE1_PNG)
    atomic_write_text(out / FIGURE1_MD, f"# Figure 1: ReLU against tanh ({preset} preset, seed {seed}, same initial "
                                        f"weights, no dropout)\n\n{s['text']}.\n")
    log(f"ablate --figure1: {s['text']}; wrote {out / FIGURE1_PNG}")
    return 0


def add_arguments(p):
    """The options of `alexnet-cuda ablate`."""
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated variants to train (default {','.join(DEFAULT_VARIANTS)}; also "
                        f"{','.join(v for v in VARIANTS if v not in DEFAULT_VARIANTS)})")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds, one run per variant each (default 0,1; "
                                                  "--figure1 uses the first)")
    p.add_argument("--figure1", action="store_true",
                   help="the paper's Figure 1 instead: ReLU against tanh from the same initial weights")
    p.add_argument("--target", type=positive_float, default=0.25,
                   help="the error whose epoch is reported: validation top-1 in a study, training error with "
                        "--figure1 (default 0.25, the paper's Figure 1)")
    p.add_argument("--data", help="image folder or prepared folder (default: the built-in synthetic set)")
    p.add_argument("--out", default="runs/ablation", help="folder of the study's runs and files (default "
                                                          "runs/ablation)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="network size (default: full on cuda, small otherwise)")
    p.add_argument("--epochs", type=positive_int, help="epochs per run (default: the preset's)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default: the preset's)")
    p.add_argument("--lr", type=positive_float, help="learning rate (default: the preset's)")
    add_backend_argument(p)
