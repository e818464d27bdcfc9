"""PinnedUploader (data/feed.py), the cuda path's upload of the next batch, checked against a stand-in
for cupy's stream API that records every operation; and the loader statistics train reports.

The stand-in copies at once (there is no GPU here); the tests check the ordering rules that make the
real asynchronous copies safe, on the recorded operations."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda.data import TrainLoader
from alexnet_cuda.data.feed import PinnedUploader, feed_for
from alexnet_cuda.data.loader import LoaderStats


class FakeCupy:
    """The parts of cupy PinnedUploader uses, recording (op, stream name, ...) in self.log."""

    def __init__(self):
        self.log, self.lock, self.local = [], threading.Lock(), threading.local()
        self.null = FakeStream(self, "compute", non_blocking=False)
        self.cuda = self
        self.streams = []

    def rec(self, *entry):
        with self.lock:
            self.log.append(entry)

    # cupy.cuda
    def Device(self):
        return _Nothing()

    def get_current_stream(self):
        return getattr(self.local, "stream", None) or self.null

    def Stream(self, non_blocking=False):
        s = FakeStream(self, f"s{len(self.streams)}", non_blocking)
        self.streams.append(s)
        return s

    def alloc_pinned_memory(self, nbytes):
        return PinnedBuffer(nbytes)

    # cupy
    def empty(self, shape, dtype):
        return FakeDeviceArray(self, np.empty(shape, dtype))


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class PinnedBuffer(bytearray):
    pass


class FakeEvent:
    n = 0

    def __init__(self, xp, stream):
        FakeEvent.n += 1
        self.xp, self.id, self.stream = xp, FakeEvent.n, stream

    def synchronize(self):
        self.xp.rec("sync", self.id)


class FakeStream:
    def __init__(self, xp, name, non_blocking):
        self.xp, self.name, self.non_blocking, self.prev = xp, name, non_blocking, []

    def __enter__(self):
        self.prev.append(getattr(self.xp.local, "stream", None))
        self.xp.local.stream = self
        return self

    def __exit__(self, *a):
        self.xp.local.stream = self.prev.pop()
        return False

    def record(self):
        e = FakeEvent(self.xp, self)
        self.xp.rec("record", self.name, e.id)
        return e

    def wait_event(self, e):
        self.xp.rec("wait", self.name, e.id)

    def synchronize(self):
        self.xp.rec("stream-sync", self.name)


class FakeDeviceArray:
    def __init__(self, xp, a):
        self.xp, self.a = xp, a
        self.shape, self.dtype = a.shape, a.dtype

    def set(self, arr, stream):
        base = arr
        while not isinstance(base, PinnedBuffer) and base is not None:  # views -> memoryview -> buffer
            base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
        assert isinstance(base, PinnedBuffer), "upload from pageable memory"
        self.xp.rec("h2d", stream.name, id(self), id(base))
        self.a[...] = arr


def host_batches(n, shape=(4, 3, 5, 5), closed=None, fail_at=None):
    rng = np.random.default_rng(7)
    try:
        for k in range(n):
            if k == fail_at:
                raise ValueError("bad batch")
            yield rng.standard_normal(shape).astype(np.float32), np.arange(shape[0], dtype=np.int64) + k
    finally:
        if closed is not None:
            closed.append(True)


def consume(xp, it, stop_after=None):
    """Act like the training loop: take a batch, 'run a step' on the compute stream (logged as a use of
    the device buffers), ask for the next one."""
    got = []
    for k, (dx, dy) in enumerate(it):
        xp.rec("use", xp.get_current_stream().name, id(dx))
        got.append((dx.a.copy(), dy.a.copy()))
        if stop_after is not None and k + 1 == stop_after:
            break
    return got


def check_rules(log, upload="s0"):
    """The three rules of feed.py's doc, on the recorded operations of one feed (its stream: `upload`)."""
    recorded = {}          # event id -> (stream, log position)
    last_h2d = {}          # device buffer -> event recorded after its latest upload
    last_use = {}          # device buffer -> log position of its latest use
    pinned_event = {}      # pinned buffer -> event recorded after its latest upload
    waits = {"compute": set(), upload: set()}
    synced = set()
    pending = []           # (device buffer, pinned buffer) uploaded, event not yet recorded
    for pos, e in enumerate(log):
        op = e[0]
        if op == "record":
            recorded[e[2]] = (e[1], pos)
            if e[1] == upload:
                for dev, pin in pending:
                    last_h2d[dev], pinned_event[pin] = e[2], e[2]
                pending = []
        elif op == "wait":
            waits[e[1]].add(e[2])
        elif op == "sync":
            synced.add(e[1])
        elif op == "h2d":
            _, stream, dev, pin = e
            assert stream == upload
            if dev in last_use:  # the upload stream waited for an event the compute stream recorded after the use
                assert any(recorded[w][0] == "compute" and recorded[w][1] > last_use[dev] for w in waits[upload]), pos
            if pin in pinned_event:  # the pinned buffer's previous upload was waited for on the host
                assert pinned_event[pin] in synced, pos
            pending.append((dev, pin))
        elif op == "use":
            _, stream, dev = e
            assert stream == "compute"
            assert last_h2d[dev] in waits["compute"], pos  # the step waited for the upload
            last_use[dev] = pos
    return True


@pytest.mark.parametrize("depth", [2, 3])
def test_pinned_uploader_delivers_every_batch_in_order(depth):
    xp = FakeCupy()
    closed = []
    got = consume(xp, PinnedUploader(xp, depth)(host_batches(9, closed=closed)))
    want = list(host_batches(9))
    assert len(got) == 9
    for (x, y), (wx, wy) in zip(got, want):
        np.testing.assert_array_equal(x, wx)
        np.testing.assert_array_equal(y, wy)
        assert y.dtype == np.int64
    assert closed == [True]
    assert len(xp.streams) == 1 and xp.streams[0].non_blocking      # its own stream, not synchronized with
    assert check_rules(xp.log)                                       # the default one
    n_dev = {e[2] for e in xp.log if e[0] == "h2d"}
    assert len(n_dev) == 2 * depth          # x and y buffers of each slot, reused across batches
    assert ("stream-sync", "s0") in xp.log and ("stream-sync", "compute") in xp.log


def test_check_rules_catches_a_missing_wait():
    xp = FakeCupy()
    consume(xp, PinnedUploader(xp, 2)(host_batches(5)))
    log = xp.log
    # without the compute stream's wait for an upload
    first_wait = next(i for i, e in enumerate(log) if e[0] == "wait" and e[1] == "compute")
    with pytest.raises(AssertionError):
        check_rules(log[:first_wait] + log[first_wait + 1:])
    # without the upload stream's wait for the step that used the buffer
    up_wait = next(i for i, e in enumerate(log) if e[0] == "wait" and e[1] == "s0")
    with pytest.raises(AssertionError):
        check_rules(log[:up_wait] + log[up_wait + 1:])
    # without the host wait before the pinned buffer is written again
    sync = next(i for i, e in enumerate(log) if e[0] == "sync")
    with pytest.raises(AssertionError):
        check_rules(log[:sync] + log[sync + 1:])


def test_pinned_uploader_early_close_and_errors():
    xp = FakeCupy()
    closed = []
    got = consume(xp, PinnedUploader(xp)(host_batches(50, closed=closed)), stop_after=3)
    assert len(got) == 3 and closed == [True]
    assert not [t for t in threading.enumerate() if t.name == "alexnet-cuda-PinnedUploader"]
    with pytest.raises(ValueError, match="bad batch"):
        consume(xp, PinnedUploader(xp)(host_batches(5, fail_at=2)))
    assert not [t for t in threading.enumerate() if t.name == "alexnet-cuda-PinnedUploader"]
    with pytest.raises(ValueError, match="depth"):
        PinnedUploader(xp, 1)


def test_feed_only_on_cuda():
    for name in ("numpy", "emu"):
        assert feed_for(alexnet_cuda.get_backend(name)) is None
    xp = FakeCupy()

    class Cuda:
        name = "cuda"
    Cuda.xp = xp
    f = feed_for(Cuda())
    assert isinstance(f, PinnedUploader) and f.xp is xp


class Tiny:
    def __init__(self, n=40, S=12):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (n, S, S, 3), dtype=np.uint8)
        self.labels = np.arange(n, dtype=np.int64) % 4
        self.mean = np.zeros((S, S, 3), np.float32)


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_through_a_feed_and_its_stats(workers):
    ds = Tiny()
    plain = TrainLoader(ds, batch_size=8, crop=10, seed=1, workers=workers)
    xp = FakeCupy()
    fed = TrainLoader(ds, batch_size=8, crop=10, seed=1, workers=workers, feed=PinnedUploader(xp))
    for epoch in (0, 1):
        want = list(plain.epoch(epoch))
        start = len(xp.log)
        got = consume(xp, fed.epoch(epoch))
        assert check_rules(xp.log[start:], upload=f"s{epoch}")   # one feed, one stream per epoch
        assert len(got) == len(want) == 5
        for (x, y), (wx, wy) in zip(got, want):
            np.testing.assert_array_equal(x, wx)
            np.testing.assert_array_equal(y, wy)
        s = fed.stats
        assert s.images == 40 and s.batches == 5 and s.workers == workers    # reset per epoch
        assert s.build_seconds > 0 and s.wait_seconds > 0 and s.images_per_sec() > 0
    # resumed in the middle of an epoch: counts only what it built
    list(plain.epoch(2, start_batch=3))
    assert plain.stats.images == 16 and plain.stats.batches == 2


def test_loader_stats_arithmetic():
    s = LoaderStats(workers=4)
    assert s.images_per_sec() == 0.0
    s.built(100, 2.0)
    s.built(28, 0.5)
    assert s.images == 128 and s.batches == 2 and s.images_per_sec() == pytest.approx(4 * 128 / 2.5)
    s.reset()
    assert s.images == 0 and s.workers == 4 and s.wait_seconds == 0.0
    s.reset(0)
    s.built(10, 0.5)
    assert s.images_per_sec() == pytest.approx(20.0)   # workers=0: the caller's thread alone


def test_waits_count_what_the_step_waited():
    """With workers=0 the consumer waits for every batch to be built; with a slow consumer and worker
    threads that build ahead, it hardly waits."""
    import time
    ds = Tiny(n=64, S=40)
    inline = TrainLoader(ds, batch_size=8, crop=32, seed=0, workers=0)
    for _ in inline.epoch(0):
        pass
    assert inline.stats.wait_seconds >= 0.9 * inline.stats.build_seconds
    ahead = TrainLoader(ds, batch_size=8, crop=32, seed=0, workers=2, prefetch=4)
    for _ in ahead.epoch(0):
        time.sleep(0.02)   # a step much slower than building a batch of 8 small crops
    # the steps took 8 x 20 ms; a wait that counted the step's own time would be >= 0.16 s
    assert ahead.stats.wait_seconds < 0.08 and ahead.stats.images == 64
