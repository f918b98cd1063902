"""Where image–caption pairs come from: each input format is a source of ``Record``s in a fixed order.

A source is deterministic (the same input gives the same records in the same order) and can start at
any record index, so an interrupted build resumes where it stopped: ``records(start)``. A source that can
seek further sets ``Record.cursor`` and gets the last one read back, ``records(start, cursor)``, to begin
reading there rather than count its way from the first record. Problems a source can see itself —
a path that names no file, a broken input shard — come as records with ``problem`` set, so that they are
counted in order with everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmcontrast.errors import UserError


@dataclass
class Record:
    id: str                       # the sample's id in its source: row number, id column, COCO id, shard key, path
    image: str | bytes | None     # a file path or the encoded image; None when the source has none
    captions: list[str]           # raw, cleaned later; several captions of one image
    source: str                   # where it came from, for key.json and the report's examples
    problem: str | None = None    # a skip reason the source found itself (missing_image, unreadable_shard, ...)
    cursor: list | None = None    # where a seekable source stands after this record (JSON), for resuming


@dataclass
class SourceOptions:
    image_col: str = "image"
    caption_cols: list[str] = field(default_factory=lambda: ["caption"])
    id_col: str | None = None
    image_root: str | None = None
    split: str = "train"


def captions_of(value) -> list[str]:
    """A caption cell: a string (one caption per line), a list of strings, or nothing."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return str(value).splitlines()


SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # webdataset shards, plain or gzip-compressed
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def detect(path: Path) -> str:
    """The input format of ``path``: table, folder, hf, coco, karpathy or webdataset."""
    text = str(path)
    if "{" in text or text.endswith(SHARD_SUFFIXES) or "::" in text:
        return "webdataset"
    if any(ch in text for ch in "*?["):  # a glob of tables: laion/part-*.parquet
        return "table"
    if not path.exists():
        raise UserError(f"input not found: {path}")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return "hf"
        if any(p.name.endswith(SHARD_SUFFIXES) for p in path.iterdir()):
            return "webdataset"
        from .table import TABLE_SUFFIXES
        tables = [p for p in path.iterdir() if p.suffix.lower() in TABLE_SUFFIXES]
        if tables and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            return "table"  # a folder of tables, as LAION's metadata parquet files come
        return "folder"
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".parquet"):
        return "table"
    if suffix == ".json":
        from mmcontrast.data.annotations import read_json
        data = read_json(path)
        if isinstance(data, dict) and "annotations" in data:
            return "coco"
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            return "karpathy"
        raise UserError(f"{path}: a JSON file that is neither COCO captions ('images' + 'annotations') nor a "
                        f"Karpathy split file ('images' with 'sentences'); for JSON Lines name it .jsonl")
    raise UserError(f"{path}: cannot tell the input format from the name; give --format "
                    f"({', '.join(sorted(SOURCES))})")


def open_source(path: str | Path, format: str = "auto", options: SourceOptions | None = None):
    path, options = Path(path), options or SourceOptions()
    format = detect(path) if format == "auto" else format
    if format not in SOURCES:
        raise UserError(f"unknown input format {format!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[format](path, options)


def _sources():
    from .annotations import CocoSource, KarpathySource
    from .folder import FolderSource
    from .hf import HFSource
    from .table import TableSource
    from .webdataset import WebdatasetSource
    return {"table": TableSource, "folder": FolderSource, "hf": HFSource, "coco": CocoSource,
            "karpathy": KarpathySource, "webdataset": WebdatasetSource}


SOURCES = _sources()
__all__ = ["Record", "SourceOptions", "SOURCES", "open_source", "detect", "captions_of"]
