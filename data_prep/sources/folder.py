"""Image folders: every image ``x.jpg`` with its captions beside it in ``x.txt`` (one per line) or ``x.json``
(the caption fields named by ``--caption-col``; img2dataset's folder output has both)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from mmcontrast.errors import UserError

from . import IMAGE_SUFFIXES, Record, SourceOptions, captions_of


class FolderSource:
    format = "folder"

    def __init__(self, path: Path, options: SourceOptions):
        if not path.is_dir():
            raise UserError(f"input folder not found: {path}")
        self.path, self.options = path, options
        self.images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.images:
            raise UserError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.total = len(self.images)

    def captions(self, image: Path) -> list[str] | None:
        txt, meta = image.with_suffix(".txt"), image.with_suffix(".json")
        if txt.is_file():
            return captions_of(txt.read_text(encoding="utf-8", errors="replace"))
        if meta.is_file():
            try:
                data = json.loads(meta.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                return None
            return [c for col in self.options.caption_cols for c in captions_of(data.get(col))]
        return None

    def records(self, start: int = 0) -> Iterator[Record]:
        for image in self.images[start:]:
            rel = str(image.relative_to(self.path))
            captions = self.captions(image)
            yield Record(str(Path(rel).with_suffix("")), str(image), captions or [], rel,
                         "missing_caption" if captions is None else None)
