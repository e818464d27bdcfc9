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
from alexnet_cuda.backends import available_backends, cuda_unusable_reason

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


@pytest.fixture(scope="session")
def raw_data(tmp_path_factory):
    from alexnet_cuda.data import make_synthetic_dataset
    root = tmp_path_factory.mktemp("raw")
    return str(make_synthetic_dataset(root, num_classes=3, train_per_class=16, val_per_class=4, image_size=24,
                                      log=None, workers=1))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A prepared set of 3 classes (48 train, 12 val images) at 72 px: training runs of a few steps."""
    from alexnet_cuda.data import make_synthetic_dataset, prepare_dataset
    root = tmp_path_factory.mktemp("data")
    raw = make_synthetic_dataset(root, num_classes=3, train_per_class=16, val_per_class=4, image_size=24,
                                 log=None, workers=1)
    return str(prepare_dataset(raw, root / "prepared", size=72, log=lambda *a, **k: None, workers=1))


@pytest.fixture(scope="session")
def trained(raw_data, tmp_path_factory):
    """One CLI training run (raw folder prepared into the cache automatically): (run folder, cache)."""
    from alexnet_cuda import cli
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("ALEXNET_CUDA_CACHE")
    os.environ["ALEXNET_CUDA_CACHE"] = str(cache)
    out = tmp_path_factory.mktemp("run") / "r"
    try:
        rc = cli.main(["train", "--data", raw_data, "--out", str(out), "--epochs", "1", "--batch-size", "8",
                       "--backend", "numpy", "--preset", "small", "--seed", "1"])
    finally:
        if old is None:
            os.environ.pop("ALEXNET_CUDA_CACHE", None)
        else:
            os.environ["ALEXNET_CUDA_CACHE"] = old
    assert rc == 0
    return out, cache


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


def pytest_terminal_summary(terminalreporter):
    """One line saying which backends the suite ran on, and why cuda's tests were not collected."""
    why = cuda_unusable_reason()
    skipped = "" if why is None else f"; the cuda tests were not collected ({why})"
    terminalreporter.write_line(f"alexnet-cuda: the suite ran on the {', '.join(ALL_BACKENDS)} backends{skipped}")


# A small network that the fusion tests train with a fusion switched on or off.
TINY_NET = dict(num_classes=5, input_size=67, width=1 / 16, init="he", seed=5)


def run_with_fusion(backend, switch, on, steps=3, **kw):
    """(losses, logits, activity, state_dict) after `steps` train steps of the TINY_NET model with
    `switch` (an AlexNet method name: "fuse_relus", "fuse_lrn_pools") set to `on`."""
    from alexnet_cuda.model import AlexNet
    m = AlexNet(backend=backend, **TINY_NET, **kw)
    getattr(m, switch)(on)
    m.track_activity()
    rng = np.random.default_rng(11)
    losses = []
    for _ in range(steps):
        x = (rng.standard_normal((8, 3, 67, 67)) * 0.5).astype(np.float32)
        losses.append(m.train_step(x, rng.integers(0, 5, 8), lr=0.01))
    act = {k: np.asarray(m.backend.to_numpy(v)) for k, v in m.take_activity().items()}
    logits = np.asarray(m.backend.to_numpy(m.forward(x)))
    return np.array(losses), logits, act, m.state_dict()
