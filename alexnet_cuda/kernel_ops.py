"""The op contract on top of our kernels, shared by the `emu` and `cuda` backends.

Each op allocates its outputs with the backend's array module (numpy for emu, cupy's
memory pool for cuda) and calls the extension, which checks every argument (dtype,
shape, contiguity, device) before anything is launched, and runs the kernels on the
caller's stream (cupy's current stream on cuda). `version=0` lets the dispatcher pick
a kernel; tests and benchmarks pass each numbered version in turn.

The ops are grouped in mixins by kernel family:
    ElementwiseOps      relu, tanh, reduce_sum               (this file)
    LayerOps            lrn, maxpool, dropout, softmax, sgd  (kernel_ops_layers.py)
    ConvOps             conv2d, linear                        (kernel_ops_conv.py)
"""
from __future__ import annotations

import numpy as np

from .contract import Backend
from .kernel_ops_conv import ConvOps
from .kernel_ops_layers import LayerOps


class KernelOpsBase(Backend):
    """A backend over one of our extension modules (`_emu` with numpy, `_cuda` with cupy)."""

    def __init__(self, name, module, xp):
        self.name, self._mod, self.xp = name, module, xp

    def versions(self, op):
        """The numbered kernel versions of `op` that this build has (tests run them all)."""
        return list(self._mod.kernel_versions().get(op, []))

    def _stream(self):
        if self.name == "cuda":
            return self.xp.cuda.get_current_stream().ptr
        return 0

    def _empty(self, shape, dtype=np.float32):
        return self.xp.empty(tuple(int(s) for s in shape), dtype=dtype)

    def _empty_like(self, x, dtype=np.float32):
        """An output shaped like x; a non-array x gets a dummy and the binding rejects x."""
        return self._empty(getattr(x, "shape", (0,)), dtype)

    def synchronize(self):
        self._mod.synchronize()

    def to_numpy(self, a):
        if self.name == "cuda" and isinstance(a, self.xp.ndarray):
            return self.xp.asnumpy(a)
        return np.asarray(a)


class ElementwiseOps:
    def _activation(self, name, x, version):
        y = self._empty_like(x)
        getattr(self._mod, f"{name}_forward")(x, y, version=version, stream=self._stream())
        return y

    def _activation_grad(self, name, dy, y, version):
        dx = self._empty_like(dy)
        getattr(self._mod, f"{name}_backward")(dy, y, dx, version=version, stream=self._stream())
        return dx

    def relu_forward(self, x, *, version=0):
        return self._activation("relu", x, version)

    def relu_backward(self, dy, y, *, version=0):
        return self._activation_grad("relu", dy, y, version)

    def tanh_forward(self, x, *, version=0):
        return self._activation("tanh", x, version)

    def tanh_backward(self, dy, y, *, version=0):
        return self._activation_grad("tanh", dy, y, version)

    def reduce_sum(self, x, *, version=0):
        """Sum of a float32 array as a 0-d array of the backend (deterministic order)."""
        out = self._empty((1,))
        work = self._empty((self._mod.REDUCE_WORKSPACE,))
        self._mod.reduce_sum(x, out, work, version=version, stream=self._stream())
        return out.reshape(())


class KernelOps(ElementwiseOps, LayerOps, ConvOps, KernelOpsBase):
    """Every op of the contract that our kernels implement."""

