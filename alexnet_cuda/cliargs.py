"""The one checker of each command-line argument shared by several commands."""
from __future__ import annotations

import argparse

from .backends import BACKENDS
from .precision import PRECISIONS

__all__ = ["positive_int", "non_negative_int", "positive_float", "dropout_probability", "add_backend_argument",
           "add_devices_argument"]


def _number(kind, text, ok, what):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return v


def positive_int(text):
    """argparse type: an integer >= 1."""
    return _number(int, text, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text):
    """argparse type: an integer >= 0."""
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def positive_float(text):
    """argparse type: a finite number > 0."""
    return _number(float, text, lambda v: 0 < v < float("inf"), "a number > 0")


def device_list(text):
    """argparse type: device numbers separated by commas ('0,1'), as a list."""
    parts = [s.strip() for s in text.split(",")]
    if not all(s.isdigit() for s in parts) or len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected one or two device numbers separated by a comma (0,1), got {text!r}")
    return [int(s) for s in parts]


def add_devices_argument(p):
    p.add_argument("--devices", type=device_list,
                   help="'0,1': the paper's two towers on two devices, tower t on device t (model parallel); "
                        "'0,0': both towers on one device through the same exchange code; default: one device, "
                        "the towers computed together. On emu, ALEXNET_EMU_DEVICES=2 presents two devices")


def dropout_probability(text):
    """argparse type: a number in [0, 1)."""
    return _number(float, text, lambda v: 0 <= v < 1, "a probability in [0, 1)")


def add_backend_argument(p):
    p.add_argument("--backend", choices=BACKENDS,
                   help="cuda (our kernels on the GPU), emu (the same kernels on the CPU) or numpy (the NumPy "
                        "reference); default: ALEXNET_CUDA_BACKEND if set, else cuda when a usable GPU is "
                        "present, else numpy")


def add_precision_argument(p, default):
    """--precision (alexnet_cuda.precision.PRECISIONS); `default` says in words what None means."""
    p.add_argument("--precision", choices=PRECISIONS,
                   help="fp32, tf32 (the convolutions' and linear layers' products on tensor cores with TF32 "
                        "inputs) or bf16 (BF16 products, activations and their gradients stored in BF16; FP32 "
                        f"weights, update and reductions); on the CPU backends by rounding; default: {default}")
