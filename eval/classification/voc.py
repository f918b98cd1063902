"""PASCAL VOC 2007 as CLIP_benchmark reads it for classification (``clip_benchmark/datasets/voc2007.py``).

Layout under ``--root``: ``VOCdevkit/VOC2007/{JPEGImages/<id>.jpg, Annotations/<id>.xml,
ImageSets/Main/aeroplane_<split>.txt}``; the split's image ids are the first column of the aeroplane list.

- ``voc2007``: every ``<object>`` of every listed image, "difficult" and "truncated" ones included, in list
  order then file order, cropped to its ``<bndbox>`` (``xmin, ymin, xmax, ymax`` used as PIL's left, top, right,
  bottom, as CLIP_benchmark does); one label each. The test split has 14,976 boxes. Metric ``acc1``.
- ``voc2007_multilabel``: each listed image whole, labelled with the classes of its objects. Metric
  ``mean_average_precision``.

Class names are VOC's own (``diningtable``, ``pottedplant``, ``tvmonitor``). Annotation XML is parsed only
after expat has seen it declare no DOCTYPE: without one there are no entities to expand and no external files
to fetch (the stdlib parser would otherwise expand them).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import xml.parsers.expat
from pathlib import Path

from mmcontrast.errors import UserError

from ..compositional_sets import CroppedImages
from ..sets import ClassificationSet, check_classification
from .folders_files import classification_set, inside, read_bytes, read_lines, require_dir, require_files
from .registry import Layout, register

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
MAX_XML_BYTES = 2**20  # a VOC annotation is about 1 kB
BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


class _Declaration(Exception):
    pass


def _refuse(*_) -> None:
    raise _Declaration


def parse_xml(path: Path) -> ET.Element:
    """The root element of a bounded XML file that declares no DOCTYPE (so no entities)."""
    data = read_bytes(path, MAX_XML_BYTES)
    check = xml.parsers.expat.ParserCreate()
    check.StartDoctypeDeclHandler = check.EntityDeclHandler = _refuse
    try:
        check.Parse(data, True)
    except _Declaration:
        raise UserError(f"{path} declares a DOCTYPE; VOC annotations have none, and its entities are not "
                        "expanded") from None
    except xml.parsers.expat.ExpatError as e:
        raise UserError(f"{path} is not well-formed XML ({e})") from None
    return ET.fromstring(data)


def _objects(path: Path) -> list[tuple[int, tuple[int, int, int, int]]]:
    """``(class index, (xmin, ymin, xmax, ymax))`` of each ``<object>`` child of the annotation, in file order."""
    out = []
    for k, obj in enumerate(parse_xml(path).findall("object"), start=1):
        where = f"{path} object {k}"
        if len(obj) == 0 or obj[0].tag != "name":  # CLIP_benchmark takes the first child as the name
            raise UserError(f"{where}: the first element is not <name>")
        name = (obj[0].text or "").strip()
        if name not in VOC_CLASSES:
            raise UserError(f"{where}: class {name[:40]!r} is not one of the 20 VOC classes")
        box = obj.find("bndbox")
        if box is None:
            raise UserError(f"{where} ({name}) has no <bndbox>")
        coords = []
        for tag in BOX_TAGS:
            text = (box.findtext(tag) or "").strip()
            if not text.lstrip("-").isdigit():
                raise UserError(f"{where}: <{tag}> is {text[:20]!r}, not a whole number of pixels")
            coords.append(int(text))
        xmin, ymin, xmax, ymax = coords
        if not (xmin < xmax and ymin < ymax):
            raise UserError(f"{where}: the box {tuple(coords)} is empty (expected xmin < xmax and ymin < ymax)")
        out.append((VOC_CLASSES.index(name), (xmin, ymin, xmax, ymax)))
    return out


def _annotated(root: Path, split: str) -> tuple[Path, Path, list[tuple[Path, list]]]:
    """The split list, the image folder, and each listed image with its objects."""
    base = root / "VOCdevkit" / "VOC2007"
    images = require_dir(base / "JPEGImages", "VOC 2007's images")
    annotations = require_dir(base / "Annotations", "VOC 2007's annotation XML")
    list_file = base / "ImageSets" / "Main" / f"aeroplane_{split}.txt"
    entries = []
    for n, line in enumerate(read_lines(list_file), start=1):
        fields = line.split()
        if len(fields) != 2:
            raise UserError(f"{list_file} line {n}: {line[:80]!r} is not '<image id> <1|0|-1>'")
        where = f"{list_file} line {n}"
        entries.append((inside(images, f"{fields[0]}.jpg", where),
                        _objects(inside(annotations, f"{fields[0]}.xml", where))))
    require_files([p for p, _ in entries], str(list_file))
    return list_file, images, entries


def read_voc2007(root: Path, split: str) -> ClassificationSet:
    list_file, _, entries = _annotated(root, split)
    paths, boxes, labels, ids = [], [], [], []
    for path, objects in entries:
        for k, (label, (x0, y0, x1, y1)) in enumerate(objects):
            paths.append(path)
            boxes.append((x0, y0, x1 - x0, y1 - y0))  # CroppedImages takes (x, y, w, h)
            labels.append(label)
            ids.append(f"{path.stem}#{k}")
    ds = ClassificationSet(list_file.name, str(list_file), CroppedImages(paths, boxes), labels, list(VOC_CLASSES),
                           [], ids)
    return check_classification(ds)


def read_voc2007_multilabel(root: Path, split: str) -> ClassificationSet:
    list_file, images, entries = _annotated(root, split)
    labels = [sorted({label for label, _ in objects}) for _, objects in entries]
    return classification_set(list_file, [p for p, _ in entries], labels, list(VOC_CLASSES), images, multilabel=True)


register("voc2007", Layout("PASCAL VOC 2007 box crops (VOCdevkit/VOC2007/)", "VOCdevkit/VOC2007", read_voc2007),
         splits=("test", "train"))
register("voc2007_multilabel", Layout("PASCAL VOC 2007 whole images (VOCdevkit/VOC2007/)", "VOCdevkit/VOC2007",
                                      read_voc2007_multilabel), metric="mean_average_precision",
         splits=("test", "train"))
