"""ImageNet-family fixtures: a few real photos as ~48-px images, written the way torchvision, Kaggle, the ILSVRC2012
devkit, ImageNet-V2, ImageNet-Sketch/-A/-R/-O and ObjectNet lay them out.

Expected labels use CLIP_benchmark's own lists (``builder.all_imagenet_wordnet_ids``, the subset lists inline in
``build_dataset``), a source independent of the reader's. Each writer returns ``{"labels": [...], "n": ...,
"ids": [...]}`` in the order the reader lists the images (``ids`` = paths relative to root).
"""

from __future__ import annotations

import ast
import io
import json
import os
import random
import tarfile
from functools import cache
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from tests.real_images import load_photos

WNIDS_1K = ["n01440764", "n01751748", "n02119789", "n04591713", "n15075141"]  # tench, sea snake, kit fox, ...
SEA_SNAKE_ID = 490                                                            # image 1 of the real validation set
# non-leaf synsets, as meta.mat lists after the 1,000 leaves (one is put first to catch a reader slicing [:1000])
INNER = [("n00001740", "entity"), ("n00002684", "object, physical object"), ("n00004475", "organism, being")]


@cache
def _builder_lists() -> dict[str, list[str]]:
    """The wnid lists of CLIP_benchmark's ``datasets/builder.py``, read from its source: importing it needs
    ``requests`` and more, and the subset lists live inside ``build_dataset``."""
    import clip_benchmark.datasets as cb

    wanted = {"all_imagenet_wordnet_ids": "imagenet1k", "imagenet_a_wnids": "imagenet-a",
              "imagenet_r_wnids": "imagenet-r", "imagenet_o_wnids": "imagenet-o"}
    out = {}
    for node in ast.walk(ast.parse((Path(cb.__file__).parent / "builder.py").read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in wanted:
            value = ast.literal_eval(node.value)
            out[wanted[node.targets[0].id]] = list(value) if isinstance(value, list) else sorted(value)
    return out


def all_wnids() -> list[str]:
    """CLIP_benchmark's ``all_imagenet_wordnet_ids`` (the sorted 1k list)."""
    return _builder_lists()["imagenet1k"]


def clip_benchmark_subsets() -> dict[str, list[str]]:
    """``imagenet_{a,r,o}_wnids`` of CLIP_benchmark's ``build_dataset``, sorted."""
    return {k: sorted(v) for k, v in _builder_lists().items() if k != "imagenet1k"}


@cache
def photos(size: int = 48) -> list[Image.Image]:
    return [im.resize((size, size * im.height // im.width)) for im in load_photos().values()]


def image_bytes(i: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    pics = photos()
    pics[i % len(pics)].save(buf, fmt)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _val_labels() -> list[int]:
    """Ten validation images over the five classes; image 1 is a sea snake, as in the real set."""
    return [all_wnids().index(WNIDS_1K[k]) for k in (1, 0, 2, 1, 3, 4, 0, 2, 3, 1)]


def _expected(labels: list[int], ids: list[str]) -> dict:
    return {"labels": labels, "n": len(labels), "ids": ids}


def write_torchvision(root: Path) -> dict:
    """torchvision's ``val/<wnid>/ILSVRC2012_val_%08d.JPEG``."""
    items = sorted((all_wnids()[y], f"ILSVRC2012_val_{n:08d}.JPEG", n) for n, y in enumerate(_val_labels(), 1))
    for wnid, name, n in items:
        _write(root / "val" / wnid / name, image_bytes(n))
    return _expected([all_wnids().index(w) for w, _, _ in items], [f"val/{w}/{name}" for w, name, _ in items])


def write_kaggle(root: Path) -> dict:
    """Kaggle's flat val folder, ``LOC_val_solution.csv`` (rows unordered, one or two boxes) and the mapping."""
    labels = _val_labels()
    names = [f"ILSVRC2012_val_{n:08d}" for n in range(1, len(labels) + 1)]
    for n, name in enumerate(names, 1):
        _write(root / "ILSVRC/Data/CLS-LOC/val" / f"{name}.JPEG", image_bytes(n))
    rows = []
    for name, y in zip(names, labels):
        box = f"{all_wnids()[y]} 10 12 40 44"
        # the label is the first box's wnid; a second box names another class, to tell first from last
        rows.append(f"{name},{box} {all_wnids()[(y + 1) % 1000]} 0 0 8 8" if y % 2 else f"{name},{box} ")
    random.Random(0).shuffle(rows)
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {i}\n" for i, w in enumerate(all_wnids())))
    return _expected(labels, [f"ILSVRC/Data/CLS-LOC/val/{n}.JPEG" for n in names])


def devkit_order() -> list[str]:
    """A meta.mat leaf order (wnid of ILSVRC2012_ID i+1): shuffled, with ID 490 the sea snake as in the devkit."""
    order = list(all_wnids())
    random.Random(0).shuffle(order)
    j = order.index("n01751748")
    order[j], order[SEA_SNAKE_ID - 1] = order[SEA_SNAKE_ID - 1], order[j]
    return order


def write_meta_mat(path: Path, order: list[str]) -> None:
    """``synsets`` as the devkit's meta.mat stores it: a struct array with the devkit's eight fields."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(np.uint16(i), w, f"class {w}", "a gloss", np.uint16(0), np.zeros((1, 0), np.uint16), np.uint8(0),
             np.uint16(1300)) for i, w in enumerate(order, 1)]
    inner = [(np.uint16(1001 + k), w, words, "a gloss", np.uint16(2), np.array([[1, 2]], np.uint16), np.uint8(9 - k),
              np.uint16(0)) for k, (w, words) in enumerate(INNER)]
    rows = inner[:1] + rows + inner[1:]
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in fields])
    for k, row in enumerate(rows):
        synsets[k, 0] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"synsets": synsets}, do_compression=True)


def write_devkit(root: Path) -> dict:
    """The devkit unpacked (ground truth + meta.mat) over a flat ``ILSVRC2012_img_val/``, and beside it the two
    archives torchvision's ``ImageNet`` parses (``ILSVRC2012_devkit_t12.tar.gz``, ``ILSVRC2012_img_val.tar``)."""
    order, labels = devkit_order(), _val_labels()
    data = root / "ILSVRC2012_devkit_t12/data"
    write_meta_mat(data / "meta.mat", order)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{order.index(all_wnids()[y]) + 1}\n" for y in labels))
    names = [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, len(labels) + 1)]
    for n, name in enumerate(names, 1):
        _write(root / "ILSVRC2012_img_val" / name, image_bytes(n))
    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar.add(root / "ILSVRC2012_devkit_t12", "ILSVRC2012_devkit_t12")
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as tar:
        for name in names:
            tar.add(root / "ILSVRC2012_img_val" / name, name)
    return _expected(labels, [f"ILSVRC2012_img_val/{n}" for n in names])


def write_imagenetv2(root: Path, folder: str = "ImageNetV2-matched-frequency") -> dict:
    """``<folder>/<label>/<hash>.jpeg``; labels 0, 2, 10, 999 so that ImageFolder's "10" < "2" order would show."""
    labels, ids = [], []
    for k, label in enumerate((0, 2, 10, 999)):
        for j in range(2):
            name = f"{folder}/{label}/{k:02d}{j}af3e.jpeg"
            _write(root / name, image_bytes(2 * k + j))
            labels.append(label)
            ids.append(name)
    return _expected(labels, ids)


def write_wnid_tree(root: Path, folder: str, wnids: list[str], classes: list[str], per_class: int = 2,
                    ext: str = ".JPEG") -> dict:
    """``root/folder/<wnid>/<i><ext>`` for each of ``wnids``; label = index in ``classes``. With many classes the
    files are hard links of a few, so 1,000 folders take a moment."""
    labels, ids, sources = [], [], {}
    for w in sorted(wnids):
        for j in range(per_class):
            name = str(Path(folder, w, f"{w}_{j}{ext}"))
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            k = (len(ids)) % 6
            if k in sources:
                os.link(sources[k], path)
            else:
                _write(path, image_bytes(k))
                sources[k] = path
            labels.append(classes.index(w))
            ids.append(name)
    return _expected(labels, ids)


def write_sketch(root: Path, folder: str = "sketch", wnids: list[str] | None = None) -> dict:
    return write_wnid_tree(root, folder, wnids or WNIDS_1K, all_wnids())


def write_subset(name: str, root: Path, folder: str | None = None, wnids: list[str] | None = None) -> dict:
    """ImageNet-A/-R/-O: ``<name>/<wnid>/*.jpg`` over a few of its classes (every one when ``wnids`` says so)."""
    subset = clip_benchmark_subsets()[name]
    chosen = wnids or [subset[0], subset[57], subset[123], subset[-1]]
    return write_wnid_tree(root, name if folder is None else folder, chosen, subset, ext=".jpg")


# ObjectNet classes: three that map to ImageNet (one to two 1k classes), two that do not
OBJECTNET = {"alarm_clock": ("Alarm clock", "analog clock; digital clock"), "banana": ("Banana", "banana"),
             "tv": ("TV", "television"), "air_freshener": ("Air freshener", None), "weight_scale": ("Weight scale", None)}


def write_objectnet(root: Path, copy_mappings: bool = True) -> dict:
    """``objectnet-1.0/images/<folder>/*.png`` and ``mappings/`` (copied to root, as CLIP_benchmark does), with
    the two files only its 1k mapping reads (``pytorch_to_imagenet_2012_id.json``, ``imagenet_to_label_2012_v2``)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    maps = root / "objectnet-1.0" / "mappings"
    maps.mkdir(parents=True)
    (maps / "folder_to_objectnet_label.json").write_text(json.dumps({f: n for f, (n, _) in OBJECTNET.items()}))
    (maps / "objectnet_to_imagenet_1k.json").write_text(json.dumps({n: m for n, m in OBJECTNET.values() if m}))
    ids_2012 = list(range(1000))
    random.Random(1).shuffle(ids_2012)
    (maps / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): j for i, j in enumerate(ids_2012)}))
    by_2012 = sorted(range(1000), key=lambda i: ids_2012[i])
    (maps / "imagenet_to_label_2012_v2").write_text("".join(f"{IMAGENET_CLASSNAMES[i]}\n" for i in by_2012))
    if copy_mappings:
        for f in maps.iterdir():
            (root / f.name).write_bytes(f.read_bytes())
    mapped = sorted(f for f, (_, m) in OBJECTNET.items() if m)
    labels, ids = [], []
    for k, folder in enumerate(sorted(OBJECTNET)):
        for j in range(2):
            name = f"objectnet-1.0/images/{folder}/{k}{j}b7c.png"
            _write(root / name, image_bytes(2 * k + j, "PNG"))
            if folder in mapped:
                labels.append(mapped.index(folder))
                ids.append(name)
    return _expected(labels, ids)


WRITERS = {
    "imagenet1k": write_torchvision,
    "imagenetv2": write_imagenetv2,
    "imagenet_sketch": write_sketch,
    "imagenet-a": lambda root: write_subset("imagenet-a", root),
    "imagenet-r": lambda root: write_subset("imagenet-r", root),
    "imagenet-o": lambda root: write_subset("imagenet-o", root),
    "objectnet": write_objectnet,
}
# every layout the readers know, for the tests: (dataset, layout) → writer
LAYOUTS = {
    ("imagenet1k", "torchvision"): write_torchvision,
    ("imagenet1k", "kaggle"): write_kaggle,
    ("imagenet1k", "devkit"): write_devkit,
    ("imagenetv2", "clip_benchmark"): write_imagenetv2,
    ("imagenetv2", "archive"): lambda root: write_imagenetv2(root, "imagenetv2-matched-frequency-format-val"),
    ("imagenet_sketch", "sketch"): write_sketch,
    ("imagenet_sketch", "hf"): lambda root: write_sketch(root, "imagenet-sketch/sketch"),
    ("imagenet_sketch", "root"): lambda root: write_sketch(root, ""),
    **{(n, "folder"): (lambda root, n=n: write_subset(n, root)) for n in ("imagenet-a", "imagenet-r", "imagenet-o")},
    **{(n, "root"): (lambda root, n=n: write_subset(n, root, "")) for n in ("imagenet-a", "imagenet-r", "imagenet-o")},
    ("objectnet", "root_mappings"): write_objectnet,
    ("objectnet", "mappings_folder"): lambda root: write_objectnet(root, copy_mappings=False),
}
