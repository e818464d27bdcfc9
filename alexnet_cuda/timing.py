"""Where a training step's time goes: `alexnet-cuda time`, one row per layer and direction.

Each repeat runs one training step of the model layer by layer (train mode, random input of the
preset's size), with the backend synchronized before and after every layer, so each
row is that layer's wall time alone (launch gaps included, as in a real step). The SGD update of all
parameters is one more row. The numbers are medians over `repeats` steps after `warmup` steps.

When PyTorch is importable, the same layers (same shapes, groups, LRN constants, pooling, dropout)
are timed the same way in PyTorch on the matching device (the GPU for the cuda backend, the CPU
otherwise), cudnn.benchmark on, at the model's precision (`torch_precision`: fp32 with TF32 off, tf32
with TF32 on, bf16 under autocast(bfloat16), PyTorch's mixed precision), and the ratio ours / PyTorch is
printed. benchmarks/bench_train.py prints the same table below its end-to-end numbers.

Fused layers keep their rows: a ReLU fused into the conv or linear forward before it, a max-pool
fused into the LRN before it and a ReLU whose backward the next layer's folds in (AlexNet.fuse_relus,
fuse_lrn_pools, fold_relu_backwards) show near-zero rows, their work counted in the row of the layer
that absorbed it (lrn1 holds pool1's forward and backward and relu1's backward; pool5 relu5's
backward, drop6 and drop7 relu6's and relu7's). PyTorch's rows stay per layer, so compare such groups
of rows, or the totals.
"""
from __future__ import annotations

import statistics

import numpy as np

from . import autotune
from .backends import resolve_backend
from .clock import Clock
from .cliargs import add_backend_argument, add_precision_argument, non_negative_int, positive_int
from .model import LRN, PRESETS, Conv2d, Dropout, Flatten, Linear, MaxPool, ReLU, from_preset

__all__ = ["time_step", "time_torch_layers", "torch_precision", "format_table", "add_arguments", "run"]


def _one_step(model, x, labels, clock, times):
    """One training step, layer by layer; appends each layer's milliseconds to `times`."""
    be, ctx = model.backend, model.context()
    for l in model.layers:
        x, ms = clock(lambda l=l, x=x: l.forward(be, x, True, ctx))
        times.setdefault((l.name, "forward"), []).append(ms)
    (loss, d), ms = clock(lambda: be.softmax_cross_entropy(x, labels))
    times.setdefault(("loss", "forward+backward"), []).append(ms)
    for i in range(len(model.layers) - 1, -1, -1):
        l = model.layers[i]
        if i == 0:  # the image needs no gradient (as in AlexNet.loss_and_grads)
            _, ms = clock(lambda l=l, d=d: l.backward(be, d, need_dx=False))
        else:
            d, ms = clock(lambda l=l, d=d: l.backward(be, d))
        times.setdefault((l.name, "backward"), []).append(ms)
        l.clear()
    _, ms = clock(lambda: model.apply_update(0.001))
    times.setdefault(("sgd", "update"), []).append(ms)
    model.step += 1


def _inputs(model, batch_size, seed):
    rng = np.random.default_rng(seed)
    s = model.input_size
    x = model.backend.asarray((rng.standard_normal((batch_size, 3, s, s)) * 50).astype(np.float32))
    y = model.backend.asarray(rng.integers(0, model.num_classes, batch_size), dtype=np.int64)
    return x, y


def time_step(model, batch_size, *, repeats=5, warmup=1, seed=0):
    """[{"layer", "direction", "ms"}] for one training step of `model` (median over `repeats`)."""
    x, y = _inputs(model, batch_size, seed)
    clock = Clock(model.backend.synchronize)
    for _ in range(warmup):
        _one_step(model, x, y, clock, {})
    times = {}
    for _ in range(repeats):
        _one_step(model, x, y, clock, times)
    return [{"layer": k[0], "direction": k[1], "ms": statistics.median(v)} for k, v in times.items()]


# ---------------------------------------------------------------------------
# PyTorch's time for the same layers
# ---------------------------------------------------------------------------

def _torch_module(layer, in_shape):
    """The PyTorch module computing `layer` for inputs of `in_shape`, or None (no compute: flatten)."""
    from torch import nn
    if isinstance(layer, Conv2d):
        o, i, k, _ = layer.shapes["weight"]
        return nn.Conv2d(i * layer.groups, o, k, stride=layer.stride, padding=layer.padding, groups=layer.groups)
    if isinstance(layer, Linear):
        o, i = layer.shapes["weight"]
        return nn.Linear(i, o)
    if isinstance(layer, ReLU):
        return nn.ReLU()
    if isinstance(layer, LRN):  # PyTorch divides alpha by size
        hp = layer.hp
        return nn.LocalResponseNorm(hp["size"], alpha=hp["alpha"] * hp["size"], beta=hp["beta"], k=hp["k"])
    if isinstance(layer, MaxPool):
        return nn.MaxPool2d(layer.size, layer.stride)
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.p)
    if isinstance(layer, Flatten):
        return None
    return getattr(nn, type(layer).__name__, lambda: None)()  # e.g. nn.Tanh for a Tanh layer


def torch_precision(precision, device):
    """Set PyTorch up for `precision` on `device` ("cuda" or "cpu"): TF32 allowed only at tf32,
    cudnn.benchmark on; returns the context a forward runs in (autocast(bfloat16) at bf16, PyTorch's
    mixed precision, else a no-op)."""
    import contextlib

    import torch
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.benchmark = True
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext


def time_torch_layers(model, batch_size, *, repeats=5, warmup=1, seed=0):
    """{(layer, direction): ms} of the same layers in PyTorch, each timed alone on inputs of the shapes
    they have in `model`; on the GPU when the model's backend is cuda, else on the CPU; at the model's
    precision (torch_precision)."""
    import torch
    dev = torch.device("cuda" if model.backend.name == "cuda" else "cpu")
    amp = torch_precision(model.precision, dev.type)
    clock = Clock(torch.cuda.synchronize if dev.type == "cuda" else (lambda: None))
    gen = torch.Generator().manual_seed(seed)
    shape = (batch_size, 3, model.input_size, model.input_size)
    out = {}
    for idx, layer in enumerate(model.layers):
        mod = _torch_module(layer, shape)
        if isinstance(layer, Flatten):
            shape = (shape[0], int(np.prod(shape[1:])))
            continue
        if mod is None:
            continue
        mod = mod.to(dev).train()
        # under autocast the layers after conv1 get BF16 activations, as in a mixed-precision network
        dtype = torch.bfloat16 if model.precision == "bf16" and idx > 0 else torch.float32
        x = torch.randn(shape, generator=gen).to(dev, dtype).requires_grad_(idx > 0)
        fw, bw = [], []
        for r in range(warmup + repeats):
            y, ms_f = clock(lambda: _amp_call(amp, mod, x))
            gy = torch.ones_like(y)
            _, ms_b = clock(lambda: y.backward(gy))
            if r >= warmup:
                fw.append(ms_f)
                bw.append(ms_b)
            x.grad = None
        out[(layer.name, "forward")] = statistics.median(fw)
        out[(layer.name, "backward")] = statistics.median(bw)
        shape = tuple(y.shape)
    return out


def _amp_call(amp, mod, x):
    with amp():
        return mod(x)


def format_table(rows, torch_note=None):
    """The table `alexnet-cuda time` prints (rows may carry "torch_ms")."""
    has_torch = any(r.get("torch_ms") is not None for r in rows)
    head = f"{'layer':<10} {'direction':<17} {'ours ms':>9}" + (f" {'torch ms':>9} {'ratio':>6}" if has_torch else "")
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['layer']:<10} {r['direction']:<17} {r['ms']:9.3f}"
        if has_torch:
            t = r.get("torch_ms")
            line += f" {t:9.3f} {r['ms'] / t:6.2f}" if t else f" {'':>9} {'':>6}"
        lines.append(line)
    total = sum(r["ms"] for r in rows)
    tline = f"{'total':<10} {'':<17} {total:9.3f}"
    if has_torch:
        ttotal = sum(r.get("torch_ms") or 0.0 for r in rows if r.get("torch_ms"))
        tline += f" {ttotal:9.3f} {'':>6}"
    lines += ["-" * len(head), tline]
    if torch_note:
        lines.append(torch_note)
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------

def add_arguments(p):
    add_backend_argument(p)
    p.add_argument("--preset", choices=sorted(PRESETS), help="the network (default: full on cuda, small otherwise)")
    p.add_argument("--batch-size", type=positive_int, help="images per step (default: the preset's)")
    p.add_argument("--classes", type=positive_int, help="output classes (default: 1000 full, 10 small)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed steps; the median is printed (default 5)")
    p.add_argument("--warmup", type=non_negative_int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--no-torch", action="store_true", help="do not time PyTorch even when it is importable")
    add_precision_argument(p, "fp32")


def run(args, log=print):
    """One table: our milliseconds per layer and direction, PyTorch's when importable, and the ratio."""
    be = resolve_backend(args.backend)
    preset = args.preset or ("full" if be.name == "cuda" else "small")
    bs = args.batch_size or PRESETS[preset]["batch_size"]
    classes = args.classes or (1000 if preset == "full" else 10)
    model = from_preset(preset, classes, backend=be, precision=args.precision or "fp32")
    log(f"time: {model!r}, precision {model.precision}, batch {bs}, {args.repeats} timed step(s) after "
        f"{args.warmup} warm-up")
    if autotune.measures(model):  # the 3x3 convolutions' algorithms as `train` picks them
        choice, times = autotune.choose(model, bs)
        log(autotune.describe(choice, times))
        autotune.apply(model, choice)
    rows = time_step(model, bs, repeats=args.repeats, warmup=args.warmup)
    note = None
    if args.no_torch:
        note = "PyTorch not timed (--no-torch)"
    else:
        try:
            theirs = time_torch_layers(model, bs, repeats=args.repeats, warmup=args.warmup)
        except ImportError as e:
            note = f"PyTorch not timed: {e}"
        else:
            for r in rows:
                r["torch_ms"] = theirs.get((r["layer"], r["direction"]))
    log(format_table(rows, note))
    return 0
