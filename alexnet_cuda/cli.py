"""The `alexnet-cuda` command line: train, eval, predict, prepare, visualize, gradcheck, ablate.

Every command runs through one wrapper (`_run`): a user error (alexnet_cuda.errors) prints one
`error:` line on stderr and exits with its class's status (2 for usage and data problems, 1 when
training diverged, 130 when it was interrupted); Ctrl-C outside training exits 130.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from . import __version__, ablate, data, distributed, evaluate, gradcheck, timing, train, visualize
from .backends import cuda_unusable_reason, default_backend_name
from .cliargs import (add_backend_argument, add_devices_argument, add_precision_argument, dropout_probability,
                      non_negative_int, positive_float, positive_int)
from .errors import (EXIT_INTERRUPTED, EXIT_USAGE, AlexNetError, BackendError, DivergedError, TrainError,
                     TrainingInterrupted)
from .model import ACTIVATIONS, INITS, POOLS, PRESETS
from .runfolder import CHECKPOINT

__all__ = ["main", "build_parser"]


def _log(*args, **kw):
    """print() to stdout, flushed; once stdout is a closed pipe (`... | head`) the rest goes nowhere."""
    try:
        print(*args, **kw, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------

def _train_arguments(t):
    t.add_argument("--data", help="image folder with train/ and val/ (one sub-folder per class), a folder with the "
                                  "official ImageNet archives or the Kaggle ImageNet layout, or a prepared folder; "
                                  "all but the last are prepared into the cache once")
    t.add_argument("--out", help="run folder for config.json, metrics.jsonl, checkpoint.safetensors and "
                                 "curves.png (default runs/alexnet-<preset>)")
    t.add_argument("--epochs", type=positive_int, help="epochs to train (default: the preset's, full 90, small 25)")
    t.add_argument("--batch-size", type=positive_int, help="batch size (default: the preset's, full 128, small 64)")
    t.add_argument("--lr", type=positive_float,
                   help="initial learning rate (default: the preset's, full 0.005, small 0.01; the paper's is 0.01)")
    t.add_argument("--warmup", type=non_negative_int,
                   help="steps over which the lr rises linearly to --lr (default: the preset's; 0 = none, the "
                        "paper's)")
    t.add_argument("--preset", choices=sorted(PRESETS),
                   help="full: the paper's network at 227x227; small: quarter width at 67x67 "
                        "(default: full on cuda, small otherwise)")
    t.add_argument("--init", choices=INITS, help="weight init (default: the preset's; 'paper' is the paper's)")
    add_precision_argument(t, "fp32")
    add_backend_argument(t)
    add_devices_argument(t)
    t.add_argument("--seed", type=int, help="seed of the init, the batches and dropout (default 0)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--workers", type=non_negative_int,
                   help="threads preparing batches ahead (default: up to 8 on cuda; 0, in the loop, on the "
                        "CPU backends)")
    t.add_argument("--sync-every", type=positive_int,
                   help="steps between two reads of the loss by the host (default: 20 on cuda, where the host "
                        "queues the next steps meanwhile; 1 on the CPU backends); the results do not depend on it")
    t.add_argument("--conv-algorithms", choices=("auto", "gemm"),
                   help="auto (default): on cuda, time the implicit GEMM and Winograd on each 3x3 convolution at "
                        "the start and use the faster (the choice is kept with the run, so --resume computes the "
                        "same); gemm: the implicit GEMM everywhere. With --resume, either decides afresh")
    t.add_argument("--patience", type=positive_int,
                   help="epochs without a lower val error before lr is divided by 10 (default 2)")
    t.add_argument("--schedule", help="'plateau' (default: the paper's, lr/10 on plateaus, at most 3 times) "
                                      "or 'step:E1,E2,...' (lr/10 after those epochs)")
    t.add_argument("--gpus", type=positive_int,
                   help="train data-parallel on N GPUs of this machine: starts N processes with mpiexec (needs "
                        "`pip install .[mpi]`); --batch-size stays the global batch. On several machines, start "
                        "`mpirun`/`srun ... alexnet-cuda train` yourself (README). On the CPU backends N processes "
                        "share the cores")
    _variant_arguments(t)


# The model variant options: train's option names -> its config keys (`alexnet-cuda ablate` compares them)
VARIANT_OPTIONS = ("activation", "lrn", "pool", "towers", "dropout", "lighting", "flip")


def _variant_arguments(t):
    """The model variants, each defaulting to the paper's choice (recorded in config.json and the checkpoint)."""
    on_off = argparse.BooleanOptionalAction
    t.add_argument("--activation", choices=ACTIVATIONS, help="the hidden units: relu (default, the paper's) or tanh "
                                                              "(the saturating unit of its Figure 1)")
    t.add_argument("--lrn", action=on_off, help="local response normalization after conv1 and conv2 (default on)")
    t.add_argument("--pool", choices=tuple(POOLS), help="max-pooling: overlapping 3x3 at stride 2 (default, the "
                                                        "paper's) or non-overlapping 2x2 at stride 2")
    t.add_argument("--towers", type=int, choices=(1, 2), help="towers (the paper's two GPUs; default 2)")
    t.add_argument("--dropout", type=dropout_probability,
                   help="dropout probability after fc6 and fc7 (default: the preset's, full 0.5, small 0)")
    t.add_argument("--lighting", action=on_off, help="the PCA lighting augmentation (default on)")
    t.add_argument("--flip", action=on_off, help="random horizontal flips (default on)")


def variant_config(args):
    """The config keys of the variant options given in `args` (None for those not given)."""
    light = getattr(args, "lighting", None)
    return dict(activation=args.activation, lrn=args.lrn, pool=args.pool, towers=args.towers, dropout=args.dropout,
                pca_std=None if light is None else (train.PCA_STD if light else 0.0), flip=args.flip)


def _choose_backend(args):
    """(backend name, preset, note or None): --backend, else ALEXNET_CUDA_BACKEND, else the machine."""
    if args.backend == "cuda":
        why = cuda_unusable_reason()
        if why is not None:
            raise BackendError(f"--backend cuda cannot run here: {why}. Use --backend numpy (or emu).")
    name, why = (args.backend, None) if args.backend else default_backend_name()
    preset = args.preset or ("full" if name == "cuda" else "small")
    note = None
    if why is not None:
        p = PRESETS[preset]
        note = (f"the cuda backend cannot run here ({why}): training the '{preset}' preset (width {p['width']:g}, "
                f"{p['input_size']}x{p['input_size']} input, {p['init']} init) on the numpy backend")
    return name, preset, note


def _find_run_folder(args):
    if args.out is not None:
        return args.out
    cands = [Path(f"runs/alexnet-{p}") for p in ([args.preset] if args.preset else sorted(PRESETS))]
    found = [c for c in cands if (c / CHECKPOINT).is_file()]
    if len(found) != 1:
        raise TrainError("--resume: give --out (the run folder holding checkpoint.safetensors)")
    return found[0]


def _cmd_train(args):
    """train AlexNet (no --data: the built-in synthetic set)

    Train AlexNet. Without --data, a synthetic 10-class set of rendered shapes and textures is generated
    once (cached) and used. Without a usable GPU the numpy backend and the small preset are chosen.
    Started by mpiexec/mpirun/srun with several ranks (or with --gpus N), the ranks train one model
    data-parallel."""
    ranks = distributed.launched_ranks()
    if args.gpus is not None and ranks == 1 and args.gpus > 1:
        return distributed.launch(args.gpus, _without_gpus(getattr(args, "argv", sys.argv[1:])), _log)
    if args.gpus is not None and ranks > 1 and args.gpus != ranks:
        raise TrainError(f"--gpus {args.gpus}, but this process is one of {ranks} ranks started by MPI; drop --gpus "
                         f"when starting the ranks yourself")
    if args.resume:
        for name in ("data", "batch_size", "lr", "warmup", "preset", "seed", "patience", "schedule", "init",
                     *VARIANT_OPTIONS, "precision"):
            if getattr(args, name) is not None:
                _log(f"note: --{name.replace('_', '-')} is ignored with --resume (the checkpoint's is used)")
        return train.train(resume=True, out=_find_run_folder(args), log=_log,
                       overrides={"epochs": args.epochs, "workers": args.workers, "backend": args.backend,
                                  "devices": args.devices, "sync_every": args.sync_every,
                                  "conv_algorithms": args.conv_algorithms})
    backend, preset, note = _choose_backend(args)
    if note:
        _log(note)
    src = args.data
    if src is None:  # the built-in set; rank 0 of a data-parallel job renders it first
        world = distributed.world()
        src = world.rank0_first(lambda: train.builtin_data(preset, log=_log if world.writer else None))
    cfg = train.default_config(preset=preset, backend=backend, data=str(src), out=args.out or f"runs/alexnet-{preset}",
                           epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                           seed=args.seed, workers=args.workers, patience=args.patience, schedule=args.schedule,
                           init=args.init, devices=args.devices, precision=args.precision,
                           sync_every=args.sync_every, conv_algorithms=args.conv_algorithms, **variant_config(args))
    return train.train(cfg, log=_log)


def _without_gpus(argv):
    """argv without its --gpus option (the ranks that --gpus starts must not start more)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            out.append(a)
    return out


# ---------------------------------------------------------------------------
# prepare, eval, predict
# ---------------------------------------------------------------------------

def _prepare_arguments(p):
    p.add_argument("src", help="image folder with train/ and val/ (one sub-folder per class), a folder holding "
                               "ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz, "
                               "or the Kaggle ImageNet folder (with ILSVRC/Data/CLS-LOC/)")
    p.add_argument("dst", help="output folder")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="prepare at the size this preset trains on (full 256, small 76); default: the preset "
                        "`alexnet-cuda train` picks on this machine (full with a GPU, small without)")
    p.add_argument("--size", type=positive_int, help="side of the packed images (overrides --preset)")
    p.add_argument("--force", action="store_true",
                   help="overwrite DST when it was prepared from another source or an older state of SRC")
    p.add_argument("--workers", type=positive_int, help="decoding processes (default: all cores)")
    p.add_argument("--storage", choices=("raw", "jpeg"), default="raw",
                   help="raw: uint8 arrays (192 KB per 256x256 image); jpeg: each image as a JPEG "
                        "(about 25 KB for ImageNet-like photos, decoded by the training loader's threads)")
    p.add_argument("--jpeg-quality", type=positive_int, default=None, help="JPEG quality 1..100 (default 90)")


def _cmd_prepare(args):
    """resize, centre-crop and pack an image folder for training

    Resize every image of SRC's training and validation sets so its shorter side is the size, keep the
    centre square, and pack them with the mean image and the PCA of the pixels into DST (resumable). SRC
    is an image folder (train/CLASS/, val/CLASS/), the official ImageNet archives (read in place) or the
    Kaggle ImageNet layout; which one was found is said in the first line."""
    size = args.size
    if size is None:
        preset = args.preset or ("full" if default_backend_name()[0] == "cuda" else "small")
        size = PRESETS[preset]["data_size"]
        _log(f"prepare: {size}x{size} images, the size the '{preset}' preset trains on (--size or --preset to "
             f"choose another)")
    data.prepare_dataset(args.src, args.dst, size=size, log=_log, workers=args.workers, force=args.force,
                         storage=args.storage, jpeg_quality=args.jpeg_quality)
    return 0


def _eval_arguments(e):
    e.add_argument("--checkpoint", required=True, help="checkpoint.safetensors of a run")
    e.add_argument("--data", help="image folder with val/ (train/ is not needed), or a prepared folder; default: "
                                  "the one trained on")
    e.add_argument("--ten-crop", action="store_true", help="average the softmax over the paper's ten patches")
    e.add_argument("--batch-size", type=positive_int, help="images per batch (default 256, ten-crop 32)")
    add_backend_argument(e)
    add_devices_argument(e)
    add_precision_argument(e, "the precision the run trained at")


def _cmd_eval(args):
    """top-1/top-5 error of a checkpoint on a val/ split

    Top-1 and top-5 error of a checkpoint on the val/ split of an image folder (prepared into the cache
    on first use; train/ is not needed) or of a prepared folder, with the centre crop or the paper's
    ten patches."""
    evaluate.evaluate(args.checkpoint, args.data, ten_crop=args.ten_crop, batch_size=args.batch_size, backend=args.backend,
             log=_log, devices=args.devices, precision=args.precision)
    return 0


def _predict_arguments(p):
    p.add_argument("--checkpoint", required=True, help="checkpoint.safetensors of a run")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--top", type=positive_int, default=5, help="classes to show per image (default 5)")
    add_backend_argument(p)


def _cmd_predict(args):
    """top-5 classes of images

    The most likely classes of each image, with their probabilities. Needs only the checkpoint: the
    class names and the training mean image are stored in it."""
    failed = []

    def report(path, err):
        failed.append(path)
        print(f"error: {err}", file=sys.stderr)

    results = evaluate.predict(args.checkpoint, args.images, top=args.top, backend=args.backend, on_error=report)
    if results:
        _log(evaluate.format_predictions(results))
    return EXIT_USAGE if failed else 0


# ---------------------------------------------------------------------------
# The parser and the wrapper
# ---------------------------------------------------------------------------

def _visualize(args):
    """pictures: conv1 filters, top-5 predictions, nearest neighbours, curves

    Pictures of a trained network (the paper's section 6.1): conv1_filters.png, predictions.png,
    neighbours.png and curves.png in --out. Drawn with Pillow."""
    return visualize.run(args, log=_log)


def _time(args):
    """time each layer of a training step (ours, and PyTorch's when importable)

    Print the milliseconds of each layer's forward and backward pass and of the SGD update in one
    training step of the chosen preset (median of --repeats steps), PyTorch's for the same layers on
    the same device when torch is importable, and the ratio ours / PyTorch."""
    return timing.run(args, log=_log)


def _ablate(args):
    """train variants over seeds and compare them (the paper's ablations, Figure 1)

    Train each chosen model variant (the paper's choices, one undone at a time) once per seed on the
    built-in synthetic set (or --data), each run in its own folder under --out, and write ablation.md,
    ablation.json and ablation.png: final validation errors as mean and spread over the seeds, epochs to
    the target error, wall time, validation curves. --figure1 instead trains ReLU and tanh from the same
    initial weights and draws their training error (figure1.png). Running it again resumes the study."""
    backend, preset, note = _choose_backend(args)
    if note:
        _log(note)
    src = args.data if args.data is not None else train.builtin_data(preset, log=_log)
    run = ablate.run_figure1 if args.figure1 else ablate.run_study
    return run(args, backend, preset, src, log=_log)


def _gradcheck(args):
    return gradcheck.run(args, log=_log)


_gradcheck.__doc__ = "finite-difference checks of every backward\n\n" + gradcheck.DESCRIPTION


# name: (add its arguments, run it); each runner's docstring is its help line, a blank line, and
# its description
_COMMANDS = {
    "train": (_train_arguments, _cmd_train),
    "eval": (_eval_arguments, _cmd_eval),
    "predict": (_predict_arguments, _cmd_predict),
    "prepare": (_prepare_arguments, _cmd_prepare),
    "visualize": (visualize.add_arguments, _visualize),
    "gradcheck": (gradcheck.add_arguments, _gradcheck),
    "time": (timing.add_arguments, _time),
    "ablate": (ablate.add_arguments, _ablate),
}


def build_parser():
    p = argparse.ArgumentParser(prog="alexnet-cuda",
                                description="Train, evaluate and run the paper's AlexNet (hand-written CUDA "
                                            "kernels, with CPU backends for machines without a GPU).")
    p.add_argument("--version", action="version", version=f"alexnet-cuda {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_arguments, run) in _COMMANDS.items():
        help_line, _, description = run.__doc__.partition("\n\n")
        description = " ".join(description.split())
        s = sub.add_parser(name, help=help_line.strip(), description=description)
        add_arguments(s)
        s.set_defaults(run=run)
    return p


def _run(run, args):
    """Run a command; user errors become one `error:` line and their exit status. In a data-parallel
    job, an error of one rank ends every rank (distributed.abort_job), except the stops the ranks agree
    on (a diverged loss, Ctrl-C), after which each rank exits with the same status."""
    try:
        return run(args) or 0
    except (DivergedError, TrainingInterrupted) as e:
        if e.exit_code != EXIT_INTERRUPTED:  # an interrupted run has said where it stopped
            print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except AlexNetError as e:
        distributed.abort_job(e.exit_code, f"error: {e}")
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        distributed.abort_job(EXIT_INTERRUPTED, "interrupted")
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as e:
        if not isinstance(e, SystemExit):
            traceback.print_exc()
            distributed.abort_job(1, f"{type(e).__name__}: {e}")
        raise


def main(argv=None):
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return _run(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
