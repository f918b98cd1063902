"""Benchmark sets as every reader returns them: a retrieval set or a classification set.

Both hold their images behind one interface — ``image(i)`` for random access (thumbnails) and
``iter_images(indices)`` for a streaming pass (encoding) — so evaluators never branch on the file
format the user had.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image
from webdataset.tariterators import tarfile_samples

from mmcontrast.errors import UserError

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")


def open_image(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except Exception as e:
        raise UserError(f"image cannot be decoded: {path} ({e})") from None


class FileImages:
    """Images as files on disk."""

    def __init__(self, paths: Sequence[str | Path]):
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> Image.Image:
        return open_image(self.paths[i])

    def iter_images(self, indices: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
        for i in indices:
            yield i, self.image(i)

    def fingerprint(self) -> list:
        first, last = Path(self.paths[0]), Path(self.paths[-1])
        return [len(self.paths), str(first.resolve()), str(last.resolve()), first.stat().st_size, last.stat().st_size]


class WdsImages:
    """Images inside webdataset shards, in shard order; read by streaming, never all in memory."""

    def __init__(self, shards: Sequence[str], keys: Sequence[str], exts: Sequence[str]):
        self.shards, self.keys, self.exts = list(shards), list(keys), list(exts)

    def __len__(self) -> int:
        return len(self.keys)

    def iter_images(self, indices: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
        wanted = set(indices)
        for i, sample in enumerate(tarfile_samples({"url": u} for u in self.shards)):
            if i in wanted:
                try:
                    yield i, Image.open(io.BytesIO(sample[self.exts[i]])).convert("RGB")
                except Exception as e:
                    raise UserError(f"{sample['__url__']}: image {sample['__key__']} cannot be decoded ({e})") from None

    def image(self, i: int) -> Image.Image:
        return next(self.iter_images([i]))[1]

    def fingerprint(self) -> list:
        return [len(self.keys)] + [[s, Path(s).stat().st_size] for s in self.shards]


@dataclass
class RetrievalSet:
    """Images with their captions (several per image); every caption is a query with one positive."""
    name: str
    source: str                       # the annotation file or directory that was read
    images: FileImages | WdsImages
    captions: list[list[str]]         # per image
    ids: list[str] = field(default_factory=list)  # per image, for reports

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def texts(self) -> list[str]:
        return [c for caps in self.captions for c in caps]

    @property
    def text_to_image(self) -> list[int]:
        return [i for i, caps in enumerate(self.captions) for _ in caps]

    def first_captions(self, k: int) -> "RetrievalSet":
        """The same set keeping only the first ``k`` captions of each image (the "5 per image" protocol)."""
        return replace(self, captions=[caps[:k] for caps in self.captions])


@dataclass
class ClassificationSet:
    """Images with one label each, plus the class names and prompt templates."""
    name: str
    source: str
    images: FileImages | WdsImages
    labels: list[int]
    classnames: list[str]
    templates: list[str] | dict[str, list[str]]
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)
