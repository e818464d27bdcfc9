"""The op contract on top of our kernels, shared by the `emu` and `cuda` backends.

Each op allocates its outputs with the backend's array module (numpy for emu, cupy's
memory pool for cuda) and calls the extension, which checks every argument (dtype,
shape, contiguity, device) before anything is launched, and runs the kernels on the
caller's stream (cupy's current stream on cuda). `version=0` lets the dispatcher pick
a kernel; tests and benchmarks pass each numbered version in turn.

Devices: on cuda an array lives where cupy put it; on emu `_empty` allocates through the
emulator's runtime, so every array an op returns is memory of the current virtual device
(ALEXNET_EMU_DEVICES=N, csrc/emu/README.md), and `asarray`/`zeros` place data there too. A plain
numpy array is host memory that every emu device may read. `use_device(d)` makes d current for a
block (cupy.cuda.Device on cuda); `device_of(a)` says where an array lives. The extension checks
that each argument lives on the current device and raises ValueError naming it and both devices.

The ops are grouped in mixins by kernel family:
    ElementwiseOps      relu, tanh, reduce_sum               (this file)
    TransferOps         transfer_forward/backward            (this file; where towers meet)
    LayerOps            lrn, maxpool, dropout, softmax, sgd  (kernel_ops_layers.py)
    ConvOps             conv2d, linear                        (kernel_ops_conv.py)
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import checks
from .contract import Backend
from .kernel_ops_conv import ConvOps
from .kernel_ops_layers import LayerOps


class KernelOpsBase(Backend):
    """A backend over one of our extension modules (`_emu` with numpy, `_cuda` with cupy)."""

    def __init__(self, name, module, xp):
        self.name, self._mod, self.xp = name, module, xp
        if name == "cuda":  # cupy has no bfloat16: BF16 arrays are uint16 bit patterns
            self.bf16_dtype = xp.uint16

    def versions(self, op):
        """The numbered kernel versions of `op` that this build has (tests run them all)."""
        return list(self._mod.kernel_versions().get(op, []))

    def _stream(self):
        if self.name == "cuda":
            return self.xp.cuda.get_current_stream().ptr
        return 0

    def _empty(self, shape, dtype=np.float32):
        shape = tuple(int(s) for s in shape)
        if self.name == "emu":
            return self._mod.empty(shape, np.dtype(dtype))
        return self.xp.empty(shape, dtype=dtype)

    def asarray(self, a, dtype=None):
        """As Backend.asarray; on emu the result is memory of the current virtual device (a copy
        unless `a` already is such an array of the right dtype)."""
        if self.name != "emu":
            return super().asarray(a, dtype)
        h = super().asarray(a, dtype)
        if self._mod.pointer_device(h) == self._mod.get_device():
            return h
        out = self._empty(h.shape, h.dtype)
        out[...] = h
        return out

    def zeros(self, shape, dtype=np.float32):
        if self.name != "emu":
            return super().zeros(shape, dtype)
        out = self._empty(tuple(shape) if np.iterable(shape) else (shape,), dtype)
        out[...] = 0
        return out

    # ---- devices ------------------------------------------------------------------------
    def device_count(self):
        n, why = self._mod.device_count()
        return n

    def current_device(self):
        return self._mod.get_device()

    def device_of(self, a):
        """The device whose memory holds `a` (None: host memory, which emu devices all read)."""
        if self.name == "cuda":
            return int(a.device.id) if isinstance(a, self.xp.ndarray) else None
        return self._mod.pointer_device(a) if isinstance(a, np.ndarray) else None

    def empty(self, shape, dtype=np.float32):
        return self._empty(shape, dtype)

    def can_access_peer(self, device, peer):
        return self._mod.can_access_peer(int(device), int(peer))

    def enable_peer_access(self, peer):
        """Peer access from the current device to `peer`; done already is fine."""
        try:
            self._mod.enable_peer_access(int(peer))
        except RuntimeError as e:
            if "cudaErrorPeerAccessAlreadyEnabled" not in str(e):
                raise

    def memcpy_peer(self, dst, dst_device, src, src_device):
        """cudaMemcpyPeerAsync on the current device's stream (no peer access needed)."""
        self._mod.memcpy_peer(dst, int(dst_device), src, int(src_device), stream=self._stream())

    def record_event(self):
        e = self._mod.Event()
        e.record(self._stream())
        return e

    def wait_event(self, event):
        if event is not None:
            event.wait(self._stream())

    @contextlib.contextmanager
    def use_device(self, d):
        """Make device `d` current for the block (and its null stream the stream of the ops)."""
        if self.name == "cuda":
            with self.xp.cuda.Device(int(d)):
                yield
            return
        old = self._mod.get_device()
        self._mod.set_device(int(d))
        try:
            yield
        finally:
            self._mod.set_device(old)

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


class TransferOps:
    """The transfer kernels (csrc/kernels/transfer.cu): the array on the other tower's side may live
    on a peer device; the kernel reads it there (the caller enables peer access, alexnet_cuda.towers)."""

    def _device_arg(self, a):
        d = self.device_of(a)
        return -1 if d is None else d

    def transfer_forward(self, src, dst, *, offset, src_offset=0, channels=None, version=0):
        """dst[:, offset:offset + channels] = src[:, src_offset:src_offset + channels], in place; returns dst."""
        fn = "transfer_forward"
        offset = checks.integer(fn, "offset", offset, minimum=0)
        src_offset = checks.integer(fn, "src_offset", src_offset, minimum=0)
        channels = -1 if channels is None else checks.integer(fn, "channels", channels, minimum=0)
        self._mod.transfer_forward(src, dst, offset=offset, src_offset=src_offset, channels=channels,
                                   src_device=self._device_arg(src), version=version, stream=self._stream())
        return dst

    def transfer_backward(self, grad, *, offset, channels, local=None, version=0):
        """grad[:, offset:offset + channels] (+ local[...]), local on the current device."""
        fn = "transfer_backward"
        offset = checks.integer(fn, "offset", offset, minimum=0)
        channels = checks.integer(fn, "channels", channels, minimum=0)
        shape = getattr(grad, "shape", (0, 0))
        out = self._empty(shape[:1] + (channels,) + tuple(shape[2:]))
        self._mod.transfer_backward(grad, local, out, offset=offset, peer_device=self._device_arg(grad),
                                    version=version, stream=self._stream())
        return out


class KernelOps(ElementwiseOps, TransferOps, LayerOps, ConvOps, KernelOpsBase):
    """Every op of the contract that our kernels implement."""

