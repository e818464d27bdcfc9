"""The training loop of `alexnet-cuda train`.

* SGD with momentum 0.9 and weight decay 5e-4 on weights (not biases), batch
  128 by default, the paper's learning-rate schedule: lr 0.01 divided by 10
  each time the validation top-1 error has not improved for `patience` epochs,
  at most three times ("plateau"); or a fixed step schedule ("step:30,60,80"
  divides lr by 10 after epochs 30, 60 and 80).
* A progress bar per epoch on stderr (loss, lr, images/s, ETA) that becomes a
  plain line every 30 s when stderr is not a terminal, and one summary line per
  epoch on stdout.
* OUT/config.json (the full configuration, including `data`),
  OUT/metrics.jsonl (one record per epoch: epoch, step, lr, train_loss,
  val_top1_err, val_top5_err, images_per_sec, seconds),
  OUT/checkpoint.safetensors, written atomically at every epoch end and on
  Ctrl-C: weights, momentum buffers, epoch, step, position in the epoch,
  schedule state, RNG state, partial-epoch loss, config, and the training mean
  image (so predict needs no dataset).
* `resume=True` continues from the checkpoint exactly: the batches are a pure
  function of (seed, epoch, batch), dropout masks of (seed, step), and the
  weights, momentum and schedule come from the checkpoint; on the CPU backends
  the resumed run's metrics equal an uninterrupted run's, bit for bit (timing
  fields aside).
* A NaN or infinite loss stops training with a message naming the step; the
  update of that step is not applied and the last good checkpoint is kept.
* A warning when the loss stays at ln(num_classes) (chance) for long.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .files import atomic_write_text
from .model import MOMENTUM, PRESETS, WEIGHT_DECAY, AlexNet
from .visualize import read_metrics, write_curves

__all__ = ["TrainError", "LRSchedule", "default_config", "train", "load_checkpoint", "model_from_checkpoint",
           "evaluate_model", "Progress", "CHECKPOINT", "METRICS", "CONFIG"]

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
FORMAT = "alexnet-cuda-checkpoint"
FORMAT_VERSION = "1"


# Config keys that `resume` may change; everything else comes from the checkpoint.
RESUME_OVERRIDES = ("epochs", "workers", "backend")

EXIT_OK, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 130


class TrainError(Exception):
    """A user-facing problem (bad option, missing checkpoint, ...): printed without a traceback."""


# ---------------------------------------------------------------------------
# BLAS threads on the CPU backends
# ---------------------------------------------------------------------------

_BLAS_ENV = ("ALEXNET_CUDA_BLAS_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads(n=None):
    """Set the thread count of the OpenBLAS that numpy loaded (default 1); returns the count set or None.

    Why: the small preset's matrices are small. Measured on a 2-core machine: one OpenBLAS thread trains
    at ~470-500 images/s, two at about the same when the cores are idle, and 10x slower (44-92 images/s)
    when another process shares the cores (OpenBLAS threads spin waiting for each other). Respects an
    explicit OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS (then it does nothing), and
    ALEXNET_CUDA_BLAS_THREADS=N picks N. Linux only (it finds the library in /proc/self/maps, as
    threadpoolctl does); elsewhere it does nothing.
    """
    import ctypes
    env = {k: os.environ.get(k) for k in _BLAS_ENV}
    if n is None:
        if env["ALEXNET_CUDA_BLAS_THREADS"]:
            try:
                n = int(env["ALEXNET_CUDA_BLAS_THREADS"])
            except ValueError:
                return None
        elif any(env[k] for k in _BLAS_ENV[1:]):
            return None
        else:
            n = 1
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    done = None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], None
                fn(int(n))
                done = int(n)
                break
    return done


# ---------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------

class LRSchedule:
    """lr0 divided by `factor` on plateaus of the validation error, or at fixed epochs.

    kind "plateau": after each epoch, an error lower than the best so far resets
    the count of bad epochs; `patience` bad epochs in a row divide lr by
    `factor` (and reset the count), at most `max_reductions` times.
    kind "step": lr0 / factor**k during epoch e (1-based) where k is the number
    of milestones < e (capped at max_reductions).
    """

    def __init__(self, lr, kind="plateau", *, patience=2, milestones=(), factor=10.0, max_reductions=3):
        if kind not in ("plateau", "step"):
            raise TrainError(f"unknown schedule {kind!r}; expected 'plateau' or 'step:E1,E2,...'")
        if not lr > 0:
            raise TrainError(f"the learning rate must be > 0, got {lr}")
        if patience < 1:
            raise TrainError(f"patience must be >= 1, got {patience}")
        self.lr0, self.kind, self.patience = float(lr), kind, int(patience)
        self.milestones = sorted(int(m) for m in milestones)
        self.factor, self.max_reductions = float(factor), int(max_reductions)
        self.lr, self.best, self.bad_epochs, self.reductions = float(lr), None, 0, 0

    @classmethod
    def parse(cls, spec, lr, patience):
        """From a --schedule string: 'plateau' or 'step:30,60,80'."""
        spec = (spec or "plateau").strip()
        if spec == "plateau":
            return cls(lr, "plateau", patience=patience)
        if spec.startswith("step:"):
            try:
                ms = [int(v) for v in spec[5:].split(",") if v.strip()]
            except ValueError:
                raise TrainError(f"bad --schedule {spec!r}: expected step:E1,E2,... with integer epochs") from None
            if not ms or any(m < 1 for m in ms):
                raise TrainError(f"bad --schedule {spec!r}: expected step:E1,E2,... with epochs >= 1")
            return cls(lr, "step", patience=patience, milestones=ms)
        raise TrainError(f"bad --schedule {spec!r}: expected 'plateau' or 'step:E1,E2,...'")

    def lr_for_epoch(self, epoch):
        """The lr of epoch `epoch` (0-based)."""
        if self.kind == "step":
            k = min(self.max_reductions, sum(1 for m in self.milestones if epoch + 1 > m))
            return self.lr0 / self.factor ** k
        return self.lr

    def end_epoch(self, epoch, val_err):
        """Record the validation error of epoch `epoch` (0-based); returns True when lr dropped."""
        improved = self.best is None or val_err < self.best
        if improved:
            self.best, self.bad_epochs = float(val_err), 0
        else:
            self.bad_epochs += 1
        if self.kind == "step":
            new = self.lr_for_epoch(epoch + 1)
            dropped = new < self.lr
            self.lr = new
            return dropped
        if not improved and self.bad_epochs >= self.patience and self.reductions < self.max_reductions:
            self.lr /= self.factor
            self.reductions += 1
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self):
        return {"lr0": self.lr0, "kind": self.kind, "patience": self.patience, "milestones": self.milestones,
                "factor": self.factor, "max_reductions": self.max_reductions, "lr": self.lr,
                "best": self.best, "bad_epochs": self.bad_epochs, "reductions": self.reductions}

    def load_state_dict(self, s):
        self.lr0, self.kind, self.patience = float(s["lr0"]), s["kind"], int(s["patience"])
        self.milestones = [int(m) for m in s["milestones"]]
        self.factor, self.max_reductions = float(s["factor"]), int(s["max_reductions"])
        self.lr, self.best = float(s["lr"]), (None if s["best"] is None else float(s["best"]))
        self.bad_epochs, self.reductions = int(s["bad_epochs"]), int(s["reductions"])


# ---------------------------------------------------------------------------
# Progress display
# ---------------------------------------------------------------------------

def _hms(sec):
    if not math.isfinite(sec) or sec < 0:
        return "--:--"
    sec = int(round(sec))
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """A one-line progress bar on a terminal; plain lines every `interval` s otherwise."""

    def __init__(self, total, desc, stream=None, tty=None, interval=30.0, width=24):
        self.total, self.desc = max(0, int(total)), desc
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            try:
                tty = self.stream.isatty()
            except (AttributeError, ValueError):
                tty = False
        self.tty, self.interval, self.width = tty, interval, width
        self.t0 = time.perf_counter()
        self.last = 0.0 if tty else self.t0
        self.drawn = False
        self._start = 0

    def line(self, done, loss, lr, ips):
        frac = done / self.total if self.total else 1.0
        eta = ((time.perf_counter() - self.t0) / max(done - self._start, 1e-9) * (self.total - done)
               if done > self._start else float("nan"))
        bar = ""
        if self.tty:
            n = int(frac * self.width)
            bar = "[" + "#" * n + "." * (self.width - n) + "] "
        return (f"{self.desc} {bar}{done}/{self.total} loss {loss:.4f} lr {lr:.3g} "
                f"{ips:.0f} img/s ETA {_hms(eta)}")

    def start(self, done):
        self._start = done
        self.t0 = time.perf_counter()

    def update(self, done, loss, lr, ips, force=False):
        now = time.perf_counter()
        if self.tty:
            if force or now - self.last >= 0.1 or done == self.total:
                self.stream.write("\r\x1b[2K" + self.line(done, loss, lr, ips))
                self.stream.flush()
                self.last, self.drawn = now, True
        elif force or now - self.last >= self.interval:
            self.stream.write(self.line(done, loss, lr, ips) + "\n")
            self.stream.flush()
            self.last = now

    def close(self):
        if self.tty and self.drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self.drawn = False


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

def default_workers(backend):
    """Loader threads when --workers is not given: none on the CPU backends (both would compete for
    the same cores), up to 8 on cuda (the GPU waits for the batches otherwise)."""
    if backend != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def default_config(**kw):
    """The full training configuration: defaults per preset, overridden by `kw` (None values ignored)."""
    kw = {k: v for k, v in kw.items() if v is not None}
    preset = kw.get("preset", "small")
    if preset not in PRESETS:
        raise TrainError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    cfg = {
        "data": None,            # the image folder trained on (raw or prepared)
        "prepared": None,        # the prepared folder actually read
        "out": "runs/alexnet",
        "preset": preset,
        "backend": "numpy",
        "epochs": p["epochs"],
        "batch_size": p["batch_size"],
        "lr": 0.01,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "schedule": "plateau",
        "patience": 2,
        "seed": 0,
        "workers": None,         # None: 0 on the CPU backends (the cores compute), a few threads on cuda
        "data_size": p["data_size"],
        "input_size": p["input_size"],
        # (pixel - mean) * input_scale: the paper feeds raw 0..255 values minus the mean (what its
        # N(0, 0.01) init expects); the fan-in-scaled init of the small preset expects inputs of order one
        "input_scale": p["input_scale"],
        "width": p["width"],
        "init": p["init"],
        "towers": 2,
        "dropout": p["dropout"],
        "lrn": True,
        "pca_std": 0.1,
        "flip": True,
        "eval_batch_size": 256,
    }
    unknown = set(kw) - set(cfg)
    if unknown:
        raise TrainError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
    cfg.update(kw)
    return cfg


def _model_kwargs(cfg, num_classes):
    return dict(num_classes=num_classes, input_size=cfg["input_size"], width=cfg["width"], towers=cfg["towers"],
                dropout=cfg["dropout"], lrn=cfg["lrn"], seed=cfg["seed"], init=cfg["init"])


def _atomic_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------

def save_checkpoint(path, model, *, cfg, epoch, batch, schedule, partial, mean=None):
    """Everything needed to continue: see the module docstring."""
    tensors = dict(model.state_dict())
    for n, v in model.momentum_state_dict().items():
        tensors[f"momentum.{n}"] = v
    if mean is not None:
        tensors["data.mean"] = np.asarray(mean, np.float32)
    rng = {"dropout_seed": model.seed, "dropout_step": model.step,
           "loader_seed": cfg["seed"], "loader_epoch": epoch, "loader_batch": batch}
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": json.dumps(cfg), "epoch": str(epoch), "batch": str(batch), "step": str(model.step),
        "schedule": json.dumps(schedule.state_dict()), "rng": json.dumps(rng), "partial": json.dumps(partial),
        "model": json.dumps(model.config), "classes": json.dumps(cfg.get("classes")),
    }
    ckpt.save_file(tensors, path, meta)


def load_checkpoint(path):
    """(tensors, info) of a training checkpoint; info holds the decoded metadata."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"checkpoint not found: {path}")
    try:
        tensors, meta = ckpt.load_file(path)
    except ckpt.CheckpointError as e:
        raise TrainError(str(e)) from None
    if meta.get("format") != FORMAT:
        raise TrainError(f"{path} is a safetensors file but not an alexnet-cuda checkpoint")
    try:
        info = {
            "config": json.loads(meta["config"]), "epoch": int(meta["epoch"]), "batch": int(meta["batch"]),
            "step": int(meta["step"]), "schedule": json.loads(meta["schedule"]), "rng": json.loads(meta["rng"]),
            "partial": json.loads(meta["partial"]), "model": json.loads(meta["model"]),
        }
    except (KeyError, ValueError) as e:
        raise TrainError(f"{path}: checkpoint metadata is incomplete or corrupt ({e})") from None
    return tensors, info


def model_from_checkpoint(path, backend=None):
    """(model with the checkpoint's weights, info) — for eval, predict and visualisation."""
    tensors, info = load_checkpoint(path)
    mc = dict(info["model"])
    model = AlexNet(backend=backend, **mc)
    weights = {k: v for k, v in tensors.items() if not k.startswith(("momentum.", "data."))}
    try:
        model.load_state_dict(weights)
    except ValueError as e:
        raise TrainError(f"{path}: {e}") from None
    model.step = info["step"]
    info["mean"] = tensors.get("data.mean")
    return model, info


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

def evaluate_model(model, loader, *, stop=None):
    """(top1_err, top5_err, n) over an EvalLoader. Ten-crop batches (B, 10, 3, c, c) average the
    softmax over the patches. The counts stay on the backend (no logits copied back)."""
    be, xp = model.backend, model.backend.xp
    c1 = c5 = None
    n = 0
    k5 = min(5, model.num_classes)
    for x, y in loader:
        if stop is not None and stop():
            return None
        yb = be.asarray(y, dtype=np.int64)
        if x.ndim == 5:
            B, V = x.shape[:2]
            logits = model.forward(x.reshape((B * V,) + x.shape[2:]))
            z = logits - logits.max(axis=1, keepdims=True)
            e = xp.exp(z)
            p = e / e.sum(axis=1, keepdims=True)
            scores = xp.ascontiguousarray(p.reshape(B, V, -1).mean(axis=1))
        else:
            scores = model.forward(x)
        a, b = be.topk_correct(scores, yb, 1), be.topk_correct(scores, yb, k5)
        c1 = a if c1 is None else c1 + a
        c5 = b if c5 is None else c5 + b
        n += len(y)
    if n == 0:
        raise TrainError("the validation set is empty")
    c1, c5 = int(be.to_numpy(c1)), int(be.to_numpy(c5))
    return (n - c1) / n, (n - c5) / n, n


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

class _Interrupt:
    """First Ctrl-C sets a flag (the loop saves a checkpoint and stops at the next step boundary);
    a second one raises KeyboardInterrupt at once."""

    def __init__(self, log):
        self.flag, self.log, self.old = False, log, None

    def __enter__(self):
        import threading
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        self.log("interrupt: finishing this step, then saving a checkpoint (Ctrl-C again to abort without saving)")

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        return False


def train(cfg=None, *, resume=False, out=None, overrides=None, log=print, progress_stream=None,
          progress_interval=30.0, chance_warn_steps=None):
    """Run (or with resume=True continue) training. Returns an exit status (0 done, 1 diverged, 130
    interrupted). Raises TrainError / DataError for user errors.

    Fresh run: `cfg` is a full config (default_config()). Resume: `out` names the run folder; its
    checkpoint's config is used, with `overrides` (epochs, workers, backend) applied.
    """
    from .backends import get_backend
    from .data import EvalLoader, PreparedDataset, TrainLoader, ensure_prepared

    err = progress_stream if progress_stream is not None else sys.stderr
    if resume:
        out = Path(out if out is not None else cfg["out"])
        path = out / CHECKPOINT
        if not path.is_file():
            raise TrainError(f"--resume: no checkpoint in {out} ({path} not found)")
        tensors, info = load_checkpoint(path)
        cfg = dict(info["config"])
        for k, v in (overrides or {}).items():
            if k not in RESUME_OVERRIDES:
                raise TrainError(f"--resume takes the configuration from the checkpoint; {k} cannot change")
            if v is not None and v != cfg.get(k):
                log(f"resume: {k} {cfg.get(k)} -> {v}")
                cfg[k] = v
        cfg["out"] = str(out)
    else:
        cfg = dict(cfg)
        out = Path(cfg["out"])
        if (out / CHECKPOINT).exists():
            raise TrainError(f"{out} already holds a checkpoint; pass --resume to continue it, "
                             f"or choose another --out")
        tensors = info = None
    if cfg.get("data") is None:
        raise TrainError("no training data given")
    for k in ("epochs", "batch_size"):
        if int(cfg[k]) < 1:
            raise TrainError(f"{k} must be >= 1, got {cfg[k]}")
    if cfg.get("workers") is None:
        cfg["workers"] = default_workers(cfg["backend"])
    if int(cfg["workers"]) < 0:
        raise TrainError(f"workers must be >= 0, got {cfg['workers']}")
    schedule = LRSchedule.parse(cfg["schedule"], cfg["lr"], cfg["patience"])

    # -- data
    from .data import is_prepared
    src = cfg["prepared"] if cfg.get("prepared") and is_prepared(cfg["prepared"]) else cfg["data"]
    prepared = ensure_prepared(src, None, size=cfg["data_size"], log=log)
    cfg["prepared"] = str(prepared)
    train_ds, val_ds = PreparedDataset(prepared, "train"), PreparedDataset(prepared, "val")
    if resume and cfg.get("classes") not in (None, list(train_ds.classes)):
        raise TrainError(f"the data in {prepared} has classes {train_ds.classes}, the checkpoint "
                         f"{cfg['classes']}")
    cfg["classes"] = list(train_ds.classes)
    cfg["num_classes"] = train_ds.num_classes
    cfg["data_size"] = train_ds.size
    if cfg["input_size"] > train_ds.size:
        raise TrainError(f"the input crop {cfg['input_size']} does not fit the prepared images of "
                         f"{train_ds.size}x{train_ds.size} in {prepared}")
    be = get_backend(cfg["backend"])
    if be.name in ("numpy", "emu"):
        limit_blas_threads()
    model = AlexNet(backend=be, **_model_kwargs(cfg, train_ds.num_classes))
    cfg["model"] = dict(model.config)
    cfg["num_parameters"] = model.num_parameters()
    loader = TrainLoader(train_ds, batch_size=cfg["batch_size"], crop=cfg["input_size"], seed=cfg["seed"],
                         workers=cfg["workers"], flip=cfg["flip"], pca_std=cfg["pca_std"],
                         scale=cfg["input_scale"])
    val_loader = EvalLoader(val_ds, batch_size=cfg["eval_batch_size"], crop=cfg["input_size"],
                            scale=cfg["input_scale"])
    nb = len(loader)

    # -- state
    start_epoch, start_batch = 0, 0
    partial = {"loss_sum": 0.0, "loss_count": 0, "train_seconds": 0.0, "seconds": 0.0}
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / METRICS
    if resume:
        weights = {k: v for k, v in tensors.items() if not k.startswith(("momentum.", "data."))}
        mom = {k[len("momentum."):]: v for k, v in tensors.items() if k.startswith("momentum.")}
        try:
            model.load_state_dict(weights)
            model.load_momentum_state_dict(mom)
        except ValueError as e:
            raise TrainError(f"{out / CHECKPOINT}: {e}") from None
        model.step = info["step"]
        schedule.load_state_dict(info["schedule"])
        start_epoch, start_batch, partial = info["epoch"], info["batch"], dict(info["partial"])
        # a resume drops the records the checkpoint does not cover (and a torn last line)
        records = [r for r in read_metrics(metrics_path) if int(r["epoch"]) <= start_epoch]
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in records))
        log(f"resume: {out / CHECKPOINT}: {start_epoch} epoch(s) done" +
            (f" and {start_batch}/{nb} batches of epoch {start_epoch + 1}" if start_batch else "") +
            f", step {model.step}, lr {schedule.lr_for_epoch(start_epoch):g}")
    else:
        atomic_write_text(metrics_path, "")
    _atomic_json(out / CONFIG, cfg)
    log(f"model: {model!r}")
    log(f"data: {len(train_ds)} train / {len(val_ds)} val images, {train_ds.num_classes} classes, "
        f"{train_ds.size}px prepared, {cfg['input_size']}px crops; {nb} steps of {cfg['batch_size']} per epoch")

    chance = math.log(model.num_classes) if model.num_classes > 1 else 0.0
    warn_after = chance_warn_steps or max(50, min(500, 2 * nb))
    ema, stuck, warned = None, 0, False
    ckpt_path = out / CHECKPOINT
    mean = train_ds.mean

    def save(epoch, batch):
        save_checkpoint(ckpt_path, model, cfg=cfg, epoch=epoch, batch=batch, schedule=schedule,
                        partial=partial, mean=mean)

    with _Interrupt(log) as intr:
        for epoch in range(start_epoch, cfg["epochs"]):
            lr = schedule.lr_for_epoch(epoch)
            if epoch == start_epoch and start_batch:
                b0 = start_batch
            else:
                b0 = 0
                partial = {"loss_sum": 0.0, "loss_count": 0, "train_seconds": 0.0, "seconds": 0.0}
            t_epoch = time.perf_counter() - partial["seconds"]
            bar = Progress(nb, f"epoch {epoch + 1}/{cfg['epochs']}", stream=err, interval=progress_interval)
            bar.start(b0)
            t_train = time.perf_counter()
            train_s0 = partial["train_seconds"]
            gen = loader.epoch(epoch, start_batch=b0) if b0 < nb else iter(())
            b = b0
            try:
                for x, y in gen:
                    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # reported below
                        loss = model.train_step(x, y, lr, momentum=cfg["momentum"],
                                                weight_decay=cfg["weight_decay"])
                    if not math.isfinite(loss):
                        bar.close()
                        msg = (f"error: the loss became {loss} at step {model.step} (epoch {epoch + 1}, batch "
                               f"{b + 1}/{nb}, lr {lr:g}); stopping. ")
                        msg += (f"The last good checkpoint is kept: {ckpt_path}" if ckpt_path.exists()
                                else "No checkpoint was written (the first epoch had not finished).")
                        log(msg)
                        return EXIT_DIVERGED
                    b += 1
                    partial["loss_sum"] += loss
                    partial["loss_count"] += 1
                    done_s = train_s0 + time.perf_counter() - t_train
                    partial["train_seconds"] = done_s
                    ips = (b - b0) * cfg["batch_size"] / max(time.perf_counter() - t_train, 1e-9)
                    bar.update(b, loss, lr, ips)
                    # chance-level warning
                    ema = loss if ema is None else 0.95 * ema + 0.05 * loss
                    if chance and abs(ema - chance) < 0.02 * chance + 0.01:
                        stuck += 1
                    else:
                        stuck = 0
                    if stuck >= warn_after and not warned:
                        warned = True
                        bar.close()
                        log(f"warning: the loss has stayed at ln({model.num_classes}) = {chance:.3f} (chance) for "
                            f"{stuck} steps: the network is not learning. Small networks need the fan-in-scaled "
                            f"init (init 'he', the small preset's); also try a lower --lr.")
                    if intr.flag:
                        break
            finally:
                if hasattr(gen, "close"):
                    gen.close()
            if intr.flag:
                bar.close()
                partial["seconds"] = time.perf_counter() - t_epoch
                save(epoch, b)
                log(f"interrupted at step {model.step} (epoch {epoch + 1}, batch {b}/{nb}); checkpoint saved to "
                    f"{ckpt_path}; continue with --resume")
                return EXIT_INTERRUPTED
            bar.close()
            train_seconds = partial["train_seconds"]
            res = evaluate_model(model, val_loader, stop=lambda: intr.flag)
            if res is None:
                partial["seconds"] = time.perf_counter() - t_epoch
                save(epoch, nb)
                log(f"interrupted during validation of epoch {epoch + 1}; checkpoint saved to {ckpt_path}; "
                    f"continue with --resume")
                return EXIT_INTERRUPTED
            top1, top5, _ = res
            count = partial["loss_count"]
            train_loss = partial["loss_sum"] / count if count else float("nan")
            seconds = time.perf_counter() - t_epoch
            rec = {"epoch": epoch + 1, "step": model.step, "lr": lr, "train_loss": train_loss,
                   "val_top1_err": top1, "val_top5_err": top5,
                   "images_per_sec": (count * cfg["batch_size"] / train_seconds) if train_seconds > 0 else 0.0,
                   "seconds": seconds}
            schedule.end_epoch(epoch, top1)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
            partial = {"loss_sum": 0.0, "loss_count": 0, "train_seconds": 0.0, "seconds": 0.0}
            save(epoch + 1, 0)
            write_curves(out, log=log)
            nxt = schedule.lr_for_epoch(epoch + 1)
            note = f" (lr -> {nxt:g})" if nxt < lr and epoch + 1 < cfg["epochs"] else ""
            log(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {train_loss:.4f}, val top-1 err {top1:.2%}, "
                f"top-5 err {top5:.2%}, lr {lr:g}, {rec['images_per_sec']:.0f} img/s, {seconds:.1f}s{note}")
            if intr.flag:
                log(f"interrupted after epoch {epoch + 1}; checkpoint saved to {ckpt_path}; continue with --resume")
                return EXIT_INTERRUPTED
    return EXIT_OK
