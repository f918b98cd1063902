"""FER2013 in its two layouts, with one label order: the Kaggle folders CLIP_benchmark reads, and the CSV
torchvision's ``FER2013`` reads.

- Folders (Kaggle ``msambare/fer2013``, which CLIP_benchmark's builder unzips and reads with ``ImageFolder``):
  ``{train,test}/{angry,disgust,fear,happy,neutral,sad,surprise}/*.jpg``, 48 × 48 grey. ImageFolder's label is
  the index of the sorted folder name, so neutral is 4.
- CSV (the Kaggle challenge's ``fer2013.csv``: ``emotion,pixels,Usage``; ``icml_face_data.csv`` holds the same
  rows as ``emotion, Usage, pixels``; ``train.csv`` is ``emotion,pixels``): one row per image, ``pixels`` 2,304
  space-separated values 0–255, row-major 48 × 48. ``Usage`` is Training (train) or PublicTest / PrivateTest
  (test, as torchvision). The challenge's codes are 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise,
  6 Neutral; they are remapped onto the folder order so both layouts label an image alike.

The CSV is indexed once (byte offset and label of each row of the split) and each image parsed when asked for.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mmcontrast.errors import UserError

from ..sets import ClassificationSet, FileImages, RecordImages, check_classification
from .registry import Layout

FOLDERS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]   # sorted: ImageFolder's order
CSV_CODES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # the challenge's 0..6
CODE_TO_LABEL = [FOLDERS.index(name) for name in CSV_CODES]
USAGE = {"train": ("Training",), "test": ("PublicTest", "PrivateTest")}
PIXELS = 48 * 48
MAX_ROW_BYTES = PIXELS * 4 + 256  # 2,304 values of at most 3 digits and a separator, plus label and usage
# torchvision.datasets.folder.IMG_EXTENSIONS, which ImageFolder admits
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def read_fer_folders(base: Path, split: str) -> ClassificationSet:
    """ImageFolder over ``base/split``: classes in sorted folder order, files sorted within each class."""
    top = base / split
    if not top.is_dir():
        raise UserError(f"FER2013 folder not found: {top}")
    found = sorted(e.name for e in os.scandir(top) if e.is_dir())
    if found != FOLDERS:
        raise UserError(f"{top}: class folders {found}; FER2013's are {FOLDERS}")
    paths, labels = [], []
    for label, name in enumerate(FOLDERS):
        for folder, _, files in sorted(os.walk(top / name, followlinks=True)):
            for fname in sorted(files):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    paths.append(Path(folder) / fname)
                    labels.append(label)
        if not labels or labels[-1] != label:  # ImageFolder refuses an empty class too
            raise UserError(f"{top / name}: no image files ({', '.join(IMG_EXTENSIONS)}); every class needs one")
    return check_classification(ClassificationSet("fer2013", str(top), FileImages(paths), labels, list(FOLDERS), [],
                                                  ids=[p.stem for p in paths]))


def _fields(line: bytes, path: Path, row: int) -> list[str]:
    try:
        return next(csv.reader([line.decode("ascii")]))
    except (UnicodeDecodeError, csv.Error, StopIteration) as e:
        raise UserError(f"{path}: line {row} is not a CSV row of ASCII text ({e})") from None


def _index(path: Path, split: str) -> tuple[list[int], list[int], list[int], int]:
    """The byte offset, line number and label of every row of ``split`` in the CSV, and the pixels' column."""
    offsets, rows, labels = [], [], []
    with open(path, "rb") as f:
        header = f.readline(MAX_ROW_BYTES)
        columns = [c.strip() for c in _fields(header, path, 1)]
        if "pixels" not in columns or "emotion" not in columns:
            raise UserError(f"{path}: header {columns}; FER2013's CSV has the columns emotion and pixels "
                            "(test.csv has no labels: use fer2013.csv or icml_face_data.csv)")
        emotion, pixels = columns.index("emotion"), columns.index("pixels")
        usage = columns.index("Usage") if "Usage" in columns else None
        if usage is None and split != "train":  # train.csv: every row is a training image
            raise UserError(f"{path} has no Usage column, so it holds no {split} split")
        pos, row = len(header), 1
        while line := f.readline(MAX_ROW_BYTES):
            row += 1
            if len(line) == MAX_ROW_BYTES and not line.endswith(b"\n"):
                raise UserError(f"{path}: line {row} is longer than {MAX_ROW_BYTES:,} bytes; a row holds one image")
            fields = _fields(line, path, row) if line.strip() else None
            if fields is not None:
                if len(fields) != len(columns):
                    raise UserError(f"{path}: line {row} has {len(fields)} fields, the header {len(columns)}")
                if usage is None or fields[usage] in USAGE[split]:
                    if len(fields[pixels].split()) != PIXELS:
                        raise UserError(f"{path}: line {row} has {len(fields[pixels].split()):,} pixel values, "
                                        f"not {PIXELS:,} (48×48)")
                    if fields[emotion].strip() not in {str(c) for c in range(7)}:
                        raise UserError(f"{path}: line {row} has emotion {fields[emotion][:20]!r}, not a code 0–6")
                    offsets.append(pos)
                    rows.append(row)
                    labels.append(CODE_TO_LABEL[int(fields[emotion])])
            pos += len(line)
    return offsets, rows, labels, pixels


def read_fer_csv(path: Path, split: str) -> ClassificationSet:
    if not path.is_file():
        raise UserError(f"FER2013 CSV not found: {path}")
    offsets, rows, labels, column = _index(path, split)

    def get(i: int) -> Image.Image:
        with open(path, "rb") as f:
            f.seek(offsets[i])
            line = f.readline(MAX_ROW_BYTES)
        try:
            values = np.array(next(csv.reader([line.decode("ascii")]))[column].split(), dtype=np.int64)
        except (ValueError, UnicodeDecodeError, csv.Error, StopIteration, IndexError):
            values = np.zeros(0, np.int64)
        if values.size != PIXELS:
            raise UserError(f"{path}: line {rows[i]} does not hold {PIXELS:,} whole-number pixel values")
        if values.min() < 0 or values.max() > 255:
            raise UserError(f"{path}: line {rows[i]} has pixel values outside 0–255 (from {values.min()} "
                            f"to {values.max()})")
        return Image.fromarray(values.astype(np.uint8).reshape(48, 48)).convert("RGB")

    images = RecordImages(len(offsets), get, [str(path.resolve()), path.stat().st_size, split])
    return check_classification(ClassificationSet("fer2013", str(path), images, labels, list(FOLDERS), []))


# the Kaggle folders first (CLIP_benchmark's), under a shared root or as the root itself; then the CSVs in
# torchvision's order of precedence
FER_LAYOUTS = [
    Layout("FER2013 Kaggle folders (fer2013/{split}/<emotion>/)", "fer2013/{split}/angry",
           lambda root, split: read_fer_folders(root / "fer2013", split)),
    Layout("FER2013 Kaggle folders ({split}/<emotion>/, CLIP_benchmark's root)", "{split}/angry",
           read_fer_folders),
    Layout("FER2013 challenge CSV (fer2013/fer2013.csv)", "fer2013/fer2013.csv",
           lambda root, split: read_fer_csv(root / "fer2013" / "fer2013.csv", split)),
    Layout("FER2013 ICML CSV (fer2013/icml_face_data.csv)", "fer2013/icml_face_data.csv",
           lambda root, split: read_fer_csv(root / "fer2013" / "icml_face_data.csv", split)),
    Layout("FER2013 Kaggle CSV (fer2013/{split}.csv)", "fer2013/{split}.csv",
           lambda root, split: read_fer_csv(root / "fer2013" / f"{split}.csv", split)),
]
