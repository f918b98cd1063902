"""Compositionality benchmarks as caption-selection sets, read from the files their authors publish.

- SugarCrepe (Hsieh et al., 2023): ``ROOT/<category>.json`` (CLIP_benchmark's place) or
  ``ROOT/data/<category>.json`` (the repository's), each ``{"0": {"filename", "caption",
  "negative_caption"}, ...}`` (keys may skip numbers), images in ``ROOT/val2017/`` (COCO val2017).
- Winoground (Thrush et al., 2022): ``examples.jsonl`` (``id, image_0, image_1, caption_0, caption_1``,
  tags) in ``ROOT`` or ``ROOT/data``, images ``images/<image_0>.png`` beside it (``images.zip`` unpacked).
- ARO (Yuksekgonul et al., 2023): ``ROOT/visual_genome_relation.json`` or
  ``ROOT/visual_genome_attribution.json`` (``image_path``, ``bbox_x/y/w/h``, ``true_caption``,
  ``false_caption``, ``relation_name`` or ``attributes``), images ``ROOT/images/<image_path>`` cropped to
  the box as ARO crops them.
- The generated shapes set (``python -m data_prep compositional``): SugarCrepe's layout with images in
  ``ROOT/images/``, and Winoground's (``examples.jsonl`` in ``ROOT`` or ``ROOT/winoground``).

Every item lists its images and captions by index into the set's unique images and texts; image k's true
caption is caption k, the others are negatives (ARO's ``[false, true]`` order becomes ``[true, false]``:
the strict rule makes the order irrelevant).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image

from mmcontrast.data.annotations import read_json
from mmcontrast.errors import UserError

from .sets import FileImages

SUGAR_CREPE = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
DATASETS = ("sugar_crepe", "winoground", "aro_vgr", "aro_vga", "shapes")
ARO_FILES = {"aro_vgr": ("visual_genome_relation.json", "relation_name"),
             "aro_vga": ("visual_genome_attribution.json", "attributes")}


@dataclass(frozen=True)
class Item:
    """One test case: ``images`` and ``captions`` index the set's unique images and texts."""
    category: str             # sugar_crepe/swap_att, winoground, an ARO relation or attribute pair
    images: tuple[int, ...]
    captions: tuple[int, ...]
    id: str                   # file and key, for reports


class CroppedImages(FileImages):
    """Image files read whole, then cropped to a box (x, y, w, h), as ARO reads VG-Relation/Attribution."""

    def __init__(self, paths: Sequence[str | Path], boxes: Sequence[tuple[float, float, float, float]]):
        super().__init__(paths)
        self.boxes = list(boxes)

    def image(self, i: int) -> Image.Image:
        x, y, w, h = self.boxes[i]
        return super().image(i).crop((x, y, x + w, y + h))

    def fingerprint(self) -> list:
        return super().fingerprint() + [self.boxes]


@dataclass
class SelectionSet:
    """Test cases over unique images and captions; ``kind`` chooses the metric rule (``eval.compositional``)."""
    name: str
    kind: str                 # sugar_crepe | winoground | aro_vgr | aro_vga | shapes
    files: list[str]          # every annotation file read
    images: FileImages
    texts: list[str]
    items: list[Item]

    @property
    def source(self) -> str:
        return self.files[0]

    def __len__(self) -> int:
        return len(self.items)

    def categories(self) -> list[str]:
        return list(dict.fromkeys(item.category for item in self.items))


class _Builder:
    """Collects items, giving each distinct image (path and box) and caption one index."""

    def __init__(self):
        self.images: dict[tuple, int] = {}
        self.texts: dict[str, int] = {}
        self.items: list[Item] = []

    def add(self, category: str, images: list[tuple], captions: list[str], id_: str) -> None:
        self.items.append(Item(category, tuple(self.images.setdefault(i, len(self.images)) for i in images),
                               tuple(self.texts.setdefault(c, len(self.texts)) for c in captions), id_))

    def build(self, name: str, kind: str, files: list[Path], cropped: bool = False) -> SelectionSet:
        keys = list(self.images)
        images = (CroppedImages([k[0] for k in keys], [k[1] for k in keys]) if cropped
                  else FileImages([k[0] for k in keys]))
        return SelectionSet(name, kind, [str(f) for f in files], images, list(self.texts), self.items)


def _text(value, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: {field} is {str(value)[:60]!r}, not a non-empty string; fix or remove the item")
    return value.strip()


def _first_file(candidates: list[Path], what: str) -> Path:
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise UserError(f"{what} not found; looked for {', '.join(map(str, candidates))}")
    return found


def _image(dirs: list[Path], name: str, where: str, suffixes: tuple[str, ...] = ("",)) -> tuple:
    for d in dirs:
        for s in suffixes:
            if (d / (name + s)).is_file():
                return (str(d / (name + s)),)
    looked = " or ".join(str(d) for d in dirs)
    raise UserError(f"{where} names image {name[:80]!r}, found in none of {looked}; is --root the folder that "
                    "holds the images?")


def _sugar_crepe_file(path: Path, category: str, label: str, dirs: list[Path], out: _Builder) -> None:
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a SugarCrepe category file: a JSON object "
                        '{"0": {"filename", "caption", "negative_caption"}, ...}')
    if not data:
        raise UserError(f"{path}: no items; a SugarCrepe category file holds at least one "
                        '{"filename", "caption", "negative_caption"}')
    for key, value in data.items():
        where = f"{path}: item {key[:40]!r}"
        if not isinstance(value, dict):
            raise UserError(f"{where} is not an object with filename, caption and negative_caption")
        image = _image(dirs, _text(value.get("filename"), where, "filename"), where)
        captions = [_text(value.get(f), where, f) for f in ("caption", "negative_caption")]
        out.add(f"{label}/{category}", [image], captions, f"{path.name}:{key}")


def _add_sugar_crepe(root: Path, categories: Sequence[str], name: str, out: _Builder) -> list[Path]:
    dirs = [root / "val2017", root / "images", root]
    files = []
    for category in categories:
        path = _first_file([root / f"{category}.json", root / "data" / f"{category}.json"],
                           f"the {name} category file {category}.json")
        _sugar_crepe_file(path, category, name, dirs, out)
        files.append(path)
    return files


def read_sugar_crepe(root: str | Path, categories: Sequence[str] = SUGAR_CREPE) -> SelectionSet:
    """SugarCrepe's category files under ``root`` (or ``root/data``), images in ``root/val2017`` (COCO),
    ``root/images`` or ``root``."""
    out = _Builder()
    files = _add_sugar_crepe(Path(root), categories, "sugar_crepe", out)
    return out.build("sugar_crepe", "sugar_crepe", files)


def _winoground_rows(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not a JSON object ({e})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: not a JSON object")
        yield n, row


def _add_winoground(root: Path, name: str, places: Sequence[str], out: _Builder) -> Path:
    path = _first_file([root / p / "examples.jsonl" for p in places], "Winoground's examples.jsonl")
    dirs = [path.parent / "images", path.parent]
    before = len(out.items)
    for n, row in _winoground_rows(path):
        where = f"{path}:{n}: example {str(row.get('id', n - 1))[:40]!r}"
        missing = [f for f in ("caption_0", "caption_1") if not isinstance(row.get(f), str) or not row[f].strip()]
        if missing:
            raise UserError(f"{where} lacks {' and '.join(missing)}: a Winoground example needs both captions "
                            "(and image_0, image_1)")
        images = [_image(dirs, _text(row.get(f), where, f), where, ("", ".png", ".jpg"))
                  for f in ("image_0", "image_1")]
        out.add(name, images, [row["caption_0"].strip(), row["caption_1"].strip()], f"{path.name}:{row.get('id', n)}")
    if len(out.items) == before:
        raise UserError(f"{path}: no examples")
    return path


def read_winoground(root: str | Path) -> SelectionSet:
    """Winoground's ``examples.jsonl`` in ``root`` or ``root/data``; images ``images/<image_0>.png`` beside it."""
    out = _Builder()
    path = _add_winoground(Path(root), "winoground", (".", "data"), out)
    return out.build("winoground", "winoground", [path])


def read_aro(root: str | Path, kind: str) -> SelectionSet:
    """ARO's VG-Relation (``kind`` aro_vgr) or VG-Attribution (aro_vga) JSON list; images in ``root/images``."""
    root = Path(root)
    file_name, group_field = ARO_FILES[kind]
    path = root / file_name
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise UserError(f"{path}: expected a non-empty JSON list of test cases (ARO's {file_name})")
    dirs, out = [root / "images"], _Builder()
    for n, case in enumerate(data):
        where = f"{path}: case {n}"
        if not isinstance(case, dict):
            raise UserError(f"{where} is not an object")
        group = case.get(group_field)
        if kind == "aro_vga":
            if not (isinstance(group, list) and len(group) == 2 and all(isinstance(a, str) for a in group)):
                raise UserError(f"{where}: attributes must be a list of two strings, got {str(group)[:60]!r}")
            group = f"{group[0]}_{group[1]}"  # ARO's name for the pair
        group = _text(group, where, group_field)
        try:
            box = tuple(float(case[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: needs numbers bbox_x, bbox_y, bbox_w, bbox_h (the region ARO crops)") from None
        image = _image(dirs, _text(case.get("image_path"), where, "image_path"), where) + (box,)
        captions = [_text(case.get(f), where, f) for f in ("true_caption", "false_caption")]
        out.add(group, [image], captions, f"{file_name}:{n}")
    return out.build(kind, kind, [path], cropped=True)


def read_shapes(root: str | Path, categories: Sequence[str] = SUGAR_CREPE) -> SelectionSet:
    """The generated shapes set: its SugarCrepe-layout categories (``shapes_crepe/<category>``) plus, when
    written, its Winoground-style pairs (``shapes_winoground``; ``examples.jsonl`` in ``root`` or
    ``root/winoground``)."""
    root, out = Path(root), _Builder()
    files = _add_sugar_crepe(root, categories, "shapes_crepe", out)
    places = (".", "winoground")
    if any((root / p / "examples.jsonl").is_file() for p in places):
        files.append(_add_winoground(root, "shapes_winoground", places, out))
    return out.build("shapes", "shapes", files)


def open_selection_set(spec: str, root: str | Path | None) -> SelectionSet:
    """``--dataset`` → a set: sugar_crepe, shapes (optionally ``/<category>[,<category>]``), winoground,
    aro_vgr or aro_vga, read under ``--root``."""
    name, _, chosen = spec.partition("/")
    if name not in DATASETS:
        raise UserError(f"unknown compositional dataset {spec!r}: {', '.join(DATASETS)} "
                        "(sugar_crepe/CATEGORY and shapes/CATEGORY for one category)")
    if root is None:
        raise UserError(f"--dataset {spec} needs --root DIR (the folder with its annotation files and images)")
    if not Path(root).is_dir():
        raise UserError(f"--root {root}: no such folder")
    categories = tuple(chosen.split(",")) if chosen else SUGAR_CREPE
    if chosen and name not in ("sugar_crepe", "shapes"):
        raise UserError(f"--dataset {spec}: only sugar_crepe and shapes have categories")
    unknown = [c for c in categories if c not in SUGAR_CREPE]
    if unknown:
        raise UserError(f"--dataset {spec}: unknown category {unknown[0]!r}; the categories are "
                        f"{', '.join(SUGAR_CREPE)}")
    if name == "sugar_crepe":
        return read_sugar_crepe(root, categories)
    if name == "shapes":
        return read_shapes(root, categories)
    if name == "winoground":
        return read_winoground(root)
    return read_aro(root, name)
