"""Reduced precision by rounding: BF16 and TF32 as the tensor-core kernels produce them.

The tensor-core kernels (csrc/common/mma_sync.h) round at two kinds of points, and this
module rounds at the same ones so that the NumPy reference of a precision computes what the
kernels compute, up to FP32 summation order:

* ``round_bf16``: FP32 -> BF16 (8 significant bits) to nearest, ties to even, as
  ``__float2bfloat16_rn`` / ``cvt.rn.bf16.f32`` do. Overflow goes to infinity, NaN stays a
  (quiet) NaN of the same sign, infinity stays infinity, subnormals round like the rest.
* ``round_tf32``: FP32 -> TF32 (11 significant bits, FP32's exponent) to nearest, ties
  away from zero, as ``cvt.rna.tf32.f32`` does (the kernels convert every TF32 input with
  it). Infinity and NaN pass unchanged.

Both return float32 arrays whose values are representable in the narrow format.

How BF16 arrays appear in Python:

* numpy (the numpy and emu backends): ``ml_dtypes.bfloat16`` arrays (``to_bf16``).
* cupy has no bfloat16 dtype: a ``uint16`` array holding the BF16 bit patterns (the top
  16 bits of the FP32 pattern; ``bf16_bits`` / ``from_bf16_bits``). The kernels take this
  form on every backend; an ``ml_dtypes.bfloat16`` numpy array is viewed as ``uint16``
  (``as_bf16_bits``) before a launch.

Every function takes numpy or cupy arrays and works with the array's own module.
"""
from __future__ import annotations

import numpy as np

PRECISIONS = ("fp32", "tf32", "bf16")


def _xp(a):
    """The array module of a: cupy for a cupy array (imported only then), else numpy."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def check_precision(fn, precision):
    """The precision name, or ValueError naming ``fn``."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{fn}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _f32_bits(x):
    xp = _xp(x)
    return xp.ascontiguousarray(x, dtype=xp.float32).view(xp.uint32)


def bf16_bits(x):
    """uint16 BF16 bit patterns of x rounded to nearest even (NaN: quiet NaN, sign kept)."""
    xp = _xp(x)
    u = _f32_bits(x)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    wide = u.astype(xp.uint64)
    rounded = (wide + 0x7FFF + ((wide >> 16) & 1)) >> 16
    return xp.where(nan, (u >> 16) | 0x40, rounded).astype(xp.uint16)


def from_bf16_bits(bits):
    """float32 values of uint16 BF16 bit patterns (exact)."""
    xp = _xp(bits)
    return (xp.asarray(bits).astype(xp.uint32) << 16).view(xp.float32)


def round_bf16(x):
    """x rounded to BF16 (nearest, ties to even), as float32."""
    return from_bf16_bits(bf16_bits(x))


def round_tf32(x):
    """x rounded to TF32 as cvt.rna.tf32.f32 does (nearest, ties away from zero), as float32."""
    xp = _xp(x)
    u = _f32_bits(x)
    special = (u & 0x7F800000) == 0x7F800000
    r = ((u.astype(xp.uint64) + 0x1000) & 0xFFFFE000).astype(xp.uint32)
    return xp.where(special, u, r).view(xp.float32)


def round_to(precision, x):
    """The inputs of a tensor-core product at ``precision``: round_tf32, round_bf16, or x as float32."""
    check_precision("round_to", precision)
    if precision == "bf16":
        return round_bf16(x)
    if precision == "tf32":
        return round_tf32(x)
    return _xp(x).asarray(x, dtype=_xp(x).float32)


def to_bf16(x):
    """A numpy ml_dtypes.bfloat16 array of x (rounded to nearest even)."""
    import ml_dtypes

    return bf16_bits(np.asarray(x)).view(ml_dtypes.bfloat16)


def as_bf16_bits(a):
    """The uint16 bit patterns the kernels take: a uint16 array as it is, an ml_dtypes.bfloat16
    array viewed as uint16, anything else rounded to BF16 first."""
    xp = _xp(a)
    if getattr(a, "dtype", None) == xp.uint16:
        return a
    if getattr(a, "dtype", None) is not None and a.dtype.name == "bfloat16":
        return a.view(np.uint16)
    return bf16_bits(a)
