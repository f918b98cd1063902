"""SVHN, STL-10, PCam and FER2013 written as their published files are: MAT-files by scipy's ``savemat`` (test
compressed, as the published ones are; train plain), STL-10's column-major binaries, PCam's HDF5 by h5py,
FER2013's challenge CSV and the Kaggle folders of JPEGs. Images are scikit-learn's digits (SVHN, FER) and the
real photos of ``tests/real_images.py`` (STL-10, PCam), downscaled. Each writer returns, per split, the labels
(in the reader's class order) and the pixels [N, H, W, 3] it wrote."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..real_images import load_photos

STL_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
FER_FOLDERS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
FER_CODES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # the challenge's 0..6


def _digits(n: int, size: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scikit-learn digits [n, size, size] uint8 (dark ink on light) and their digits 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = [np.asarray(Image.fromarray((255 - im * 16).clip(0, 255).astype(np.uint8)).resize((size, size)))
            for im in digits.images[offset:offset + n]]
    return np.stack(grey), digits.target[offset:offset + n].astype(np.int64)


def _photos(n: int, size: int, offset: int = 0) -> np.ndarray:
    photos = list(load_photos().values())
    return np.stack([np.asarray(photos[(offset + k) % len(photos)].resize((size, size))) for k in range(n)])


def write_svhn(root: Path) -> dict:
    """``{split}_32x32.mat`` with X uint8 [32, 32, 3, N] and y double [N, 1], 10 standing for the digit 0."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, offset, compress in (("test", 24, 0, True), ("train", 12, 100, False)):
        grey, digits = _digits(n, 32, offset)
        rgb = np.stack([grey, 255 - grey, grey // 2 + 64], axis=-1)  # three different channels
        y = np.where(digits == 0, 10, digits).astype(np.float64)[:, None]
        savemat(root / f"{split}_32x32.mat", {"X": np.ascontiguousarray(rgb.transpose(1, 2, 3, 0)), "y": y},
                do_compression=compress)
        out[split] = {"labels": digits.tolist(), "pixels": rgb}
    return out


def write_stl10(root: Path) -> dict:
    """``stl10_binary/{split}_{X,y}.bin``: 3×96×96 bytes per image, each channel column-major; labels 1..10."""
    base = root / "stl10_binary"
    base.mkdir(parents=True, exist_ok=True)
    (base / "class_names.txt").write_text("\n".join(STL_NAMES) + "\n")
    out = {}
    for split, n, offset in (("test", 12, 0), ("train", 6, 5)):
        rgb = _photos(n, 96, offset)
        labels = (np.arange(n) * 7 + offset) % 10
        (base / f"{split}_X.bin").write_bytes(np.ascontiguousarray(rgb.transpose(0, 3, 2, 1)).tobytes())
        (base / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        out[split] = {"labels": labels.tolist(), "pixels": rgb}
    return out


def write_pcam(root: Path) -> dict:
    """``pcam/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``: x uint8 [N, 96, 96, 3], y [N, 1, 1, 1]."""
    import h5py

    base = root / "pcam"
    base.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, word, n, offset in (("test", "test", 8, 0), ("val", "valid", 4, 3), ("train", "train", 4, 7)):
        rgb = _photos(n, 96, offset)
        labels = np.arange(n) % 2
        with h5py.File(base / f"camelyonpatch_level_2_split_{word}_x.h5", "w") as f:
            f.create_dataset("x", data=rgb, chunks=(1, 96, 96, 3), compression="gzip")
        with h5py.File(base / f"camelyonpatch_level_2_split_{word}_y.h5", "w") as f:
            f.create_dataset("y", data=labels.astype(np.uint8).reshape(n, 1, 1, 1))
        out[split] = {"labels": labels.tolist(), "pixels": rgb}
    return out


def write_fer2013(root: Path, rows: int = 28) -> dict:
    """The same 48×48 grey faces twice: ``fer2013/fer2013.csv`` (emotion,pixels,Usage) and the Kaggle folders
    ``fer2013/{train,test}/<emotion>/<Usage>_<row>.jpg``, ``rows`` faces (a multiple of 14, half of them test).
    Labels in folder order; ``files`` in CSV order."""
    assert rows % 14 == 0 and rows <= 1400, rows  # every emotion in both splits; scikit-learn's digits from 300
    base = root / "fer2013"
    grey, _ = _digits(rows, 48, 300)
    codes = np.arange(rows) % 7  # every emotion in both splits, as ImageFolder needs
    usage = ["Training" if k // 7 % 2 == 0 else ("PublicTest", "PrivateTest")[k % 2] for k in range(rows)]
    rows = [["emotion", "pixels", "Usage"]]
    out = {"train": {"labels": [], "pixels": [], "files": []}, "test": {"labels": [], "pixels": [], "files": []}}
    for k, (im, code, use) in enumerate(zip(grey, codes, usage)):
        rows.append([str(code), " ".join(str(v) for v in im.ravel()), use])
        split = "train" if use == "Training" else "test"
        name = FER_CODES[code]
        path = base / split / name / f"{use}_{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=95)
        path.write_bytes(buf.getvalue())
        out[split]["labels"].append(FER_FOLDERS.index(name))
        out[split]["pixels"].append(np.repeat(im[:, :, None], 3, axis=2))
        out[split]["files"].append(path)
    with open(base / "fer2013.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    for split in out:
        out[split]["pixels"] = np.stack(out[split]["pixels"])
    return out


WRITERS = {"svhn": write_svhn, "stl10": write_stl10, "pcam": write_pcam, "fer2013": write_fer2013}
