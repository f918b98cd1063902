"""Tables: CSV/TSV, JSON Lines or Parquet, one row per image.

An image column holds a path (relative paths are taken from the table's folder) or the image's bytes
(raw, or ``datasets``' ``{"bytes", "path"}``); each caption column holds a caption, several lines, or a
list of captions. Rows are streamed — a Parquet file is read a batch at a time — so tables larger than
memory work; a folder of tables or a glob (``laion/part-*.parquet``) is read in name order as one table.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from itertools import islice
from pathlib import Path
from typing import Iterator

from mmcontrast.errors import UserError

from . import Record, SourceOptions, captions_of

csv.field_size_limit(1 << 30)  # long captions (and base64 blobs) exceed csv's 128 KiB default


def image_value(value, base: Path) -> str | bytes | None:
    """A path (made absolute from ``base``) or bytes from a table or dataset cell."""
    if isinstance(value, dict):  # datasets' Image feature undecoded: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if value is None or str(value).strip() == "":
        return None
    if str(value).startswith(("http://", "https://")):
        return str(value)
    return os.path.normpath(os.path.join(base, str(value)))  # an absolute value stays; no syscalls per row


TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".parquet")


def table_files(path: Path) -> list[Path]:
    """The tables an input names: one file, the tables in a folder, or a glob pattern (``parts/*.parquet``)."""
    if any(ch in str(path) for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path)))
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in TABLE_SUFFIXES)
    else:
        files = [path] if path.is_file() else []
    if not files:
        raise UserError(f"input table not found: {path}")
    odd = [f.name for f in files if f.suffix.lower() not in TABLE_SUFFIXES]
    if odd:
        raise UserError(f"{path}: {odd[0]} is not a table ({', '.join(TABLE_SUFFIXES)})")
    return files


class TableFile:
    """One CSV/TSV, JSON Lines or Parquet file: its columns, its row count and its rows from any row on."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.wanted = path, columns
        self.suffix = path.suffix.lower()

    def columns(self) -> list[str]:
        if self.suffix == ".parquet":
            import pyarrow.parquet as pq
            return pq.ParquetFile(self.path).schema_arrow.names
        if self.suffix in (".jsonl", ".ndjson"):  # rows may leave out empty fields: the first thousand tell
            return list(dict.fromkeys(k for row in islice(self._json_rows(), 1000) for k in row))
        with self.path.open(newline="", encoding="utf-8-sig") as f:  # a BOM (Excel) is not part of a name
            return next(csv.reader(f, delimiter=self._delimiter()), [])

    def _delimiter(self) -> str:
        return "\t" if self.suffix in (".tsv", ".tab") else ","

    def count(self) -> int:
        if self.suffix == ".parquet":
            import pyarrow.parquet as pq
            return pq.ParquetFile(self.path).metadata.num_rows
        return sum(1 for _ in self.rows())

    def line(self, row: int) -> int:
        """The row's line in the file, as an editor shows it (CSV: after the header)."""
        return row + 2 if self.suffix in (".csv", ".tsv", ".tab") else row + 1

    def _json_rows(self) -> Iterator[dict]:
        with self.path.open(encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{self.path}, line {n}: not JSON ({e})") from None

    def rows(self, start: int = 0) -> Iterator[dict]:
        if self.suffix == ".parquet":
            import pyarrow.parquet as pq
            seen = 0
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=1024, columns=self.wanted):
                if seen + batch.num_rows <= start:  # resuming: whole batches before the start are not converted
                    seen += batch.num_rows
                    continue
                rows = batch.to_pylist()
                yield from rows[max(0, start - seen):]
                seen += batch.num_rows
            return
        if self.suffix in (".jsonl", ".ndjson"):
            yield from islice(self._json_rows(), start, None)
            return
        with self.path.open(newline="", encoding="utf-8-sig") as f:
            yield from islice(csv.DictReader(f, delimiter=self._delimiter()), start, None)


class TableSource:
    """One table or several (a folder of them, a glob), read in name order as one sequence of rows."""

    format = "table"

    def __init__(self, path: Path, options: SourceOptions):
        self.options = options
        wanted = list(dict.fromkeys([options.image_col, *options.caption_cols]
                                    + ([options.id_col] if options.id_col else [])))
        self.files = [TableFile(f, wanted) for f in table_files(path)]
        for table in self.files:
            columns = table.columns()
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise UserError(f"{table.path} has no column {', '.join(map(repr, missing))} (columns: {columns}); "
                                f"name them with --image-col / --caption-col / --id-col")
        self.counts = [table.count() for table in self.files]
        self.total = sum(self.counts)

    def records(self, start: int = 0) -> Iterator[Record]:
        o, first = self.options, 0
        for table, count in zip(self.files, self.counts):
            if first + count <= start:
                first += count
                continue
            base, local = table.path.parent.resolve(), max(0, start - first)
            for i, row in enumerate(table.rows(local), local):
                image = image_value(row.get(o.image_col), base)
                captions = [c for col in o.caption_cols for c in captions_of(row.get(col))]
                rid = str(row[o.id_col]) if o.id_col else str(first + i)
                problem = "missing_image" if image is None else None
                if isinstance(image, str) and image.startswith(("http://", "https://")):
                    problem = "remote_image"  # image_value keeps URLs as they are
                yield Record(rid, image, captions, f"{table.path.name}:{table.line(i)}", problem)
            first += count
