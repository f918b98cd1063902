"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009, www.cs.toronto.edu/~kriz/cifar.html), python and binary versions.

- Python version, as torchvision's ``CIFAR10``/``CIFAR100`` read it: ``cifar-10-batches-py/{data_batch_1..5,
  test_batch,batches.meta}`` and ``cifar-100-python/{train,test,meta}``. Each batch is a pickled dict with
  ``data`` uint8 [N, 3072] (each row 1024 red, 1024 green, 1024 blue bytes, each plane a row-major 32 × 32
  image), ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100) and, unused here, ``filenames``,
  ``batch_label``, ``coarse_labels``; the meta file's ``label_names`` / ``fine_label_names`` name the classes.
  Loaded by ``safe_pickle`` (nothing in the file is executed), one batch file at a time: labels are read once,
  and images come from the one batch kept in memory.
- Binary version: ``cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin``, records of 1 label byte and 3072
  pixel bytes, names in ``batches.meta.txt``; ``cifar-100-binary/{train,test}.bin``, records of a coarse and a
  fine label byte and 3072 pixel bytes, names in ``fine_label_names.txt``. Memory-mapped, one record per image.

Class names are the files' own, as torchvision gives them (CIFAR-100's ``aquarium_fish``, underscores kept);
CLIP_benchmark uses torchvision's names for both.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from mmcontrast.errors import UserError

from ..sets import ClassificationSet, RecordImages, check_classification
from .registry import Layout, register
from .safe_pickle import load_restricted

PIXELS = 3 * 32 * 32
MAX_BATCH_BYTES = 256 << 20  # CIFAR-100's train file, the largest, is 161 MB
MAX_META_BYTES = 1 << 20     # the meta files hold two lists of short names


@dataclass(frozen=True)
class Cifar:
    name: str
    classes: int
    py_folder: str
    py_files: dict[str, list[str]]     # split → batch files
    py_meta: str
    py_names_key: str
    py_labels_key: str
    bin_folder: str
    bin_files: dict[str, list[str]]
    bin_names: str
    label_bytes: int                   # label bytes before the pixels of each binary record; the last is the class


CIFAR10 = Cifar("cifar10", 10, "cifar-10-batches-py",
                {"test": ["test_batch"], "train": [f"data_batch_{k}" for k in range(1, 6)]},
                "batches.meta", "label_names", "labels",
                "cifar-10-batches-bin",
                {"test": ["test_batch.bin"], "train": [f"data_batch_{k}.bin" for k in range(1, 6)]},
                "batches.meta.txt", 1)
CIFAR100 = Cifar("cifar100", 100, "cifar-100-python", {"test": ["test"], "train": ["train"]},
                 "meta", "fine_label_names", "fine_labels",
                 "cifar-100-binary", {"test": ["test.bin"], "train": ["train.bin"]},
                 "fine_label_names.txt", 2)


def _python_names(path: Path, spec: Cifar) -> list[str]:
    meta = load_restricted(path, MAX_META_BYTES)
    names = meta.get(spec.py_names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != spec.classes or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: expected a dict whose {spec.py_names_key!r} lists {spec.classes} class names; "
                        f"not {spec.name}'s meta file")
    return names


def _python_batch(path: Path, spec: Cifar) -> tuple[np.ndarray, list[int]]:
    """The batch's images [N, 3072] and labels, checked: a dict, uint8 [N, 3072], N labels in range."""
    entry = load_restricted(path, MAX_BATCH_BYTES)
    what = f"a dict with 'data' (uint8 [N, {PIXELS}]) and {spec.py_labels_key!r} (N labels 0–{spec.classes - 1})"
    if not isinstance(entry, dict) or "data" not in entry or spec.py_labels_key not in entry:
        found = f"a dict with keys {sorted(map(str, entry))[:6]}" if isinstance(entry, dict) else type(entry).__name__
        raise UserError(f"{path}: holds {found}; a {spec.name} batch is {what}")
    data, labels = entry["data"], entry[spec.py_labels_key]
    if type(data) is not np.ndarray or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        shape = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: 'data' is {shape}; a {spec.name} batch is {what}")
    if isinstance(labels, np.ndarray):  # a re-written batch may hold them as an array
        labels = labels.tolist()
    if (not isinstance(labels, list) or len(labels) != len(data)
            or not all(type(y) is int and 0 <= y < spec.classes for y in labels)):
        count = len(labels) if isinstance(labels, list) else type(labels).__name__
        raise UserError(f"{path}: {count} labels for {len(data):,} images, or a label outside 0–{spec.classes - 1}; "
                        f"a {spec.name} batch is {what}")
    return data, labels


def _to_image(record: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(record.reshape(3, 32, 32).transpose(1, 2, 0)))


class _PickledImages:
    """Image ``i`` of a list of pickled batches, keeping one batch in memory (the last one used)."""

    def __init__(self, paths: list[Path], starts: list[int], spec: Cifar, current: int, data: np.ndarray):
        self.paths, self.starts, self.spec = paths, starts, spec
        self.current, self.data = current, data

    def __call__(self, i: int) -> Image.Image:
        b = bisect.bisect_right(self.starts, i) - 1
        if b != self.current:
            self.data, self.current = None, None  # free the old batch before loading the next
            self.data, _ = _python_batch(self.paths[b], self.spec)
            self.current = b
        return _to_image(self.data[i - self.starts[b]])


def read_python(root: Path, split: str, spec: Cifar) -> ClassificationSet:
    base = root / spec.py_folder
    names = _python_names(base / spec.py_meta, spec)
    paths = [base / f for f in spec.py_files[split]]
    labels: list[int] = []
    starts: list[int] = []
    data = None
    for path in paths:  # every batch once for its labels; only the last stays in memory
        data = None
        data, batch_labels = _python_batch(path, spec)
        starts.append(len(labels))
        labels += batch_labels
    images = RecordImages(len(labels), _PickledImages(paths, starts, spec, len(paths) - 1, data),
                          [str(p.resolve()) for p in paths] + [p.stat().st_size for p in paths])
    return check_classification(ClassificationSet(spec.name, str(base), images, labels, names, []),
                                names_from=str(base / spec.py_meta))


def _binary_names(path: Path, spec: Cifar) -> list[str]:
    try:
        size = path.stat().st_size
        if size > MAX_META_BYTES:
            raise UserError(f"{path}: {size:,} bytes; it should hold {spec.classes} class names, one per line")
        names = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except FileNotFoundError:
        raise UserError(f"{spec.name} class names not found: {path}") from None
    names = [n for n in names if n]  # the published files end with blank lines
    if len(names) != spec.classes:
        raise UserError(f"{path}: {len(names)} class names; {spec.name} has {spec.classes}, one per line")
    return names


def read_binary(root: Path, split: str, spec: Cifar) -> ClassificationSet:
    base = root / spec.bin_folder
    names = _binary_names(base / spec.bin_names, spec)
    record = spec.label_bytes + PIXELS
    maps, starts, sizes, labels = [], [], [], []
    for name in spec.bin_files[split]:
        path = base / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise UserError(f"{spec.name} batch not found: {path}") from None
        if not size or size % record:
            raise UserError(f"{path}: {size:,} bytes is not a whole number of {record:,}-byte records "
                            f"({spec.label_bytes} label byte(s) + {PIXELS} pixels); truncated or not {spec.name}'s")
        records = np.memmap(path, np.uint8, mode="r", shape=(size // record, record))
        file_labels = np.asarray(records[:, spec.label_bytes - 1])
        if file_labels.max() >= spec.classes:
            k = int(np.argmax(file_labels >= spec.classes))
            raise UserError(f"{path}: record {k} has label {file_labels[k]}; {spec.name} labels are 0–{spec.classes - 1}")
        starts.append(len(labels))
        labels += file_labels.tolist()
        maps.append(records)
        sizes.append(size)

    def get(i: int) -> Image.Image:
        b = bisect.bisect_right(starts, i) - 1
        return _to_image(maps[b][i - starts[b], spec.label_bytes:])

    paths = [str((base / name).resolve()) for name in spec.bin_files[split]]
    return check_classification(ClassificationSet(spec.name, str(base), RecordImages(len(labels), get, paths + sizes),
                                                  labels, names, []), names_from=str(base / spec.bin_names))


for _spec in (CIFAR10, CIFAR100):
    _title = _spec.name.upper()
    register(_spec.name, Layout(f"torchvision {_title} python batches ({_spec.py_folder}/)", _spec.py_folder,
                                partial(read_python, spec=_spec)), splits=("test", "train"))
    register(_spec.name, Layout(f"{_title} binary version ({_spec.bin_folder}/)", _spec.bin_folder,
                                partial(read_binary, spec=_spec)), splits=("test", "train"))
