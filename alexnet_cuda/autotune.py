"""The algorithm of each 3x3 convolution, chosen by measurement (`train --conv-algorithms auto`).

The 3x3 stride-1 layers (conv3..conv5 of the paper's network) have two algorithms on the kernel
backends: the implicit GEMM and Winograd F(4x4,3x3), which does 2.64x fewer multiplies at fp32 with a
larger rounding error (docs/design.md). Which one is faster depends on the card and the shapes, so
`choose` times both on the layer's own shapes at the training batch size, once for the forward pass
and once for the backward pass (Winograd computes the data gradient there; the filter and bias
gradients run the same kernels either way), and keeps the faster of each. Only the cuda backend is
measured: the CPU backends' times say nothing about a GPU, so there the implicit GEMM stays.

A choice is a dict {layer name: {"forward": algorithm, "backward": algorithm}}; `train` keeps it in the
run's configuration, so a resumed run computes with the same kernels, bit for bit.
"""
from __future__ import annotations

import statistics

import numpy as np

from .checks import CONV_ALGORITHMS
from .model import Conv2d
from .clock import Clock

__all__ = ["AUTO", "eligible", "measures", "choose", "apply", "check", "describe"]

AUTO = "auto"  # measure (on cuda); "gemm": never measure, the implicit GEMM everywhere
PASSES = ("forward", "backward")


def eligible(model):
    """The Conv2d layers of `model` with a choice: 3x3, stride 1, fp32 products, a kernel backend, one device."""
    if model.precision != "fp32" or model._split is not None or not hasattr(model.backend, "versions"):
        return []
    return [l for l in model.layers if isinstance(l, Conv2d) and l.shapes["weight"][2:] == (3, 3) and l.stride == 1]


def measures(model, processes=1):
    """Whether "auto" measures for this model: on cuda, with one process, where a layer has a choice."""
    return model.backend.name == "cuda" and processes == 1 and bool(eligible(model))


def _inputs(model, layers, batch_size, seed):
    """{layer name: (x, dy)}: random inputs of each layer's shape at `batch_size` and gradients of its output's."""
    be, ctx = model.backend, model.context()
    rng = np.random.default_rng(seed)
    x = be.asarray(rng.standard_normal((batch_size, 3, model.input_size, model.input_size)).astype(np.float32))
    out = {}
    for l in model.layers:
        y = l.forward(be, x, False, ctx)
        if l in layers:
            dy = rng.standard_normal(y.shape).astype(np.float32)
            out[l.name] = (x, be.asarray(dy))
        x = y
    return out


def _median_ms(clock, fn, repeats):
    clock(fn)  # warm-up: workspaces, module loading
    return statistics.median(clock(fn)[1] for _ in range(repeats))


def _time_layer(model, layer, x, dy, clock, repeats):
    """{pass: {algorithm: ms}} of one layer; an algorithm its geometry does not take is left out."""
    be = model.backend
    geo = dict(stride=layer.stride, padding=layer.padding, groups=layer.groups)
    times = {p: {} for p in PASSES}
    for alg in CONV_ALGORITHMS:
        try:
            times["forward"][alg] = _median_ms(
                clock, lambda: be.conv2d_forward(x, layer.weight, layer.bias, algorithm=alg, **geo), repeats)
            times["backward"][alg] = _median_ms(
                clock, lambda: be.conv2d_backward(dy, x, layer.weight, algorithm=alg, **geo), repeats)
        except ValueError:  # e.g. Winograd refuses the geometry
            times["forward"].pop(alg, None)
    return times


def choose(model, batch_size, *, repeats=3, seed=0, clock=None):
    """(choice, times): the faster algorithm of each eligible layer and pass, and the medians behind it
    ({layer: {pass: {algorithm: ms}}}). `clock(fn)` -> (result, ms), synchronized around fn (default:
    the backend's, as `alexnet-cuda time` uses)."""
    layers = eligible(model)
    clock = clock or Clock(model.backend.synchronize)
    times = {}
    for name, (x, dy) in _inputs(model, layers, batch_size, seed).items():
        layer = next(l for l in layers if l.name == name)
        times[name] = _time_layer(model, layer, x, dy, clock, repeats)
    for l in model.layers:
        l.clear()
    choice = {name: {p: min(t[p], key=t[p].get) for p in PASSES} for name, t in times.items()}
    return choice, times


def check(value):
    """A configuration's conv_algorithms: "auto", "gemm", or a choice (as `choose` returns it); ValueError
    naming what is wrong."""
    if value in (AUTO, "gemm"):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"conv_algorithms must be 'auto', 'gemm' or a dict of layer choices, got {value!r}")
    for name, passes in value.items():
        if not isinstance(passes, dict) or set(passes) != set(PASSES) or \
                any(a not in CONV_ALGORITHMS for a in passes.values()):
            raise ValueError(f"conv_algorithms: layer {name!r} needs {{'forward': A, 'backward': A}} with A one of "
                             f"{', '.join(CONV_ALGORITHMS)}, got {passes!r}")
    return value


def apply(model, choice):
    """Set each named Conv2d's algorithms (the others keep the implicit GEMM). Nothing on the numpy backend,
    which has only its own direct convolution."""
    check(choice)
    if not isinstance(choice, dict) or not hasattr(model.backend, "versions"):
        return
    convs = {l.name: l for l in model.layers if isinstance(l, Conv2d)}
    unknown = set(choice) - set(convs)
    if unknown:
        raise ValueError(f"conv_algorithms: no convolution named {', '.join(sorted(unknown))}")
    for name, passes in choice.items():
        convs[name].algorithm = dict(passes)


def describe(choice, times):
    """One line per measured layer: its milliseconds per algorithm and pass, and the choice."""
    lines = []
    for name, t in times.items():
        parts = [f"{p} " + " / ".join(f"{a} {ms:.3f} ms" for a, ms in t[p].items()) + f" -> {choice[name][p]}"
                 for p in PASSES]
        lines.append(f"conv algorithms: {name}: " + "; ".join(parts))
    return "\n".join(lines)
