"""Benchmark sets as every reader returns them: a retrieval set or a classification set.

Both hold their images behind one interface — ``image(i)`` for random access (thumbnails) and
``iter_images(indices)`` for a streaming pass (encoding) — so evaluators never branch on the file
format the user had.
"""

from __future__ import annotations

from collections import Counter
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


class RecordImages:
    """Images decoded one at a time from records of a binary file (CIFAR, IDX, STL-10, SVHN, ...).

    ``get(i)`` returns image ``i`` as RGB; it must read only that record (a memory map or a seek), so a
    set is never held in memory whole. ``identity`` is what the embedding cache keys on (the files and sizes)."""

    def __init__(self, n: int, get, identity: list):
        self.n, self.get, self.identity = n, get, identity

    def __len__(self) -> int:
        return self.n

    def image(self, i: int) -> Image.Image:
        return self.get(i)

    def iter_images(self, indices: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
        for i in indices:
            yield i, self.get(i)

    def fingerprint(self) -> list:
        return [self.n, *self.identity]


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
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:  # caps[:-1] would drop each image's last one
            raise UserError(f"--captions-per-image must be a positive number of captions to keep, got {k!r}")
        return replace(self, captions=[caps[:k] for caps in self.captions])


@dataclass
class ClassificationSet:
    """Images with one label each (or, when ``multilabel``, a list of the classes present), plus the class
    names and prompt templates."""
    name: str
    source: str
    images: FileImages | WdsImages | RecordImages
    labels: list[int] | list[list[int]]
    classnames: list[str]
    templates: list[str] | dict[str, list[str]]
    ids: list[str] = field(default_factory=list)
    multilabel: bool = False

    def __len__(self) -> int:
        return len(self.labels)


def check_retrieval(ds: RetrievalSet) -> RetrievalSet:
    """``ds`` if every image has a caption and appears once; else one line naming the first offender and how many.

    An image without captions, or a file listed twice, would count as misses: a lower recall, not an error."""
    if not len(ds):
        raise UserError(f"{ds.source}: no images; an evaluation needs at least one")
    bare = [i for i, caps in enumerate(ds.captions) if not caps]
    if bare:
        raise UserError(f"{ds.source}: image {_name(ds, bare[0])} has no caption ({len(bare):,} of {len(ds):,} "
                        "images have none); add captions or remove those images")
    if isinstance(ds.images, FileImages):  # shard samples are told apart by position; files by path
        first: dict[str, int] = {}
        repeats = Counter()
        for i, p in enumerate(ds.images.paths):
            j = first.setdefault(str(Path(p).resolve()), i)
            if j != i:
                repeats[j] += 1
        if repeats:
            j = min(repeats)
            raise UserError(f"{ds.source}: image {_name(ds, j)} ({Path(ds.images.paths[j]).name[:80]!r}) occurs "
                            f"{repeats[j] + 1} times ({len(repeats):,} images repeated in all); each image must "
                            "appear once, with all its captions")
    return ds


def check_classification(ds: ClassificationSet, names_from: str | None = None) -> ClassificationSet:
    """``ds`` if it has images and class names and every label is a class index; else one line naming the first
    bad label and how many there are."""
    names_from = names_from or ds.source
    if not len(ds):
        raise UserError(f"{ds.source}: no images; an evaluation needs at least one")
    if not ds.classnames:
        raise UserError(f"{names_from}: no class names")
    n = len(ds.classnames)

    def is_class(y) -> bool:
        return not isinstance(y, bool) and isinstance(y, int) and 0 <= y < n

    if ds.multilabel:  # each label a non-empty list of distinct class indices
        bad = [i for i, ys in enumerate(ds.labels)
               if not isinstance(ys, list) or not ys or len(set(ys)) != len(ys) or not all(map(is_class, ys))]
    else:
        bad = [i for i, y in enumerate(ds.labels) if not is_class(y)]
    if bad:
        raise UserError(f"{ds.source}: image {_name(ds, bad[0])} has label {str(ds.labels[bad[0]])[:20]}, not a class "
                        f"index 0–{n - 1} of the {n:,} class names in {names_from} ({len(bad):,} of {len(ds):,} "
                        "labels out of range); are the class names those of this set?")
    return ds


def _name(ds: RetrievalSet | ClassificationSet, i: int) -> str:
    return repr(str(ds.ids[i])[:80]) if i < len(ds.ids) else f"#{i}"
