"""One datasets folder holding several classification sets side by side, each in its published layout, as a
user's ``--root`` of ``python -m eval suite`` holds them; and the per-dataset roots CLIP_benchmark's CLI takes
for the very same files.

CLIP_benchmark's ``--dataset_root`` is one template for every dataset (``DIR/{dataset}``), but its builder hands
most datasets' root to torchvision, which appends its own folder (``eurosat/``, ``dtd/``, ``MNIST/``, ...),
while it reads FER2013's ``train/``/``test/`` under the root itself. ``clip_benchmark_view`` therefore writes a
folder of links, ``<name>`` → the shared root or the dataset's own folder in it: both tools read the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import folders, idx, records


@dataclass(frozen=True)
class SuiteDataset:
    write: Callable[[Path, int], dict]   # (shared root, scale) → the writer's expected labels per split
    clip_benchmark_root: str = ""        # relative to the shared root: what CLIP_benchmark's builder is given


def _full(name: str) -> Callable[[Path, int], dict]:
    def write(root: Path, per_class: int) -> dict:
        return folders.FULL_WRITERS[name](root, per_class=per_class)
    return write


# datasets CLIP_benchmark 1.6.2 reads from these files with download=False (torchvision checks no checksums for
# them); CIFAR, STL-10 and Flowers-102 are absent because torchvision refuses files whose MD5 is not the archive's
DATASETS: dict[str, SuiteDataset] = {
    "mnist": SuiteDataset(lambda root, k: idx.WRITERS["mnist"](root, {"test": 10 * k, "train": 10})),
    "fer2013": SuiteDataset(lambda root, k: records.write_fer2013(root, 14 * k), "fer2013"),
    **{name: SuiteDataset(_full(name)) for name in folders.FULL_WRITERS},
}
# images per class (×, for MNIST ×10 and FER2013 ×7 test images) that give each set 100–211 test images
BENCHMARK_SCALE = {"mnist": 15, "fer2013": 20, "dtd": 3, "pets": 4, "eurosat": 15, "gtsrb": 3, "caltech101": 1,
                   "country211": 1, "renderedsst2": 75, "voc2007": 5}


def write_suite_root(root: Path, scale: dict[str, int]) -> dict[str, dict]:
    """Each dataset of ``scale`` written under ``root`` at that scale; name → the writer's expected labels."""
    root.mkdir(parents=True, exist_ok=True)
    return {name: DATASETS[name].write(root, k) for name, k in scale.items()}


def clip_benchmark_view(root: Path, view: Path, names) -> str:
    """Links ``view/<name>`` → the folder CLIP_benchmark's builder wants for each dataset of the shared ``root``;
    returns the ``--dataset_root`` template that reaches them."""
    view.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = view / name
        if link.is_symlink():
            link.unlink()
        os.symlink(os.path.abspath(root / DATASETS[name].clip_benchmark_root), link, target_is_directory=True)
    return str(view / "{dataset}")
