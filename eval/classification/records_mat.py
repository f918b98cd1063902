"""Numeric arrays from a MATLAB level-5 MAT-file, found by walking its tags and served from a memory map.

The format (MathWorks, "MAT-File Format", chapter 1): a 128-byte header (116 bytes of text starting
``MATLAB 5.0 MAT-file``, an 8-byte subsystem offset, a 2-byte version 0x0100 and the endian indicator ``IM``
or ``MI``), then data elements. Each element has an 8-byte tag (uint32 type, uint32 byte count) followed by its
data padded to 8 bytes, or is a "small" element whose byte count (≤ 4) sits in the tag's upper 16 bits and whose
data fills the tag's second word. A variable is an ``miMATRIX`` (14) element holding sub-elements: array flags
(class in the low byte), dimensions (int32), name (int8), then the real part in any numeric storage type (MATLAB
stores a double array of small integers as uint8, say). Version 7 files wrap each variable in an
``miCOMPRESSED`` (15) element: a zlib stream of the ``miMATRIX`` element. MATLAB 7.3 files are HDF5.

Nothing here trusts a size: every tag's byte count is checked against the bytes left in its element and file,
the data size against the product of the dimensions, and a compressed variable is inflated in bounded chunks
into an anonymous temporary file that is then memory-mapped, so no array is ever held in memory whole.
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mmcontrast.errors import UserError

MI_MATRIX, MI_COMPRESSED = 14, 15
# storage types: miINT8 … miUINT64, miSINGLE (7), miDOUBLE (9); 8 and 10, 11 are reserved
MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
# array classes whose real part is plain numbers: mxDOUBLE (6) … mxUINT64 (15)
MX_CLASSES = {6: "double", 7: "single", 8: "int8", 9: "uint8", 10: "int16", 11: "uint16", 12: "int32",
              13: "uint32", 14: "int64", 15: "uint64"}
MX_COMPLEX = 0x0800
CHUNK = 1 << 20  # bytes inflated or copied at a time


@dataclass
class MatArray:
    """One numeric variable: its MATLAB class, its dimensions and its real part, flat in column-major order."""
    name: str
    mclass: str               # "uint8", "double", ...: the class MATLAB reports
    dims: tuple[int, ...]
    data: np.ndarray          # [prod(dims)] in the stored type; a memory map of the file or of its inflated copy


class _Stream:
    """Exact reads from ``size`` bytes of ``f`` at ``start``: the bytes themselves, or what they inflate to."""

    def __init__(self, f: BinaryIO, path: Path, start: int, size: int, compressed: bool):
        self.f, self.path, self.file_pos, self.end = f, path, start, start + size
        self.inflate = zlib.decompressobj() if compressed else None
        self.pending = b""                              # inflated, not yet delivered

    def read(self, n: int, what: str) -> bytes:
        out = bytearray()
        while len(out) < n:
            piece = self._piece(n - len(out))
            if not piece:
                where = " in its compressed element" if self.inflate else ""
                raise UserError(f"{self.path}: truncated MAT-file: {what} needs {n:,} bytes, {len(out):,} remain"
                                + where)
            out += piece
        return bytes(out)

    def skip(self, n: int, what: str) -> None:
        if self.inflate is None:  # plain bytes are skipped by position; the caller checked n against the file
            self.file_pos += n
            return
        while n:
            n -= len(self.read(min(n, CHUNK), what))

    def copy_to(self, out: BinaryIO, n: int, what: str) -> None:
        while n:
            piece = self.read(min(n, CHUNK), what)
            out.write(piece)
            n -= len(piece)

    def _piece(self, n: int) -> bytes:
        n = min(n, CHUNK)
        if self.inflate is None:
            n = min(n, self.end - self.file_pos)
            if n <= 0:
                return b""
            self.f.seek(self.file_pos)
            piece = self.f.read(n)
            self.file_pos += len(piece)
            return piece
        while not self.pending:
            source = self.inflate.unconsumed_tail
            if not source:
                take = min(CHUNK, self.end - self.file_pos)
                if take <= 0 or self.inflate.eof:
                    return b""
                self.f.seek(self.file_pos)
                source = self.f.read(take)
                self.file_pos += len(source)
            try:
                self.pending = self.inflate.decompress(source, n)  # never more than n bytes out per call
            except zlib.error as e:
                raise UserError(f"{self.path}: a compressed variable is corrupt ({e})") from None
            if not self.pending and self.inflate.eof:
                return b""
        piece, self.pending = self.pending[:n], self.pending[n:]
        return piece


def _tag(s: _Stream, order: str, left: int, what: str) -> tuple[int, int, bytes | None, int]:
    """(type, byte count, the data if it is a small element, bytes the element takes) of the next element,
    its size checked against the ``left`` bytes of the element or file that holds it."""
    if left < 8:
        raise UserError(f"{s.path}: truncated MAT-file: no room for the tag of {what}")
    raw = s.read(8, what)
    word, count = struct.unpack(order + "II", raw)
    if word >> 16:  # small data element: type and count share the first word, the data is the second
        mtype, count = word & 0xFFFF, word >> 16
        if count > 4:
            raise UserError(f"{s.path}: corrupt MAT-file: {what} is a small element of {count} bytes (at most 4)")
        return mtype, count, raw[4:4 + count], 8
    if count > left - 8:
        raise UserError(f"{s.path}: truncated MAT-file: {what} declares {count:,} bytes, {left - 8:,} remain")
    return word, count, None, 8 + count + (-count % 8)


def _small_data(s: _Stream, order: str, left: int, what: str, mtype: int, max_bytes: int) -> tuple[bytes, int]:
    """The data of a short sub-element (flags, dimensions, name) of type ``mtype`` and the bytes it took."""
    t, n, small, took = _tag(s, order, left, what)
    if t != mtype or n > max_bytes:
        raise UserError(f"{s.path}: corrupt MAT-file: {what} has type {t} and {n:,} bytes "
                        f"(expected type {mtype}, at most {max_bytes} bytes)")
    if small is not None:
        return small, took
    data = s.read(n, what)
    s.skip(-n % 8, what)
    return data, min(took, left)


def _matrix(s: _Stream, order: str, left: int, names: set[str], max_bytes: int) -> MatArray | None:
    """The variable whose ``miMATRIX`` data (``left`` bytes) starts at ``s``, or None if its name is not wanted."""
    flags, took = _small_data(s, order, left, "the array flags of a variable", 6, 8)
    left -= took
    raw_dims, took = _small_data(s, order, left, "the dimensions of a variable", 5, 4 * 32)
    left -= took
    raw_name, took = _small_data(s, order, left, "the name of a variable", 1, 4096)
    left -= took
    name = raw_name.decode("latin-1")
    if name not in names:
        return None
    if len(flags) != 8 or len(raw_dims) < 8 or len(raw_dims) % 4:
        raise UserError(f"{s.path}: corrupt MAT-file: variable {name!r} has malformed flags or dimensions")
    word = struct.unpack(order + "I", flags[:4])[0]
    mclass = MX_CLASSES.get(word & 0xFF)
    if mclass is None or word & MX_COMPLEX:
        raise UserError(f"{s.path}: variable {name!r} is not a real numeric array (MATLAB class {word & 0xFF}"
                        f"{', complex' if word & MX_COMPLEX else ''})")
    dims = struct.unpack(order + f"{len(raw_dims) // 4}i", raw_dims)
    if min(dims) < 0:
        raise UserError(f"{s.path}: corrupt MAT-file: variable {name!r} has dimensions {dims}")
    mtype, n, small, _ = _tag(s, order, left, f"the data of variable {name!r}")
    if mtype not in MI_DTYPES:
        raise UserError(f"{s.path}: corrupt MAT-file: the data of variable {name!r} has storage type {mtype}")
    dtype = np.dtype(order + MI_DTYPES[mtype])
    count = int(np.prod(dims, dtype=object))
    if n != count * dtype.itemsize:
        raise UserError(f"{s.path}: corrupt MAT-file: variable {name!r} of dimensions {dims} holds {n:,} bytes of "
                        f"{dtype.name}, not {count * dtype.itemsize:,}")
    if n > max_bytes:
        raise UserError(f"{s.path}: variable {name!r} holds {n:,} bytes, above the {max_bytes:,} allowed")
    if small is not None:
        data = np.frombuffer(small, dtype, count)
    elif n == 0:
        data = np.zeros(0, dtype)
    elif s.inflate is None:
        data = np.memmap(s.path, dtype, mode="r", offset=s.file_pos, shape=(count,))
    else:
        with tempfile.TemporaryFile() as copy:  # unlinked already; the map keeps its pages alive after close
            s.copy_to(copy, n, f"the data of variable {name!r}")
            copy.flush()
            data = np.memmap(copy, dtype, mode="r", shape=(count,))
    return MatArray(name, mclass, dims, data)


def read_mat(path: Path, names: set[str], max_bytes: int = 1 << 33) -> dict[str, MatArray]:
    """The variables ``names`` of the MAT-file at ``path`` (those it has); none may hold more than ``max_bytes``."""
    try:
        size = path.stat().st_size
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e})") from None
    with f:
        header = f.read(128)
        if header[:10] == b"MATLAB 7.3" or header[:8] == b"\x89HDF\r\n\x1a\n":
            raise UserError(f"{path} is a MATLAB 7.3 (HDF5) file; save it again with save(..., '-v7')")
        if len(header) < 128 and header.startswith(b"MATLAB 5.0"):
            raise UserError(f"{path}: truncated MAT-file: {len(header)} bytes, less than its 128-byte header")
        order = {b"IM": "<", b"MI": ">"}.get(header[126:128])
        if not header.startswith(b"MATLAB 5.0 MAT-file") or order is None:
            raise UserError(f"{path} is not a MATLAB 5 MAT-file (its 128-byte header does not start with "
                            "'MATLAB 5.0 MAT-file' and end with the endian mark IM or MI)")
        if struct.unpack(order + "H", header[124:126])[0] != 0x0100:
            raise UserError(f"{path}: MAT-file version {header[124:126].hex()} is not 0100")
        found: dict[str, MatArray] = {}
        pos = 128
        while pos < size and len(found) < len(names):
            top = _Stream(f, path, pos, size - pos, compressed=False)
            mtype, count, _, took = _tag(top, order, size - pos, f"the element at byte {pos:,}")
            if mtype == MI_COMPRESSED:
                inner = _Stream(f, path, pos + 8, count, compressed=True)
                itype, icount, _, _ = _tag(inner, order, 1 << 62, f"the compressed element at byte {pos:,}")
                if itype == MI_MATRIX:
                    array = _matrix(inner, order, icount, names, max_bytes)
                    if array is not None:
                        found[array.name] = array
                took = 8 + count  # compressed elements are not padded
            elif mtype == MI_MATRIX:
                array = _matrix(top, order, count, names, max_bytes)
                if array is not None:
                    found[array.name] = array
            pos += took
        return found
