"""A small reader of MATLAB level-5 MAT-files: what the ImageNet devkit's
meta.mat needs, without scipy.

read_mat(data) -> {variable name: value} for the bytes of a .mat file
(format "MATLAB 5.0 MAT-file", either byte order, compressed or not):

    numeric array  -> numpy array of its MATLAB shape (column-major order kept)
    char array     -> str (a 1 x n or empty one), else list of str (one per row)
    struct array   -> list of {field: value} (elements in column-major order)
    cell array     -> list of values (column-major order)

Sparse matrices, objects and the v7.3 (HDF5) format raise MatFileError.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["MatFileError", "read_mat", "write_struct_mat"]

# data types of the elements (miINT8 ...) and their numpy types
_NUMERIC = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MATRIX, _COMPRESSED, _UTF8, _UTF16, _UTF32 = 14, 15, 16, 17, 18
# array classes (mxCELL_CLASS ...)
_CELL, _STRUCT, _OBJECT, _CHAR, _SPARSE = 1, 2, 3, 4, 5


class MatFileError(ValueError):
    """The bytes are not a MAT-file this reader understands."""


def _tag(buf: bytes, pos: int, e: str):
    """(type, nbytes, data start, next element) of the element at `pos`."""
    if pos + 8 > len(buf):
        raise MatFileError("truncated MAT-file")
    mtype, nbytes = struct.unpack_from(e + "II", buf, pos)
    if mtype >> 16:  # small data element: 4 bytes of data inside the tag
        return mtype & 0xFFFF, mtype >> 16, pos + 4, pos + 8
    end = pos + 8 + nbytes
    if end > len(buf):
        raise MatFileError("truncated MAT-file")
    return mtype, nbytes, pos + 8, (end if mtype == _COMPRESSED else end + (-nbytes % 8))


def _numbers(buf, mtype, start, nbytes, e):
    if mtype not in _NUMERIC:
        raise MatFileError(f"unexpected data type {mtype}")
    return np.frombuffer(buf, e + _NUMERIC[mtype], nbytes // np.dtype(_NUMERIC[mtype]).itemsize, start)


def _sub(buf, pos, e):
    """The next sub-element: (type, its bytes as numbers or raw, next pos)."""
    mtype, nbytes, start, nxt = _tag(buf, pos, e)
    return mtype, start, nbytes, nxt


def _chars(buf, mtype, start, nbytes, dims, e):
    raw = bytes(buf[start:start + nbytes])
    codec = {_UTF8: "utf-8", _UTF16: "utf-16-le" if e == "<" else "utf-16-be",
             _UTF32: "utf-32-le" if e == "<" else "utf-32-be", 1: "latin-1", 2: "latin-1"}
    if mtype in codec:
        text = raw.decode(codec[mtype], "replace")
    else:
        text = "".join(chr(c) for c in _numbers(buf, mtype, start, nbytes, e))
    rows = int(dims[0]) if len(dims) == 2 else 1
    if rows <= 1:
        return text
    cols = len(text) // rows
    return ["".join(text[r + rows * c] for c in range(cols)) for r in range(rows)]


def _matrix(buf: bytes, start: int, end: int, e: str):
    """(name, value) of the miMATRIX element whose data is buf[start:end]."""
    if start == end:  # an empty element
        return "", np.zeros((0, 0))
    t, s, n, pos = _sub(buf, start, e)
    cls = int(_numbers(buf, t, s, n, e)[0]) & 0xFF
    t, s, n, pos = _sub(buf, pos, e)
    dims = [int(d) for d in _numbers(buf, t, s, n, e)]
    t, s, n, pos = _sub(buf, pos, e)
    name = bytes(buf[s:s + n]).decode("latin-1")
    count = int(np.prod(dims)) if dims else 0
    if cls in (_SPARSE, _OBJECT):
        raise MatFileError(f"variable {name!r}: sparse matrices and objects are not supported")
    if cls == _CELL:
        return name, [_element(buf, p, e)[1] for p in _positions(buf, pos, count, e)]
    if cls == _STRUCT:
        return name, _struct(buf, pos, count, e)
    t, s, n, pos = _sub(buf, pos, e)
    if cls == _CHAR:
        return name, _chars(buf, t, s, n, dims, e)
    return name, _numbers(buf, t, s, n, e).reshape(dims, order="F")


def _positions(buf, pos, count, e):
    out = []
    for _ in range(count):
        out.append(pos)
        pos = _tag(buf, pos, e)[3]
    return out


def _struct(buf, pos, count, e):
    t, s, n, pos = _sub(buf, pos, e)
    width = int(_numbers(buf, t, s, n, e)[0])
    t, s, n, pos = _sub(buf, pos, e)
    raw = bytes(buf[s:s + n])
    fields = [raw[i:i + width].split(b"\0", 1)[0].decode("latin-1") for i in range(0, n, width)] if width else []
    ps = _positions(buf, pos, count * len(fields), e)
    values = [_element(buf, p, e)[1] for p in ps]
    return [dict(zip(fields, values[i * len(fields):(i + 1) * len(fields)])) for i in range(count)]


def _element(buf, pos, e):
    """(name, value) of the (possibly compressed) matrix element at `pos`."""
    mtype, nbytes, start, _ = _tag(buf, pos, e)
    if mtype == _COMPRESSED:
        try:
            inner = zlib.decompress(bytes(buf[start:start + nbytes]))
        except zlib.error as err:
            raise MatFileError(f"broken compressed element: {err}") from None
        return _element(inner, 0, e)
    if mtype != _MATRIX:
        raise MatFileError(f"unexpected element type {mtype}")
    return _matrix(buf, start, start + nbytes, e)


def read_mat(data: bytes) -> dict:
    """{name: value} of the variables of the MAT-file `data` (see the module doc)."""
    if len(data) < 128 or not data[:116].startswith(b"MATLAB"):
        raise MatFileError("not a MAT-file")
    if data[126:128] not in (b"IM", b"MI"):
        raise MatFileError("not a level-5 MAT-file (v7.3 HDF5 files are not supported)")
    e = "<" if data[126:128] == b"IM" else ">"
    out, pos = {}, 128
    while pos + 8 <= len(data):
        name, value = _element(data, pos, e)
        out[name] = value
        pos = _tag(data, pos, e)[3]
    return out


# ---------------------------------------------------------------- writing (miniature devkits)
def _el(mtype: int, data: bytes) -> bytes:
    return struct.pack("<II", mtype, len(data)) + data + b"\0" * (-len(data) % 8)


def _mx(cls: int, dims, name: str, body: bytes) -> bytes:
    head = _el(6, struct.pack("<II", cls, 0)) + _el(5, struct.pack(f"<{len(dims)}i", *dims))
    return _el(_MATRIX, head + _el(1, name.encode("latin-1")) + body)


def _mx_value(v) -> bytes:
    if isinstance(v, str):
        return _mx(_CHAR, (1, len(v)), "", _el(4, v.encode("utf-16-le")))
    a = np.atleast_2d(np.asarray(v, np.float64))
    return _mx(6, a.shape, "", _el(9, a.T.tobytes()))


def write_struct_mat(name: str, rows: list) -> bytes:
    """The bytes of a level-5 MAT-file (little-endian, uncompressed) holding
    the n x 1 struct array `name`; rows: dicts with the same fields, values
    str or numbers (what the ImageNet devkit's meta.mat holds)."""
    fields = list(rows[0])
    body = _el(5, struct.pack("<i", 32)) + _el(1, b"".join(f.encode().ljust(32, b"\0") for f in fields))
    body += b"".join(_mx_value(r[f]) for r in rows for f in fields)
    head = b"MATLAB 5.0 MAT-file, written by alexnet-cuda".ljust(116, b" ")
    return head + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM" + _mx(_STRUCT, (len(rows), 1), name, body)
