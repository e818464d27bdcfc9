"""The three backends behind one op contract (see DESIGN.md, "Three backends, one contract").

    numpy  the NumPy reference (alexnet_cuda.reference), float32 and float64
    emu    the CUDA kernel sources compiled for the CPU (alexnet_cuda._emu), numpy arrays
    cuda   the same kernels built by nvcc (alexnet_cuda._cuda), cupy arrays

`get_backend(None)` picks cuda when a usable GPU is present, else numpy.

Every backend has `name`, `xp`, `asarray`, `to_numpy`, `zeros`, `synchronize` and the ops.
The kernel backends allocate outputs with `xp` (cupy's memory pool on cuda) and hand
them, with the inputs, to the binding, which checks every argument before anything is
launched. Ops take an optional `version=` (0 = the dispatcher's choice) so tests and
benchmarks can run each numbered kernel version.
"""
from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["get_backend", "available_backends", "Backend", "NumpyBackend", "KernelBackend"]


class Backend:
    """Common helpers; subclasses provide the ops."""

    name = "?"
    xp = np

    def asarray(self, a, dtype=np.float32):
        """A C-contiguous array of this backend holding `a` (copied only when needed)."""
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def to_numpy(self, a):
        return np.asarray(a)

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self):
        pass

    def __repr__(self):
        return f"<alexnet_cuda backend {self.name!r}>"


class NumpyBackend(Backend):
    """The NumPy reference: float32 and float64, for gradient checks and CPU training."""

    name = "numpy"
    xp = np

    def __init__(self):
        from . import reference

        self._ref = reference
        for op in OPS:
            setattr(self, op, getattr(reference, op))

    def sgd_update_multi(self, params, grads, vels, *, lr, momentum=0.9, weight_decays=None):
        """Update many tensors; weight_decays[i] applies to params[i] (default 5e-4 each)."""
        weight_decays = _check_multi(params, grads, vels, weight_decays)
        for w, dw, v, wd in zip(params, grads, vels, weight_decays):
            self._ref.sgd_update(w, dw, v, lr=lr, momentum=momentum, weight_decay=wd)


OPS = (
    "conv2d_forward", "conv2d_backward", "linear_forward", "linear_backward",
    "relu_forward", "relu_backward", "lrn_forward", "lrn_backward",
    "maxpool_forward", "maxpool_backward", "dropout_forward", "dropout_backward",
    "softmax_cross_entropy", "sgd_update", "topk_correct",
)


def _check_multi(params, grads, vels, weight_decays):
    n = len(params)
    if len(grads) != n or len(vels) != n:
        raise ValueError(f"sgd_update_multi: params, grads and vels must have the same length "
                         f"(got {n}, {len(grads)}, {len(vels)})")
    if weight_decays is None:
        weight_decays = [5e-4] * n
    if len(weight_decays) != n:
        raise ValueError(f"sgd_update_multi: weight_decays has {len(weight_decays)} entries, expected {n}")
    return list(weight_decays)


class KernelBackend(Backend):
    """Our CUDA kernels: `emu` (CPU execution, numpy arrays) or `cuda` (GPU, cupy arrays).

    The ops themselves live in alexnet_cuda.kernel_ops, shared by both.
    """

    missing_ops: list = []

    def __init__(self, name, module, xp):
        self.name = name
        self._mod = module
        self.xp = xp

    def versions(self, op):
        """The numbered kernel versions of `op` that this build has (tests run them all)."""
        return list(self._mod.kernel_versions().get(op, []))


_cache: dict = {}


def _cuda_unusable_reason():
    """None when the cuda backend can run here, else a sentence saying why not."""
    try:
        from . import _cuda  # noqa: F401
    except ImportError as e:
        return f"the CUDA extension alexnet_cuda._cuda was not built or cannot load ({e})"
    from . import _cuda

    n, err = _cuda.device_count()
    if n == 0:
        return f"no usable CUDA GPU ({err})"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return ("cupy is not installed; install it with `pip install 'alexnet-cuda[cuda]'` "
                "(or the cupy-cudaXXx wheel matching your driver)")
    return None


def available_backends():
    """Names of the backends that can run on this machine."""
    names = ["numpy"]
    try:
        from . import _emu  # noqa: F401
        names.append("emu")
    except ImportError:
        pass
    if _cuda_unusable_reason() is None:
        names.append("cuda")
    return names


def get_backend(name=None):
    """The backend called `name` ('cuda', 'emu' or 'numpy'); None picks cuda when usable, else numpy."""
    if isinstance(name, Backend):
        return name
    if name is None:
        name = os.environ.get("ALEXNET_CUDA_BACKEND") or ("cuda" if _cuda_unusable_reason() is None else "numpy")
    if name in _cache:
        return _cache[name]
    if name == "numpy":
        be = NumpyBackend()
    elif name == "emu":
        try:
            from . import _emu
        except ImportError as e:
            raise RuntimeError(f"the emu backend is not available: alexnet_cuda._emu did not build or load ({e}); "
                               "reinstall with `pip install .`, or use backend 'numpy'") from e
        from .kernel_ops import make_kernel_backend
        be = make_kernel_backend("emu", _emu, np)
    elif name == "cuda":
        why = _cuda_unusable_reason()
        if why is not None:
            raise RuntimeError(f"the cuda backend cannot run here: {why}. "
                               "Use get_backend('numpy') (the NumPy reference) or get_backend('emu') "
                               "(our CUDA kernels executed on the CPU).")
        import cupy
        from . import _cuda
        from .kernel_ops import make_kernel_backend
        be = make_kernel_backend("cuda", _cuda, cupy)
    else:
        raise ValueError(f"unknown backend {name!r}; expected 'cuda', 'emu' or 'numpy'")
    _cache[name] = be
    return be


def dropout_threshold(p):
    """keep iff (philox >> 8) >= threshold; the definition shared with reference.dropout_mask."""
    return min(1 << 24, math.ceil(p * (1 << 24)))
