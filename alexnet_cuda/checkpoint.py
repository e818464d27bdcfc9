"""Checkpoints in the safetensors format, written atomically.

The format (https://github.com/huggingface/safetensors, implemented here in a
few lines so there is no extra dependency):

    8 bytes         N, the header length, unsigned little-endian
    N bytes         a JSON object: for every tensor
                        "name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}
                    and optionally "__metadata__": {str: str}
                    (padded with spaces; here to a multiple of 8 bytes)
    the rest        the raw little-endian, C-order data of every tensor; offsets
                    are relative to the start of this section

A file written here loads with `safetensors.numpy.load_file` and
`safetensors.torch.load_file`; the weights keep PyTorch's names and shapes.

Writes are atomic (alexnet_cuda.files): a reader never sees a half-written
checkpoint, and an interrupted write leaves the previous one in place.

The reader validates everything it relies on (header length, JSON, dtypes,
shapes, offsets that tile the data section exactly) and raises
`CheckpointError` with the path and what is wrong.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .errors import CheckpointError
from .files import atomic_write_bytes

__all__ = ["CheckpointError", "save_file", "load_file", "read_metadata"]

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
    "BOOL": np.bool_,
}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


def save_file(tensors, path, metadata=None):
    """Write `tensors` (name -> numpy array) and `metadata` (str -> str) to `path` atomically."""
    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"save_file: metadata must map str to str, got {k!r}: {type(v).__name__}")
        header["__metadata__"] = dict(metadata)
    arrays = []
    offset = 0
    for name, a in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"save_file: invalid tensor name {name!r}")
        a = np.asarray(a)
        if a.dtype not in _CODES:
            raise TypeError(f"save_file: tensor {name!r} has unsupported dtype {a.dtype}")
        a = np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")  # (keeps 0-d arrays 0-d)
        nbytes = a.nbytes
        header[name] = {"dtype": _CODES[np.dtype(a.dtype.newbyteorder("="))], "shape": list(a.shape),
                        "data_offsets": [offset, offset + nbytes]}
        arrays.append(a)
        offset += nbytes
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    chunks = [len(h).to_bytes(8, "little"), h] + [memoryview(a.reshape(-1)).cast("B") for a in arrays if a.size]
    atomic_write_bytes(path, chunks)


def _read_header(f, path, size):
    raw = f.read(8)
    if len(raw) < 8:
        raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
    n = int.from_bytes(raw, "little")
    if n > min(_MAX_HEADER, size - 8):
        raise CheckpointError(f"{path}: not a safetensors file (header length {n} does not fit "
                              f"the file of {size} bytes)")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    return n, header, meta


def read_metadata(path):
    """Only the metadata (str -> str) of a safetensors file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            return _read_header(f, path, size)[2]
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None


def load_file(path):
    """Read a safetensors file: returns (tensors name -> numpy array, metadata str -> str)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n, header, meta = _read_header(f, path, size)
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{path}: tensor {name!r} needs exactly dtype, shape and data_offsets")
        dt = _DTYPES.get(info["dtype"])
        if dt is None:
            raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {info['dtype']!r}")
        shape, offs = info["shape"], info["data_offsets"]
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)):
            raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)
                or not 0 <= offs[0] <= offs[1]):
            raise CheckpointError(f"{path}: tensor {name!r} has invalid data_offsets {offs!r}")
        need = math.prod(shape) * np.dtype(dt).itemsize
        if offs[1] - offs[0] != need:
            raise CheckpointError(f"{path}: tensor {name!r} of shape {shape} and dtype {info['dtype']} needs "
                                  f"{need} bytes, its data_offsets span {offs[1] - offs[0]}")
        spans.append((offs[0], offs[1], name, dt, shape))
    spans.sort()
    pos = 0
    for b, e, name, _, _ in spans:
        if b != pos:
            raise CheckpointError(f"{path}: tensor data is not contiguous at {name!r} "
                                  f"(starts at {b}, expected {pos})")
        pos = e
    if pos != len(data):
        raise CheckpointError(f"{path}: data section is {len(data)} bytes, the header describes {pos} "
                              f"(truncated or corrupt file)")
    tensors = {}
    for b, e, name, dt, shape in spans:
        a = np.frombuffer(data, dtype=np.dtype(dt).newbyteorder("<"), count=math.prod(shape), offset=b)
        tensors[name] = a.astype(dt).reshape(tuple(shape))  # native byte order, writable copy
    # keep the file's order
    order = {name: i for i, name in enumerate(header)}
    return dict(sorted(tensors.items(), key=lambda kv: order[kv[0]])), dict(meta)
