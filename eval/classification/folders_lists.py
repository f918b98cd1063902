"""Classification sets whose split is a list or MATLAB file beside the images, in torchvision's layouts.

``--root`` is the folder holding the dataset folder, as for torchvision's ``root=``; the split is CLIP_benchmark's
(default ``test``), and images come in the order of the list, as torchvision yields them:

- ``pets``: ``oxford-iiit-pet/images/<id>.jpg`` and ``annotations/{trainval,test}.txt`` (``<id> <class 1..37>
  <species> <breed>``); names are torchvision's, the title-cased breed of each class's ids (``American Bulldog``).
- ``flowers``: ``flowers-102/jpg/image_%05d.jpg``, ``imagelabels.mat`` (``labels``, 1..102 per image) and
  ``setid.mat`` (``trnid``, ``valid``, ``tstid``: 1-based image numbers). Labels are returned 0-based (as
  torchvision ≥ 0.13 and CLIP_benchmark). The files carry no names: the classes are named by their number.
- ``dtd``: ``dtd/dtd/images/<class>/<file>`` and ``dtd/dtd/labels/{train,val,test}1.txt`` (``<class>/<file>``):
  partition 1, as CLIP_benchmark; classes are the sorted classes of the list.
- ``cars``: ``stanford_cars/{cars_train,cars_test}/``, ``stanford_cars/devkit/cars_meta.mat`` (``class_names``),
  ``devkit/cars_train_annos.mat`` and ``stanford_cars/cars_test_annos_withlabels.mat`` (``annotations``: a struct
  array with ``fname`` and a 1-based ``class``).
- ``fgvc_aircraft``: ``fgvc-aircraft-2013b/data/images/<id>.jpg``, ``data/variants.txt`` (the 100 classes) and
  ``data/images_variant_{train,val,trainval,test}.txt`` (``<id> <variant>``, split at the first space).
- ``food101``: ``food-101/images/<class>/<id>.jpg`` and ``food-101/meta/{train,test}.json``
  (``{class: ["<class>/<id>", ...]}``); classes are the sorted keys.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmcontrast.errors import UserError

from .folders_files import (classification_set, inside, load_mat, read_json, read_lines, require_dir,
                            require_files)
from .registry import Layout, register
from ..sets import ClassificationSet

FLOWERS_CLASSES = 102
FLOWERS_SETS = {"train": "trnid", "val": "valid", "test": "tstid"}


def _int(value, where: str, what: str) -> int:
    """An integer from a list or .mat file (a MATLAB double ``3.0`` counts, ``3.5`` does not)."""
    try:
        number = float(value) if isinstance(value, (np.floating, float)) else int(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {what} {str(value)[:20]!r} is not an integer") from None
    if number != int(number):
        raise UserError(f"{where}: {what} {number} is not an integer")
    return int(number)


def _numbers(mat: dict, name: str, path: Path) -> list[int]:
    array = np.atleast_1d(mat[name])
    if array.ndim != 1 or array.dtype.kind not in "iuf":
        raise UserError(f"{path}: {name!r} is a {array.dtype} array of shape {array.shape}; expected a vector of "
                        "numbers")
    return [_int(v, f"{path} {name}[{i}]", "value") for i, v in enumerate(array.tolist())]


def read_pets(root: Path, split: str) -> ClassificationSet:
    base = root / "oxford-iiit-pet"
    images = require_dir(base / "images", "Oxford-IIIT Pet's images")
    list_file = base / "annotations" / f"{split}.txt"
    ids, labels, breeds = [], [], {}
    for n, line in enumerate(read_lines(list_file), start=1):
        where = f"{list_file} line {n}"
        fields = line.split()
        if len(fields) != 4:
            raise UserError(f"{where}: {line[:80]!r} is not '<image id> <class> <species> <breed>'")
        label = _int(fields[1], where, "class") - 1
        breed = fields[0].rsplit("_", 1)[0]
        if breeds.setdefault(label, breed) != breed:
            raise UserError(f"{where}: class {label + 1} is given to {breed!r} and to {breeds[label]!r}")
        ids.append(fields[0])
        labels.append(label)
    # torchvision: each class is named by its ids' breed, title-cased word by word, in class-number order
    classes = [" ".join(part.title() for part in breeds[label].split("_")) for label in sorted(breeds)]
    paths = [inside(images, f"{i}.jpg", str(list_file)) for i in ids]
    require_files(paths, str(list_file))
    return classification_set(list_file, paths, labels, classes, images)


def read_flowers(root: Path, split: str) -> ClassificationSet:
    base = root / "flowers-102"
    images = require_dir(base / "jpg", "Flowers-102's images")
    labels_path, setid_path = base / "imagelabels.mat", base / "setid.mat"
    per_image = _numbers(load_mat(labels_path, ["labels"]), "labels", labels_path)
    bad = [i for i, y in enumerate(per_image) if not 1 <= y <= FLOWERS_CLASSES]
    if bad:
        raise UserError(f"{labels_path}: image {bad[0] + 1} has label {per_image[bad[0]]}, outside "
                        f"1..{FLOWERS_CLASSES} ({len(bad):,} such labels)")
    key = FLOWERS_SETS[split]
    numbers = _numbers(load_mat(setid_path, [key]), key, setid_path)
    bad = [n for n in numbers if not 1 <= n <= len(per_image)]
    if bad:
        raise UserError(f"{setid_path}: {key} names image {bad[0]}, but {labels_path} labels images "
                        f"1..{len(per_image)}")
    paths = [images / f"image_{n:05d}.jpg" for n in numbers]
    require_files(paths, str(setid_path))
    return classification_set(setid_path, paths, [per_image[n - 1] - 1 for n in numbers],
                              [str(c) for c in range(1, FLOWERS_CLASSES + 1)], images)


def read_dtd(root: Path, split: str) -> ClassificationSet:
    base = root / "dtd" / "dtd"
    images = require_dir(base / "images", "DTD's class folders")
    list_file = base / "labels" / f"{split}1.txt"
    pairs = []
    for n, line in enumerate(read_lines(list_file), start=1):
        parts = line.split("/")
        if len(parts) != 2 or not all(parts):
            raise UserError(f"{list_file} line {n}: {line[:80]!r} is not '<class>/<file>'")
        pairs.append(parts)
    classes = sorted({cls for cls, _ in pairs})
    index = {cls: i for i, cls in enumerate(classes)}
    paths = [inside(images, f"{cls}/{name}", str(list_file)) for cls, name in pairs]
    require_files(paths, str(list_file))
    return classification_set(list_file, paths, [index[cls] for cls, _ in pairs], classes, images)


def read_cars(root: Path, split: str) -> ClassificationSet:
    base = root / "stanford_cars"
    devkit = base / "devkit"
    meta_path = devkit / "cars_meta.mat"
    names = np.atleast_1d(load_mat(meta_path, ["class_names"])["class_names"]).tolist()
    if not names or not all(isinstance(c, str) for c in names):
        raise UserError(f"{meta_path}: 'class_names' is not a list of strings")
    if split == "train":
        ann_path, images = devkit / "cars_train_annos.mat", base / "cars_train"
    else:
        ann_path, images = base / "cars_test_annos_withlabels.mat", base / "cars_test"
    require_dir(images, f"Stanford Cars' {split} images")
    annotations = np.atleast_1d(load_mat(ann_path, ["annotations"])["annotations"])
    if not annotations.dtype.names or not {"fname", "class"} <= set(annotations.dtype.names):
        raise UserError(f"{ann_path}: 'annotations' is not a struct array with fields fname and class")
    paths, labels = [], []
    for i, record in enumerate(annotations):
        where = f"{ann_path} annotation {i + 1}"
        fname, label = record["fname"], _int(record["class"], where, "class")
        if not isinstance(fname, str):
            raise UserError(f"{where}: fname is {type(fname).__name__}, not a file name")
        if not 1 <= label <= len(names):
            raise UserError(f"{where}: class {label} is outside 1..{len(names)} of {meta_path}")
        paths.append(inside(images, fname, where))
        labels.append(label - 1)
    require_files(paths, str(ann_path))
    return classification_set(ann_path, paths, labels, names, images)


def read_fgvc_aircraft(root: Path, split: str) -> ClassificationSet:
    data = root / "fgvc-aircraft-2013b" / "data"
    images = require_dir(data / "images", "FGVC-Aircraft's images")
    classes_file = data / "variants.txt"
    classes = read_lines(classes_file)
    index = {name: i for i, name in enumerate(classes)}
    list_file = data / f"images_variant_{split}.txt"
    paths, labels = [], []
    for n, line in enumerate(read_lines(list_file), start=1):
        image_id, _, variant = line.partition(" ")
        if variant not in index:
            raise UserError(f"{list_file} line {n}: variant {variant[:60]!r} is not a line of {classes_file}")
        paths.append(inside(images, f"{image_id}.jpg", f"{list_file} line {n}"))
        labels.append(index[variant])
    require_files(paths, str(list_file))
    return classification_set(list_file, paths, labels, classes, images)


def read_food101(root: Path, split: str) -> ClassificationSet:
    base = root / "food-101"
    images = require_dir(base / "images", "Food-101's class folders")
    meta = base / "meta" / f"{split}.json"
    listing = read_json(meta)
    if not isinstance(listing, dict) or not all(isinstance(v, list) and all(isinstance(p, str) for p in v)
                                                for v in listing.values()):
        raise UserError(f"{meta} is not {{class: [\"<class>/<id>\", ...]}}")
    classes = sorted(listing)
    index = {name: i for i, name in enumerate(classes)}
    paths, labels = [], []
    for name, rels in listing.items():  # the file's class order, as torchvision; labels by sorted position
        paths += [inside(images, f"{rel}.jpg", str(meta)) for rel in rels]
        labels += [index[name]] * len(rels)
    require_files(paths, str(meta))
    return classification_set(meta, paths, labels, classes, images)


register("pets", Layout("torchvision OxfordIIITPet (oxford-iiit-pet/)", "oxford-iiit-pet", read_pets),
         metric="mean_per_class_recall", splits=("test", "trainval"))
register("flowers", Layout("torchvision Flowers102 (flowers-102/)", "flowers-102", read_flowers),
         metric="mean_per_class_recall", splits=("test", "train", "val"))
register("dtd", Layout("torchvision DTD, partition 1 (dtd/dtd/)", "dtd/dtd", read_dtd), splits=("test", "train", "val"))
register("cars", Layout("torchvision StanfordCars (stanford_cars/)", "stanford_cars", read_cars),
         splits=("test", "train"))
register("fgvc_aircraft", Layout("torchvision FGVCAircraft, variants (fgvc-aircraft-2013b/)", "fgvc-aircraft-2013b",
                                 read_fgvc_aircraft), metric="mean_per_class_recall",
         splits=("test", "train", "val", "trainval"))
register("food101", Layout("torchvision Food101 (food-101/)", "food-101", read_food101), splits=("test", "train"))
