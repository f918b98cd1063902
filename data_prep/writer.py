"""Writing webdataset shards and their manifest, deterministically (fixed mtime, sorted order).

A shard is first written as ``NAME.tar.tmp`` and renamed when complete and flushed to disk
(``mmcontrast.durable``): a killed run or a crashed machine never leaves a truncated shard behind under a
real name.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from mmcontrast.durable import replace

MANIFEST = "manifest.json"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: list[dict]) -> int:
    """Write ``samples`` (``{"__key__": str, ext: bytes|str, ...}``) to ``path``; returns the count."""
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            key = sample["__key__"]
            for ext in sorted(k for k in sample if k != "__key__"):
                value = sample[ext]
                _add(tar, f"{key}.{ext}", value.encode("utf-8") if isinstance(value, str) else value)
    replace(tmp, path)
    return len(samples)


class ShardWriter:
    """Accumulates samples and writes ``{prefix}{index:06d}.tar`` every ``max_count`` samples."""

    def __init__(self, out_dir: str | Path, max_count: int = 1000, pattern: str = "{:06d}.tar"):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_count, self.pattern = max_count, pattern
        self.buffer: list[dict] = []
        self.shards: list[dict] = []

    def write(self, sample: dict) -> None:
        self.buffer.append(sample)
        if len(self.buffer) >= self.max_count:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        name = self.pattern.format(len(self.shards))
        count = write_shard(self.out_dir / name, self.buffer)
        self.shards.append({"name": name, "count": count})
        self.buffer = []

    def close(self, **extra) -> dict:
        """Flush, write ``manifest.json`` (shard counts, total, ``extra``) and return it."""
        self.flush()
        manifest = {"shards": self.shards, "total": sum(s["count"] for s in self.shards), **extra}
        write_json(self.out_dir / MANIFEST, manifest)
        return manifest


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    replace(tmp, path)


def write_benchmark(root: Path, samples: list[dict], per_shard: int, dataset_type: str | None = None,
                    classnames: list[str] | None = None, templates: list[str] | None = None,
                    split: str = "test") -> Path:
    """A set in CLIP_benchmark's webdataset layout: ``root/split/{0..n-1}.tar``, ``nshards.txt``, and the
    optional ``dataset_type.txt``, ``classnames.txt`` and ``zeroshot_classification_templates.txt``."""
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [samples[i:i + per_shard] for i in range(0, len(samples), per_shard)]
    for n, chunk in enumerate(chunks):
        write_shard(folder / f"{n}.tar", chunk)
    (folder / "nshards.txt").write_text(f"{len(chunks)}\n")
    if dataset_type:
        (Path(root) / "dataset_type.txt").write_text(dataset_type + "\n")
    if classnames is not None:
        (Path(root) / "classnames.txt").write_text("\n".join(classnames) + "\n")
    if templates is not None:
        (Path(root) / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return Path(root)
