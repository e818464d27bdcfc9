"""The training driver of `alexnet-cuda train`, shaped like torchvision's reference script:
`train_one_epoch`, `evaluate_model` (alexnet_cuda.evaluate) and a short `train` that wires them.

* SGD with momentum 0.9 and weight decay 5e-4 on weights (not biases), the paper's learning-rate
  schedule (alexnet_cuda.schedule): lr divided by 10 when the validation top-1 error has not
  improved for `patience` epochs, at most three times; or fixed steps.
* A progress line per epoch on stderr (alexnet_cuda.progress) and one summary line per epoch.
* The run folder (alexnet_cuda.runfolder): config.json, metrics.jsonl, checkpoint.safetensors
  (written atomically at every epoch end and on Ctrl-C) and curves.png.
* `resume=True` continues exactly: the batches are a pure function of (seed, epoch, batch), the
  dropout masks of (seed, step), and the weights, momentum and schedule come from the checkpoint;
  on the CPU backends a resumed run's metrics equal an uninterrupted run's, bit for bit.
* A NaN or infinite loss raises DivergedError naming the step; that step's update is not applied
  and the last good checkpoint is kept. Ctrl-C saves a checkpoint and raises TrainingInterrupted.
* The host reads the losses and top-1 hits back every `sync_every` steps (--sync-every; 20 on cuda,
  1 on the CPU backends): the steps between never wait for the device, and the SGD kernels apply the
  non-finite-loss rule on the device (AlexNet.train_step(sync=False)). The epoch's numbers do not
  depend on it: the losses are summed on the host in step order, the hits are integers.
* A warning when the loss stays at ln(num_classes) (chance) for long, and per-layer health in
  every epoch's record (alexnet_cuda.health: weight and gradient norms, update-to-weight ratios,
  dead ReLUs) with a warning naming a layer whose updates are out of range or whose units died.
* Started by MPI with several ranks (alexnet_cuda.distributed), the ranks train one model
  data-parallel: each computes its rows of every global batch, gradients are averaged, and rank 0
  alone prints and writes the run folder.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import autotune, data, distributed
from . import runfolder as rf
from .backends import resolve_backend
from .data import EvalLoader, PreparedDataset, TrainLoader, ensure_prepared, is_prepared
from .data.feed import feed_for
from .errors import EXIT_OK, DataError, DivergedError, TrainError, TrainingInterrupted
from .evaluate import evaluate_model
from .health import Health
from .model import MOMENTUM, PRESETS, WEIGHT_DECAY, AlexNet
from .progress import Progress
from .schedule import LRSchedule
from .visualize import write_curves

__all__ = ["default_config", "default_workers", "train", "train_one_epoch", "builtin_data", "RESUME_OVERRIDES",
           "PCA_STD"]

# Config keys that `resume` may change; everything else comes from the checkpoint.
RESUME_OVERRIDES = ("epochs", "workers", "backend", "devices", "sync_every", "conv_algorithms")
# Config keys that describe where a run ran, not what it computes: ranks may differ in them, and a
# resumed run takes this run's.
PLACE_KEYS = ("ranks", "workers")
# The paper's PCA lighting: each image gets its RGB principal components times N(0, 0.1) draws.
PCA_STD = 0.1


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

def default_workers(backend):
    """Loader threads when --workers is not given: none on the CPU backends (both would compete for
    the same cores), up to 8 on cuda (the GPU waits for the batches otherwise)."""
    if backend != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def default_sync_every(backend):
    """Steps between two reads of the losses when --sync-every is not given: 20 on cuda (the host queues
    the next steps' kernels while the device runs), 1 on the CPU backends (the host computes: nothing to
    gain)."""
    return 20 if backend == "cuda" else 1


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
        "devices": None,         # None: one device; [0, 1]: tower t on device t (alexnet_cuda.towers)
        "epochs": p["epochs"],
        "batch_size": p["batch_size"],
        "lr": p["lr"],
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "schedule": "plateau",
        "warmup": p.get("warmup", 0),  # steps of linear lr warm-up
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
        # the model variants (alexnet_cuda.model; `alexnet-cuda ablate` compares them); the paper's by default
        "activation": "relu",
        "pool": "overlapping",
        "towers": 2,
        "dropout": p["dropout"],
        "lrn": True,
        "pca_std": PCA_STD,      # the PCA lighting's standard deviation; 0 switches it off (--no-lighting)
        "flip": True,
        "eval_batch_size": 256,
        "precision": "fp32",     # fp32, tf32 or bf16 products where a tensor-core kernel exists (AlexNet)
        "sync_every": None,      # None: default_sync_every(backend); steps between reads of the losses
        # "auto": time the 3x3 convolutions' algorithms on cuda at the start and keep the choice here (a dict,
        # so a resumed run uses the same kernels); "gemm": the implicit GEMM everywhere (alexnet_cuda.autotune)
        "conv_algorithms": "auto",
        "ranks": 1,              # data-parallel processes (set from the MPI launch, not an option)
    }
    unknown = set(kw) - set(cfg)
    if unknown:
        raise TrainError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
    cfg.update(kw)
    return cfg


def builtin_data(preset, log=print):
    """The built-in synthetic 10-class set (generated once, cached) that `train` and `ablate` use without
    --data: rendered at 96 px for the small preset (prepared at 76), at 256 for the full one."""
    return data.make_synthetic_dataset(image_size=max(96, PRESETS[preset]["data_size"]), seed=0, log=log)


def _model_kwargs(cfg, num_classes):
    return dict(num_classes=num_classes, input_size=cfg["input_size"], width=cfg["width"], towers=cfg["towers"],
                dropout=cfg["dropout"], lrn=cfg["lrn"], seed=cfg["seed"], init=cfg["init"],
                activation=cfg.get("activation", "relu"), pool=cfg.get("pool", "overlapping"),
                precision=cfg.get("precision", "fp32"))


def _check_numbers(cfg, world):
    for k in ("epochs", "batch_size"):
        if int(cfg[k]) < 1:
            raise TrainError(f"{k} must be >= 1, got {cfg[k]}")
    cfg["ranks"] = world.size
    if world.size > 1 and cfg.get("devices") and len(cfg["devices"]) > 1:
        raise TrainError("data parallelism (several ranks) and the towers on two devices (--devices) do not work "
                         "together yet; use one of them")
    if cfg["batch_size"] % world.size:
        raise TrainError(f"the batch size {cfg['batch_size']} (global, over all ranks) must divide by the number of "
                         f"ranks, {world.size}; choose --batch-size as a multiple of {world.size}")
    if cfg.get("workers") is None:
        cfg["workers"] = default_workers(cfg["backend"])
    if int(cfg["workers"]) < 0:
        raise TrainError(f"workers must be >= 0, got {cfg['workers']}")
    if cfg.get("sync_every") is None:
        cfg["sync_every"] = default_sync_every(cfg["backend"])
    if int(cfg["sync_every"]) < 1:
        raise TrainError(f"sync_every must be >= 1, got {cfg['sync_every']}")


# ---------------------------------------------------------------------------
# Setting a run up
# ---------------------------------------------------------------------------

@dataclass
class Run:
    """Everything the epochs share: the configuration, the model, the data and the position."""

    cfg: dict
    out: Path
    model: AlexNet
    loader: TrainLoader
    val_loader: EvalLoader
    schedule: LRSchedule
    mean: object
    log: object
    health: Health
    world: distributed.World
    average: distributed.GradientAverager | None
    epoch: int = 0                  # epochs done
    batch: int = 0                  # batches done of the next epoch
    partial: rf.EpochTotals = field(default_factory=rf.EpochTotals)

    @property
    def checkpoint(self):
        return self.out / rf.CHECKPOINT

    def save(self, epoch, batch):
        if not self.world.writer:
            return
        rf.save_checkpoint(self.checkpoint, self.model, cfg=self.cfg, epoch=epoch, batch=batch,
                           schedule=self.schedule, partial=self.partial, mean=self.mean, extra=self.health.state())


def _open_fresh(cfg):
    cfg = dict(cfg)
    out = Path(cfg["out"])
    if (out / rf.CHECKPOINT).exists():
        raise TrainError(f"{out} already holds a checkpoint; pass --resume to continue it, or choose another --out")
    return cfg, out, None


def _open_resumed(out, overrides, log):
    out = Path(out)
    if not (out / rf.CHECKPOINT).is_file():
        raise TrainError(f"--resume: no checkpoint in {out} ({out / rf.CHECKPOINT} not found)")
    tensors, info = rf.load_checkpoint(out / rf.CHECKPOINT)
    cfg = dict(info["config"])
    for k, v in (overrides or {}).items():
        if k not in RESUME_OVERRIDES:
            raise TrainError(f"--resume takes the configuration from the checkpoint; {k} cannot change")
        if v is not None and v != cfg.get(k):
            log(f"resume: {k} {cfg.get(k)} -> {v}")
            cfg[k] = v
    cfg["out"] = str(out)
    return cfg, out, (tensors, info)


def _load_data(cfg, log, resumed):
    """(train, val) datasets; fills the data fields of cfg."""
    src = cfg["prepared"] if cfg.get("prepared") and is_prepared(cfg["prepared"]) else cfg["data"]
    prepared = ensure_prepared(src, None, size=cfg["data_size"], log=log)
    train_ds, val_ds = PreparedDataset(prepared, "train"), PreparedDataset(prepared, "val")
    if resumed and cfg.get("classes") not in (None, list(train_ds.classes)):
        raise TrainError(f"the data in {prepared} has classes {train_ds.classes}, the checkpoint {cfg['classes']}")
    if cfg["input_size"] > train_ds.size:
        raise TrainError(f"the input crop {cfg['input_size']} does not fit the prepared images of "
                         f"{train_ds.size}x{train_ds.size} in {prepared}")
    if len(train_ds) < cfg["batch_size"] and not resumed and len(train_ds) >= cfg["ranks"]:
        bs = len(train_ds) - len(train_ds) % cfg["ranks"]  # a multiple of the ranks
        log(f"note: {prepared} has {len(train_ds)} training images, fewer than one batch of {cfg['batch_size']}; "
            f"training with batch size {bs} (choose another with --batch-size)")
        cfg["batch_size"] = bs
    cfg.update(prepared=str(prepared), classes=list(train_ds.classes), class_names=list(train_ds.class_names),
               num_classes=train_ds.num_classes, data_size=train_ds.size)
    return train_ds, val_ds


def _build_run(cfg, out, log, resumed, world):
    train_ds, val_ds = world.rank0_first(lambda: _load_data(cfg, log, resumed))  # rank 0 fills the cache
    if cfg["backend"] == "cuda":
        world.use_local_gpu()
    elif cfg["backend"] == "emu":
        world.share_cores()
    be = resolve_backend(cfg["backend"])
    try:
        model = AlexNet(backend=be, devices=cfg.get("devices"), **_model_kwargs(cfg, train_ds.num_classes))
    except ValueError as e:  # a variant that does not fit the input (non-overlapping pools need less)
        raise TrainError(str(e)) from None
    cfg["model"], cfg["num_parameters"] = dict(model.config), model.num_parameters()
    _conv_algorithms(cfg, model, world, log)
    shard = (world.rank, world.size)
    loader = TrainLoader(train_ds, batch_size=cfg["batch_size"], crop=cfg["input_size"], seed=cfg["seed"],
                         workers=cfg["workers"], flip=cfg["flip"], pca_std=cfg["pca_std"], scale=cfg["input_scale"],
                         shard=shard, feed=feed_for(be))
    val_loader = EvalLoader(val_ds, batch_size=cfg["eval_batch_size"], crop=cfg["input_size"],
                            scale=cfg["input_scale"], shard=shard)
    schedule = LRSchedule.parse(cfg["schedule"], cfg["lr"], cfg["patience"], warmup=cfg.get("warmup", 0))
    log(f"model: {model!r}")
    log(f"data: {len(train_ds)} train / {len(val_ds)} val images, {train_ds.num_classes} classes, "
        f"{train_ds.size}px prepared, {cfg['input_size']}px crops; {len(loader)} steps of {cfg['batch_size']} "
        f"per epoch")
    average = None
    if world.size > 1:
        average = distributed.GradientAverager(world, be)
        log(f"data parallel: {world.size} ranks, {cfg['batch_size'] // world.size} images of each batch per rank; "
            f"gradients averaged with {'NCCL' if be.name == 'cuda' else 'MPI'}")
    return Run(cfg, out, model, loader, val_loader, schedule, train_ds.mean, log, Health(model, world), world,
               average)


def _conv_algorithms(cfg, model, world, log):
    """Apply cfg["conv_algorithms"] (alexnet_cuda.autotune): a choice (a dict: measured before, e.g. by the run
    being resumed), "gemm", or "auto": measured now on cuda with one process on one device, the choice kept
    in cfg (and so in config.json and the checkpoint)."""
    try:
        choice = autotune.check(cfg.get("conv_algorithms", autotune.AUTO))
    except ValueError as e:
        raise TrainError(str(e)) from None
    if choice == autotune.AUTO and autotune.measures(model, world.size):
        choice, times = autotune.choose(model, cfg["batch_size"])
        log(autotune.describe(choice, times))
        cfg["conv_algorithms"] = choice
    try:
        autotune.apply(model, choice)
    except ValueError as e:  # a choice naming a layer this model does not have
        raise TrainError(str(e)) from None


def _restore(run, tensors, info):
    rf.restore_training_state(run.checkpoint, run.model, tensors, info)
    run.health.load_state(tensors)
    run.schedule.load_state_dict(info["schedule"])
    run.epoch, run.batch, run.partial = info["epoch"], info["batch"], info["partial"]
    if run.world.writer:
        rf.keep_metrics_until(run.out, run.epoch)
    part = f" and {run.batch}/{len(run.loader)} batches of epoch {run.epoch + 1}" if run.batch else ""
    run.log(f"resume: {run.checkpoint}: {run.epoch} epoch(s) done{part}, step {run.model.step}, "
            f"lr {run.schedule.lr_for_epoch(run.epoch):g}")


# ---------------------------------------------------------------------------
# The epochs
# ---------------------------------------------------------------------------

class ChanceWatch:
    """Says once when the loss's moving average has been no better than chance, ln(num_classes), for
    `after` steps in a row (sitting at it, or above it after a blow-up)."""

    def __init__(self, num_classes, after):
        self.chance = math.log(num_classes) if num_classes > 1 else 0.0
        self.after, self.ema, self.stuck, self.warned = after, None, 0, False

    def update(self, loss):
        """A warning to print, or None."""
        self.ema = loss if self.ema is None else 0.95 * self.ema + 0.05 * loss
        no_better = self.chance and self.ema > self.chance - (0.02 * self.chance + 0.01)
        self.stuck = self.stuck + 1 if no_better else 0
        if self.stuck < self.after or self.warned:
            return None
        self.warned = True
        return (f"warning: the loss has been no lower than ln(num_classes) = {self.chance:.3f} (chance) for "
                f"{self.stuck} steps: the network is not learning. Try --init paper-bias0.1 (biases 0.1 instead "
                f"of the paper's 1), a lower --lr, or a warm-up (--warmup 100); networks much narrower than the "
                f"paper's need --init he.")


class _Interrupt:
    """The first Ctrl-C sets a flag (the loop saves a checkpoint at the next step boundary and stops);
    a second one raises KeyboardInterrupt at once."""

    def __init__(self, log):
        self.flag, self.log, self.old = False, log, None

    def __enter__(self):
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


def _stop_agreed(run, intr):
    """Whether Ctrl-C was pressed (on any rank: the ranks agree, so all stop at the same step)."""
    if run.world.size > 1 and run.world.any_(intr.flag):
        intr.flag = True
    return intr.flag


def _diverged(run, loss, step, epoch, b, lr):
    msg = (f"the loss became {loss} at step {step} (epoch {epoch + 1}, batch {b + 1}/{len(run.loader)}, "
           f"lr {lr:g}); stopping. ")
    msg += (f"The last good checkpoint is kept: {run.checkpoint}" if run.checkpoint.exists()
            else "No checkpoint was written (the first epoch had not finished).")
    return DivergedError(msg)


class StepTotals:
    """The losses and top-1 hits of the steps since the last read-back, kept on the device (a float64
    vector of `every` losses, an int64 sum of hits) with each step's place on the host; `take` reads
    them back at once."""

    def __init__(self, backend, device, every):
        self.be, self.device = backend, device
        with backend.use_device(device):
            self.losses = backend.zeros((every,), np.float64)  # float64: exact for float32 losses and for
            self.hits = backend.zeros((), np.int64)            # the data-parallel loss, a host double
        self.steps = []

    def add(self, loss, hits, **where):
        """Adds a step's loss and hits (backend arrays or host numbers) without reading them."""
        with self.be.use_device(self.device):
            self.losses[len(self.steps)] = loss
            self.hits += hits
        self.steps.append(where)

    def __len__(self):
        return len(self.steps)

    def take(self):
        """([(loss as a float, the `where` of its step), ...], the hits' sum): two copies back; empties."""
        n, be = len(self.steps), self.be
        with be.use_device(self.device):
            losses, hits = be.to_numpy(self.losses[:n]), int(be.to_numpy(self.hits))
            self.hits[...] = 0
        steps, self.steps = self.steps, []
        return [(float(l), w) for l, w in zip(losses, steps)], hits


def _bad_label(run, bad, w, epoch):
    row, label = bad
    return DataError(f"a training label is out of range: {label} at row {row} of the batch of step {w['step']} "
                     f"(epoch {epoch + 1}, batch {w['batch'] + 1}/{len(run.loader)}); the model has "
                     f"{run.model.num_classes} classes, so labels must be in [0, {run.model.num_classes}). "
                     "That step and the later ones since the last read-back were not applied.")


def _account(run, totals, epoch, watch, bar):
    """The pending steps (at least one) on the host, in step order: the first non-finite loss raises
    DataError when the steps met a label out of range (its step has the first NaN loss), else DivergedError
    naming its step (the SGD kernels skipped its update and every later one); else they go into the epoch's
    sums and the chance watch. Returns the last step's (loss, where)."""
    steps, hits = totals.take()
    bad = run.model.take_bad_label()
    p = run.partial
    for loss, w in steps:
        if not math.isfinite(loss):
            bar.close()
            if bad is not None:
                raise _bad_label(run, bad, w, epoch)
            raise _diverged(run, loss, w["step"], epoch, w["batch"], w["lr"])
        p.loss_sum += loss
        p.loss_count += 1
        p.train_seen += w["seen"]
        warning = watch.update(loss)
        if warning:
            bar.close()
            run.log(warning)
    p.train_correct += hits
    return steps[-1]


def train_one_epoch(run, epoch, intr, watch, bar):
    """Train epoch `epoch` (0-based) from batch run.batch; returns the batches done (fewer than the
    epoch's when interrupted). Adds to run.partial; raises DivergedError on a non-finite loss.

    The losses and hits stay on the device for cfg["sync_every"] steps, then are read back at once
    (StepTotals); also at Ctrl-C and at the epoch's end, so run.partial holds exactly the steps done
    whenever a checkpoint is written. Data-parallel steps read every step: their loss is already a host
    all-reduce, and the ranks agree on stopping at every step."""
    cfg, model, nb = run.cfg, run.model, len(run.loader)
    every = 1 if run.average is not None else int(cfg["sync_every"])
    totals = StepTotals(model.backend, model.devices[0], min(every, max(nb, 1)))
    b0 = b = run.batch
    t0, s0 = time.perf_counter(), run.partial.train_seconds

    def read_back():
        if len(totals):
            loss, where = _account(run, totals, epoch, watch, bar)
            run.partial.train_seconds = s0 + time.perf_counter() - t0
            bar.update(b, loss, where["lr"], (b - b0) * cfg["batch_size"] / max(time.perf_counter() - t0, 1e-9))

    gen = run.loader.epoch(epoch, start_batch=b0) if b0 < nb else iter(())
    try:
        for x, y in gen:
            lr = run.schedule.lr_at(epoch, model.step)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a non-finite loss stops at the read
                loss = model.train_step(x, y, lr, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                                        average=run.average, row0=run.loader.row0, sync=False)
            run.health.after_step()
            # step: the steps done, as in the checkpoint; last_correct is summed over the ranks
            totals.add(loss, model.last_correct, step=model.step, batch=b, lr=lr, seen=len(y) * run.world.size)
            b += 1
            if len(totals) == every or intr.flag:
                read_back()
                if _stop_agreed(run, intr):
                    break
        read_back()  # the epoch's last steps
    finally:
        if hasattr(gen, "close"):
            gen.close()
    return b


def _end_epoch(run, epoch, top1, top5, seconds):
    """Record a finished epoch: metrics.jsonl, the schedule, the checkpoint, the curves, one line."""
    cfg, p = run.cfg, run.partial
    lr = run.schedule.lr_for_epoch(epoch)
    rec = {"epoch": epoch + 1, "step": run.model.step, "lr": lr, "train_loss": p.mean_loss(),
           "train_top1_err": p.train_top1_err(), "val_top1_err": top1, "val_top5_err": top5,
           "images_per_sec": p.images_per_sec(cfg["batch_size"]), "seconds": seconds,
           "loader_images_per_sec": run.loader.stats.images_per_sec(),
           "data_wait_seconds": run.loader.stats.wait_seconds, "health": run.health.record()}
    run.schedule.end_epoch(epoch, top1)
    if run.world.writer:
        rf.append_metrics(run.out, rec)
    run.partial = rf.EpochTotals()
    run.epoch, run.batch = epoch + 1, 0
    run.save(epoch + 1, 0)
    if run.world.writer:
        write_curves(run.out, log=run.log)
    nxt = run.schedule.lr_for_epoch(epoch + 1)
    note = f" (lr -> {nxt:g})" if nxt < lr and epoch + 1 < cfg["epochs"] else ""
    run.log(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {rec['train_loss']:.4f}, val top-1 err {top1:.2%}, "
            f"top-5 err {top5:.2%}, lr {lr:g}, {rec['images_per_sec']:.0f} img/s (loader "
            f"{rec['loader_images_per_sec']:.0f} img/s, waited {rec['data_wait_seconds']:.1f}s for data), "
            f"{seconds:.1f}s{note}")
    for warning in run.health.warnings(rec["health"]):
        run.log(warning)


def _stop(run, epoch, batch, where):
    run.save(epoch, batch)
    run.log(f"interrupted {where}; checkpoint saved to {run.checkpoint}; continue with --resume")
    return TrainingInterrupted(f"interrupted {where}")


def _run_epochs(run, intr, progress_stream, progress_interval, watch):
    for epoch in range(run.epoch, run.cfg["epochs"]):
        t_epoch = time.perf_counter() - run.partial.seconds
        bar = Progress(len(run.loader), f"epoch {epoch + 1}/{run.cfg['epochs']}", stream=progress_stream,
                       interval=progress_interval)
        bar.start(run.batch)
        b = train_one_epoch(run, epoch, intr, watch, bar)
        bar.close()
        if _stop_agreed(run, intr):
            run.partial.seconds = time.perf_counter() - t_epoch
            raise _stop(run, epoch, b, f"at step {run.model.step} (epoch {epoch + 1}, batch {b}/{len(run.loader)})")
        if run.world.size > 1:  # every rank must reach the sum of the counts: no stop inside validation
            res = evaluate_model(run.model, run.val_loader, world=run.world)
        else:
            res = evaluate_model(run.model, run.val_loader, stop=lambda: intr.flag)
        if res is None:
            run.partial.seconds = time.perf_counter() - t_epoch
            raise _stop(run, epoch, b, f"during validation of epoch {epoch + 1}")
        _end_epoch(run, epoch, res[0], res[1], time.perf_counter() - t_epoch)
        if _stop_agreed(run, intr):
            run.log(f"interrupted after epoch {epoch + 1}; checkpoint saved to {run.checkpoint}; "
                    f"continue with --resume")
            raise TrainingInterrupted(f"interrupted after epoch {epoch + 1}")


class _Discard:
    """The progress stream of the ranks that do not print."""

    def write(self, s):
        return len(s)

    def flush(self):
        pass


def _quiet(*args, **kw):
    pass


def _check_ranks_agree(cfg, world):
    """Refuse to start when the ranks run different code or configurations."""
    world.check_same("code versions", distributed.code_fingerprint())
    world.check_same("configurations", {k: v for k, v in cfg.items() if k not in PLACE_KEYS})


def train(cfg=None, *, resume=False, out=None, overrides=None, log=print, progress_stream=None,
          progress_interval=30.0, chance_warn_steps=None, world=None):
    """Run (or with resume=True continue) training; returns EXIT_OK (0) when every epoch is done.

    Fresh run: `cfg` is a full config (default_config()). Resume: `out` names the run folder; its
    checkpoint's config is used, with `overrides` (epochs, workers, backend) applied. Raises
    TrainError/DataError/CheckpointError for user errors, DivergedError on a non-finite loss and
    TrainingInterrupted after Ctrl-C (both after saving what can be saved). `world`: the data-parallel
    ranks (default: distributed.world(), from the MPI launch); only rank 0 logs and writes files.
    """
    world = world if world is not None else distributed.world()
    if not world.writer:
        log, progress_stream = _quiet, _Discard()
    if resume:
        cfg, out, state = _open_resumed(out if out is not None else cfg["out"], overrides, log)
    else:
        cfg, out, state = _open_fresh(cfg)
    if cfg.get("data") is None:
        raise TrainError("no training data given")
    if state is not None and cfg.get("ranks", 1) != world.size:
        log(f"resume: ranks {cfg.get('ranks', 1)} -> {world.size} (the global batch stays {cfg['batch_size']})")
    _check_numbers(cfg, world)
    _check_ranks_agree(cfg, world)
    run = _build_run(cfg, out, log, resumed=state is not None, world=world)
    if world.writer:
        out.mkdir(parents=True, exist_ok=True)
    if state is not None:
        _restore(run, *state)
        if run.epoch >= cfg["epochs"]:
            log(f"resume: the run in {out} has finished its {cfg['epochs']} epochs; pass --epochs N with N > "
                f"{cfg['epochs']} to train it longer")
            return EXIT_OK
    elif world.writer:
        rf.keep_metrics_until(out, 0)
    if world.writer:
        rf.write_config(out, cfg)
    watch = ChanceWatch(run.model.num_classes, chance_warn_steps or max(50, min(500, 2 * len(run.loader))))
    with _Interrupt(log) as intr:
        _run_epochs(run, intr, progress_stream if progress_stream is not None else sys.stderr, progress_interval,
                    watch)
    return EXIT_OK
