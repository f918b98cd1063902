"""The dataset registry: name → the layouts it may be stored in, tried in order, and its main metric.

A ``Layout`` is one way a dataset sits on disk (torchvision's folder, CLIP_benchmark's download, the
official archive unpacked, ...). ``marker`` is a path relative to ``--root`` (``{split}`` is formatted in)
whose presence says this layout is there; ``read(root, split)`` returns a ``ClassificationSet`` whose
``classnames`` are the reader's own (the files' or torchvision's) and whose ``templates`` are empty: the
dataset's CLIP_benchmark names and templates are attached afterwards (``names.attach``), so that every reader
of one dataset gives the same prompts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mmcontrast.errors import UserError

from ..sets import ClassificationSet

# the modules that register readers; imported on first lookup, so ``--help`` stays fast
READER_MODULES = ("imagenet", "cifar", "idx", "records", "folders")


@dataclass(frozen=True)
class Layout:
    description: str                                     # "CIFAR-10 python batches (cifar-10-batches-py/)"
    marker: str                                          # relative to root; "{split}" formatted
    read: Callable[[Path, str], ClassificationSet]


@dataclass
class DatasetSpec:
    name: str                                            # CLIP_benchmark's dataset name: cifar10, imagenet1k, ...
    metric: str = "acc1"                                 # the main metric in open_clip's results table
    layouts: list[Layout] = field(default_factory=list)
    splits: tuple[str, ...] = ("test",)                  # the splits its readers know; the first is the default


DATASETS: dict[str, DatasetSpec] = {}


def register(name: str, layout: Layout, metric: str = "acc1", splits: tuple[str, ...] = ("test",)) -> None:
    """Add ``layout`` to dataset ``name`` (created on first use with ``metric`` and ``splits``)."""
    spec = DATASETS.setdefault(name, DatasetSpec(name, metric, [], splits))
    spec.layouts.append(layout)


def _load_readers() -> None:
    for module in READER_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def known() -> dict[str, DatasetSpec]:
    _load_readers()
    return DATASETS


def find_layout(name: str, root: str | Path, split: str) -> Layout | None:
    """The first layout of ``name`` whose marker exists under ``root``, or None."""
    root = Path(root)
    for layout in known()[name].layouts:
        if (root / layout.marker.format(split=split)).exists():
            return layout
    return None


def open_classification(name: str, root: str | Path, split: str | None = None, log=print) -> ClassificationSet:
    """The set ``name`` under ``root``, with CLIP_benchmark's class names and templates for it."""
    from .names import attach

    specs = known()
    if name not in specs:
        raise UserError(f"unknown classification dataset {name!r}; known: {', '.join(sorted(specs))}")
    spec = specs[name]
    split = split or spec.splits[0]
    if split not in spec.splits:
        raise UserError(f"{name}: no split {split!r}; it has {', '.join(spec.splits)}")
    root = Path(root)
    layout = find_layout(name, root, split)
    if layout is None:
        looked = "; ".join(f"{root / lay.marker.format(split=split)} ({lay.description})" for lay in spec.layouts)
        raise UserError(f"no {name} files under {root}; looked for: {looked}")
    log(f"{name}: reading {root / layout.marker.format(split=split)} ({layout.description})")
    ds = layout.read(root, split)
    ds.name = name
    return attach(ds, name)
