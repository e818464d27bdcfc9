"""Training batches onto the GPU ahead of the step: pinned host memory, a
stream of their own.

PinnedUploader(cupy)(batches) takes the loader's numpy batches (x float32,
y int64) and yields them as cupy arrays. A feeder thread copies batch k+1 into
a page-locked (pinned) host buffer and starts its upload with an asynchronous
copy on an upload stream of its own (non-blocking: it does not synchronize
with the legacy default stream the kernels run on), while the step of batch k
runs on the consumer's stream. `depth` slots (default 2) each hold one pinned
x/y pair and one device x/y pair; the rules that make the overlap safe:

  - the consumer's stream waits (on the GPU) for the event recorded after a
    slot's upload before the batch is handed out: the step never reads a
    half-uploaded batch;
  - a slot returns to the feeder only when the consumer asks for the next
    batch, after recording an event on its stream: the feeder's stream waits
    for that event before uploading into the slot's device buffers again, so
    an upload never overwrites a batch a queued step still reads;
  - before the feeder writes a slot's pinned buffers again, it waits (on the
    host) for the slot's previous upload to finish reading them.

The batches are still built by the loader's worker threads; the feeder only
copies (numpy's copy releases the GIL) and enqueues. Closing the generator
stops the feeder thread, closes the loader's iterator and synchronizes both
streams before the buffers are dropped.

Only the cuda backend uses it (train.py); the CPU backends get numpy batches
as before. It cannot run without a GPU: tests/test_feed.py checks the rules
above against a recording stand-in for cupy's stream API.
"""
from __future__ import annotations

import queue
import threading

import numpy as np

_POLL = 0.05  # seconds between checks of the stop flag while blocked


def feed_for(backend):
    """The TrainLoader feed for `backend`: a PinnedUploader on cuda, None (numpy
    batches) on the CPU backends."""
    return PinnedUploader(backend.xp) if getattr(backend, "name", None) == "cuda" else None


class PinnedUploader:
    """A TrainLoader `feed`: see the module doc. `xp`: the cupy module."""

    def __init__(self, xp, depth: int = 2):
        if int(depth) < 2:
            raise ValueError(f"depth must be >= 2 (one slot in use, one uploading), got {depth}")
        self.xp, self.depth = xp, int(depth)

    def __call__(self, batches):
        return self._feed(iter(batches))

    def _slot(self, slots, i, x, y):
        """Slot i's buffers (pinned x, pinned y, device x, device y) for batches shaped like (x, y)."""
        s = slots[i]
        if s is None or s[0].shape != x.shape or s[1].shape != y.shape:
            cuda = self.xp.cuda
            px = np.frombuffer(cuda.alloc_pinned_memory(x.nbytes), x.dtype, x.size).reshape(x.shape)
            py = np.frombuffer(cuda.alloc_pinned_memory(y.nbytes), y.dtype, y.size).reshape(y.shape)
            s = slots[i] = (px, py, self.xp.empty(x.shape, x.dtype), self.xp.empty(y.shape, y.dtype))
        return s

    def _feed(self, batches):
        cuda = self.xp.cuda
        device, compute = cuda.Device(), cuda.get_current_stream()
        upload = cuda.Stream(non_blocking=True)
        slots, uploaded, consumed = [None] * self.depth, [None] * self.depth, [None] * self.depth
        free, ready, stop = queue.Queue(), queue.Queue(maxsize=self.depth), threading.Event()
        for i in range(self.depth):
            free.put(i)

        def work():
            try:
                with device, upload:
                    for x, y in batches:
                        i = _get(free, stop)
                        if i is None:
                            return
                        x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
                        if uploaded[i] is not None:
                            uploaded[i].synchronize()      # its pinned buffers have been read
                        if consumed[i] is not None:
                            upload.wait_event(consumed[i])  # its device buffers are no longer read
                        px, py, dx, dy = self._slot(slots, i, x, y)
                        np.copyto(px, x)
                        np.copyto(py, y)
                        dx.set(px, stream=upload)
                        dy.set(py, stream=upload)
                        uploaded[i] = upload.record()
                        if not _put(ready, (True, (i, dx, dy, uploaded[i])), stop):
                            return
                _put(ready, (True, None), stop)
            except BaseException as e:  # handed to the consumer, re-raised there
                _put(ready, (False, e), stop)
            finally:
                if hasattr(batches, "close"):
                    batches.close()

        t = threading.Thread(target=work, daemon=True, name="alexnet-cuda-PinnedUploader")
        t.start()
        try:
            while True:
                ok, item = _get(ready, stop, t)
                if not ok:
                    raise item
                if item is None:
                    return
                i, dx, dy, done = item
                compute.wait_event(done)
                yield dx, dy
                consumed[i] = compute.record()  # after every use of slot i the consumer queued
                free.put(i)
        finally:
            stop.set()
            t.join()
            upload.synchronize()   # no copy or queued step still uses the buffers dropped here
            compute.synchronize()


def _get(q, stop, thread=None):
    """The next item of q; None once `stop` is set; RuntimeError when `thread` died without one."""
    while not stop.is_set():
        try:
            return q.get(timeout=_POLL)
        except queue.Empty:
            if thread is not None and not thread.is_alive() and q.empty():
                raise RuntimeError("the PinnedUploader thread stopped unexpectedly") from None
    return None


def _put(q, item, stop) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL)
            return True
        except queue.Full:
            pass
    return False
