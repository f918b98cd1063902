"""Writes that survive a crash of the machine, not only of the process.

Everything that must never be half-written (checkpoints, model directories, shards, manifests) is
written under a temporary name and renamed into place. The rename is atomic, but the kernel may write
the renamed files' contents to disk later: a machine that loses power in between keeps the new name
with empty or partial files (and the previous checkpoint already deleted). So the contents are
flushed (fsync) before the rename, and the directory holding the new name after it.
"""

from __future__ import annotations

import os
from pathlib import Path


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
