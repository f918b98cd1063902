"""MNIST, Fashion-MNIST, KMNIST and EMNIST written as IDX files in torchvision's layout
(``<root>/<class name>/raw/``), from scikit-learn's real digits upscaled to 28 × 28.

Both splits are written as torchvision leaves a download: each ``.gz`` with its decompressed file beside it
(torchvision reads only the latter, and wants all four). EMNIST's images are stored transposed, as in the published files.
Each writer returns, per split, the labels, the upright pixels [N, 28, 28, 3] and torchvision's class names;
``sizes`` ({split: images}) writes more (scikit-learn has 1,797 digits in all).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = {"test": 14, "train": 9}


def idx_bytes(values: np.ndarray, magic: int) -> bytes:
    """An IDX file: the big-endian magic, the sizes, then the uint8 values row-major."""
    assert values.dtype == np.uint8 and values.ndim == magic & 0xFF
    return struct.pack(f">i{values.ndim}I", magic, *values.shape) + np.ascontiguousarray(values).tobytes()


def _digits(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scikit-learn digits as MNIST draws them (white ink on black, 28 × 28) and their digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [np.asarray(Image.fromarray((im * 16).clip(0, 255).astype(np.uint8)).resize((28, 28), Image.BILINEAR))
              for im in digits.images[offset:offset + n]]
    return np.stack(images), digits.target[offset:offset + n].astype(np.int64)


def _write(root: Path, folder: str, stems: dict[str, str], classes: int, transposed: bool, names: list[str],
           sizes: dict[str, int]) -> dict:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out, offset = {}, 0
    for split, n in sizes.items():
        images, digits = _digits(n, offset)
        labels = (digits + 10 * (np.arange(n) % 5)) % classes  # past the ten digits where there are more classes
        offset += n
        stored = images.transpose(0, 2, 1) if transposed else images
        for kind, data, magic in (("images-idx3", stored, 2051), ("labels-idx1", labels.astype(np.uint8), 2049)):
            path = raw / f"{stems[split]}-{kind}-ubyte"
            content = idx_bytes(data, magic)
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(content))
            path.write_bytes(content)
        out[split] = {"labels": labels.tolist(), "pixels": np.repeat(images[..., None], 3, axis=-1),
                      "classnames": names}
    return out


def _torchvision_names(folder: str) -> list[str]:
    from torchvision import datasets

    cls = getattr(datasets, folder)
    return list(cls.classes_split_dict["balanced"] if folder == "EMNIST" else cls.classes)


def _writer(folder: str, stems: dict[str, str], transposed: bool = False):
    def write(root: Path, sizes: dict[str, int] | None = None) -> dict:
        names = _torchvision_names(folder)
        return _write(root, folder, stems, len(names), transposed, names, sizes or SIZES)
    return write


MNIST_STEMS = {"test": "t10k", "train": "train"}
WRITERS = {
    "mnist": _writer("MNIST", MNIST_STEMS),
    "fashion_mnist": _writer("FashionMNIST", MNIST_STEMS),
    "kmnist": _writer("KMNIST", MNIST_STEMS),
    "emnist": _writer("EMNIST", {s: f"emnist-balanced-{s}" for s in SIZES}, transposed=True),
}
