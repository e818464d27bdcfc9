"""The progress line of a training epoch: a bar redrawn in place on a terminal, a plain line every
`interval` seconds otherwise (logs, pipes)."""
from __future__ import annotations

import math
import sys
import time

__all__ = ["Progress"]


def _hms(sec):
    if not math.isfinite(sec) or sec < 0:
        return "--:--"
    sec = int(round(sec))
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """A one-line progress bar on a terminal; plain lines every `interval` s otherwise."""

    def __init__(self, total, desc, stream=None, tty=None, interval=30.0, width=24):
        self.total, self.desc = max(0, int(total)), desc
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            try:
                tty = self.stream.isatty()
            except (AttributeError, ValueError):
                tty = False
        self.tty, self.interval, self.width = tty, interval, width
        self.t0 = time.perf_counter()
        self.last = 0.0 if tty else self.t0
        self.drawn = False
        self._start = 0

    def line(self, done, loss, lr, ips):
        frac = done / self.total if self.total else 1.0
        eta = ((time.perf_counter() - self.t0) / max(done - self._start, 1e-9) * (self.total - done)
               if done > self._start else float("nan"))
        bar = ""
        if self.tty:
            n = int(frac * self.width)
            bar = "[" + "#" * n + "." * (self.width - n) + "] "
        return (f"{self.desc} {bar}{done}/{self.total} loss {loss:.4f} lr {lr:.3g} "
                f"{ips:.0f} img/s ETA {_hms(eta)}")

    def start(self, done):
        self._start = done
        self.t0 = time.perf_counter()

    def update(self, done, loss, lr, ips, force=False):
        now = time.perf_counter()
        if self.tty:
            if force or now - self.last >= 0.1 or done == self.total:
                self.stream.write("\r\x1b[2K" + self.line(done, loss, lr, ips))
                self.stream.flush()
                self.last, self.drawn = now, True
        elif force or now - self.last >= self.interval:
            self.stream.write(self.line(done, loss, lr, ips) + "\n")
            self.stream.flush()
            self.last = now

    def close(self):
        if self.tty and self.drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self.drawn = False
