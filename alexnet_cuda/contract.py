"""The op contract every backend offers (docs/design.md, "Three backends, one contract").

`Backend` holds what all three share: `name`, `xp` (the array module: numpy or cupy),
`asarray`, `to_numpy`, `zeros`, `synchronize`. `OPS` lists the ops each backend
implements with the reference's signatures (the kernel backends add ``version=``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["Backend", "OPS"]

OPS = (
    "conv2d_forward", "conv2d_backward", "linear_forward", "linear_backward",
    "relu_forward", "relu_backward", "tanh_forward", "tanh_backward", "lrn_forward", "lrn_backward",
    "maxpool_forward", "maxpool_backward", "dropout_forward", "dropout_backward",
    "softmax_cross_entropy", "sgd_update", "sgd_update_multi", "topk_correct",
)


class Backend:
    """Array helpers common to every backend; subclasses provide the ops."""

    name = "?"
    xp = np

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

    def synchronize(self):
        pass

    def __repr__(self):
        return f"<alexnet_cuda backend {self.name!r}>"
