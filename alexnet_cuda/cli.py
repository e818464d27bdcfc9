"""The `alexnet-cuda` command line.

    alexnet-cuda train [--data DIR] [--out DIR] [--epochs N] [--batch-size N] [--lr F]
                       [--preset full|small] [--backend cuda|emu|numpy] [--seed N] [--resume]
                       [--workers N] [--patience N] [--schedule plateau|step:E1,E2,...]
    alexnet-cuda prepare SRC DST [--size N]
    alexnet-cuda eval --checkpoint CKPT [--data DIR] [--ten-crop]
    alexnet-cuda predict --checkpoint CKPT IMAGE...
    alexnet-cuda gradcheck [...]
    alexnet-cuda visualize [...]

User errors (missing folders, bad options, unreadable checkpoints, an
unavailable backend) print one `error:` line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys

from . import __version__

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


class UserError(Exception):
    pass


def _log(*args, **kw):
    print(*args, **kw, flush=True)


def build_parser():
    p = argparse.ArgumentParser(prog="alexnet-cuda",
                                description="Train, evaluate and run the paper's AlexNet (hand-written CUDA "
                                            "kernels, with CPU backends for machines without a GPU).")
    p.add_argument("--version", action="version", version=f"alexnet-cuda {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train AlexNet (no --data: the built-in synthetic set)",
                       description="Train AlexNet. Without --data, a synthetic 10-class set of rendered shapes "
                                   "and textures is generated once (cached) and used. Without a usable GPU the "
                                   "numpy backend and the small preset are chosen.")
    t.add_argument("--data", help="image folder with train/ and val/ (one sub-folder per class), or a prepared "
                                  "folder; raw folders are prepared into the cache once")
    t.add_argument("--out", help="run folder for config.json, metrics.jsonl, checkpoint.safetensors "
                                 "(default runs/alexnet-<preset>)")
    t.add_argument("--epochs", type=int, help="epochs to train (default: the preset's, full 90, small 25)")
    t.add_argument("--batch-size", type=int, help="batch size (default: the preset's, full 128, small 64)")
    t.add_argument("--lr", type=float, help="initial learning rate (default 0.01)")
    t.add_argument("--preset", choices=["full", "small"],
                   help="full: the paper's network at 227x227; small: quarter width at 67x67 "
                        "(default: full on cuda, small otherwise)")
    t.add_argument("--backend", choices=["cuda", "emu", "numpy"],
                   help="default: cuda when a usable GPU is present, else numpy")
    t.add_argument("--seed", type=int, help="seed of the init, the batches and dropout (default 0)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--workers", type=int, help="threads preparing batches ahead (default: up to 8 on cuda; 0, in the loop, on the "
                        "CPU backends)")
    t.add_argument("--patience", type=int,
                   help="epochs without a lower val error before lr is divided by 10 (default 2)")
    t.add_argument("--schedule", help="'plateau' (default: the paper's, lr/10 on plateaus, at most 3 times) "
                                      "or 'step:E1,E2,...' (lr/10 after those epochs)")
    t.add_argument("--init", choices=["paper", "he"], help="weight init (default: the preset's)")

    pr = sub.add_parser("prepare", help="resize, centre-crop and pack an image folder for training")
    pr.add_argument("src", help="image folder with train/ and val/")
    pr.add_argument("dst", help="output folder")
    pr.add_argument("--size", type=int, default=256, help="side of the packed images (default 256)")
    pr.add_argument("--workers", type=int, help="decoding processes (default: all cores)")

    e = sub.add_parser("eval", help="top-1/top-5 error of a checkpoint on a val/ split")
    e.add_argument("--checkpoint", required=True, help="checkpoint.safetensors of a run")
    e.add_argument("--data", help="image folder (or prepared folder); default: the one trained on")
    e.add_argument("--ten-crop", action="store_true", help="average the softmax over the paper's ten patches")
    e.add_argument("--batch-size", type=int, help="images per batch")
    e.add_argument("--backend", choices=["cuda", "emu", "numpy"], help="default: cuda if usable, else numpy")

    pd = sub.add_parser("predict", help="top-5 classes of images")
    pd.add_argument("--checkpoint", required=True, help="checkpoint.safetensors of a run")
    pd.add_argument("images", nargs="+", metavar="IMAGE")
    pd.add_argument("--top", type=int, default=5, help="classes to show (default 5)")
    pd.add_argument("--backend", choices=["cuda", "emu", "numpy"], help="default: cuda if usable, else numpy")

    sub.add_parser("gradcheck", help="finite-difference checks of every backward (see gradcheck --help)",
                   add_help=False)
    sub.add_parser("visualize", help="figures: conv1 filters, top-5 bars, nearest neighbours "
                                     "(see visualize --help)", add_help=False)
    return p


def _choose_backend(args):
    """(backend name, preset, note or None)."""
    from .backends import _cuda_unusable_reason

    preset = args.preset
    if args.backend is not None:
        if args.backend == "cuda":
            why = _cuda_unusable_reason()
            if why is not None:
                raise UserError(f"--backend cuda cannot run here: {why}. Use --backend numpy (or emu).")
        return args.backend, preset or ("full" if args.backend == "cuda" else "small"), None
    why = _cuda_unusable_reason()
    if why is None:
        return "cuda", preset or "full", None
    preset = preset or "small"
    from .model import PRESETS
    p = PRESETS[preset]
    return "numpy", preset, (f"the cuda backend cannot run here ({why}): training the '{preset}' preset (width {p['width']:g}, "
                             f"{p['input_size']}x{p['input_size']} input, {p['init']} init) on the numpy backend")


def _cmd_train(args):
    from . import train as T

    if args.resume:
        from pathlib import Path
        out = args.out
        if out is None:
            cands = [Path(f"runs/alexnet-{p}") for p in (args.preset,) if p] or \
                    [Path("runs/alexnet-small"), Path("runs/alexnet-full")]
            found = [c for c in cands if (c / T.CHECKPOINT).is_file()]
            if len(found) != 1:
                raise UserError("--resume: give --out (the run folder holding checkpoint.safetensors)")
            out = found[0]
        for name in ("data", "batch_size", "lr", "preset", "seed", "patience", "schedule", "init"):
            if getattr(args, name) is not None:
                _log(f"note: --{name.replace('_', '-')} is ignored with --resume (the checkpoint's is used)")
        return T.train(resume=True, out=out,
                       overrides={"epochs": args.epochs, "workers": args.workers, "backend": args.backend},
                       log=_log)

    backend, preset, note = _choose_backend(args)
    if note:
        _log(note)
    data = args.data
    if data is None:
        from .data import make_synthetic_dataset
        from .model import PRESETS
        # rendered at 96 px for the small preset (prepared at 76), at the prepared size for the full one
        size = 96 if PRESETS[preset]["data_size"] <= 96 else PRESETS[preset]["data_size"]
        data = str(make_synthetic_dataset(image_size=size, seed=0, log=_log))
    cfg = T.default_config(preset=preset, backend=backend, data=str(data),
                           out=args.out or f"runs/alexnet-{preset}", epochs=args.epochs,
                           batch_size=args.batch_size, lr=args.lr, seed=args.seed, workers=args.workers,
                           patience=args.patience, schedule=args.schedule, init=args.init)
    return T.train(cfg, log=_log)


def _cmd_prepare(args):
    from .data import prepare_dataset
    if args.size < 1:
        raise UserError(f"--size must be >= 1, got {args.size}")
    prepare_dataset(args.src, args.dst, size=args.size, log=_log, workers=args.workers)
    return 0


def main(argv=None):
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "gradcheck":
        from . import gradcheck
        return gradcheck.main(argv[1:]) or 0
    if argv and argv[0] == "visualize":
        try:
            from .visualize import main as vmain
        except ImportError as e:
            print(f"error: visualize is not available in this build ({e})", file=sys.stderr)
            return EXIT_USAGE
        return vmain(argv[1:]) or 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE

    from .checkpoint import CheckpointError
    from .data import DataError
    from .train import TrainError
    try:
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "prepare":
            return _cmd_prepare(args)
        if args.command == "eval":
            from .evaluate import main_eval
            return main_eval(args, log=_log)
        if args.command == "predict":
            from .evaluate import main_predict
            return main_predict(args)
    except (UserError, DataError, TrainError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as e:
        # get_backend's "cannot run here" and kernel-side errors: one line, no traceback
        if "backend" in str(e):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
