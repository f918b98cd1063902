"""torchvision's dataset folders and PASCAL VOC 2007, written as their archives unpack: list files, CSVs, MATLAB
v5 files by scipy's ``savemat``, VOC annotation XML. Images are the real photos of ``tests/real_images.py``
shrunk to at most 64 px, 2–3 classes of 1–3 images per split. Each writer returns, per split it wrote, the
labels in the order the reader yields them (``{split: {"labels": [...]}}``).

The writers of datasets whose every class is listed in ``classes.py`` also take ``per_class=k`` (and ``size``):
then they write the test split only (beside what the reader needs to find it), with every class of the dataset,
``k`` images each, photos at most ``size`` px; for CLIP_benchmark's names of a dataset to apply, all its classes
must be on disk."""

from __future__ import annotations

import csv
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..real_images import load_photos
from . import classes as every


@lru_cache(maxsize=4)
def _small_photos(size: int = 64) -> tuple[Image.Image, ...]:
    """The 15 photos at most ``size`` px on a side, aspect kept (so box crops of them are not square), and their
    mirror images: 30 different pictures."""
    out = []
    for photo in load_photos().values():
        photo = photo.copy()
        photo.thumbnail((size, size))
        out.append(photo)
    return tuple(out + [p.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in out])


class _Photos:
    """Hands out the photos in turn, so every image of a small fixture differs."""

    def __init__(self, size: int = 64):
        self.next, self.size = 0, size

    def save(self, path: Path, fmt: str | None = None) -> Image.Image:
        photos = _small_photos(self.size)
        photo = photos[self.next % len(photos)]
        self.next += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        photo.save(path, format=fmt)
        return photo


def _pet_rows(per_class: int) -> list[tuple[str, int, int, int]]:
    """Test rows for every breed: species 1 for the cats (capitalised ids), breed ids counted within species."""
    rows, within = [], {1: 0, 2: 0}
    for c, breed in enumerate(every.PETS, start=1):
        species = 1 if breed[0].isupper() else 2
        within[species] += 1
        rows += [(f"{breed}_{100 + k}", c, species, within[species]) for k in range(per_class)]
    return rows


def write_pets(root: Path, per_class: int | None = None, size: int = 64) -> dict:
    """``annotations/{split}.txt``: ``<id> <class 1..37> <species 1 cat, 2 dog> <breed id within species>``."""
    base, photos = root / "oxford-iiit-pet", _Photos(size)
    rows = {"test": [("Abyssinian_1", 1, 1, 1), ("american_bulldog_10", 2, 2, 1), ("Abyssinian_12", 1, 1, 1),
                     ("american_pit_bull_terrier_5", 3, 2, 2)],
            "trainval": [("american_bulldog_100", 2, 2, 1), ("Abyssinian_100", 1, 1, 1),
                         ("american_pit_bull_terrier_1", 3, 2, 2)]}
    if per_class:
        rows = {"test": _pet_rows(per_class)}
    (base / "annotations").mkdir(parents=True)
    for split, lines in rows.items():
        (base / "annotations" / f"{split}.txt").write_text("".join(f"{i} {c} {s} {b}\n" for i, c, s, b in lines))
        for image_id, *_ in lines:
            photos.save(base / "images" / f"{image_id}.jpg")
    return {split: {"labels": [c - 1 for _, c, _, _ in lines]} for split, lines in rows.items()}


def write_flowers(root: Path) -> dict:
    """``jpg/image_%05d.jpg``, ``imagelabels.mat`` (labels 1..102, double [1, N]) and ``setid.mat`` ([1, n] each)."""
    from scipy.io import savemat

    base, photos = root / "flowers-102", _Photos()
    labels = [3, 1, 2, 1, 3, 2, 2, 1]
    for n in range(1, len(labels) + 1):
        photos.save(base / "jpg" / f"image_{n:05d}.jpg")
    savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.float64)})
    sets = {"trnid": [2, 3, 5], "valid": [8, 1], "tstid": [7, 4, 6]}
    savemat(base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in sets.items()})
    return {split: {"labels": [labels[n - 1] - 1 for n in sets[key]]}
            for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid"))}


def write_dtd(root: Path, per_class: int | None = None, size: int = 64) -> dict:
    """``dtd/dtd/images/<class>/<class>_%04d.jpg`` and ``labels/{split}{1..10}.txt`` of ``<class>/<file>``."""
    base, photos = root / "dtd" / "dtd", _Photos(size)
    lists = {"train": ["banded/banded_0002.jpg", "bubbly/bubbly_0003.jpg", "braided/braided_0001.jpg"],
             "val": ["braided/braided_0004.jpg", "banded/banded_0005.jpg", "bubbly/bubbly_0006.jpg"],
             "test": ["bubbly/bubbly_0007.jpg", "banded/banded_0008.jpg", "braided/braided_0009.jpg",
                      "bubbly/bubbly_0010.jpg"]}
    if per_class:  # the train lists too: partition 2 names them as test
        lists = {split: [f"{c}/{c}_{2 * k + offset:04d}.jpg" for c in every.DTD for k in range(per_class)]
                 for split, offset in (("train", 1), ("test", 2))}
    (base / "labels").mkdir(parents=True)
    for split, files in lists.items():
        for part in (1, 2):  # partition 2 lists the test images as train: the reader must read partition 1
            names = files if part == 1 else lists["test" if split == "train" else "train"]
            (base / "labels" / f"{split}{part}.txt").write_text("\n".join(names) + "\n")
        for f in files:
            photos.save(base / "images" / f)
    order = every.DTD if per_class else ["banded", "braided", "bubbly"]
    return {split: {"labels": [order.index(f.split("/")[0]) for f in files]} for split, files in lists.items()}


def write_eurosat(root: Path, per_class: int | None = None, size: int = 64) -> dict:
    """``eurosat/2750/<Class>/<Class>_<n>.jpg`` (27,000 in the archive; no split lists)."""
    base, photos = root / "eurosat" / "2750", _Photos(size)
    counts = {c: per_class for c in every.EUROSAT} if per_class else {"AnnualCrop": 2, "Forest": 3, "River": 1}
    for c, (name, n) in enumerate(counts.items()):
        for k in range(1, n + 1):
            photos.save(base / name / f"{name}_{k}.jpg")
    (base / "Forest" / "Thumbs.db").write_bytes(b"not an image")  # skipped, as ImageFolder skips it
    return {"test": {"labels": [c for c, n in enumerate(counts.values()) for _ in range(n)]}}


def write_gtsrb(root: Path, per_class: int | None = None, size: int = 64) -> dict:
    """``GTSRB/Final_Test/Images/%05d.ppm`` + ``GT-final_test.csv``; ``GTSRB/Training/%05d/*.ppm`` + per-class CSVs."""
    base, photos = root / "gtsrb", _Photos(size)
    header = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
    test = [(7 * k) % every.GTSRB for k in range(every.GTSRB * per_class)] if per_class else [14, 1, 42, 1]
    rows = []
    for n, class_id in enumerate(test):
        photo = photos.save(base / "GTSRB" / "Final_Test" / "Images" / f"{n:05d}.ppm", "PPM")
        rows.append([f"{n:05d}.ppm", photo.width, photo.height, 1, 1, photo.width - 1, photo.height - 1, class_id])
    with open(base / "GT-final_test.csv", "w", newline="") as f:
        csv.writer(f, delimiter=";").writerows([header, *rows])
    if per_class:
        return {"test": {"labels": test}}
    train = {1: 2, 14: 1}
    for class_id, n in train.items():
        folder = base / "GTSRB" / "Training" / f"{class_id:05d}"
        for k in range(n):
            photos.save(folder / f"00000_{k:05d}.ppm", "PPM")
        (folder / f"GT-{class_id:05d}.csv").write_text(";".join(header[:-1]) + ";ClassId\n")
    return {"test": {"labels": test}, "train": {"labels": [c for c, n in train.items() for _ in range(n)]}}


def write_sun397(root: Path) -> dict:
    """``SUN397/ClassName.txt`` (``/<letter>/<class>``) and ``SUN397/<letter>/<class...>/sun_<id>.jpg``."""
    base, photos = root / "SUN397", _Photos()
    classes = ["abbey", "apartment_building/outdoor", "bedroom"]
    base.mkdir(parents=True)
    (base / "ClassName.txt").write_text("".join(f"/{c[0]}/{c}\n" for c in classes))
    files = [("bedroom", "sun_zzz"), ("abbey", "sun_bbb"), ("apartment_building/outdoor", "sun_aaa"),
             ("abbey", "sun_aab"), ("bedroom", "sun_abc")]
    for cls, stem in files:
        photos.save(base / cls[0] / cls / f"{stem}.jpg")
    ordered = sorted(files, key=lambda f: f"{f[0][0]}/{f[0]}/{f[1]}.jpg")
    return {"test": {"labels": [classes.index(cls) for cls, _ in ordered]}}


def write_caltech101(root: Path, per_class: int | None = None, size: int = 64) -> dict:
    """``caltech101/101_ObjectCategories/<category>/image_%04d.jpg``, ``BACKGROUND_Google`` among them."""
    base, photos = root / "caltech101" / "101_ObjectCategories", _Photos(size)
    counts = {c: per_class for c in every.CALTECH101} if per_class else {"BACKGROUND_Google": 2, "Faces": 1,
                                                                         "accordion": 3}
    for name, n in counts.items():
        for k in range(1, n + 1):
            photos.save(base / name / f"image_{k:04d}.jpg")
    return {"test": {"labels": [c for c, n in enumerate(counts.values()) for _ in range(n)]}}


def write_cars(root: Path) -> dict:
    """``devkit/cars_meta.mat`` (``class_names`` cell [1, C]); annotations as struct arrays [1, N]."""
    from scipy.io import savemat

    base, photos = root / "stanford_cars", _Photos()
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    splits = {"test": ("cars_test_annos_withlabels.mat", "cars_test", [3, 1, 2, 3]),
              "train": ("devkit/cars_train_annos.mat", "cars_train", [2, 1])}
    for split, (mat, folder, classes) in splits.items():
        records = []
        for n, c in enumerate(classes, start=1):
            photo = photos.save(base / folder / f"{n:05d}.jpg")
            records.append((np.uint8(1), np.uint8(1), np.uint16(photo.width), np.uint16(photo.height), np.uint8(c),
                            f"{n:05d}.jpg"))
        savemat(base / mat, {"annotations": np.array([records], dtype=fields)})
    return {split: {"labels": [c - 1 for c in classes]} for split, (_, _, classes) in splits.items()}


def write_fgvc_aircraft(root: Path) -> dict:
    """``data/variants.txt`` and ``data/images_variant_{split}.txt`` (``<id> <variant>``; variants hold spaces)."""
    data, photos = root / "fgvc-aircraft-2013b" / "data", _Photos()
    variants = ["707-320", "Cessna 172", "DHC-8-100"]
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    lists = {"test": [("1514522", 1), ("0056978", 0), ("2234567", 2)], "train": [("1025794", 2), ("0062781", 1)],
             "val": [("1103333", 0)]}
    lists["trainval"] = lists["train"] + lists["val"]
    for split, rows in lists.items():
        (data / f"images_variant_{split}.txt").write_text("".join(f"{i} {variants[v]}\n" for i, v in rows))
        for image_id, _ in rows:
            if not (data / "images" / f"{image_id}.jpg").exists():
                photos.save(data / "images" / f"{image_id}.jpg")
    return {split: {"labels": [v for _, v in rows]} for split, rows in lists.items()}


def write_country211(root: Path, per_class: int | None = None, size: int = 64) -> dict:
    """``country211/{train,valid,test}/<ISO alpha-2>/<id>.jpg``."""
    base, photos = root / "country211", _Photos(size)
    counts = {"test": {"AD": 2, "AE": 1, "ZW": 2}, "train": {"AD": 1, "AE": 1, "ZW": 1}, "valid": {"AD": 1, "ZW": 1}}
    if per_class:
        counts = {"test": {code: per_class for code in every.COUNTRY211}}
    for split, per in counts.items():
        for code, n in per.items():
            for k in range(n):
                photos.save(base / split / code / f"{1000 + k}.jpg")
    return {split: {"labels": [c for c, n in enumerate(per.values()) for _ in range(n)]}
            for split, per in counts.items()}


def write_food101(root: Path) -> dict:
    """``food-101/meta/{train,test}.json`` (``{class: ["<class>/<id>", ...]}``) and ``images/<class>/<id>.jpg``."""
    base, photos = root / "food-101", _Photos()
    meta = {"test": {"apple_pie": ["apple_pie/1011328", "apple_pie/101251"], "baby_back_ribs": ["baby_back_ribs/1005"],
                     "waffles": ["waffles/1", "waffles/22"]},
            "train": {"apple_pie": ["apple_pie/1"], "baby_back_ribs": ["baby_back_ribs/2"], "waffles": ["waffles/3"]}}
    (base / "meta").mkdir(parents=True)
    for split, listing in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(listing))
        for rels in listing.values():
            for rel in rels:
                photos.save(base / "images" / f"{rel}.jpg")
    return {split: {"labels": [c for c, rels in enumerate(listing.values()) for _ in rels]}
            for split, listing in meta.items()}


def write_renderedsst2(root: Path, per_class: int | None = None, size: int = 64) -> dict:
    """``rendered-sst2/{train,valid,test}/{negative,positive}/<n>.png``."""
    base, photos = root / "rendered-sst2", _Photos(size)
    counts = {"test": (per_class, per_class)} if per_class else {"test": (2, 3), "train": (1, 1), "valid": (1, 2)}
    for split, (neg, pos) in counts.items():
        for label, n in (("negative", neg), ("positive", pos)):
            for k in range(n):
                photos.save(base / split / label / f"{k}.png")
    return {{"valid": "val"}.get(s, s): {"labels": [0] * neg + [1] * pos} for s, (neg, pos) in counts.items()}


def write_resisc45(root: Path) -> dict:
    """torchgeo's ``resisc45/NWPU-RESISC45/<class>/<class>_%03d.jpg`` and ``resisc45/resisc45-{split}.txt``."""
    base, photos = root / "resisc45", _Photos()
    classes = ["airplane", "airport", "baseball_diamond"]
    lists = {"test": ["baseball_diamond_003.jpg", "airplane_002.jpg", "airport_001.jpg", "airplane_001.jpg"],
             "train": ["airport_002.jpg", "baseball_diamond_002.jpg", "airplane_003.jpg"],
             "val": ["baseball_diamond_001.jpg", "airport_003.jpg", "airplane_004.jpg"]}
    for split, names in lists.items():
        for name in names:
            photos.save(base / "NWPU-RESISC45" / name.rsplit("_", 1)[0] / name)
        (base / f"resisc45-{split}.txt").write_text("\n".join(names) + "\n")
    return {split: {"labels": sorted(classes.index(n.rsplit("_", 1)[0]) for n in names)}
            for split, names in lists.items()}


VOC_CLASSES = ("aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
               "pottedplant sheep sofa train tvmonitor")
VOC_XML = """<annotation>
\t<folder>VOC2007</folder>
\t<filename>{id}.jpg</filename>
\t<source>
\t\t<database>The VOC2007 Database</database>
\t\t<annotation>PASCAL VOC2007</annotation>
\t\t<image>flickr</image>
\t</source>
\t<size>
\t\t<width>{w}</width>
\t\t<height>{h}</height>
\t\t<depth>3</depth>
\t</size>
\t<segmented>0</segmented>
{objects}</annotation>
"""
VOC_OBJECT = """\t<object>
\t\t<name>{name}</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>{difficult}</difficult>
\t\t<bndbox>
\t\t\t<xmin>{box[0]}</xmin>
\t\t\t<ymin>{box[1]}</ymin>
\t\t\t<xmax>{box[2]}</xmax>
\t\t\t<ymax>{box[3]}</ymax>
\t\t</bndbox>
\t</object>
"""


def _voc_images(per_class: int, size: int) -> dict[str, list[tuple[str, tuple[int, int, int, int], int]]]:
    """Test images for every class, ``per_class`` each: one box of the class, every third image a second box of
    the next class (so crops outnumber images and the multi-label targets have two classes), inside the photo."""
    classes, images = VOC_CLASSES.split(), {}
    for k in range(per_class * len(classes)):
        c = k % len(classes)
        objects = [(classes[c], (1, 1, size // 2, size // 3), 0)]
        if k % 3 == 0:
            objects.append((classes[(c + 1) % len(classes)], (size // 4, 2, size // 2 + 4, size // 3 + 2), k % 2))
        images[f"{2 * k + 1:06d}"] = objects
    return images


def write_voc2007(root: Path, per_class: int | None = None, size: int = 64) -> dict:
    """``VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main/<class>_{split}.txt}``; a difficult box too."""
    base, photos = root / "VOCdevkit" / "VOC2007", _Photos(size)
    images = {"test": {"000001": [("dog", (5, 6, 40, 30), 0), ("person", (1, 1, 20, 41), 1)],
                       "000004": [("tvmonitor", (10, 3, 50, 28), 0)],
                       "000002": [("dog", (2, 2, 33, 33), 0), ("dog", (30, 10, 60, 40), 0), ("cat", (3, 4, 9, 11), 0)]},
              "train": {"000005": [("chair", (2, 3, 30, 30), 0)], "000007": [("car", (1, 1, 60, 40), 0)]}}
    if per_class:
        images = {"test": _voc_images(per_class, size)}
    (base / "Annotations").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    for split, per in images.items():
        lines = []
        for image_id, objects in per.items():
            photo = photos.save(base / "JPEGImages" / f"{image_id}.jpg")
            xml = VOC_XML.format(id=image_id, w=photo.width, h=photo.height,
                                 objects="".join(VOC_OBJECT.format(name=n, box=b, difficult=d) for n, b, d in objects))
            (base / "Annotations" / f"{image_id}.xml").write_text(xml)
            lines.append(f"{image_id} {' 1' if any(n == 'aeroplane' for n, _, _ in objects) else '-1'}")
        for name in ("aeroplane", "dog"):
            (base / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text("\n".join(lines) + "\n")
    classes = VOC_CLASSES.split()
    return {split: {"labels": [classes.index(n) for objects in per.values() for n, _, _ in objects],
                    "multilabel": [sorted({classes.index(n) for n, _, _ in objects}) for objects in per.values()]}
            for split, per in images.items()}


# the writers that take ``per_class`` (every class of the dataset, ``k`` images each)
FULL_WRITERS = {"pets": write_pets, "dtd": write_dtd, "eurosat": write_eurosat, "gtsrb": write_gtsrb,
                "caltech101": write_caltech101, "country211": write_country211, "renderedsst2": write_renderedsst2,
                "voc2007": write_voc2007}
WRITERS = {"pets": write_pets, "flowers": write_flowers, "dtd": write_dtd, "eurosat": write_eurosat,
           "gtsrb": write_gtsrb, "sun397": write_sun397, "caltech101": write_caltech101, "cars": write_cars,
           "fgvc_aircraft": write_fgvc_aircraft, "country211": write_country211, "food101": write_food101,
           "renderedsst2": write_renderedsst2, "resisc45": write_resisc45, "voc2007": write_voc2007}
