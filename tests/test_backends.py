"""get_backend and the backend objects."""
import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda import backends


def test_numpy_and_emu_always_available():
    names = alexnet_cuda.available_backends()
    assert "numpy" in names and "emu" in names


def test_default_is_cuda_only_with_a_gpu(monkeypatch):
    monkeypatch.delenv("ALEXNET_CUDA_BACKEND", raising=False)
    expected = "cuda" if backends.cuda_unusable_reason() is None else "numpy"
    assert alexnet_cuda.get_backend().name == expected


def test_cuda_works_or_says_why_and_what_else():
    if backends.cuda_unusable_reason() is None:
        assert alexnet_cuda.get_backend("cuda").name == "cuda"
    else:
        with pytest.raises(RuntimeError, match=r"cuda backend cannot run here: .*'numpy' backend.*'emu' backend"):
            alexnet_cuda.get_backend("cuda")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        alexnet_cuda.get_backend("tpu")


@pytest.mark.parametrize("name", ["numpy", "emu"])
def test_backend_object(name):
    be = alexnet_cuda.get_backend(name)
    assert be.name == name and be.xp is np
    a = be.asarray([[1.0, 2.0], [3.0, 4.0]])
    assert a.dtype == np.float32 and a.flags.c_contiguous      # floats: the ops' float32
    assert be.asarray(np.arange(3)).dtype == np.int64           # integers keep their dtype (labels)
    assert be.asarray(np.arange(3, dtype=np.int32)).dtype == np.int32
    assert be.asarray([[1, 2], [3, 4]], dtype=np.float32).dtype == np.float32
    assert be.asarray(np.ones(2, np.float64), dtype=np.float64).dtype == np.float64
    assert isinstance(be.to_numpy(a), np.ndarray)
    assert be.zeros((2, 3)).shape == (2, 3)
    assert alexnet_cuda.get_backend(be) is be


def test_emu_reports_its_kernel_versions():
    be = alexnet_cuda.get_backend("emu")
    assert be.versions("relu_forward") == [1, 2]
    assert be._mod.BUILD == "emu"
