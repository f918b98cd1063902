"""Writes that survive a crash of the machine, not only of the process.

Everything that must never be half-written (checkpoints, model directories, shards, manifests) is
written under a temporary name and renamed into place. The rename is atomic, but the kernel may write
the renamed files' contents to disk later: a machine that loses power in between keeps the new name
with empty or partial files (and the previous checkpoint already deleted). So the contents are
flushed (fsync) before the rename, and the directory holding the new name after it.

``write_verified`` also reads a file back after the flush and compares it with what was written (size and
blake2b hash); its answer is what a reader records to verify the file later (training checkpoints).
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Callable


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's or a directory's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """``fsync`` every file and directory under ``path``, then ``path`` itself."""
    path = Path(path)
    for p in sorted(path.rglob("*"), reverse=True):  # deepest first: a directory after its entries
        fsync(p)
    fsync(path)


def replace(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """``os.replace(tmp, path)`` for a file whose contents are durable first, the new name after."""
    fsync(tmp)
    os.replace(tmp, path)
    fsync(Path(path).parent)


# Verified writes: what was handed to the file is hashed on the way, and the file is read back after the flush
# and compared, so a short write (a full disk) or a file changed underneath never passes for a complete one.
PIECE = 1 << 20  # bytes read at a time when hashing a file: memory stays bounded whatever its size
DIGEST_BYTES = 32  # blake2b-256, written as 64 hex digits


def _hasher():
    return hashlib.blake2b(digest_size=DIGEST_BYTES)


def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    """(size in bytes, blake2b hex digest) of a file, read in pieces."""
    digest, size = _hasher(), 0
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            digest.update(piece)
            size += len(piece)
    return size, digest.hexdigest()


class Tally:
    """Bytes handed to the files of one verified write so far, and the file being written (for a message
    saying how far a failed write got)."""

    def __init__(self):
        self.bytes, self.file = 0, None


class _HashingFile:
    """A write-only file that hashes and counts what passes through it, and keeps the OSError it met:
    libraries that write through it (torch.save) turn that error into one of their own."""

    def __init__(self, f: BinaryIO, tally: Tally):
        self.f, self.tally, self.digest, self.size, self.error = f, tally, _hasher(), 0, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            self.f.write(view)
        except OSError as e:
            self.error = e
            raise
        self.digest.update(view)
        self.size += view.nbytes
        self.tally.bytes += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self.f.flush()


def write_verified(path: str | os.PathLike, write: Callable[[BinaryIO], object], tally: Tally | None = None
                   ) -> dict:
    """Write a new file through ``write(f)``, flush it to disk, read it back and compare.

    Returns ``{"bytes": size, "blake2b": hex digest}``. Raises ``OSError`` for a failed write (the disk full:
    the error the file met, also where ``write`` turned it into another exception) and for a file that reads
    back other than it was written; the partial file is left to the caller, who owns the directory.
    """
    tally = tally or Tally()
    tally.file = Path(path)
    with open(path, "wb") as f:
        out = _HashingFile(f, tally)
        try:
            write(out)
            f.flush()
            os.fsync(f.fileno())
        except Exception as e:
            if out.error is not None and out.error is not e:
                raise out.error from None
            raise
    size, digest = file_digest(path)
    if (size, digest) != (out.size, out.digest.hexdigest()):
        raise OSError(errno.EIO, f"{path} reads back as {size:,} bytes that differ from the {out.size:,} written",
                      str(path))
    return {"bytes": size, "blake2b": digest}
