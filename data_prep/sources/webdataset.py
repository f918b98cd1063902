"""Existing webdataset shards — ours, img2dataset's output (``00000.tar`` + ``00000_stats.json``), any brace
pattern or ``::`` list — to re-shard, filter or resize. Captions from ``key.txt`` (one per line) or, without
it, from the ``--caption-col`` fields of ``key.json``. A shard that breaks midway keeps the samples read before
the break and is counted once as ``unreadable_shard``."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Iterator

from mmcontrast.data.tar import IMAGE_EXTS, shard_samples
from mmcontrast.data.urls import MANIFEST, expand_urls, read_manifest
from mmcontrast.errors import UserError

from . import Record, SourceOptions, captions_of


class WebdatasetSource:
    format = "webdataset"

    def __init__(self, path: Path, options: SourceOptions):
        self.options, self.total = options, None
        if path.is_dir() and not (path / MANIFEST).is_file():
            self.urls = [str(p) for p in sorted(path.glob("*.tar"))]
            if not self.urls:
                raise UserError(f"{path} holds no .tar shards")
            stats = [p.with_name(p.stem + "_stats.json") for p in map(Path, self.urls)]
            if all(s.is_file() for s in stats):  # img2dataset writes the successes of each shard
                self.total = sum(json.loads(s.read_text()).get("successes", 0) for s in stats)
        else:
            self.urls = expand_urls(str(path))
            if path.is_dir():
                self.total = read_manifest(path)["total"]

    def _samples(self, first: int) -> Iterator[tuple[int, dict]]:
        for i, url in enumerate(self.urls[first:], first):
            try:
                for sample in shard_samples(url, on_duplicate=lambda name: None):
                    yield i, sample
            except (tarfile.TarError, EOFError, OSError) as e:
                yield i, {"__key__": "", "__url__": url, "__error__": str(e)}

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
            if "__error__" in sample:
                yield Record(name, None, [], f"{name}: {sample['__error__']}", "unreadable_shard", cursor)
                continue
            key = sample["__key__"]
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
