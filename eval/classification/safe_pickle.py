"""Loading the pickled numpy dicts of CIFAR's python version without running code from the file.

A pickle is a program for a small stack machine whose ``GLOBAL``/``STACK_GLOBAL`` opcodes import any callable
and whose ``REDUCE``/``BUILD`` opcodes call it (Python docs, ``pickle`` — "Restricting Globals"); loading an
untrusted one with ``pickle.load`` can run ``os.system``. CIFAR's batches were written by Python 2's cPickle
(protocol 2): a dict of strings, lists of ints and one numpy array, which imports only
``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``. The same dict re-written by
Python 3 also imports ``_codecs.encode`` (protocol 2 has no bytes opcode), and numpy 2 names the first
``numpy._core.multiarray``. ``find_class`` here admits those five names and nothing else.

Before that, the whole file (bounded in size) is walked with ``pickletools.genops``, which checks every opcode
and every length prefix against the bytes actually present, so a forged length never makes the unpickler
allocate more than the file holds. Memory stays a small multiple of the file size: at most ``MAX_ARRAYS`` arrays
are built and ``_codecs.encode`` may produce at most as many bytes as the file has.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path

import numpy as np

from mmcontrast.errors import UserError

MAX_ARRAYS = 4                       # a CIFAR batch holds one; a re-written one may hold its labels as arrays too
NUMERIC_KINDS = "biuf"               # dtypes an array may have: no objects, strings or records
REFUSED_OPCODES = {"PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4"}  # references to objects outside the file
_reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own, whichever module numpy keeps it in


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that imports only what a pickled numpy array needs and bounds what it builds."""

    def __init__(self, file: io.BytesIO, path: Path, budget: int):
        super().__init__(file, encoding="latin1")  # Python 2 str → str, as torchvision loads CIFAR
        self.path, self.arrays, self.codec_bytes_left = path, 0, budget
        self.allowed = {
            ("numpy.core.multiarray", "_reconstruct"): self._array,
            ("numpy._core.multiarray", "_reconstruct"): self._array,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): self._dtype,
            ("_codecs", "encode"): self._encode,
        }

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UserError(f"{self.path}: the pickle imports {module}.{name}; a CIFAR batch holds only numpy "
                            "arrays, so it is not loaded") from None

    def _array(self, subtype, shape, dtype) -> np.ndarray:
        self.arrays += 1
        if self.arrays > MAX_ARRAYS or subtype is not np.ndarray:
            raise UserError(f"{self.path}: the pickle builds more than {MAX_ARRAYS} arrays or a non-array type; "
                            "not a CIFAR batch")
        return _reconstruct(subtype, shape, dtype)

    def _dtype(self, spec, align=False, copy=False) -> np.dtype:
        dtype = np.dtype(spec, align, copy) if isinstance(spec, str) else None
        if dtype is None or dtype.kind not in NUMERIC_KINDS or dtype.fields is not None:
            raise UserError(f"{self.path}: the pickle holds an array of type {str(spec)[:40]!r}; "
                            "a CIFAR batch holds numbers only")
        return dtype

    def _encode(self, text, encoding: str = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
            raise UserError(f"{self.path}: the pickle calls _codecs.encode with {encoding!r}; Python 3 writes "
                            "bytes as latin1 text only")
        self.codec_bytes_left -= len(text)
        if self.codec_bytes_left < 0:
            raise UserError(f"{self.path}: the pickle expands to more bytes than the file holds; not a CIFAR batch")
        return text.encode("latin1")


def _scan(data: bytes, path: Path) -> None:
    """One line if ``data`` is not a whole pickle, declares more bytes than it has, or names a refused opcode."""
    try:
        for op, _, _ in pickletools.genops(data):
            if op.name in REFUSED_OPCODES:
                raise UserError(f"{path}: the pickle refers to objects outside the file ({op.name}); not loaded")
    except UserError:
        raise
    except Exception as e:  # genops raises ValueError for truncated or unknown opcodes
        raise UserError(f"{path}: not a complete pickle ({e})") from None


def load_restricted(path: Path, max_bytes: int):
    """The object pickled in ``path`` (at most ``max_bytes`` long), built by ``RestrictedUnpickler``."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise UserError(f"{path}: {size:,} bytes, above the {max_bytes:,} a CIFAR batch can take; "
                            "not a CIFAR file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"CIFAR file not found: {path}") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e})") from None
    _scan(data, path)
    try:
        return RestrictedUnpickler(io.BytesIO(data), path, budget=len(data)).load()
    except UserError:
        raise
    except Exception as e:  # the pickle's own calls (numpy's setstate, dict building) fail in many ways
        raise UserError(f"{path}: the pickle cannot be loaded as a CIFAR batch ({type(e).__name__}: {e})") from None
