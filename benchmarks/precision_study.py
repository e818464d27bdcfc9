"""Does a precision train as well as fp32? The small preset over several seeds, one run per
(precision, seed), on a CPU backend; the final and best validation errors, their mean and seed-to-seed
spread per precision, into a markdown table and a JSON file.

    python benchmarks/precision_study.py [--precisions fp32,bf16] [--seeds 0,1,2,3] [--backend numpy]
                                         [--epochs N] [--out DIR]

Each run is `alexnet-cuda train --preset small --precision P --seed S` on the built-in data, in
DIR/P/seedS; re-running the command keeps finished runs and resumes started ones (alexnet_cuda.ablate's
ensure_run). Not a speed measurement: the wall times shown are whatever the machine gave.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from alexnet_cuda import ablate  # noqa: E402
from alexnet_cuda import train as T  # noqa: E402
from alexnet_cuda.precision import check_precision  # noqa: E402

NAME = "precision_small_cpu"


def run_all(args, log=print):
    """{precision: [(seed, records), ...]} after training every run that is not finished."""
    data = T.builtin_data("small", log=log) if args.data is None else args.data
    out = {}
    for p in args.precisions:
        runs = []
        for s in args.seeds:
            cfg = T.default_config(preset="small", backend=args.backend, precision=p, seed=s, data=str(data),
                                   epochs=args.epochs, out=str(Path(args.out) / p / f"seed{s}"))
            how = ablate.ensure_run(cfg, lambda *a, _p=p, _s=s: log(f"[{_p} seed {_s}] " + " ".join(map(str, a))))
            log(f"precision_study: {p} seed {s}: {how}")
            runs.append((s, ablate._records(cfg["out"], cfg["epochs"])))
        out[p] = runs
    return out


def summarize(per_precision):
    rows = {}
    for p, runs in per_precision.items():
        s = ablate.summarize_runs(runs, target=0.10)
        s["best_val_top1_err"] = [min(r["val_top1_err"] for r in recs) for _, recs in runs if recs]
        s["best_mean_sd"] = ablate._mean_sd(s["best_val_top1_err"])
        s["finite"] = all(r["train_loss"] == r["train_loss"] for _, recs in runs for r in recs)
        rows[p] = s
    return rows


def table(rows):
    """One row per precision for common.write_results."""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    out = []
    for p, s in rows.items():
        m, sd = s["val_top1_err"]["mean"], s["val_top1_err"]["sd"]
        bm, bsd = s["best_mean_sd"]
        reach = s["epochs_to_target_mean"]
        out.append({"precision": p, "seeds": ", ".join(map(str, s["seeds"])),
                    "final val top-1 per seed": ", ".join(pct(v) for v in s["final_val_top1_err"]),
                    "final mean ± sd": f"{pct(m)} ± {100 * (sd or 0):.1f}",
                    "best mean ± sd": f"{pct(bm)} ± {100 * (bsd or 0):.1f}",
                    "epochs to 10%": "n/a" if reach is None else f"{reach:.1f}",
                    "all losses finite": "yes" if s["finite"] else "NO", "runs": s})
    return out


COLUMNS = ["precision", "seeds", "final val top-1 per seed", "final mean ± sd", "best mean ± sd", "epochs to 10%",
           "all losses finite"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--backend", default="numpy", choices=("numpy", "emu"))
    ap.add_argument("--epochs", type=int, default=None, help="default: the small preset's")
    ap.add_argument("--data", default=None, help="default: the built-in synthetic set")
    ap.add_argument("--out", default="runs/precision_study")
    args = ap.parse_args(argv)
    args.precisions = [check_precision("--precisions", p.strip()) for p in args.precisions.split(",") if p.strip()]
    args.seeds = ablate.parse_seeds(args.seeds)
    args.epochs = args.epochs or T.default_config(preset="small")["epochs"]
    notes = [f"`alexnet-cuda train --preset small --backend {args.backend} --precision P --seed S` on the built-in "
             f"synthetic set (1,000 validation images), {args.epochs} epochs. Final and best validation top-1 error; "
             "mean ± sample standard deviation over the seeds; epochs to 10%: the interpolated epoch of the first "
             "validation top-1 error <= 10% (mean over the seeds). Not a speed measurement."]
    print(common.write_results(NAME, table(summarize(run_all(args))), COLUMNS,
                               title=f"Precision on the small preset ({args.backend} backend)", notes=notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
