"""Tables: CSV/TSV, JSON Lines or Parquet, one row per image.

An image column holds a path (relative paths are taken from the table's folder) or the image's bytes
(raw, or ``datasets``' ``{"bytes", "path"}``); each caption column holds a caption, several lines, or a
list of captions. Rows are streamed — a Parquet file is read a row group at a time — so tables larger than
memory work.
"""

from __future__ import annotations

import csv
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


class TableSource:
    format = "table"

    def __init__(self, path: Path, options: SourceOptions):
        if not path.is_file():
            raise UserError(f"input table not found: {path}")
        self.path, self.options = path, options
        self.suffix = path.suffix.lower()
        wanted = [options.image_col, *options.caption_cols] + ([options.id_col] if options.id_col else [])
        missing = [c for c in wanted if c not in self.columns()]
        if missing:
            raise UserError(f"{path} has no column {', '.join(map(repr, missing))} (columns: {self.columns()}); "
                            f"name them with --image-col / --caption-col / --id-col")
        self.total = self._count()

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

    def _count(self) -> int:
        if self.suffix == ".parquet":
            import pyarrow.parquet as pq
            return pq.ParquetFile(self.path).metadata.num_rows
        return sum(1 for _ in self._rows())

    def _json_rows(self) -> Iterator[dict]:
        with self.path.open(encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{self.path}, line {n}: not JSON ({e})") from None

    def _rows(self, start: int = 0) -> Iterator[dict]:
        if self.suffix == ".parquet":
            import pyarrow.parquet as pq
            o = self.options
            columns = list(dict.fromkeys([o.image_col, *o.caption_cols] + ([o.id_col] if o.id_col else [])))
            seen = 0
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=1024, columns=columns):
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
        with self.path.open(newline="", encoding="utf-8-sig") as f:  # a BOM (Excel) is not part of a name
            yield from islice(csv.DictReader(f, delimiter=self._delimiter()), start, None)

    def records(self, start: int = 0) -> Iterator[Record]:
        o, base = self.options, self.path.parent.resolve()
        for n, row in enumerate(self._rows(start), start):
            image = image_value(row.get(o.image_col), base)
            captions = [c for col in o.caption_cols for c in captions_of(row.get(col))]
            rid = str(row[o.id_col]) if o.id_col else str(n)
            source = f"{self.path.name}:{n + 2 if self.suffix in ('.csv', '.tsv', '.tab') else n + 1}"
            problem = "missing_image" if image is None else None
            if isinstance(image, str) and image.startswith(("http://", "https://")):
                problem = "remote_image"  # image_value keeps URLs as they are
            yield Record(rid, image, captions, source, problem)
