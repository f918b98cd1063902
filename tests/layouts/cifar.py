"""CIFAR-10 and CIFAR-100 written as the published archives hold them, from the real photos of
``tests/real_images.py`` downscaled to 32 × 32.

The python version's batches are pickles as Python 2's cPickle wrote them (protocol 2): byte strings as
``BINSTRING`` opcodes, the array through numpy 1.x's ``numpy.core.multiarray._reconstruct`` with its raw bytes as
a string. Python 3 cannot write that (its protocol 2 goes through ``_codecs.encode``), so ``py2_pickle`` emits the
opcodes itself. The binary version is records of label byte(s) and 3072 pixel bytes, names one per line.
``WRITERS`` write the python version (torchvision's layout), ``BINARY_WRITERS`` the binary one, of the same
images; each returns, per split, the labels, the pixels [N, 32, 32, 3] and the class names.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..real_images import load_photos

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle "
    "caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant "
    "flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man "
    "maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train "
    "trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
CIFAR100_COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2").split()
# (split, batch files, images per file); CIFAR-10's train split is five batches, as published
CIFAR10_FILES = [("test", ["test_batch"], 20), ("train", [f"data_batch_{k}" for k in range(1, 6)], 4)]
CIFAR100_FILES = [("test", ["test"], 12), ("train", ["train"], 8)]


def _py2(obj, out: bytearray) -> None:
    """Append the protocol-2 opcodes by which Python 2's cPickle writes ``obj``."""
    if obj is None:
        out += b"N"
    elif isinstance(obj, bool):
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, int):
        out += (b"K" + struct.pack("<B", obj) if 0 <= obj < 256 else
                b"M" + struct.pack("<H", obj) if 0 <= obj < 65536 else b"J" + struct.pack("<i", obj))
    elif isinstance(obj, (str, bytes)):  # a Python 2 str: bytes
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        out += b"U" + struct.pack("<B", len(data)) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data
    elif isinstance(obj, tuple):
        if 1 <= len(obj) <= 3:
            for item in obj:
                _py2(item, out)
            out += b"\x85\x86\x87"[len(obj) - 1:len(obj)]
        else:
            out += b"("
            for item in obj:
                _py2(item, out)
            out += b"t"
    elif isinstance(obj, list):
        out += b"]("
        for item in obj:
            _py2(item, out)
        out += b"e"
    elif isinstance(obj, dict):
        out += b"}("
        for key, value in obj.items():
            _py2(key, out)
            _py2(value, out)
        out += b"u"
    elif isinstance(obj, np.ndarray):  # numpy 1.x: _reconstruct(ndarray, (0,), 'b'), then the state
        assert obj.dtype == np.uint8
        out += b"cnumpy.core.multiarray\n_reconstruct\n"
        out += b"cnumpy\nndarray\n"
        _py2((0,), out)
        _py2("b", out)
        out += b"\x87R"
        out += b"("
        _py2(1, out)
        _py2(tuple(obj.shape), out)
        out += b"cnumpy\ndtype\n"
        _py2(("u1", 0, 1), out)
        out += b"R"
        _py2((3, "|", None, None, None, -1, -1, 0), out)
        out += b"b"
        _py2(False, out)
        _py2(np.ascontiguousarray(obj).tobytes(), out)
        out += b"tb"
    else:
        raise TypeError(type(obj))


def py2_pickle(obj) -> bytes:
    out = bytearray(b"\x80\x02")
    _py2(obj, out)
    return bytes(out + b".")


def _pixels(n: int, offset: int) -> np.ndarray:
    """``n`` distinct 32 × 32 RGB images [n, 32, 32, 3]: the photos, mirrored on the second pass."""
    photos = list(load_photos().values())
    out = []
    for k in range(offset, offset + n):
        image = np.asarray(photos[k % len(photos)].resize((32, 32)))
        out.append(image[:, ::-1] if (k // len(photos)) % 2 else image)
    return np.ascontiguousarray(np.stack(out))


def _rows(pixels: np.ndarray) -> np.ndarray:
    """[N, 32, 32, 3] → CIFAR's rows [N, 3072]: the red plane, then green, then blue, each row-major."""
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)).reshape(len(pixels), 3072)


def _splits(files: list, classes: int, step: int) -> list[tuple[str, str, np.ndarray, list[int]]]:
    """(split, file, pixels, labels) for every batch file; labels spread over the classes."""
    batches, k = [], 0
    for split, names, per_file in files:
        for name in names:
            labels = [(step * (k + j)) % classes for j in range(per_file)]
            batches.append((split, name, _pixels(per_file, k), labels))
            k += per_file
    return batches


def _expected(batches, names: list[str]) -> dict:
    out: dict = {}
    for split, _, pixels, labels in batches:
        entry = out.setdefault(split, {"labels": [], "pixels": [], "classnames": names})
        entry["labels"] += labels
        entry["pixels"].append(pixels)
    for entry in out.values():
        entry["pixels"] = np.concatenate(entry["pixels"])
    return out


def write_cifar10(root: Path) -> dict:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    batches = _splits(CIFAR10_FILES, 10, 1)
    for split, name, pixels, labels in batches:
        label = "testing batch 1 of 1" if split == "test" else f"training batch {name[-1]} of 5"
        entry = {"batch_label": label, "labels": labels, "data": _rows(pixels),
                 "filenames": [f"photo_s_{k:06d}.png" for k in range(len(labels))]}
        (base / name).write_bytes(py2_pickle(entry))
    meta = {"num_cases_per_batch": len(batches[0][3]), "label_names": CIFAR10_NAMES, "num_vis": 3072}
    (base / "batches.meta").write_bytes(py2_pickle(meta))
    return _expected(batches, CIFAR10_NAMES)


def write_cifar100(root: Path) -> dict:
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    batches = _splits(CIFAR100_FILES, 100, 7)
    for split, name, pixels, labels in batches:
        entry = {"filenames": [f"photo_s_{k:06d}.png" for k in range(len(labels))],
                 "batch_label": f"{'testing' if split == 'test' else 'training'} batch 1 of 1",
                 "fine_labels": labels, "coarse_labels": [y // 5 for y in labels],  # coarse: unused by the readers
                 "data": _rows(pixels)}
        (base / name).write_bytes(py2_pickle(entry))
    meta = {"fine_label_names": CIFAR100_NAMES, "coarse_label_names": CIFAR100_COARSE}
    (base / "meta").write_bytes(py2_pickle(meta))
    return _expected(batches, CIFAR100_NAMES)


def write_cifar10_binary(root: Path) -> dict:
    base = root / "cifar-10-batches-bin"
    base.mkdir(parents=True, exist_ok=True)
    batches = _splits(CIFAR10_FILES, 10, 1)
    for _, name, pixels, labels in batches:
        records = np.concatenate([np.asarray(labels, np.uint8)[:, None], _rows(pixels)], axis=1)  # [N, 3073]
        (base / f"{name}.bin").write_bytes(records.tobytes())
    (base / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    return _expected(batches, CIFAR10_NAMES)


def write_cifar100_binary(root: Path) -> dict:
    base = root / "cifar-100-binary"
    base.mkdir(parents=True, exist_ok=True)
    batches = _splits(CIFAR100_FILES, 100, 7)
    for _, name, pixels, labels in batches:
        fine = np.asarray(labels, np.uint8)[:, None]
        records = np.concatenate([fine // 5, fine, _rows(pixels)], axis=1)  # [N, 3074]: coarse, fine, pixels
        (base / f"{name}.bin").write_bytes(records.tobytes())
    (base / "fine_label_names.txt").write_text("\n".join(CIFAR100_NAMES) + "\n")
    (base / "coarse_label_names.txt").write_text("\n".join(CIFAR100_COARSE) + "\n")
    return _expected(batches, CIFAR100_NAMES)


WRITERS = {"cifar10": write_cifar10, "cifar100": write_cifar100}
BINARY_WRITERS = {"cifar10": write_cifar10_binary, "cifar100": write_cifar100_binary}
