"""Benchmark sets as every reader returns them: a retrieval set or a classification set.

Both hold their images behind one interface — ``image(i)`` for random access (thumbnails) and
``iter_images(indices)`` for a streaming pass (encoding) — so evaluators never branch on the file
format the user had.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image

from mmcontrast.data.limits import ImageTooLarge, Limits
from mmcontrast.data.limits import open_image as open_checked
from mmcontrast.data.tar import ShardError, shard_samples
from mmcontrast.errors import UserError

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
LIMITS = Limits()  # an evaluation set is read whole or not at all: a file above a limit stops it


def decode_image(data: bytes, where: str) -> Image.Image:
    """An RGB image from encoded bytes; one line naming ``where`` when it is too large or cannot be decoded."""
    try:
        with open_checked(data, LIMITS.max_image_pixels) as im:
            return im.convert("RGB")
    except ImageTooLarge as e:
        raise UserError(f"image too large: {where} ({e})") from None
    except Exception as e:  # PIL raises many types for broken files
        raise UserError(f"image cannot be decoded: {where} ({e})") from None


def open_image(path: str | Path) -> Image.Image:
    try:
        with open(path, "rb") as f:
            data = f.read(LIMITS.max_file_bytes + 1)
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except OSError as e:
        raise UserError(f"image cannot be read: {path} ({e})") from None
    if len(data) > LIMITS.max_file_bytes:
        raise UserError(f"image file above {LIMITS.max_file_bytes:,} bytes: {path}")
    return decode_image(data, str(path))


def wds_samples(shards: Sequence[str]) -> Iterator[dict]:
    """Every sample of CLIP_benchmark-style shards in order; a broken shard or an oversized file stops with one line."""
    for url in shards:
        try:
            for sample in shard_samples(url, lambda name: None, LIMITS):
                if "__error__" in sample:
                    raise UserError(f"{url}: sample {sample['__key__']}: a file above {LIMITS.max_file_bytes:,} bytes")
                yield sample
        except ShardError as e:
            raise UserError(f"{url}: {e.reason.replace('_', ' ')} ({e}); the evaluation needs every sample") from None


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
        for i, sample in enumerate(wds_samples(self.shards)):
            if i in wanted:
                yield i, decode_image(sample[self.exts[i]], f"{sample['__url__']}: image {sample['__key__']}")

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
