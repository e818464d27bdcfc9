"""Virtual devices on emu (ALEXNET_EMU_DEVICES=N, csrc/emu/runtime.cpp): the runtime calls the
two-device model needs behave as CUDA's, arrays know their device, an op given an array of another
device is a ValueError naming it and both devices, and a kernel that reads another device's memory
without peer access fails as on the card."""
import numpy as np
import pytest

import alexnet_cuda


@pytest.fixture
def emu2(monkeypatch):
    """The emu backend with two virtual devices; device 0 current, no peer access, on entry and exit."""
    monkeypatch.setenv("ALEXNET_EMU_DEVICES", "2")
    be = alexnet_cuda.get_backend("emu")
    m = be._mod

    def clean():
        for d, p in ((0, 1), (1, 0)):
            m.set_device(d)
            try:
                m.disable_peer_access(p)
            except RuntimeError:
                pass
        m.set_device(0)
    clean()
    yield be
    clean()


def test_device_count_follows_the_setting(monkeypatch):
    m = alexnet_cuda.get_backend("emu")._mod
    monkeypatch.delenv("ALEXNET_EMU_DEVICES", raising=False)
    assert m.device_count() == (1, "ok")
    monkeypatch.setenv("ALEXNET_EMU_DEVICES", "3")
    assert m.device_count()[0] == 3
    monkeypatch.setenv("ALEXNET_EMU_DEVICES", "zero")
    n, why = m.device_count()
    assert n == 0 and "cudaErrorInvalidValue" in why


def test_current_device_is_per_host_thread(emu2):
    import threading
    m = emu2._mod
    m.set_device(1)
    seen = []
    t = threading.Thread(target=lambda: seen.append(m.get_device()))
    t.start()
    t.join()
    assert seen == [0] and m.get_device() == 1   # a new thread starts on device 0, as in CUDA
    with pytest.raises(RuntimeError, match="cudaErrorInvalidDevice"):
        m.set_device(2)
    assert m.get_device() == 1


def test_arrays_know_their_device(emu2):
    be = emu2
    with be.use_device(1):
        a = be.zeros((3, 4))
        b = be.asarray(np.ones((2, 2)))
        assert be.current_device() == 1
    assert be.current_device() == 0
    assert be.device_of(a) == 1 and be.device_of(b) == 1 and be.device_of(a[1:]) == 1
    assert be.device_of(np.zeros(3)) is None            # plain host memory
    c = be.asarray(a)                                     # onto the current device: a copy
    assert be.device_of(c) == 0 and c is not a
    np.testing.assert_array_equal(c, a)
    assert be.device_of(be.relu_forward(c)) == 0          # op outputs on the current device
    for shape in ([2, 3], 5, ()):
        z = be.zeros(shape, dtype=np.int32)
        assert z.shape == np.zeros(shape).shape and z.dtype == np.int32 and not z.any() and be.device_of(z) == 0


def test_op_given_array_of_another_device_names_it_and_both_devices(emu2):
    be = emu2
    with be.use_device(1):
        x1 = be.asarray(np.ones((2, 3, 8, 8), np.float32))
    w = be.asarray(np.ones((4, 3, 3, 3), np.float32))
    b = be.zeros((4,))
    with pytest.raises(ValueError, match=r"relu_forward: x is on device 1 but the current device is 0"):
        be.relu_forward(x1)
    with pytest.raises(ValueError, match=r"conv2d_forward: x is on device 1 but the current device is 0"):
        be.conv2d_forward(x1, w, b)
    with be.use_device(1):
        with pytest.raises(ValueError, match=r"conv2d_forward: w is on device 0 but the current device is 1"):
            be.conv2d_forward(x1, w, b)


def test_peer_access_calls_behave_as_cuda(emu2):
    m = emu2._mod
    assert m.can_access_peer(0, 1) and m.can_access_peer(1, 0)
    assert not m.can_access_peer(0, 0)                    # CUDA answers 0 for a device and itself
    with pytest.raises(RuntimeError, match="cudaErrorInvalidDevice"):
        m.can_access_peer(0, 2)
    with pytest.raises(RuntimeError, match="cudaErrorInvalidDevice"):
        m.enable_peer_access(0)                           # itself
    with pytest.raises(RuntimeError, match="cudaErrorPeerAccessNotEnabled"):
        m.disable_peer_access(1)
    m.enable_peer_access(1)
    with pytest.raises(RuntimeError, match="cudaErrorPeerAccessAlreadyEnabled"):
        m.enable_peer_access(1)
    m.set_device(1)
    m.enable_peer_access(0)                               # each direction on its own
    m.disable_peer_access(0)


def test_no_peer_setting_refuses_peer_access(emu2, monkeypatch):
    m = emu2._mod
    monkeypatch.setenv("ALEXNET_EMU_PEER", "0")
    assert not m.can_access_peer(0, 1)
    with pytest.raises(RuntimeError, match="cudaErrorPeerAccessUnsupported"):
        m.enable_peer_access(1)


def test_streams_and_events_belong_to_their_device(emu2):
    be, m = emu2, emu2._mod
    with be.use_device(1):
        s1, e1 = m.Stream(), m.Event()
        x1 = be.asarray(np.arange(-4, 4, dtype=np.float32))
    assert (s1.device, e1.device) == (1, 1)
    e1.record(s1.ptr)
    with pytest.raises(RuntimeError, match="cudaErrorInvalidResourceHandle"):
        e1.record(0)                                      # device 0's null stream
    e0 = m.Event()
    e1.wait(0)                                            # device 0 waits for device 1's event: allowed
    e0.record(0)
    e0.wait(s1.ptr)
    # a launch on device 0 into device 1's stream
    with pytest.raises(RuntimeError, match=r"cudaErrorInvalidResourceHandle.*launched on device 0 into a stream of device 1"):
        m.relu_forward(np.zeros(4, np.float32), np.zeros(4, np.float32), stream=s1.ptr)
    with be.use_device(1):
        y1 = be.zeros((8,))
        m.relu_forward(x1, y1, stream=s1.ptr)
        s1.synchronize()
    np.testing.assert_array_equal(y1, np.maximum(np.arange(-4, 4), 0))


def test_memcpy_peer_needs_no_peer_access_but_checks_devices(emu2):
    be, m = emu2, emu2._mod
    with be.use_device(1):
        src = be.asarray(np.arange(6, dtype=np.float32))
    dst = be.zeros((6,))
    m.memcpy_peer(dst, 0, src, 1)
    np.testing.assert_array_equal(dst, np.arange(6))
    with pytest.raises(ValueError, match="memcpy_peer: src is on device 1, expected device 0"):
        m.memcpy_peer(dst, 0, src, 0)
    with pytest.raises(ValueError, match="memcpy_peer: dst holds 16 bytes, src 24"):
        m.memcpy_peer(be.zeros((4,)), 0, src, 1)
    with pytest.raises(RuntimeError, match="cudaErrorInvalidValue"):   # host memory is no device's memory
        m.memcpy_peer(np.zeros(6, np.float32), 0, src, 1)
