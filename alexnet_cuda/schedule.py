"""The learning-rate schedule of `alexnet-cuda train`: the paper's division by 10 on plateaus of
the validation error, fixed steps, and an optional linear warm-up over the first steps."""
from __future__ import annotations

from .errors import TrainError

__all__ = ["LRSchedule"]


class LRSchedule:
    """lr0 divided by `factor` on plateaus of the validation error, or at fixed epochs.

    kind "plateau": after each epoch, an error lower than the best so far resets
    the count of bad epochs; `patience` bad epochs in a row divide lr by
    `factor` (and reset the count), at most `max_reductions` times.
    kind "step": lr0 / factor**k during epoch e (1-based) where k is the number
    of milestones < e (capped at max_reductions).
    warmup W > 0: during the first W training steps the lr rises linearly,
    lr(step) = lr(epoch) * (step + 1) / W, then follows the schedule.
    """

    def __init__(self, lr, kind="plateau", *, patience=2, milestones=(), factor=10.0, max_reductions=3, warmup=0):
        if kind not in ("plateau", "step"):
            raise TrainError(f"unknown schedule {kind!r}; expected 'plateau' or 'step:E1,E2,...'")
        if not lr > 0:
            raise TrainError(f"the learning rate must be > 0, got {lr}")
        if patience < 1:
            raise TrainError(f"patience must be >= 1, got {patience}")
        if int(warmup) < 0:
            raise TrainError(f"warmup must be >= 0 steps, got {warmup}")
        self.warmup = int(warmup)
        self.lr0, self.kind, self.patience = float(lr), kind, int(patience)
        self.milestones = sorted(int(m) for m in milestones)
        self.factor, self.max_reductions = float(factor), int(max_reductions)
        self.lr, self.best, self.bad_epochs, self.reductions = float(lr), None, 0, 0

    @classmethod
    def parse(cls, spec, lr, patience, warmup=0):
        """From a --schedule string: 'plateau' or 'step:30,60,80'."""
        spec = (spec or "plateau").strip()
        if spec == "plateau":
            return cls(lr, "plateau", patience=patience, warmup=warmup)
        if spec.startswith("step:"):
            try:
                ms = [int(v) for v in spec[5:].split(",") if v.strip()]
            except ValueError:
                raise TrainError(f"bad --schedule {spec!r}: expected step:E1,E2,... with integer epochs") from None
            if not ms or any(m < 1 for m in ms):
                raise TrainError(f"bad --schedule {spec!r}: expected step:E1,E2,... with epochs >= 1")
            return cls(lr, "step", patience=patience, milestones=ms, warmup=warmup)
        raise TrainError(f"bad --schedule {spec!r}: expected 'plateau' or 'step:E1,E2,...'")

    def lr_for_epoch(self, epoch):
        """The lr of epoch `epoch` (0-based)."""
        if self.kind == "step":
            k = min(self.max_reductions, sum(1 for m in self.milestones if epoch + 1 > m))
            return self.lr0 / self.factor ** k
        return self.lr

    def lr_at(self, epoch, step):
        """The lr of training step `step` (0-based, counted over the whole run) in epoch `epoch`."""
        lr = self.lr_for_epoch(epoch)
        return lr * (step + 1) / self.warmup if step < self.warmup else lr

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
                "factor": self.factor, "max_reductions": self.max_reductions, "warmup": self.warmup, "lr": self.lr,
                "best": self.best, "bad_epochs": self.bad_epochs, "reductions": self.reductions}

    def load_state_dict(self, s):
        self.lr0, self.kind, self.patience = float(s["lr0"]), s["kind"], int(s["patience"])
        self.milestones = [int(m) for m in s["milestones"]]
        self.factor, self.max_reductions = float(s["factor"]), int(s["max_reductions"])
        self.warmup = int(s.get("warmup", 0))  # checkpoints before warm-up existed have none
        self.lr, self.best = float(s["lr"]), (None if s["best"] is None else float(s["best"]))
        self.bad_epochs, self.reductions = int(s["bad_epochs"]), int(s["reductions"])
