"""The training's health in numbers: per-layer weight and gradient norms, update ratios, dead ReLUs.

Per epoch, for every parameter layer (conv1..conv5, fc6..fc8), of its WEIGHTS only (biases left
out: they start at zero, so their update ratio means nothing, and they are a sliver of the
parameters):

* ``weight_norm``       ||w|| at the end of the epoch
* ``grad_norm``         ||dw|| (the loss's gradient, without weight decay), mean over the epoch's steps
* ``update_ratio``      ||v|| / ||w|| after each step, mean over the epoch's steps; v is the SGD
                        velocity, which is exactly the step's update (v = momentum*v - wd*lr*w - lr*dw;
                        w += v)
* ``update_ratio_max``  its largest value in the epoch

and for every ReLU layer (relu1..relu7) the fraction of its units that were dead for the whole
epoch: a unit is one output position per example (channel x row x column after a conv, one
feature after an fc layer), dead when its output was 0 for every training example of the epoch.

Everything is summed on the model's backend (its array module, numpy or cupy): per step 24 dot
products (gradient, velocity and weight of 8 layers) and a few vector operations on 8 numbers, per
ReLU and forward one maximum over the batch; only `record()` copies some 40 numbers to the host.

    health = Health(model)          # switches the model's activity tracking on
    ...  model.train_step(...); health.after_step()   # after every step (a non-finite loss ends the run)
    rec["health"] = health.record()                    # at the epoch end; resets
    for w in health.warnings(rec["health"]): log(w)
    tensors.update(health.state())                     # a mid-epoch checkpoint; health.load_state(tensors)
"""
from __future__ import annotations

import math

import numpy as np

from .model import AlexNet, ReLU

__all__ = ["Health", "health_warnings", "UPDATE_RATIO_MAX", "UPDATE_RATIO_MIN", "DEAD_MAX", "STATE_PREFIX"]

# The update ratio ||update|| / ||weight|| of a step. The rule of thumb is about 1e-3 (each step
# moves the weights by a thousandth). Above 1e-1 a layer's weights change by a tenth or more at every
# step, on average over an epoch: the learning rate is far too high for it and training is close to
# diverging. Below 1e-7 the update is under float32's rounding step (eps = 1.19e-7 relative to the
# weight), so `w += v` rounds most of it away: the layer has stopped learning. The paper's schedule
# (lr 0.01 divided by 10 at most three times) stays well inside, around 1e-5..1e-2.
UPDATE_RATIO_MAX = 1e-1
UPDATE_RATIO_MIN = 1e-7
# A ReLU layer with 95% or more of its units dead for a whole epoch passes (almost) nothing on: the
# typical fraction is a few percent to a few tens of percent, never near all.
DEAD_MAX = 0.95
# the prefix of the names in `Health.state()`, which go into a checkpoint beside the weights
STATE_PREFIX = "health."

_TINY = np.finfo(np.float64).tiny


class Health:
    """Per-layer numbers of one epoch of training (see the module docstring)."""

    def __init__(self, model: AlexNet, world=None):
        self.model, self.world = model, world
        self.xp = model.backend.xp
        self.layers = [n[:-len(".weight")] for n, _ in model.named_parameters() if n.endswith(".weight")]
        self.relus = [l for l in model.layers if isinstance(l, ReLU)]
        model.track_activity(True)
        self._reset()

    def _reset(self):
        xp, n = self.xp, len(self.layers)
        self.count = 0
        self._grad_sum = xp.zeros(n, dtype=xp.float64)
        self._ratio_sum = xp.zeros(n, dtype=xp.float64)
        self._ratio_max = xp.zeros(n, dtype=xp.float64)

    def _weights(self):
        params = dict(self.model.named_parameters())
        return [params[f"{n}.weight"] for n in self.layers]

    def _norms(self, arrays):
        """The Euclidean norms of `arrays` as one float64 backend vector (a dot product each)."""
        xp = self.xp
        sq = xp.stack([self.model.squared_norm(a) for a in arrays])
        return xp.sqrt(sq)

    def after_step(self):
        """Add the last step's gradient norms and update ratios (call after each train_step; `train` stops at
        a non-finite loss before it records them)."""
        xp, m, n = self.xp, self.model, len(self.layers)
        grads = dict(m.gradients())
        keys = [f"{name}.weight" for name in self.layers]
        arrays = [grads[k] for k in keys] + [m.momentum[k] for k in keys] + self._weights()
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            norms = self._norms(arrays).reshape(3, n)
            ratio = norms[1] / xp.maximum(norms[2], _TINY)
            self._grad_sum += norms[0]
            self._ratio_sum += ratio
            self._ratio_max = xp.maximum(self._ratio_max, ratio)
        self.count += 1

    def record(self):
        """The epoch's JSON-able record, then a reset for the next epoch:
        {"steps": n, "layers": {"conv1": {"weight_norm", "grad_norm", "update_ratio", "update_ratio_max"},
        ...}, "dead": {"relu1": fraction, ...}} (None where nothing was measured)."""
        xp, n = self.xp, len(self.layers)
        active = self.model.take_activity()
        masks = [(name, self._over_ranks(a)) for name, a in active.items() if a is not None]
        counts = [a.sum(dtype=xp.float64) for _, a in masks]
        parts = [self._grad_sum, self._ratio_sum, self._ratio_max, self._norms(self._weights())]
        if counts:
            parts.append(xp.stack(counts))
        host = np.asarray(self.model.backend.to_numpy(xp.concatenate(parts)), np.float64)
        c = self.count
        layers = {}
        for i, name in enumerate(self.layers):
            layers[name] = {"weight_norm": float(host[3 * n + i]),
                            "grad_norm": float(host[i]) / c if c else None,
                            "update_ratio": float(host[n + i]) / c if c else None,
                            "update_ratio_max": float(host[2 * n + i]) if c else None}
        dead = {name: None for name in active}
        for j, (name, a) in enumerate(masks):
            dead[name] = (a.size - float(host[4 * n + j])) / a.size if a.size else None
        self._reset()
        return {"steps": c, "layers": layers, "dead": dead}

    def _over_ranks(self, active):
        """A unit is alive when it was active on any rank (data parallelism: each saw part of the batch)."""
        if self.world is None or self.world.size == 1:
            return active
        be = self.model.backend
        return be.asarray(self.world.any_mask_(be.to_numpy(active)), dtype=np.uint8)

    def warnings(self, record):
        """One-line warnings for `record` (see health_warnings)."""
        return health_warnings(record)

    def state(self):
        """The partial epoch as {STATE_PREFIX + name: numpy array} (copies): the step count, the three
        sums and each ReLU's activity mask (bool, absent before the first step). For a checkpoint."""
        be, P = self.model.backend, STATE_PREFIX
        out = {P + "steps": np.array(self.count, np.int64)}
        for key, a in (("grad_norm_sum", self._grad_sum), ("update_ratio_sum", self._ratio_sum),
                       ("update_ratio_max", self._ratio_max)):
            out[P + key] = np.array(be.to_numpy(a), np.float64, copy=True)
        for name, a in self.model.take_activity(reset=False).items():
            if a is not None:
                out[f"{P}active.{name}"] = np.array(be.to_numpy(a), np.bool_, copy=True)
        return out

    def load_state(self, state):
        """Continue from `state()` (other keys are ignored; without health keys: an empty epoch)."""
        P, n, be = STATE_PREFIX, len(self.layers), self.model.backend
        self._reset()
        self.model.track_activity(True)
        if P + "steps" not in state:
            return
        sums = {}
        for key in ("grad_norm_sum", "update_ratio_sum", "update_ratio_max"):
            a = np.asarray(state[P + key], np.float64)
            if a.shape != (n,):
                raise ValueError(f"Health.load_state: {P + key} has shape {a.shape}, expected ({n},)")
            sums[key] = be.asarray(a.copy(), dtype=np.float64)
        self._grad_sum, self._ratio_sum, self._ratio_max = (sums["grad_norm_sum"], sums["update_ratio_sum"],
                                                           sums["update_ratio_max"])
        self.count = int(np.asarray(state[P + "steps"]))
        names = {l.name for l in self.relus}
        for key, a in state.items():
            if key.startswith(P + "active."):
                name = key[len(P + "active."):]
                if name not in names:
                    raise ValueError(f"Health.load_state: {key} names no ReLU layer of this model")
                self.model.set_activity(name, a)


def _sci(v):
    return f"{v:.1e}"


def health_warnings(record):
    """One line per problem in a health `record`: a layer whose mean update ratio is above
    UPDATE_RATIO_MAX, below UPDATE_RATIO_MIN or not finite; a ReLU layer with DEAD_MAX or more of its
    units dead. Each names the layer."""
    out = []
    steps = record.get("steps")
    for name, r in (record.get("layers") or {}).items():
        ratio = r.get("update_ratio")
        if ratio is None:
            continue
        what = (f"warning: {name}: update ratio ||update|| / ||weight|| {_sci(ratio)} (mean of {steps} "
                f"step{'' if steps == 1 else 's'}, max {_sci(r.get('update_ratio_max') or 0.0)})")
        if not math.isfinite(ratio):
            out.append(f"{what} is not finite: the training is diverging")
        elif ratio > UPDATE_RATIO_MAX:
            out.append(f"{what} is above {UPDATE_RATIO_MAX:g}: its weights change too fast; lower --lr")
        elif ratio < UPDATE_RATIO_MIN:
            out.append(f"{what} is below {UPDATE_RATIO_MIN:g} (float32 rounds such updates away): "
                       f"the layer has stopped learning")
    for name, frac in (record.get("dead") or {}).items():
        if frac is not None and frac >= DEAD_MAX:
            out.append(f"warning: {name}: {frac:.1%} of its units were zero for every training image of the "
                       f"epoch (dead): the layer passes (almost) nothing on; lower --lr or check the init")
    return out
