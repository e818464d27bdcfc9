"""The three backends, and the one place that decides which backend a command runs on.

    numpy  the NumPy reference (alexnet_cuda.reference), float32 and float64
    emu    the CUDA kernel sources compiled for the CPU (alexnet_cuda._emu), numpy arrays
    cuda   the same kernels built by nvcc (alexnet_cuda._cuda), cupy arrays

`get_backend(name)` returns a backend object (the op contract of alexnet_cuda.contract);
`get_backend(None)` follows ALEXNET_CUDA_BACKEND, else picks cuda when a usable GPU is
present, else numpy. `resolve_backend(option)` is what every command calls: the option,
then the environment, then the machine; on the CPU backends it also limits numpy's BLAS
threads (see `limit_blas_threads`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import reference
from .checks import sgd_multi_args
from .contract import OPS, Backend
from .errors import BackendError, UnknownBackendError
from .kernel_ops import KernelOps

__all__ = ["get_backend", "available_backends", "resolve_backend", "cuda_unusable_reason", "limit_blas_threads",
           "NumpyBackend", "BACKENDS", "ENV_VAR"]

BACKENDS = ("cuda", "emu", "numpy")
ENV_VAR = "ALEXNET_CUDA_BACKEND"


class NumpyBackend(Backend):
    """The NumPy reference: float32 and float64, for gradient checks and CPU training."""

    name = "numpy"
    xp = np

    def __getattr__(self, op):
        """The ops are the reference's functions, looked up at each call."""
        if op in OPS:
            return getattr(reference, op)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {op!r}")

    def sgd_update_multi(self, params, grads, vels, *, lr, momentum=0.9, weight_decays=None, loss=None):
        """sgd_update over every tensor; weight_decays[i] applies to params[i] (default 5e-4 each); a
        non-finite `loss` leaves every tensor as it was."""
        params, grads, vels, lr, momentum, wds = sgd_multi_args(params, grads, vels, lr, momentum, weight_decays)
        for w, dw, v, wd in zip(params, grads, vels, wds):
            reference.sgd_update(w, dw, v, lr=lr, momentum=momentum, weight_decay=wd, loss=loss)


_cache: dict = {}


def _no_driver():
    """True when this machine shows no NVIDIA driver at all (no device nodes, no driver version)."""
    return not (Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists())


def cuda_unusable_reason():
    """None when the cuda backend can run here, else a sentence saying why not."""
    try:
        from . import _cuda
    except ImportError as e:
        return f"the CUDA extension alexnet_cuda._cuda was not built or cannot load ({e})"
    n, err = _cuda.device_count()
    if n == 0:
        if _no_driver():
            return "no NVIDIA GPU or driver was found on this machine"
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
    if cuda_unusable_reason() is None:
        names.append("cuda")
    return names


def _check_name(name, source):
    if name not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {name!r}{source}; expected 'cuda', 'emu' or 'numpy'")
    return name


def default_backend_name():
    """(name, note): ALEXNET_CUDA_BACKEND when set, else cuda when usable, else numpy. The note says
    why cuda was not picked (None when it was, or when the environment chose)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return _check_name(env, f" in {ENV_VAR}"), None
    why = cuda_unusable_reason()
    return ("cuda", None) if why is None else ("numpy", why)


def _make(name):
    if name == "numpy":
        return NumpyBackend()
    if name == "emu":
        try:
            from . import _emu
        except ImportError as e:
            raise BackendError(f"the emu backend is not available: alexnet_cuda._emu did not build or load ({e}); "
                               "reinstall with `pip install .`, or use the 'numpy' backend") from e
        return KernelOps("emu", _emu, np)
    why = cuda_unusable_reason()
    if why is not None:
        raise BackendError(f"the cuda backend cannot run here: {why}. Use the 'numpy' backend (the NumPy "
                           "reference) or the 'emu' backend (our CUDA kernels executed on the CPU).")
    import cupy
    from . import _cuda
    return KernelOps("cuda", _cuda, cupy)


def get_backend(name=None):
    """The backend called `name` ('cuda', 'emu' or 'numpy'), or a Backend object as is; None: see
    `default_backend_name`."""
    if isinstance(name, Backend):
        return name
    name = default_backend_name()[0] if name is None else _check_name(name, "")
    if name not in _cache:
        _cache[name] = _make(name)
    return _cache[name]


def resolve_backend(option=None):
    """The backend a command runs on: `option` (its --backend), else ALEXNET_CUDA_BACKEND, else the
    machine's best. On the CPU backends, numpy's BLAS is limited to one thread (limit_blas_threads)."""
    be = get_backend(option)
    if be.name in ("numpy", "emu"):
        limit_blas_threads()
    return be


# ---------------------------------------------------------------------------
# BLAS threads on the CPU backends
# ---------------------------------------------------------------------------

_BLAS_ENV = ("ALEXNET_CUDA_BLAS_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_BLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                 "openblas_set_num_threads64_", "openblas_set_num_threads")


def _blas_threads_wanted():
    """The thread count to set, or None to leave the user's explicit setting alone."""
    env = {k: os.environ.get(k) for k in _BLAS_ENV}
    if env["ALEXNET_CUDA_BLAS_THREADS"]:
        try:
            return int(env["ALEXNET_CUDA_BLAS_THREADS"])
        except ValueError:
            return None
    if any(env[k] for k in _BLAS_ENV[1:]):
        return None
    return 1


def limit_blas_threads(n=None):
    """Set the thread count of the OpenBLAS that numpy loaded (default 1); returns the count set or None.

    One thread because the CPU presets' matrices are small and OpenBLAS threads spin while they
    wait for each other (docs/measurements.md has the numbers). An explicit OPENBLAS_NUM_THREADS /
    OMP_NUM_THREADS / MKL_NUM_THREADS wins (then nothing is done); ALEXNET_CUDA_BLAS_THREADS=N
    picks N. Linux only (the library is found in /proc/self/maps); elsewhere nothing is done.
    """
    import ctypes
    n = _blas_threads_wanted() if n is None else n
    if n is None:
        return None
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    done = None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        fn = next((getattr(lib, s) for s in _BLAS_SETTERS if hasattr(lib, s)), None)
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_int], None
            fn(int(n))
            done = int(n)
    return done
