"""The one atomic writer of the package: every file the program writes goes through it.

A file is written to a temporary name in its folder, flushed and fsync'ed, then
renamed over the target (os.replace), and the folder is fsync'ed: a reader never
sees a half-written file, and an interrupted write leaves the previous one in place.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save_npy",
           "atomic_save_npz", "fsync_dir"]


def fsync_dir(path):
    """fsync a folder so a rename inside it survives a crash (ignored where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def atomic_write_bytes(path, chunks):
    """Write the bytes-like `chunks` (one or an iterable) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        chunks = [chunks]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_save_npy(path, arr):
    """numpy.save(path, arr), atomically."""
    import numpy as np
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getbuffer())


def atomic_save_npz(path, **arrays):
    """numpy.savez(path, **arrays), atomically (the name is kept as given)."""
    import numpy as np
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getbuffer())
