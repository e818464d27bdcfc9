"""Wall time of a piece of work on a device: `alexnet-cuda time` and the convolution autotuner use it."""
from __future__ import annotations

import time

__all__ = ["Clock"]


class Clock:
    """clock(fn) -> (fn's result, milliseconds), the device synchronized before and after (`sync`)."""

    def __init__(self, sync):
        self.sync = sync

    def __call__(self, fn):
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        return out, (time.perf_counter() - t) * 1e3
