"""The transfer kernels where towers meet (csrc/kernels/transfer.cu) against the NumPy reference, on
every kernel backend, every numbered version and (emu) every fiber order, for odd channel splits; and
on two emu devices: the kernel reads the peer's memory only with peer access enabled.

Tolerance: none. Forward is a copy and backward one float32 addition per element (the reference adds
the same two float32 numbers), so the results are compared bit for bit.
"""
import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda import reference as ref

from conftest import KERNEL_BACKENDS

# (tower shape, concatenated channels, offset): odd splits of NCHW maps and NC features
CASES = [((3, 3, 5, 5), 7, 4),      # 3 of 7 channels at 4, 25 floats per channel
         ((2, 4, 5, 5), 7, 0),      # the other 4 at 0
         ((3, 3, 2, 2), 7, 4),      # 4 floats per channel: every offset aligned (version 2 can run)
         ((5, 6), 13, 7),           # features: 6 of 13 at 7
         ((4, 8), 12, 4),           # aligned features
         ((1, 1, 3, 3), 1, 0)]      # one channel, the whole row


def aligned(shape, cat, off):
    per = int(np.prod(shape[2:])) if len(shape) == 4 else 1
    return all(v * per % 4 == 0 for v in (shape[1], cat, off))


def cat_shape(shape, cat):
    return shape[:1] + (cat,) + shape[2:]


@pytest.fixture(params=KERNEL_BACKENDS)
def kb(request):
    return alexnet_cuda.get_backend(request.param)


def run_versions(be, op, shape, cat, off):
    for v in [0] + be.versions(op):
        if v == 2 and not aligned(shape, cat, off):
            continue
        yield v


@pytest.mark.parametrize("shape,cat,off", CASES)
def test_transfer_forward_matches_numpy(kb, emu_order, rng, shape, cat, off):
    src = rng.standard_normal(shape).astype(np.float32)
    base = rng.standard_normal(cat_shape(shape, cat)).astype(np.float32)
    want = ref.transfer_forward(src, base.copy(), offset=off)
    np.testing.assert_array_equal(want[:, off:off + shape[1]], src)
    assert kb.versions("transfer_forward") == [1, 2]
    for v in run_versions(kb, "transfer_forward", shape, cat, off):
        dst = kb.asarray(base)
        out = kb.transfer_forward(kb.asarray(src), dst, offset=off, version=v)
        assert out is dst
        np.testing.assert_array_equal(kb.to_numpy(dst), want, err_msg=f"version {v}")


# (src shape, src_offset, channels, dst channels, offset): a channel range of src, as a tower's LRN
# takes its neighbour's boundary channels
RANGES = [((3, 5, 5, 5), 3, 2, 7, 0),
          ((3, 5, 5, 5), 0, 2, 7, 5),
          ((2, 8, 2, 2), 4, 4, 6, 2),   # aligned: version 2 runs
          ((4, 9), 7, 2, 3, 1)]


@pytest.mark.parametrize("shape,src_off,ch,cat,off", RANGES)
def test_transfer_forward_of_a_channel_range(kb, emu_order, rng, shape, src_off, ch, cat, off):
    src = rng.standard_normal(shape).astype(np.float32)
    base = rng.standard_normal(cat_shape(shape, cat)).astype(np.float32)
    want = base.copy()
    want[:, off:off + ch] = src[:, src_off:src_off + ch]
    np.testing.assert_array_equal(ref.transfer_forward(src, base.copy(), offset=off, src_offset=src_off, channels=ch),
                                  want)
    per = int(np.prod(shape[2:])) if len(shape) == 4 else 1
    can2 = all(v * per % 4 == 0 for v in (ch, cat, off, shape[1], src_off))
    for v in [0, 1] + ([2] if can2 else []):
        dst = kb.asarray(base)
        kb.transfer_forward(kb.asarray(src), dst, offset=off, src_offset=src_off, channels=ch, version=v)
        np.testing.assert_array_equal(kb.to_numpy(dst), want, err_msg=f"version {v}")


@pytest.mark.parametrize("shape,cat,off", CASES)
@pytest.mark.parametrize("with_local", [True, False])
def test_transfer_backward_matches_numpy(kb, emu_order, rng, shape, cat, off, with_local):
    grad = rng.standard_normal(cat_shape(shape, cat)).astype(np.float32)
    local = rng.standard_normal(grad.shape).astype(np.float32) if with_local else None
    want = ref.transfer_backward(grad, offset=off, channels=shape[1], local=local)
    expect = grad[:, off:off + shape[1]] + (local[:, off:off + shape[1]] if with_local else 0)
    np.testing.assert_array_equal(want, expect)
    for v in run_versions(kb, "transfer_backward", shape, cat, off):
        got = kb.transfer_backward(kb.asarray(grad), offset=off, channels=shape[1],
                                   local=None if local is None else kb.asarray(local), version=v)
        assert got.shape == shape
        np.testing.assert_array_equal(kb.to_numpy(got), want, err_msg=f"version {v}")


def test_version_2_refuses_unaligned_rows(kb):
    src, dst = kb.zeros((3, 3, 5, 5)), kb.zeros((3, 7, 5, 5))
    with pytest.raises(ValueError, match="transfer_forward: version 2 needs 16-byte aligned"):
        kb.transfer_forward(src, dst, offset=4, version=2)


@pytest.mark.parametrize("be_name", ["numpy"] + KERNEL_BACKENDS)
def test_bad_slices_are_value_errors(be_name):
    be = alexnet_cuda.get_backend(be_name)
    src, dst = be.zeros((2, 3, 4, 4)), be.zeros((2, 5, 4, 4))
    with pytest.raises(ValueError, match="offset 3 \\+ 3 channels of src exceeds the 5 channels of dst"):
        be.transfer_forward(src, dst, offset=3)
    with pytest.raises(ValueError, match="they may differ only in dimension 1"):
        be.transfer_forward(src, be.zeros((2, 5, 4, 3)), offset=0)
    with pytest.raises(ValueError, match="exceeds the 5 channels of grad"):
        be.transfer_backward(dst, offset=4, channels=2)
    with pytest.raises(TypeError, match="transfer_forward: offset must be an integer"):
        be.transfer_forward(src, dst, offset=1.0)
    with pytest.raises(ValueError, match="transfer_forward: src_offset 2 \\+ 2 channels exceeds the"):
        be.transfer_forward(src, dst, offset=0, src_offset=2, channels=2)


# ---- two virtual devices -----------------------------------------------------------------

@pytest.fixture
def emu2(monkeypatch):
    monkeypatch.setenv("ALEXNET_EMU_DEVICES", "2")
    be = alexnet_cuda.get_backend("emu")
    be._mod.set_device(0)
    yield be
    be._mod.set_device(0)
    try:
        be._mod.disable_peer_access(1)
    except RuntimeError:
        pass


def test_kernel_reads_peer_memory_only_with_peer_access(emu2, rng):
    be = emu2
    src = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    with be.use_device(1):
        src1 = be.asarray(src)
        grad1 = be.asarray(rng.standard_normal((2, 7, 2, 2)).astype(np.float32))
    dst = be.zeros((2, 7, 2, 2))
    with pytest.raises(RuntimeError, match=r"cudaErrorIllegalAddress: kernel transfer_forward_v\d(<T>)? on device 0: "
                                           r"pointer argument 1 points into memory of device 1, and peer access "
                                           r"from device 0 to device 1 is not enabled"):
        be.transfer_forward(src1, dst, offset=4)
    with pytest.raises(RuntimeError, match="cudaErrorIllegalAddress: kernel transfer_backward"):
        be.transfer_backward(grad1, offset=0, channels=3)
    be._mod.enable_peer_access(1)
    be.transfer_forward(src1, dst, offset=4)
    np.testing.assert_array_equal(dst[:, 4:], src)
    np.testing.assert_array_equal(be.transfer_backward(grad1, offset=4, channels=3, local=dst),
                                  np.asarray(grad1)[:, 4:] + src)


def test_local_side_must_be_on_the_current_device(emu2):
    be = emu2
    with be.use_device(1):
        dst1 = be.zeros((2, 7, 2, 2))
        grad1 = be.zeros((2, 7, 2, 2))
    with pytest.raises(ValueError, match="transfer_forward: dst is on device 1 but the current device is 0"):
        be.transfer_forward(be.zeros((2, 3, 2, 2)), dst1, offset=0)
    with pytest.raises(ValueError, match="transfer_backward: local is on device 1 but the current device is 0"):
        be.transfer_backward(be.zeros((2, 7, 2, 2)), offset=0, channels=3, local=grad1)
