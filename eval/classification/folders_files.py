"""Reading the files of torchvision's dataset folders: bounded text, JSON and MATLAB files, image-folder walks.

Shared by the readers in ``folders.py``, ``folders_lists.py`` and ``voc.py``. Every annotation file is read with
a size bound and every path it names is kept inside the dataset folder; each failure is one line naming the
file and what was expected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Sequence

from mmcontrast.errors import UserError

from ..sets import ClassificationSet, FileImages, check_classification

# torchvision.datasets.folder.IMG_EXTENSIONS: what ImageFolder-based datasets (EuroSAT, Country211) list
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MAX_LIST_BYTES = 64 * 2**20   # the largest list file (Food-101 meta/train.json) is 3.6 MB
MAX_MAT_BYTES = 16 * 2**20    # the largest .mat (Stanford Cars cars_train_annos.mat) is under 1 MB
MAX_MAT_ELEMENTS = 1_000_000  # per variable; Flowers-102 imagelabels.mat has 8,189


def read_bytes(path: Path, limit: int = MAX_LIST_BYTES, needed_by: str | None = None) -> bytes:
    """The file whole, at most ``limit`` bytes; one line naming it (and ``needed_by``) when it cannot be."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {needed_by} needs it" if needed_by
                        else f"annotation file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not an annotation file") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror or e})") from None
    if len(data) > limit:
        raise UserError(f"{path} is above {limit:,} bytes: not this dataset's annotation file")
    return data


def read_text(path: Path) -> str:
    try:
        return read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); is it the dataset's list file?") from None


def read_lines(path: Path) -> list[str]:
    """The stripped, non-empty lines of a UTF-8 list file."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def read_json(path: Path):
    try:
        return json.loads(read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid UTF-8 JSON ({e})") from None
    except RecursionError:
        raise UserError(f"{path} nests its JSON too deeply to be a list of images") from None


def load_mat(path: Path, names: Sequence[str]) -> dict:
    """The variables ``names`` of a MATLAB v5 file (``scipy.io.loadmat``, squeezed, as torchvision reads them).

    loadmat builds arrays, never objects with code; the file size and each variable's header shape are
    bounded before anything is decompressed into memory."""
    try:
        import scipy.io
    except ImportError:
        raise UserError(f"reading {path} needs scipy (pip install scipy)") from None
    size = len(read_bytes(path, MAX_MAT_BYTES))  # existence and the size bound, one message each
    try:
        shapes = {name: shape for name, shape, _ in scipy.io.whosmat(path)}
    except NotImplementedError:  # MATLAB v7.3 is HDF5; the datasets ship v5
        raise UserError(f"{path} is a MATLAB v7.3 (HDF5) file; expected the v5 .mat of the dataset's archive") from None
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError... for broken files
        raise UserError(f"{path} ({size:,} bytes) is not a MATLAB .mat file ({type(e).__name__}: {e})") from None
    for name in names:
        if name not in shapes:
            raise UserError(f"{path} has no variable {name!r} (it has {', '.join(sorted(shapes)) or 'none'})")
        count = 1
        for n in shapes[name]:
            count *= n
        if count > MAX_MAT_ELEMENTS:
            raise UserError(f"{path}: variable {name!r} has shape {shapes[name]}, above {MAX_MAT_ELEMENTS:,} elements")
    try:
        return scipy.io.loadmat(path, squeeze_me=True, variable_names=list(names))
    except Exception as e:
        raise UserError(f"{path} cannot be read as a MATLAB .mat file ({type(e).__name__}: {e})") from None


def inside(base: Path, rel: str, where: str) -> Path:
    """``base / rel`` for a relative path from a list file; an absolute path or a ``..`` part is refused."""
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if not parts or rel.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise UserError(f"{where}: {rel[:80]!r} is not a path inside {base}")
    return base.joinpath(*parts)


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"folder not found: {path} ({what})")
    return path


def require_files(paths: Sequence[Path], where: str) -> None:
    """Every image a list names exists: one missing would stop an evaluation after minutes of encoding."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{where} names {len(missing):,} image(s) that are not on disk, the first {missing[0]}")


def image_folder(root: Path, extensions: tuple[str, ...] = IMG_EXTENSIONS) -> tuple[list[str], list[Path], list[int]]:
    """``(classes, paths, labels)`` of ``root/<class>/**/<file>`` in torchvision ``make_dataset`` order.

    Classes are the sorted sub-folder names; within one, files come in sorted ``os.walk`` order (by folder, then
    name) and are kept when their lower-cased name ends with one of ``extensions``. Symbolic links below a class
    folder are not followed (torchvision follows them, and a link cycle would never end)."""
    require_dir(root, "the dataset's class folders")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise UserError(f"{root} has no class folders (expected {root}/<class>/<image>)")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = [Path(dirpath, f) for dirpath, _, files in sorted(os.walk(root / name))
                 for f in sorted(files) if f.lower().endswith(extensions)]
        if not found:
            raise UserError(f"class folder {root / name} has no {'/'.join(extensions)} images")
        paths += found
        labels += [label] * len(found)
    return classes, paths, labels


def classification_set(source: Path, paths: Sequence[Path], labels: list, classnames: list[str], base: Path,
                       multilabel: bool = False) -> ClassificationSet:
    """The checked set of images ``paths`` (ids relative to ``base``) with ``labels`` and no templates yet."""
    ids = [p.relative_to(base).as_posix() for p in paths]
    ds = ClassificationSet(source.name, str(source), FileImages(paths), labels, classnames, [], ids, multilabel)
    return check_classification(ds)
