"""Embeddings cached on disk: a second run of the same model on the same data skips encoding.

The key hashes everything the embeddings depend on — the model's identity (its weights files'
paths, sizes and modification times), the preprocessing, the data's fingerprint and the texts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def file_identity(path: str | Path) -> list:
    """(resolved path, size, mtime) of a file, or of every file in a directory."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.exists()]


class EmbeddingCache:
    def __init__(self, directory: str | Path | None, writer: bool = True):
        self.directory = Path(directory) if directory else None
        self.writer = writer  # with several processes only rank 0 writes

    def get_or_compute(self, key: str, compute: Callable[[], torch.Tensor], log=print) -> torch.Tensor:
        if self.directory is None:
            return compute()
        path = self.directory / f"{key}.safetensors"
        if path.is_file():
            log(f"embeddings from cache: {path}")
            return load_file(str(path))["features"]
        features = compute()
        if not self.writer:
            return features
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"features": features.contiguous()}, str(tmp))
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        return features
