"""Classification sets stored as folders of class folders, in torchvision's (and CLIP_benchmark's) layouts.

``--root`` is the folder holding the dataset folder, as for torchvision's ``root=``:

- ``eurosat``: ``eurosat/2750/<Class>/*.jpg`` (torchvision ``EuroSAT``). No split: all 27,000 images, as
  CLIP_benchmark's ``eurosat`` reads them (it warns that the split is ignored).
- ``country211``: ``country211/{train,valid,test}/<ISO code>/*.jpg`` (torchvision ``Country211``).
- ``renderedsst2``: ``rendered-sst2/{train,valid,test}/{negative,positive}/*.png`` (``RenderedSST2``; split
  ``val`` is the ``valid`` folder).
- ``gtsrb``: ``gtsrb/GTSRB/Final_Test/Images/*.ppm`` with ``gtsrb/GT-final_test.csv`` (``;``-separated,
  ``Filename`` and ``ClassId``) for ``test``; ``gtsrb/GTSRB/Training/<00000..00042>/*.ppm`` for ``train``.
- ``sun397``: ``SUN397/ClassName.txt`` (``/a/abbey``) and ``SUN397/<letter>/<class...>/sun_*.jpg``. No split:
  every image, as CLIP_benchmark. torchvision lists them in ``rglob`` order, which depends on the file system;
  here they are sorted by path, so two machines encode them in one order.
- ``caltech101``: ``caltech101/101_ObjectCategories/<category>/image_%04d.jpg``. CLIP_benchmark's own copy of
  torchvision's class (``clip_benchmark/datasets/caltech101.py``) keeps ``BACKGROUND_Google``: 102 sorted
  categories, ``n`` = the number of ``*.jpg`` in a folder, images ``image_0001 .. image_n``. No split.
- ``resisc45``: torchgeo's layout, ``resisc45/NWPU-RESISC45/<class>/<class>_%03d.jpg`` with the split lists
  ``resisc45/resisc45-{train,val,test}.txt`` of Neumann et al., "In-domain representation learning for remote
  sensing" (2019), which torchgeo downloads (test: 6,300 names). CLIP_benchmark has only ``vtab/resisc45``,
  whose 6,300-image test split is cut from the TFDS build and cannot be recovered from the folder.

Class names are the ones the files give (folder names, ``ClassName.txt``), or GTSRB's folder numbers; the
registry attaches CLIP_benchmark's names and templates afterwards. Importing this module also registers the
list-file datasets (``folders_lists``) and PASCAL VOC 2007 (``voc``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mmcontrast.errors import UserError

from .folders_files import (classification_set, image_folder, inside, read_lines, read_text, require_dir,
                            require_files)
from .registry import Layout, register
from ..sets import ClassificationSet

GTSRB_CLASSES = 43


def read_eurosat(root: Path, split: str) -> ClassificationSet:
    folder = root / "eurosat" / "2750"
    classes, paths, labels = image_folder(folder)
    return classification_set(folder, paths, labels, classes, folder)


def read_country211(root: Path, split: str) -> ClassificationSet:
    folder = root / "country211" / split
    classes, paths, labels = image_folder(folder)
    return classification_set(folder, paths, labels, classes, folder)


def read_renderedsst2(root: Path, split: str) -> ClassificationSet:
    folder = root / "rendered-sst2" / {"val": "valid"}.get(split, split)
    classes, paths, labels = image_folder(folder, (".png",))
    if classes != ["negative", "positive"]:
        raise UserError(f"{folder} has class folders {classes[:4]}; expected negative and positive")
    return classification_set(folder, paths, labels, classes, folder)


def read_gtsrb(root: Path, split: str) -> ClassificationSet:
    base = root / "gtsrb"
    names = [f"{c:05d}" for c in range(GTSRB_CLASSES)]  # the Training folder names: the archive has no others
    if split == "train":
        folder = base / "GTSRB" / "Training"
        classes, paths, labels = image_folder(folder, (".ppm",))
        if not set(classes) <= set(names):
            raise UserError(f"{folder} has class folders {classes[:4]}...; expected 00000 to 00042")
        return classification_set(folder, paths, [names.index(classes[y]) for y in labels], names, folder)
    csv_path = base / "GT-final_test.csv"
    images = require_dir(base / "GTSRB" / "Final_Test" / "Images", "GTSRB's test images")
    rows = csv.DictReader(io.StringIO(read_text(csv_path)), delimiter=";", skipinitialspace=True)
    if not rows.fieldnames or not {"Filename", "ClassId"} <= set(rows.fieldnames):
        raise UserError(f"{csv_path}: the header {';'.join(rows.fieldnames or [])[:80]!r} lacks Filename and ClassId")
    paths, labels = [], []
    for n, row in enumerate(rows, start=2):
        where = f"{csv_path} line {n}"
        paths.append(inside(images, row["Filename"] or "", where))
        try:
            labels.append(int(row["ClassId"]))
        except (TypeError, ValueError):
            raise UserError(f"{where}: ClassId {str(row['ClassId'])[:20]!r} is not a class number") from None
    require_files(paths, str(csv_path))
    return classification_set(csv_path, paths, labels, names, images)


def read_sun397(root: Path, split: str) -> ClassificationSet:
    base = root / "SUN397"
    names_file = base / "ClassName.txt"
    classes = [line[3:] for line in read_lines(names_file)]  # "/a/abbey" -> "abbey", as torchvision
    index = {name: i for i, name in enumerate(classes)}
    # sorted by path: rglob's order is the file system's, so torchvision's order differs between machines
    paths = sorted(base.rglob("sun_*.jpg"), key=lambda p: p.relative_to(base).as_posix())
    labels = []
    for p in paths:
        name = "/".join(p.relative_to(base).parts[1:-1])
        if name not in index:
            raise UserError(f"{p} is in folder {name!r}, which is not a class of {names_file}")
        labels.append(index[name])
    return classification_set(names_file, paths, labels, classes, base)


def read_caltech101(root: Path, split: str) -> ClassificationSet:
    folder = require_dir(root / "caltech101" / "101_ObjectCategories", "Caltech-101's category folders")
    categories = sorted(p.name for p in folder.iterdir() if p.is_dir())
    paths, labels = [], []
    for label, name in enumerate(categories):
        present = {p.name for p in (folder / name).glob("*.jpg")}
        # CLIP_benchmark opens image_0001 .. image_n for the n *.jpg it counted: other names would be misread
        expected = [f"image_{i:04d}.jpg" for i in range(1, len(present) + 1)]
        if set(expected) != present:
            odd = sorted(present - set(expected))[0]
            raise UserError(f"{folder / name} holds {odd!r}; expected image_0001.jpg to image_{len(present):04d}.jpg")
        paths += [folder / name / f for f in expected]
        labels += [label] * len(expected)
    return classification_set(folder, paths, labels, categories, folder)


def read_resisc45(root: Path, split: str) -> ClassificationSet:
    base = root / "resisc45"
    folder = require_dir(base / "NWPU-RESISC45", "RESISC45's class folders")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    index = {name: i for i, name in enumerate(classes)}
    list_file = base / f"resisc45-{split}.txt"
    pairs = []
    for n, name in enumerate(read_lines(list_file), start=1):
        label = index.get(name.rsplit("_", 1)[0])
        if label is None:
            raise UserError(f"{list_file} line {n}: {name[:80]!r} is not <class>_<number>.jpg for a class folder "
                            f"of {folder}")
        pairs.append((label, name))
    pairs.sort()  # torchgeo reads the list through ImageFolder: sorted by class, then by file name
    paths = [inside(folder / classes[label], name, str(list_file)) for label, name in pairs]
    require_files(paths, str(list_file))
    return classification_set(list_file, paths, [label for label, _ in pairs], classes, folder)


register("eurosat", Layout("torchvision EuroSAT, all images (eurosat/2750/)", "eurosat/2750", read_eurosat))
register("country211", Layout("torchvision Country211 (country211/{split}/)", "country211/{split}",
                              read_country211), splits=("test", "train", "valid"))
register("renderedsst2", Layout("torchvision RenderedSST2 (rendered-sst2/)", "rendered-sst2", read_renderedsst2),
         splits=("test", "train", "val"))
register("gtsrb", Layout("torchvision GTSRB (gtsrb/GTSRB/)", "gtsrb/GTSRB", read_gtsrb), splits=("test", "train"))
register("sun397", Layout("torchvision SUN397, all images (SUN397/)", "SUN397/ClassName.txt", read_sun397))
register("caltech101", Layout("CLIP_benchmark Caltech-101 with BACKGROUND_Google, all images "
                              "(caltech101/101_ObjectCategories/)", "caltech101/101_ObjectCategories",
                              read_caltech101), metric="mean_per_class_recall")
register("resisc45", Layout("torchgeo RESISC45 (resisc45/NWPU-RESISC45/ + resisc45-{split}.txt)",
                            "resisc45/NWPU-RESISC45", read_resisc45), splits=("test", "train", "val"))

from . import folders_lists, voc  # noqa: E402,F401  (they register themselves; the registry imports only this)
