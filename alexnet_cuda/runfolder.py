"""A run folder: its file names, the metrics log and the checkpoint schema.

    OUT/config.json              the whole training configuration (the data folder included)
    OUT/metrics.jsonl            one JSON record per finished epoch (`EPOCH_FIELDS`)
    OUT/checkpoint.safetensors   weights, momentum, position, schedule and RNG state, config
    OUT/curves.png               metrics.jsonl drawn (alexnet_cuda.visualize.write_curves)

A checkpoint is a safetensors file (alexnet_cuda.checkpoint): the weights under their
PyTorch names (conv1.weight, ...), the momentum buffers as `momentum.<name>`, the
training mean image as `data.mean`, the partial epoch's health sums as `health.*`; its metadata holds the format, the config, the
position (`epoch` done, `batch` of the next epoch, `step`), the schedule's state, the
RNG keys, the partial epoch (`EpochTotals`) and the model's constructor arguments.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .errors import CheckpointError, DataError
from .files import atomic_write_json, atomic_write_text
from .model import AlexNet

__all__ = ["CHECKPOINT", "METRICS", "CONFIG", "CURVES", "EPOCH_FIELDS", "EpochTotals", "read_metrics",
           "append_metrics", "keep_metrics_until", "write_config", "save_checkpoint", "load_checkpoint",
           "split_tensors", "model_from_checkpoint", "restore_training_state", "trained_data", "check_classes"]

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
CURVES = "curves.png"
FORMAT = "alexnet-cuda-checkpoint"
FORMAT_VERSION = "1"
# loader_images_per_sec: what the loader's workers built per second while building (its capacity);
# data_wait_seconds: how long the training steps waited for their next batch in the epoch
EPOCH_FIELDS = ("epoch", "step", "lr", "train_loss", "train_top1_err", "val_top1_err", "val_top5_err",
                "images_per_sec", "seconds", "loader_images_per_sec", "data_wait_seconds", "health")


@dataclass
class EpochTotals:
    """What an epoch has summed so far; saved in a checkpoint taken in the middle of an epoch."""

    loss_sum: float = 0.0
    loss_count: int = 0
    train_seconds: float = 0.0   # in training steps
    seconds: float = 0.0         # in all, validation included
    train_correct: int = 0       # top-1 hits on the training batches, as they were trained on
    train_seen: int = 0          # the examples counted in train_correct

    def mean_loss(self):
        return self.loss_sum / self.loss_count if self.loss_count else float("nan")

    def train_top1_err(self):
        """The epoch's training error: the fraction of its training examples whose label did not get the
        largest logit in the train-mode forward of their step (dropout on, the weights of that step),
        the measure the paper's Figure 1 plots; None before any step."""
        return 1.0 - self.train_correct / self.train_seen if self.train_seen else None

    def images_per_sec(self, batch_size):
        return self.loss_count * batch_size / self.train_seconds if self.train_seconds > 0 else 0.0


# ---------------------------------------------------------------------------
# metrics.jsonl and config.json
# ---------------------------------------------------------------------------

def read_metrics(path):
    """The records of a metrics.jsonl (blank or torn lines skipped), sorted by epoch; a later record
    of the same epoch wins; [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    recs = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
            recs[int(r["epoch"])] = r
        except (ValueError, KeyError, TypeError):
            continue
    return [recs[e] for e in sorted(recs)]


def append_metrics(out, record):
    """Append one epoch's record to OUT/metrics.jsonl and fsync it."""
    with open(Path(out) / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def keep_metrics_until(out, epoch):
    """Rewrite OUT/metrics.jsonl with the records of epochs <= `epoch` only (a resume drops what its
    checkpoint does not cover, and a torn last line); epoch 0 empties it."""
    records = [r for r in read_metrics(Path(out) / METRICS) if int(r["epoch"]) <= epoch]
    atomic_write_text(Path(out) / METRICS, "".join(json.dumps(r) + "\n" for r in records))


def write_config(out, cfg):
    atomic_write_json(Path(out) / CONFIG, cfg)


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------

def save_checkpoint(path, model, *, cfg, epoch, batch, schedule, partial, mean=None, extra=None):
    """Write everything needed to continue (see the module docstring). `schedule` has state_dict();
    `partial` is an EpochTotals (or its dict); `extra` holds more tensors (the partial epoch's health
    sums, `health.*`)."""
    tensors = dict(model.state_dict())
    tensors.update(extra or {})
    tensors.update({f"momentum.{n}": v for n, v in model.momentum_state_dict().items()})
    if mean is not None:
        tensors["data.mean"] = np.asarray(mean, np.float32)
    partial = asdict(partial) if isinstance(partial, EpochTotals) else dict(partial)
    rng = {"dropout_seed": model.seed, "dropout_step": model.step,
           "loader_seed": cfg["seed"], "loader_epoch": epoch, "loader_batch": batch}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(cfg), "epoch": str(epoch),
            "batch": str(batch), "step": str(model.step), "schedule": json.dumps(schedule.state_dict()),
            "rng": json.dumps(rng), "partial": json.dumps(partial), "model": json.dumps(model.config),
            "classes": json.dumps(cfg.get("classes"))}
    ckpt.save_file(tensors, path, meta)


def load_checkpoint(path):
    """(tensors, info) of a training checkpoint; info holds the decoded metadata, with `partial` as
    an EpochTotals."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    tensors, meta = ckpt.load_file(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an alexnet-cuda checkpoint")
    try:
        info = {k: json.loads(meta[k]) for k in ("config", "schedule", "rng", "partial", "model")}
        info.update({k: int(meta[k]) for k in ("epoch", "batch", "step")})
        info["partial"] = EpochTotals(**info["partial"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: checkpoint metadata is incomplete or corrupt ({e})") from None
    return tensors, info


def split_tensors(tensors):
    """(weights, momentum, mean) of a checkpoint's tensors."""
    weights = {k: v for k, v in tensors.items() if not k.startswith(("momentum.", "data.", "health."))}
    momentum = {k[len("momentum."):]: v for k, v in tensors.items() if k.startswith("momentum.")}
    return weights, momentum, tensors.get("data.mean")


def model_from_checkpoint(path, backend=None, devices=None, precision=None):
    """(model with the checkpoint's weights, info) for eval, predict and the pictures; info["mean"]
    is the training mean image (None in a checkpoint without one). `devices`: AlexNet's (any count:
    the checkpoint holds the full arrays). `precision`: AlexNet's; None: the one the run trained at."""
    tensors, info = load_checkpoint(path)
    precision = precision or info["config"].get("precision", "fp32")
    model = AlexNet(backend=backend, devices=devices, precision=precision, **info["model"])
    weights, _, info["mean"] = split_tensors(tensors)
    try:
        model.load_state_dict(weights)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    model.step = info["step"]
    return model, info


def restore_training_state(path, model, tensors, info):
    """Load a checkpoint's weights and momentum into `model` (built from the same config)."""
    weights, momentum, _ = split_tensors(tensors)
    try:
        model.load_state_dict(weights)
        model.load_momentum_state_dict(momentum)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    model.step = info["step"]


def trained_data(cfg, given=None):
    """The data folder a command reads: `given` (its --data), else the first of the checkpoint's
    prepared folder and image folder that still exists."""
    if given is not None:
        return given
    named = [d for d in (cfg.get("prepared"), cfg.get("data")) if d]
    if not named:
        raise DataError("no --data given and the checkpoint names no dataset; give --data DIR")
    found = [d for d in named if Path(d).exists()]
    if not found:
        raise DataError(f"the dataset the checkpoint was trained on is gone ({' or '.join(named)}); "
                        f"give --data DIR (its image folder or prepared folder)")
    return found[0]


def check_classes(cfg, classes, data, num_classes):
    """DataError unless `data`'s class names (`classes`) are the checkpoint's."""
    want = cfg.get("classes") or [str(i) for i in range(num_classes)]
    if list(classes) != list(want):
        raise DataError(f"the classes of {data} ({len(classes)}: {', '.join(classes[:5])}...) differ from the "
                        f"checkpoint's ({len(want)}: {', '.join(want[:5])}...)")
