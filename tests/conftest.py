"""Shared fixtures.

`kernel_backend` runs a test on every backend that executes our kernels: `emu` always,
`cuda` when a usable GPU is present. `emu_order` (use it together with kernel_backend,
or alone) runs a test once per fiber order of the emulator: forward, reverse and a
seeded shuffle; a missing __syncthreads gives a wrong answer in at least one of them.
On cuda the order parameter does nothing, so those cases run once.
"""
import os

import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda.backends import available_backends

KERNEL_BACKENDS = [b for b in ("emu", "cuda") if b in available_backends()]
ALL_BACKENDS = ["numpy"] + KERNEL_BACKENDS
FIBER_ORDERS = ["forward", "reverse", "shuffle:12345"]


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    return alexnet_cuda.get_backend(request.param)


@pytest.fixture(params=ALL_BACKENDS)
def any_backend(request):
    return alexnet_cuda.get_backend(request.param)


@pytest.fixture(params=FIBER_ORDERS)
def emu_order(request, monkeypatch):
    """Sets ALEXNET_EMU_ORDER for the test (read by the emulator at every launch)."""
    monkeypatch.setenv("ALEXNET_EMU_ORDER", request.param)
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_report_header(config):
    lines = [f"alexnet-cuda backends available: {', '.join(available_backends())}"]
    try:
        from alexnet_cuda import _emu

        lines.append(f"emu: {_emu.emu_settings()}")
    except ImportError:
        pass
    if os.environ.get("ALEXNET_CUDA_EXT_DIR"):
        lines.append(f"extensions from ALEXNET_CUDA_EXT_DIR={os.environ['ALEXNET_CUDA_EXT_DIR']}")
    return lines
