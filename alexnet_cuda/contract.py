"""The op contract every backend offers (docs/design.md, "Three backends, one contract").

`Backend` holds what all three share: `name`, `xp` (the array module: numpy or cupy),
`asarray`, `to_numpy`, `zeros`, `empty`, `synchronize`, and the device helpers (`device_count`,
`current_device`, `device_of`, `use_device`, `can_access_peer`, `enable_peer_access`, `memcpy_peer`,
`record_event`, `wait_event`: one device, 0, on numpy; the kernel backends' own are in
alexnet_cuda.kernel_ops). `OPS` lists the ops each backend
implements with the reference's signatures (the kernel backends add ``version=``, and
``algorithm=`` to the conv2d ops).

BF16 storage (docs/design.md, "Reduced precision"): `bf16_dtype` is the dtype of a BF16 array on the
backend (``ml_dtypes.bfloat16`` on numpy and emu; ``uint16`` bit patterns on cuda, where cupy has no
bfloat16), `is_bf16(a)` tells one apart, `to_bf16` / `from_bf16` convert (round to nearest even / exact).
The memory-bound ops (relu, tanh, dropout, maxpool, lrn, transfer) take all-FP32 or all-BF16
activation arguments and return the same storage.
"""
from __future__ import annotations

import contextlib

import ml_dtypes
import numpy as np

from .precision import bf16_bits, from_bf16_bits

__all__ = ["Backend", "OPS"]

OPS = (
    "conv2d_forward", "conv2d_backward", "linear_forward", "linear_backward",
    "relu_forward", "relu_backward", "tanh_forward", "tanh_backward", "lrn_forward", "lrn_backward",
    "maxpool_forward", "maxpool_backward", "lrn_maxpool_forward", "lrn_maxpool_backward",
    "dropout_forward", "dropout_backward",
    "softmax_cross_entropy", "sgd_update", "sgd_update_multi", "topk_correct",
    "transfer_forward", "transfer_backward",
)


class Backend:
    """Array helpers common to every backend; subclasses provide the ops."""

    name = "?"
    xp = np
    # BF16 arrays of this backend (alexnet_cuda.precision): ml_dtypes.bfloat16 on numpy and emu,
    # uint16 bit patterns on cuda (set there).
    bf16_dtype = np.dtype(ml_dtypes.bfloat16)

    def is_bf16(self, a):
        """True when `a` is a BF16 array of this backend (dtype bf16_dtype)."""
        return getattr(a, "dtype", None) == self.bf16_dtype

    def to_bf16(self, a):
        """The BF16 array of this backend holding the float32 array `a` rounded to nearest even (NaN
        stays NaN, overflow goes to infinity)."""
        return self.asarray(bf16_bits(a), dtype=np.uint16).view(self.bf16_dtype)

    def from_bf16(self, a):
        """The float32 array of this backend holding the values of the BF16 array `a` (exact)."""
        if not self.is_bf16(a):
            raise TypeError(f"from_bf16: a must be a BF16 array ({self.bf16_dtype}) of the {self.name} backend, "
                            f"got {getattr(a, 'dtype', type(a).__name__)}")
        return self.asarray(from_bf16_bits(a.view(np.uint16)), dtype=np.float32)

    def asarray(self, a, dtype=None):
        """A C-contiguous array of this backend holding `a` (copied only when needed).

        With dtype None, floating-point data becomes float32 (the ops' dtype) and integer
        and boolean data keep their dtype (labels stay int64, as with numpy.asarray)."""
        a = self.xp.asarray(a, dtype=dtype)
        if dtype is None and a.dtype.kind == "f" and a.dtype != np.float32:
            a = a.astype(np.float32)
        return self.xp.ascontiguousarray(a)

    def to_numpy(self, a):
        return np.asarray(a)

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype=dtype)

    def label_record(self):
        """A zeroed `bad_labels` record for softmax_cross_entropy and topk_correct (on the current device):
        an int64 pair that comes to hold (first bad row + 1, its label)."""
        return self.zeros((2,), np.int64)

    def read_label_record(self, record):
        """(row, label) of the first label out of range `record` holds, or None (reads 16 bytes back)."""
        row1, label = (int(v) for v in self.to_numpy(record))
        return (row1 - 1, label) if row1 else None

    def empty(self, shape, dtype=np.float32):
        return self.xp.empty(shape, dtype=dtype)

    def synchronize(self):
        pass

    def device_count(self):
        return 1

    def current_device(self):
        return 0

    def device_of(self, a):
        return None

    @contextlib.contextmanager
    def use_device(self, d):
        if d != 0:
            raise ValueError(f"the {self.name} backend has one device (0), not device {d}")
        yield

    def can_access_peer(self, device, peer):
        return False

    def enable_peer_access(self, peer):
        raise ValueError(f"the {self.name} backend has one device: no peer to access")

    def memcpy_peer(self, dst, dst_device, src, src_device):
        dst[...] = src

    def record_event(self):
        """An event recorded on the current device's stream (None where everything is synchronous)."""
        return None

    def wait_event(self, event):
        """Make the current device's stream wait for `event` (any device's)."""

    def __repr__(self):
        return f"<alexnet_cuda backend {self.name!r}>"
