"""Existing webdataset shards — ours, img2dataset's output (``00000.tar`` + ``00000_stats.json``), any brace
pattern or ``::`` list — to re-shard, filter or resize. Captions from ``key.txt`` (one per line) or, without
it, from the ``--caption-col`` fields of ``key.json``. A shard that breaks midway keeps the samples read before
the break and is counted once as ``unreadable_shard``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from mmcontrast.data.tar import IMAGE_EXTS, ShardError, shard_samples
from mmcontrast.data.urls import MANIFEST, expand_urls, read_manifest
from mmcontrast.errors import UserError

from . import SHARD_SUFFIXES, Record, SourceOptions, captions_of


def _successes(stats: list[Path]) -> int | None:
    """The samples img2dataset wrote, from its ``_stats.json`` files; None when one is damaged (the total is only
    for the progress bar)."""
    total = 0
    for path in stats:
        try:
            n = json.loads(path.read_bytes()).get("successes", 0)
        except (ValueError, UnicodeDecodeError, AttributeError):
            return None
        if not isinstance(n, int) or n < 0:
            return None
        total += n
    return total


class WebdatasetSource:
    format = "webdataset"

    def __init__(self, path: Path, options: SourceOptions):
        self.options, self.total = options, None
        if path.is_dir() and not (path / MANIFEST).is_file():
            self.urls = [str(p) for p in sorted(path.iterdir()) if p.name.endswith(SHARD_SUFFIXES)]
            if not self.urls:
                raise UserError(f"{path} holds no .tar shards")
            stats = [Path(u.removesuffix(next(x for x in SHARD_SUFFIXES if u.endswith(x))) + "_stats.json")
                     for u in self.urls]
            if all(s.is_file() for s in stats):  # img2dataset writes the successes of each shard
                self.total = _successes(stats)
        else:
            self.urls = expand_urls(str(path))
            if path.is_dir():
                self.total = read_manifest(path)["total"]

    def _samples(self, first: int) -> Iterator[tuple[int, dict]]:
        for i, url in enumerate(self.urls[first:], first):
            try:
                for sample in shard_samples(url, on_duplicate=lambda name: None):
                    yield i, sample
            except ShardError as e:
                yield i, {"__key__": "", "__url__": url, "__shard_error__": f"{e.reason}: {e}"}

    def records(self, start: int = 0, cursor: list | None = None) -> Iterator[Record]:
        """From record ``start``. The cursor of the record before it, ``[shard, samples read in that shard]``,
        starts the reading in that shard: without it, every shard before is read again (nothing is decoded)."""
        shard, skip = cursor if cursor else (0, start)
        within = 0
        for i, sample in self._samples(shard):
            within = within + 1 if i == shard else 1
            shard = i
            if skip:
                skip -= 1
                continue
            name, cursor = Path(sample["__url__"]).name, [i, within]
            if "__shard_error__" in sample:
                yield Record(name, None, [], f"{name}: {sample['__shard_error__']}", "unreadable_shard", cursor)
                continue
            key = sample["__key__"]
            if "__error__" in sample:  # a file above the size limit, never read
                yield Record(key, None, [], f"{name}:{key}", sample["__error__"], cursor)
                continue
            ext = next((e for e in IMAGE_EXTS if e in sample), None)
            if "txt" in sample:
                captions = captions_of(sample["txt"].decode("utf-8", errors="replace"))
            else:
                try:
                    meta = json.loads(sample.get("json", b"{}"))
                except json.JSONDecodeError:
                    meta = {}
                captions = [c for col in self.options.caption_cols for c in captions_of(meta.get(col))]
            yield Record(key, sample[ext] if ext else None, captions, f"{name}:{key}",
                         None if ext else "missing_image", cursor)
