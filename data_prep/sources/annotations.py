"""COCO captions JSON or a Karpathy split file, with the folder that holds the images (``--image-root``).

Training from them: COCO's ``captions_train2017.json`` gives every image of the file; a Karpathy file gives
the images of ``--split`` (``train`` means Karpathy's ``train`` + ``restval``, the 113,287-image COCO training
set of ALBEF and BLIP). All captions of an image go into one sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mmcontrast.data.annotations import coco_entries, karpathy_entries, read_json
from mmcontrast.errors import UserError

from . import Record, SourceOptions


class _AnnotationSource:
    format = ""

    def __init__(self, path: Path, options: SourceOptions):
        if options.image_root is None:
            raise UserError(f"{path}: give --image-root, the folder that holds the images")
        self.root = Path(options.image_root)
        if not self.root.is_dir():
            raise UserError(f"--image-root {self.root} is not a folder")
        self.path, self.options = path, options
        self.entries = self.parse(read_json(path))
        self.total = len(self.entries)

    def parse(self, data) -> list[dict]:
        raise NotImplementedError

    def records(self, start: int = 0) -> Iterator[Record]:
        for e in self.entries[start:]:
            found = next((self.root / c for c in e["candidates"] if (self.root / c).is_file()), None)
            yield Record(e["id"], str(found) if found else None, e["captions"],
                         e["candidates"][0], None if found else "missing_image")


class CocoSource(_AnnotationSource):
    format = "coco"

    def parse(self, data) -> list[dict]:
        return coco_entries(data, self.path)


class KarpathySource(_AnnotationSource):
    format = "karpathy"

    def parse(self, data) -> list[dict]:
        splits = {"train", "restval"} if self.options.split == "train" else set(self.options.split.split(","))
        return karpathy_entries(data, self.path, splits)
