"""SVHN, STL-10, PCam and FER2013: readers of datasets whose images are records in binary files, served one
record at a time.

- SVHN (torchvision ``SVHN``): ``<root>/{train,test,extra}_32x32.mat``, MATLAB 5 files holding ``X`` uint8
  [32, 32, 3, N] and ``y`` [N, 1] in 1..10, where 10 stands for the digit 0 (ufldl.stanford.edu/housenumbers).
  Read by ``records_mat`` without scipy: ``X`` is memory-mapped (inflated to a temporary file first when the
  file is compressed, as the published ones are).
- STL-10 (torchvision ``STL10``): ``<root>/stl10_binary/{train,test}_{X,y}.bin`` and ``class_names.txt``;
  ``X`` is uint8 records of 3 × 96 × 96 bytes, each channel column-major; ``y`` one byte per image in 1..10.
- PCam (torchvision ``PCAM``): ``<root>/pcam/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``, HDF5
  datasets ``x`` uint8 [N, 96, 96, 3] and ``y`` [N, 1, 1, 1] in {0, 1}; 1 = the centre 32 × 32 region holds
  tumour tissue (github.com/basveeling/pcam). Read with h5py, one patch per call.
- FER2013: ``records_fer``.

Class names are the files' own (STL-10's ``class_names.txt``, FER2013's folders) or, where the files have none,
what the labels mean (SVHN's digits, PCam's README); CLIP_benchmark's names are attached later.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from mmcontrast.errors import UserError

from ..sets import ClassificationSet, RecordImages, check_classification
from .records_fer import FER_LAYOUTS
from .records_mat import read_mat
from .registry import Layout, register

STL_RECORD = 3 * 96 * 96
MAX_NAMES_BYTES = 1 << 16  # class_names.txt holds ten short lines
PCAM_FILES = {"test": "test", "val": "valid", "train": "train"}  # CLIP_benchmark's split → the files' word
PCAM_CLASSES = ["no tumor tissue", "tumor tissue"]


def _size(path: Path, what: str) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e})") from None


def _labels_in(values: np.ndarray, low: int, high: int, path: Path, what: str) -> np.ndarray:
    """``values`` as int64 if every one is a whole number in low..high; else one line naming the first offender."""
    bad = np.flatnonzero((values != np.round(values)) | (values < low) | (values > high))
    if bad.size:
        raise UserError(f"{path}: {what} {bad[0]} is {values[bad[0]]}, not a label {low}–{high} "
                        f"({bad.size:,} of {values.size:,} out of range)")
    return values.astype(np.int64)


def read_svhn(root: Path, split: str) -> ClassificationSet:
    path = root / f"{split}_32x32.mat"
    arrays = read_mat(path, {"X", "y"})
    for name in ("X", "y"):
        if name not in arrays:
            raise UserError(f"{path}: no variable {name!r}; an SVHN file holds X (images) and y (labels)")
    x, y = arrays["X"], arrays["y"]
    if x.mclass != "uint8" or x.data.dtype != np.uint8 or len(x.dims) != 4 or x.dims[:3] != (32, 32, 3):
        raise UserError(f"{path}: X is a {x.mclass} array of dimensions {list(x.dims)}; "
                        "SVHN's is uint8 [32, 32, 3, N]")
    n = x.dims[3]
    if sorted(y.dims) != [1, n]:
        raise UserError(f"{path}: y has dimensions {list(y.dims)}; SVHN's is [{n}, 1], one label per image of X")
    labels = _labels_in(np.asarray(y.data, dtype=np.float64), 1, 10, path, "y")
    labels[labels == 10] = 0  # SVHN writes the digit 0 as label 10
    # column-major [32, 32, 3, N]: image k is 3072 contiguous bytes, ordered [channel, column, row]
    records = x.data.reshape(n, 3, 32, 32)

    def get(i: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(records[i].transpose(2, 1, 0)))

    images = RecordImages(n, get, [str(path.resolve()), _size(path, "SVHN file")])
    return check_classification(ClassificationSet("svhn", str(path), images, labels.tolist(),
                                                  [str(d) for d in range(10)], []))


def read_stl10(root: Path, split: str) -> ClassificationSet:
    base = root / "stl10_binary"
    x_path, y_path, names_path = base / f"{split}_X.bin", base / f"{split}_y.bin", base / "class_names.txt"
    x_bytes = _size(x_path, "STL-10 images")
    if not x_bytes or x_bytes % STL_RECORD:
        raise UserError(f"{x_path}: {x_bytes:,} bytes is not a whole number of 3×96×96 images ({STL_RECORD:,} "
                        "bytes each); the file is truncated or not STL-10's")
    n = x_bytes // STL_RECORD
    if _size(y_path, "STL-10 labels") != n:
        raise UserError(f"{y_path}: {y_path.stat().st_size:,} labels for the {n:,} images of {x_path.name}")
    labels = _labels_in(np.fromfile(y_path, np.uint8), 1, 10, y_path, "label") - 1
    if _size(names_path, "STL-10 class names") > MAX_NAMES_BYTES:
        raise UserError(f"{names_path}: above {MAX_NAMES_BYTES:,} bytes; it should hold ten class names")
    classnames = names_path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = np.memmap(x_path, np.uint8, mode="r", shape=(n, 3, 96, 96))  # [N, channel, column, row]

    def get(i: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(records[i].transpose(2, 1, 0)))

    images = RecordImages(n, get, [str(x_path.resolve()), x_bytes])
    return check_classification(ClassificationSet("stl10", str(x_path), images, labels.tolist(), classnames, []),
                                names_from=str(names_path))


class _H5Patches:
    """``x[i]`` of an HDF5 file, opened once per process (h5py handles do not survive a fork)."""

    def __init__(self, path: Path):
        self.path, self.pid, self.file = path, None, None

    def __call__(self, i: int) -> Image.Image:
        import h5py

        if self.pid != os.getpid():
            self.file, self.pid = h5py.File(self.path, "r"), os.getpid()
        return Image.fromarray(self.file["x"][i]).convert("RGB")


def _h5_dataset(h5py, path: Path, key: str):
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise UserError(f"PCam file not found: {path}") from None
    except OSError as e:
        raise UserError(f"{path} is not a readable HDF5 file ({e})") from None
    if key not in f or not isinstance(f[key], h5py.Dataset):
        raise UserError(f"{path}: no dataset {key!r}; PCam's files hold 'x' (patches) or 'y' (labels)")
    return f, f[key]


def read_pcam(root: Path, split: str) -> ClassificationSet:
    try:
        import h5py
    except ImportError:
        raise UserError("reading PCam's .h5 files needs h5py: pip install h5py") from None
    stem = root / "pcam" / f"camelyonpatch_level_2_split_{PCAM_FILES[split]}"
    x_path, y_path = Path(f"{stem}_x.h5"), Path(f"{stem}_y.h5")
    x_file, x = _h5_dataset(h5py, x_path, "x")
    with x_file:
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (96, 96, 3):
            raise UserError(f"{x_path}: x is {x.dtype} {list(x.shape)}; PCam's is uint8 [N, 96, 96, 3]")
        n = x.shape[0]
    y_file, y = _h5_dataset(h5py, y_path, "y")
    with y_file:
        if y.shape != (n, 1, 1, 1) or y.dtype.kind not in "iub":
            raise UserError(f"{y_path}: y is {y.dtype} {list(y.shape)}; PCam's is integer [{n}, 1, 1, 1], "
                            f"one label per patch of {x_path.name}")
        labels = _labels_in(y[:, 0, 0, 0].astype(np.int64), 0, 1, y_path, "label")
    images = RecordImages(n, _H5Patches(x_path), [str(x_path.resolve()), _size(x_path, "PCam patches")])
    return check_classification(ClassificationSet("pcam", str(x_path), images, labels.tolist(), PCAM_CLASSES, []))


register("svhn", Layout("SVHN cropped digits (torchvision's {split}_32x32.mat)", "{split}_32x32.mat", read_svhn),
         splits=("test", "train", "extra"))
register("stl10", Layout("STL-10 binary (stl10_binary/)", "stl10_binary/{split}_X.bin", read_stl10),
         splits=("test", "train"))
register("pcam", Layout("PatchCamelyon HDF5 (pcam/camelyonpatch_level_2_split_*.h5)", "pcam", read_pcam),
         splits=("test", "val", "train"))
for layout in FER_LAYOUTS:
    register("fer2013", layout, splits=("test", "train"))
