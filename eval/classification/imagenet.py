"""ImageNet-1k validation and its distribution-shift test sets, read the way CLIP_benchmark reads them.

Class order is that of torchvision's ``ImageNet``/``ImageFolder``: the 1,000 WordNet ids (wnids) sorted. The list
comes from timm (``timm/data/_info/imagenet_synsets.txt``, timm's ``ImageNetInfo``), and the ImageNet-A and -R
subsets from timm's ``imagenet_a_synsets.txt`` / ``imagenet_r_synsets.txt``; they equal the lists in
CLIP_benchmark's ``datasets/builder.py`` (``all_imagenet_wordnet_ids`` and the inline subset lists). ImageNet-O's
200 wnids are in no other installed package, so they are read from that source (``names.builder_lists``). Class names
are open_clip's ``IMAGENET_CLASSNAMES`` (= CLIP_benchmark's ``en_classnames.json["imagenet1k"]``), masked to a
subset's wnids in 1k order, as CLIP_benchmark's builder masks them. Labels are always the index of an image's wnid
in the class list, so a copy holding only some class folders keeps the full classifier (ImageFolder would
renumber the folders it finds); with every folder present the two agree.

Layouts (the first whose marker exists is read):

- ``imagenet1k`` (split ``test`` = ``val``): torchvision's ``val/<wnid>/*.JPEG`` (what ``ImageNet(split="val")``
  leaves after parsing the archives; its ``meta.bin`` is not needed); Kaggle's ``ILSVRC/Data/CLS-LOC/val/*.JPEG``
  with ``LOC_val_solution.csv`` (``ImageId,PredictionString``, label = the first wnid) and
  ``LOC_synset_mapping.txt`` (checked to be the sorted 1k list); the devkit's
  ``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`` (line n = the ILSVRC2012_ID of image n)
  with ``data/meta.mat`` and the flat ``ILSVRC2012_img_val/`` (or ``val/``). IDs follow ``meta.mat``'s
  ``synsets`` order (leaves, ``num_children == 0``), not sorted-wnid order: ID → wnid → sorted index.
- ``imagenetv2``: ``ImageNetV2-matched-frequency/<0..999>/`` (CLIP_benchmark) or the archive's
  ``imagenetv2-matched-frequency-format-val/``; label = ``int(folder)``, not ImageFolder's lexicographic order.
- ``imagenet_sketch``: ``sketch/<wnid>/``, ``imagenet-sketch/sketch/``, or ``--root`` itself (CLIP_benchmark
  moves ``sketch`` to its root).
- ``imagenet-a`` / ``imagenet-r`` / ``imagenet-o``: ``imagenet-a/<wnid>/`` or ``--root`` itself; 200 classes.
- ``objectnet``: ``objectnet-1.0/images/<folder>/*.png`` with ``folder_to_objectnet_label.json`` and
  ``objectnet_to_imagenet_1k.json`` in root (CLIP_benchmark copies ``mappings/`` there) or in
  ``objectnet-1.0/mappings/``. As CLIP_benchmark's ``ObjectNetDataset``: the 113 folders that map to ImageNet, in
  sorted order, are the classes; names are the ObjectNet labels lower-cased; images are not cropped (wise-ft
  crops a 2-pixel border and scores 1k logits, so its numbers differ).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import zlib
from functools import cache
from pathlib import Path

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from mmcontrast.errors import UserError

from ..sets import ClassificationSet, FileImages, check_classification
from .folders_files import read_bytes
from .registry import Layout, register

# torchvision.datasets.folder.IMG_EXTENSIONS: the files ImageFolder (so CLIP_benchmark) counts as images
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MAX_TEXT_BYTES = 64 << 20      # LOC_val_solution.csv is ~2 MB, the ground truth 0.2 MB
MAX_MAT_BYTES = 64 << 20       # the devkit's meta.mat is a few MB
MAX_INFLATED = 256 << 20       # what its compressed variables may inflate to, checked before scipy reads them
CHUNK = 1 << 20
DEVKIT = "ILSVRC2012_devkit_t12/data"
KAGGLE_VAL = "ILSVRC/Data/CLS-LOC/val"
VAL_IMAGE = re.compile(r"ILSVRC2012_val_\d{8}")
SUBSET_FILES = {"imagenet-a": "imagenet_a_synsets.txt", "imagenet-r": "imagenet_r_synsets.txt"}


# ---------------------------------------------------------------- class lists

def _timm_list(name: str) -> list[str]:
    """The wnids in timm's ``data/_info/<name>``, found without importing timm (which imports torch)."""
    spec = importlib.util.find_spec("timm")
    path = Path(spec.origin).parent / "data" / "_info" / name if spec and spec.origin else None
    if path is None or not path.is_file():
        raise UserError(f"timm's data/_info/{name} is missing: install a timm that ships it (timm 1.0 does)")
    return path.read_text(encoding="utf-8").split()


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k wnids, sorted: label i is wnid i."""
    wnids = _timm_list("imagenet_synsets.txt")
    if len(wnids) != 1000 or wnids != sorted(set(wnids)):
        raise UserError("timm's data/_info/imagenet_synsets.txt is not 1,000 sorted distinct wnids; reinstall timm")
    return tuple(wnids)


@cache
def wnid_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(imagenet_wnids())}


def subset_wnids(name: str) -> tuple[str, ...]:
    """ImageNet-A's, -R's or -O's 200 wnids in label order (sorted, hence in 1k order)."""
    if name in SUBSET_FILES:
        wnids, source = _timm_list(SUBSET_FILES[name]), f"timm's data/_info/{SUBSET_FILES[name]}"
    else:
        from .names import IMAGENET_SUBSETS, builder_lists
        wnids, source = builder_lists()[IMAGENET_SUBSETS[name]], "clip_benchmark's datasets/builder.py"
    if len(wnids) != 200 or wnids != sorted(set(wnids)) or not set(wnids) <= wnid_index().keys():
        raise UserError(f"{source} does not list 200 sorted ImageNet wnids for {name}; reinstall it")
    return tuple(wnids)


def classnames_of(wnids) -> list[str]:
    """The CLIP_benchmark names of ``wnids`` (1k wnids in sorted order), as its builder's mask gives them."""
    return [IMAGENET_CLASSNAMES[wnid_index()[w]] for w in wnids]


# ---------------------------------------------------------------- files

def _read_text(path: Path, what: str) -> str:
    """A small UTF-8 text file, whole; one line naming it when it is missing, too large or not text."""
    data = read_bytes(path, MAX_TEXT_BYTES, needed_by=what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); is it {what}'s file?") from None


def _read_json(path: Path, what: str) -> dict[str, str]:
    """A JSON object of string → string (ObjectNet's mapping files)."""
    try:
        data = json.loads(_read_text(path, what))
    except (json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{path} is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise UserError(f"{path}: expected a JSON object of string → string, as in ObjectNet's mappings/")
    return data


def folder_images(folder: Path) -> list[Path]:
    """The images under ``folder`` in ImageFolder's order: ``os.walk`` sorted, names sorted, its extensions."""
    out = []
    for root, _, names in sorted(os.walk(folder, followlinks=True)):
        out += [Path(root, n) for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS)]
    return out


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UserError(f"{root} is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise UserError(f"{root} has no class folders (expected {root}/<class>/<image>)")
    return folders


def _wnid_tree(root: Path, classes: list[str] | tuple[str, ...], what: str) -> tuple[list[Path], list[int]]:
    """Images of ``root/<wnid>/``; label = the wnid's index in ``classes``; a folder not among them stops."""
    index = {w: i for i, w in enumerate(classes)}
    folders = _class_folders(root)
    stray = [f for f in folders if f.name not in index]
    if stray:
        raise UserError(f"{stray[0]}: {stray[0].name[:40]!r} is not a WordNet id of {what} ({len(stray):,} such "
                        f"folders); is --root the {what} folder?")
    paths, labels = [], []
    for f in folders:
        files = folder_images(f)
        paths += files
        labels += [index[f.name]] * len(files)
    return paths, labels


def _set(source: Path, root: Path, paths: list[Path], labels: list[int], classnames: list[str]) -> ClassificationSet:
    ds = ClassificationSet(source.name, str(source), FileImages(paths), labels, classnames, [],
                           [str(p.relative_to(root)) for p in paths])
    return check_classification(ds)


# ---------------------------------------------------------------- ImageNet-1k

def read_torchvision(root: Path, split: str) -> ClassificationSet:
    """torchvision's ``val/<wnid>/*.JPEG``."""
    paths, labels = _wnid_tree(root / "val", imagenet_wnids(), "ImageNet-1k")
    return _set(root / "val", root, paths, labels, list(IMAGENET_CLASSNAMES))


def read_kaggle(root: Path, split: str) -> ClassificationSet:
    """Kaggle's flat ``ILSVRC/Data/CLS-LOC/val/`` labelled by ``LOC_val_solution.csv``."""
    what = "Kaggle's ImageNet layout"
    mapping = root / "LOC_synset_mapping.txt"
    listed = [line.split(maxsplit=1)[0] for line in _read_text(mapping, what).splitlines() if line.strip()]
    if tuple(listed) != imagenet_wnids():
        raise UserError(f"{mapping}: expected the 1,000 ImageNet-1k wnids in sorted order, one per line "
                        f"('n01440764 tench, Tinca tinca'), got {len(listed):,} lines not in that order")
    solution = root / "LOC_val_solution.csv"
    lines = _read_text(solution, what).splitlines()
    if not lines or lines[0].strip() != "ImageId,PredictionString":
        raise UserError(f"{solution}: the first line should be 'ImageId,PredictionString'")
    index, label_of = wnid_index(), {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        image, _, boxes = line.strip().partition(",")
        words = boxes.split()
        if not VAL_IMAGE.fullmatch(image) or not words or len(words) % 5:
            raise UserError(f"{solution}:{n}: expected 'ILSVRC2012_val_<8 digits>,<wnid x1 y1 x2 y2>...', "
                            f"got {line[:60]!r}")
        if words[0] not in index:
            raise UserError(f"{solution}:{n}: {words[0][:40]!r} is not an ImageNet-1k wnid")
        if image in label_of:
            raise UserError(f"{solution}:{n}: {image} has a second row")
        label_of[image] = index[words[0]]
    folder = root / KAGGLE_VAL
    if not folder.is_dir():
        raise UserError(f"{folder} is missing: {what} keeps the validation images there")
    present = {Path(e.name).stem for e in os.scandir(folder) if e.name.endswith(".JPEG")}
    missing = sorted(label_of.keys() - present)
    if missing:
        raise UserError(f"{solution} has a row for {missing[0]}, but {folder / missing[0]}.JPEG is absent "
                        f"({len(missing):,} images missing)")
    unlabelled = sorted(present - label_of.keys())
    if unlabelled:
        raise UserError(f"{folder / unlabelled[0]}.JPEG has no row in {solution} ({len(unlabelled):,} images "
                        "without one)")
    images = sorted(label_of)
    return _set(solution, root, [folder / f"{i}.JPEG" for i in images], [label_of[i] for i in images],
                list(IMAGENET_CLASSNAMES))


def read_devkit(root: Path, split: str) -> ClassificationSet:
    """The devkit's ground truth and ``meta.mat`` over the flat validation images."""
    to_label = {i: wnid_index()[w] for i, w in devkit_ids(root / DEVKIT / "meta.mat").items()}
    truth = root / DEVKIT / "ILSVRC2012_validation_ground_truth.txt"
    labels = []
    for n, line in enumerate(_read_text(truth, "the ImageNet devkit").splitlines(), start=1):
        word = line.strip()
        if not (word.isascii() and word.isdigit() and 1 <= int(word) <= 1000):
            raise UserError(f"{truth}:{n}: {word[:20]!r} is not an ILSVRC2012_ID (1 to 1000)")
        labels.append(to_label[int(word)])
    folder = next((root / d for d in ("ILSVRC2012_img_val", "val") if (root / d).is_dir()), None)
    if folder is None:
        raise UserError(f"no validation images: expected {root}/ILSVRC2012_img_val/ (or val/) holding "
                        "ILSVRC2012_val_00000001.JPEG ...")
    paths = [folder / f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, len(labels) + 1)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{missing[0]} is absent: {truth} labels {len(labels):,} images ({len(missing):,} missing)")
    return _set(truth, root, paths, labels, list(IMAGENET_CLASSNAMES))


def devkit_ids(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID → wnid of the 1,000 leaf synsets (``num_children == 0``) in the devkit's ``meta.mat``."""
    _check_mat(path)
    import scipy.io  # only this layout needs it

    try:
        synsets = scipy.io.loadmat(path, squeeze_me=True, variable_names=["synsets"]).get("synsets")
    except Exception as e:  # scipy raises many types for a malformed file
        raise UserError(f"{path} cannot be read as a MATLAB file ({str(e)[:80]})") from None
    fields = getattr(getattr(synsets, "dtype", None), "names", None) or ()
    if not {"ILSVRC2012_ID", "WNID", "num_children"} <= set(fields):
        raise UserError(f"{path} has no 'synsets' struct with ILSVRC2012_ID, WNID and num_children; "
                        "is it the devkit's data/meta.mat?")
    out: dict[int, str] = {}
    for s in synsets.reshape(-1):
        children, number, wnid = _integer(s["num_children"]), _integer(s["ILSVRC2012_ID"]), s["WNID"]
        if children is None or number is None or not isinstance(wnid, str):
            raise UserError(f"{path}: a synset's ILSVRC2012_ID, WNID or num_children is not a number/string")
        if children == 0:
            if number in out:
                raise UserError(f"{path}: ILSVRC2012_ID {number} is given to two leaf synsets")
            out[number] = wnid
    if sorted(out) != list(range(1, 1001)) or set(out.values()) != set(imagenet_wnids()):
        raise UserError(f"{path}: its {len(out):,} leaf synsets are not the 1,000 ImageNet-1k classes with "
                        "ILSVRC2012_IDs 1 to 1000")
    return out


def _integer(value) -> int | None:
    """A MATLAB scalar as an int, or None when it is not one whole number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _check_mat(path: Path) -> None:
    """Refuse what is not a MATLAB 5 file, a truncated one, or one whose variables inflate past ``MAX_INFLATED``
    (scipy would inflate them in memory), by walking the top-level tags (MathWorks, "MAT-File Format", ch. 1)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path} is missing: the ImageNet devkit's ground truth needs it") from None
    if size > MAX_MAT_BYTES:
        raise UserError(f"{path} is above {MAX_MAT_BYTES:,} bytes: not the devkit's meta.mat")
    with open(path, "rb") as f:
        head = f.read(128)
        if len(head) < 128 or not head.startswith(b"MATLAB 5.0 MAT-file") or head[126:] not in (b"IM", b"MI"):
            raise UserError(f"{path} is not a MATLAB 5 MAT-file (no 'MATLAB 5.0 MAT-file' header)")
        endian = "<" if head[126:] == b"IM" else ">"
        pos = 128
        while pos < size:
            tag = f.read(8)
            if len(tag) < 8:
                raise UserError(f"{path} is truncated at byte {pos:,}")
            kind, nbytes = struct.unpack(endian + "II", tag)
            if nbytes > size - pos - 8:
                raise UserError(f"{path}: the variable at byte {pos:,} claims {nbytes:,} bytes; the file is truncated")
            if kind == 15:  # miCOMPRESSED: a zlib stream
                _check_inflated(f, nbytes, path)
            pos += 8 + nbytes
            f.seek(pos)


def _check_inflated(f, nbytes: int, path: Path) -> None:
    inflater, total, left = zlib.decompressobj(), 0, nbytes
    while left:
        data = f.read(min(CHUNK, left))
        left -= len(data)
        while data:
            try:
                total += len(inflater.decompress(data, CHUNK))
            except zlib.error as e:
                raise UserError(f"{path}: a compressed variable is corrupt ({e})") from None
            if total > MAX_INFLATED:
                raise UserError(f"{path}: a variable inflates past {MAX_INFLATED:,} bytes; not the devkit's meta.mat")
            data = inflater.unconsumed_tail


# ---------------------------------------------------------------- the test sets

def read_imagenetv2(folder: str):
    """A reader of ImageNet-V2's ``root/<folder>/<label>/``, the folder name being the label."""
    def read(root: Path, split: str) -> ClassificationSet:
        top = root / folder
        labelled = []
        for f in _class_folders(top):
            if not (f.name.isascii() and f.name.isdigit() and str(int(f.name)) == f.name and int(f.name) < 1000):
                raise UserError(f"{f}: ImageNet-V2 class folders are the labels 0 to 999, not {f.name[:40]!r}")
            labelled.append((int(f.name), f))
        paths, labels = [], []
        for label, f in sorted(labelled):  # by number: "10" is class 10, though ImageFolder sorts it after "1"
            files = folder_images(f)
            paths += files
            labels += [label] * len(files)
        return _set(top, root, paths, labels, list(IMAGENET_CLASSNAMES))
    return read


def read_wnid_folders(name: str, folder: str):
    """A reader of ``root/<folder>/<wnid>/`` (``folder`` "" for root itself) for ImageNet-Sketch or -A/-R/-O."""
    def read(root: Path, split: str) -> ClassificationSet:
        top = root / folder
        classes = imagenet_wnids() if name == "imagenet_sketch" else subset_wnids(name)
        paths, labels = _wnid_tree(top, classes, name)
        return _set(top, root, paths, labels, classnames_of(classes))
    return read


def read_objectnet(root: Path, split: str) -> ClassificationSet:
    """ObjectNet's images of the folders that map to ImageNet, labelled by their sorted position."""
    maps = next((d for d in (root, root / "objectnet-1.0" / "mappings")
                 if (d / "folder_to_objectnet_label.json").is_file()), root)
    folder_to_name = _read_json(maps / "folder_to_objectnet_label.json", "ObjectNet")
    to_imagenet_path = maps / "objectnet_to_imagenet_1k.json"
    to_imagenet = _read_json(to_imagenet_path, "ObjectNet")
    name_to_folder = {v: k for k, v in folder_to_name.items()}
    if len(name_to_folder) != len(folder_to_name):
        raise UserError(f"{maps / 'folder_to_objectnet_label.json'}: two folders have the same ObjectNet label")
    unknown = [n for n in to_imagenet if n not in name_to_folder]
    if unknown:
        raise UserError(f"{to_imagenet_path}: ObjectNet class {unknown[0][:40]!r} has no folder in "
                        "folder_to_objectnet_label.json")
    folders = sorted(name_to_folder[n] for n in to_imagenet)
    index = {f: i for i, f in enumerate(folders)}
    images = root / "objectnet-1.0" / "images"
    paths, labels = [], []
    for f in _class_folders(images):
        if f.name in index:  # the 200 classes without an ImageNet counterpart are left out
            files = folder_images(f)
            paths += files
            labels += [index[f.name]] * len(files)
    return _set(images, root, paths, labels, [folder_to_name[f].lower() for f in folders])


SPLITS_1K = ("test", "val")  # CLIP_benchmark's "test" is the validation set
register("imagenet1k", Layout("torchvision ImageNet (val/<wnid>/)", "val/n01440764", read_torchvision),
         splits=SPLITS_1K)
register("imagenet1k", Layout("Kaggle ImageNet (LOC_val_solution.csv, ILSVRC/Data/CLS-LOC/val/)",
                              "LOC_val_solution.csv", read_kaggle), splits=SPLITS_1K)
register("imagenet1k", Layout("ImageNet devkit ground truth + meta.mat, flat ILSVRC2012_img_val/",
                              f"{DEVKIT}/ILSVRC2012_validation_ground_truth.txt", read_devkit), splits=SPLITS_1K)
for _folder in ("ImageNetV2-matched-frequency", "imagenetv2-matched-frequency-format-val"):
    register("imagenetv2", Layout(f"ImageNet-V2 matched frequency ({_folder}/<0..999>/)", _folder,
                                  read_imagenetv2(_folder)))
for _folder in ("sketch", "imagenet-sketch/sketch"):
    register("imagenet_sketch", Layout(f"ImageNet-Sketch ({_folder}/<wnid>/)", _folder,
                                       read_wnid_folders("imagenet_sketch", _folder)))
register("imagenet_sketch", Layout("ImageNet-Sketch class folders in --root", "n01440764",
                                   read_wnid_folders("imagenet_sketch", "")))
# the root-itself layouts are told by their first class folder (in sorted order)
for _name, _first in (("imagenet-a", "n01498041"), ("imagenet-r", "n01443537"), ("imagenet-o", "n01443537")):
    register(_name, Layout(f"{_name} ({_name}/<wnid>/)", _name, read_wnid_folders(_name, _name)))
    register(_name, Layout(f"{_name} class folders in --root", _first, read_wnid_folders(_name, "")))
register("objectnet", Layout("ObjectNet 1.0 (objectnet-1.0/images/ + mapping JSONs)", "objectnet-1.0/images",
                             read_objectnet))
