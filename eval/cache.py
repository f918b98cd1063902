"""Embeddings cached on disk: a second run of the same model on the same data skips encoding.

The key hashes everything the embeddings depend on — the model's identity (its weights files'
paths, sizes and modification times), the preprocessing, the data's fingerprint and the texts. Zero-shot
class weights are entries like any other, keyed by the model, the class names and the prompts.

An entry is one safetensors file holding ``features``, with the blake2b hash of the tensor (its dtype,
shape and bytes) in the file's metadata. It is read as untrusted input: the header is checked against the
file's size before a byte of data is read, then the tensor is hashed and compared. An entry that fails —
truncated by a full disk or a killed copy, changed, or written by a version that recorded no hash — is
recomputed and written again, with a line saying so; so is one whose tensor has another shape than the
caller expects. An entry that cannot be written is left out with a
line, and the evaluation goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mmcontrast.errors import UserError
from mmcontrast.model_files import read_safetensors_header

FEATURES = "features"


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def file_identity(path: str | Path) -> list:
    """(resolved path, size, mtime) of a file, or of every file in a directory."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.exists()]


def features_digest(features: torch.Tensor) -> str:
    """blake2b of a tensor's dtype, shape and bytes."""
    t = features.detach().cpu().contiguous()
    digest = hashlib.blake2b(f"{t.dtype} {list(t.shape)}\n".encode(), digest_size=32)
    digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def read_entry(path: Path, shape: Sequence[int] | None = None) -> torch.Tensor:
    """The features of a cache entry that matches the hash it records (and ``shape``, when given);
    ``UserError`` saying what is wrong."""
    header = read_safetensors_header(path)
    if set(header) != {FEATURES}:
        raise UserError(f"{path} holds {len(header)} tensors, not one named {FEATURES!r}")
    if shape is not None and header[FEATURES]["shape"] != list(shape):
        raise UserError(f"{path} holds features of shape {header[FEATURES]['shape']}, not {list(shape)}")
    try:
        with safe_open(str(path), "pt") as f:
            recorded = (f.metadata() or {}).get("blake2b")
            features = f.get_tensor(FEATURES)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} cannot be read ({str(e)[:200]})") from None
    if recorded is None:
        raise UserError(f"{path} records no hash of its features (written by an older version)")
    if features_digest(features) != recorded:
        raise UserError(f"{path} does not match the blake2b hash it records (changed since it was written)")
    return features


class EmbeddingCache:
    def __init__(self, directory: str | Path | None, writer: bool = True):
        self.directory = Path(directory) if directory else None
        self.writer = writer  # with several processes only rank 0 writes

    def get_or_compute(self, key: str, compute: Callable[[], torch.Tensor], log=print,
                       shape: Sequence[int] | None = None) -> torch.Tensor:
        """The entry ``key`` if it is sound (and of ``shape``, when given), else ``compute()``, written when
        this process is the writer."""
        if self.directory is None:
            return compute()
        path = self.directory / f"{key}.safetensors"
        if path.is_file():
            try:
                features = read_entry(path, shape)
            except UserError as e:
                why = str(e).removesuffix("; copy or save it again")  # advice for a model file, not a cache entry
                log(f"embedding cache entry is broken, recomputing it: {why}")
            else:
                log(f"embeddings from cache: {path}")
                return features
        features = compute()
        if self.writer:
            self._write(path, features, log)
        return features

    def _write(self, path: Path, features: torch.Tensor, log) -> None:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            save_file({FEATURES: features.contiguous()}, str(tmp), metadata={"blake2b": features_digest(features)})
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        except (OSError, SafetensorError) as e:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # the line below names the entry; a leftover .tmp is never read
            log(f"cannot write embedding cache entry {path} ({getattr(e, 'strerror', None) or str(e)[:200]}); "
                f"the evaluation goes on without it")
