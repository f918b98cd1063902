"""Benchmark sets in CLIP_benchmark's webdataset layout (``wds:DIR``).

```
<root>/dataset_type.txt                       "retrieval" | absent = classification
<root>/classnames.txt                         one class per line
<root>/zeroshot_classification_templates.txt  one template per line, with {c}
<root>/<split>/nshards.txt                    number of shards (missing = error, never a silent 1)
<root>/<split>/0.tar ... <n-1>.tar            keys with .jpg|png|webp and .txt (captions) or .cls (label)
```
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image
from webdataset.tariterators import tarfile_samples

from mmcontrast.errors import UserError
from mmcontrast.templates import read_lines

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
WDS_PREFIX = "wds:"


@dataclass
class WdsDataset:
    root: Path
    split: str
    dataset_type: str                   # "classification" | "retrieval"
    shards: list[str]
    classnames: list[str] | None = None
    templates: list[str] | None = None

    @property
    def name(self) -> str:
        return self.root.name


def open_wds(spec: str | Path, split: str = "test") -> WdsDataset:
    """Open ``wds:DIR`` (or ``DIR``) and check its layout; errors name what is missing."""
    root = Path(str(spec)[len(WDS_PREFIX):] if str(spec).startswith(WDS_PREFIX) else spec)
    if not root.is_dir():
        raise UserError(f"dataset not found: {root}")
    nshards_file = root / split / "nshards.txt"
    if not nshards_file.is_file():
        raise UserError(f"{nshards_file} is missing: CLIP_benchmark webdataset layout needs it")
    n = int(nshards_file.read_text().strip())
    shards = [str(root / split / f"{i}.tar") for i in range(n)]
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise UserError(f"shard not found: {missing[0]} (nshards.txt says {n})")
    type_file = root / "dataset_type.txt"
    dataset_type = type_file.read_text().strip() if type_file.is_file() else "classification"
    ds = WdsDataset(root, split, dataset_type, shards)
    if dataset_type == "classification":
        for name in ("classnames.txt", "zeroshot_classification_templates.txt"):
            if not (root / name).is_file():
                raise UserError(f"{root / name} is missing: a classification set needs it")
        ds.classnames = read_lines(root / "classnames.txt")
        ds.templates = read_lines(root / "zeroshot_classification_templates.txt")
    return ds


def iter_samples(ds: WdsDataset) -> Iterator[tuple[str, Image.Image, object]]:
    """(key, RGB image, captions list | int label) in shard order; a bad sample is an error."""
    for sample in tarfile_samples({"url": u} for u in ds.shards):
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        key = sample["__key__"]
        if ext is None:
            raise UserError(f"{sample['__url__']}: sample {key} has no image")
        try:
            image = Image.open(io.BytesIO(sample[ext])).convert("RGB")
        except Exception as e:
            raise UserError(f"{sample['__url__']}: image of sample {key} cannot be decoded ({e})") from None
        if ds.dataset_type == "retrieval":
            if "txt" not in sample:
                raise UserError(f"{sample['__url__']}: sample {key} has no .txt captions")
            target = [c.strip() for c in sample["txt"].decode("utf-8").splitlines() if c.strip()]
        else:
            if "cls" not in sample:
                raise UserError(f"{sample['__url__']}: sample {key} has no .cls label")
            target = int(sample["cls"].decode().strip())
        yield key, image, target
