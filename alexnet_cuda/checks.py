"""The one checker of each scalar argument of the ops, shared by every backend.

The reference (numpy backend) and the kernel backends (emu, cuda) call these same
functions, so a wrong scalar gets the same exception and the same message on every
backend. Arrays are checked where they are used: by the reference for numpy arrays,
by the C++ bindings for the kernels. Every message starts with the op's name and
names the argument, e.g. ``dropout_forward: p must be in [0, 1), got 1.0``.
"""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np

__all__ = ["integer", "real", "probability", "boolean", "u64", "lrn_params", "lrn_pool_params", "sgd_multi_args", "conv_hyper",
           "activation", "FUSED_ACTIVATIONS", "bf16_storage", "out_storage", "conv_algorithm", "CONV_ALGORITHMS"]

# The activations conv2d_forward and linear_forward apply to their output ("none": the plain product).
FUSED_ACTIVATIONS = ("none", "relu")

# The algorithms of the kernel backends' conv2d_forward and conv2d_backward data gradient: "gemm" (direct
# loops and implicit GEMM, every geometry and precision) or "winograd" (F(4x4, 3x3): 3x3, stride 1,
# padding <= 2, fp32; csrc/kernels/conv_winograd.cu).
CONV_ALGORITHMS = ("gemm", "winograd")

DEFAULT_WEIGHT_DECAY = 5e-4


def integer(fn, name, v, *, minimum=None):
    """A Python/NumPy integer (not bool) >= minimum, as int."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be an integer, got bool")
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be an integer, got {type(v).__name__}") from None
    if minimum is not None and v < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {v}")
    return v


def real(fn, name, v):
    """A finite real number (not bool), as float."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{fn}: {name} must be finite, got {v}")
    return v


def probability(fn, name, p):
    """A dropout probability in [0, 1), as float."""
    p = real(fn, name, p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{fn}: {name} must be in [0, 1), got {p}")
    return p


def boolean(fn, name, v):
    """A Python/NumPy bool, as bool."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be a bool, got {type(v).__name__}")
    return bool(v)


def u64(fn, name, v):
    """An integer in [0, 2**64)."""
    v = integer(fn, name, v, minimum=0)
    if v >= 1 << 64:
        raise ValueError(f"{fn}: {name} must be < 2**64, got {v}")
    return v


def conv_hyper(fn, stride, padding, groups):
    """(stride, padding, groups) of a convolution, checked."""
    return (integer(fn, "stride", stride, minimum=1), integer(fn, "padding", padding, minimum=0),
            integer(fn, "groups", groups, minimum=1))


def activation(fn, activation):
    """The activation fused into a conv2d/linear forward ("none" or "relu"), checked."""
    if not isinstance(activation, str) or activation not in FUSED_ACTIVATIONS:
        raise ValueError(f"{fn}: activation must be one of {', '.join(FUSED_ACTIVATIONS)}, got {activation!r}")
    return activation


def bf16_storage(fn, what, precision):
    """BF16 storage (an input array, or the output out_dtype asks for) needs precision "bf16"."""
    if precision != "bf16":
        raise ValueError(f"{fn}: {what} is BF16 storage, which needs precision='bf16', got precision={precision!r}")


def out_storage(fn, out_dtype, *, precision, x_bf16, bf16_dtype):
    """The storage of a product's output (conv2d_forward, linear_forward): "fp32" or "bf16".

    out_dtype None follows x (BF16 when ``x_bf16``); else "fp32" or "bf16", or a dtype: float32, or
    the backend's ``bf16_dtype`` (ml_dtypes.bfloat16 on numpy and emu, uint16 on cuda). "bf16" needs
    precision "bf16"."""
    if out_dtype is None:
        return "bf16" if x_bf16 else "fp32"
    if isinstance(out_dtype, str) and out_dtype in ("fp32", "bf16"):
        storage = out_dtype
    else:
        try:
            d = np.dtype(out_dtype)
        except (TypeError, ValueError):
            d = None
        storage = "fp32" if d == np.float32 else "bf16" if d is not None and d == np.dtype(bf16_dtype) else None
        if storage is None:
            raise ValueError(f"{fn}: out_dtype must be None (x's storage), 'fp32', 'bf16', float32 or "
                             f"{np.dtype(bf16_dtype).name} (this backend's BF16 arrays), got {out_dtype!r}")
    if storage == "bf16":
        bf16_storage(fn, f"out_dtype={out_dtype!r}", precision)
    return storage


def conv_algorithm(fn, algorithm, precision="fp32"):
    """The conv algorithm of a kernel backend ("gemm" or "winograd"), checked; winograd runs at fp32 only
    (its geometry is checked by the extension)."""
    if not isinstance(algorithm, str) or algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"{fn}: algorithm must be one of {', '.join(CONV_ALGORITHMS)}, got {algorithm!r}")
    if algorithm == "winograd" and precision != "fp32":
        raise ValueError(f"{fn}: algorithm 'winograd' runs at precision fp32 only, got {precision!r}")
    return algorithm


def lrn_params(fn, size, alpha, beta, k, alpha_scaled):
    """(size, a, beta, k) of an LRN, where a is the coefficient applied to the sum of squares
    (alpha, or alpha/size with alpha_scaled=True)."""
    size = integer(fn, "size", size, minimum=1)
    if size % 2 == 0:
        raise ValueError(f"{fn}: size must be odd (a window centred on the channel), got {size}")
    alpha, beta, k = real(fn, "alpha", alpha), real(fn, "beta", beta), real(fn, "k", k)
    if not isinstance(alpha_scaled, (bool, np.bool_)):
        raise TypeError(f"{fn}: alpha_scaled must be a bool, got {type(alpha_scaled).__name__}")
    return size, (alpha / size if alpha_scaled else alpha), beta, k


def lrn_pool_params(fn, size, alpha, beta, k, alpha_scaled, pool_size, pool_stride, relu_input=False):
    """(size, a, beta, k, pool_size, pool_stride, relu_input) of the fused LRN + max-pool ops: lrn_params,
    the pooling window and stride (integers >= 1) and relu_input (a bool)."""
    size, a, beta, k = lrn_params(fn, size, alpha, beta, k, alpha_scaled)
    pool_size = integer(fn, "pool_size", pool_size, minimum=1)
    pool_stride = integer(fn, "pool_stride", pool_stride, minimum=1)
    return size, a, beta, k, pool_size, pool_stride, boolean(fn, "relu_input", relu_input)


def sgd_multi_args(params, grads, vels, lr, momentum, weight_decays):
    """(params, grads, vels, lr, momentum, weight_decays) of sgd_update_multi, checked; the weight
    decays default to 5e-4 each."""
    fn = "sgd_update_multi"
    params, grads, vels = list(params), list(grads), list(vels)
    if weight_decays is None:
        weight_decays = [DEFAULT_WEIGHT_DECAY] * len(params)
    weight_decays = [real(fn, f"weight_decays[{i}]", wd) for i, wd in enumerate(weight_decays)]
    if not (len(grads) == len(vels) == len(weight_decays) == len(params)):
        raise ValueError(f"{fn}: params, grads, vels and weight_decays must have the same length "
                         f"(got {len(params)}, {len(grads)}, {len(vels)}, {len(weight_decays)})")
    return params, grads, vels, real(fn, "lr", lr), real(fn, "momentum", momentum), weight_decays
