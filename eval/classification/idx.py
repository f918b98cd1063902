"""MNIST, Fashion-MNIST, KMNIST and EMNIST: IDX files in torchvision's layout, memory-mapped.

The IDX format (LeCun et al., yann.lecun.com/exdb/mnist): a big-endian int32 magic ``0x0000 | type | ndim``
(type 0x08 = unsigned bytes), then ``ndim`` big-endian int32 sizes, then the values row-major. An image file
has magic 2051 and sizes [N, rows, cols]; a label file 2049 and [N]. torchvision keeps the files under
``<root>/<class name>/raw/`` (``MNIST``, ``FashionMNIST``, ``KMNIST``, ``EMNIST``) as
``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, EMNIST's as ``emnist-<split>-{train,test}-...``, with the
downloaded ``.gz`` beside them; either form is read here (the plain file first, as torchvision reads only it).

A plain file's length must be exactly the header plus the product of its sizes, and it is memory-mapped. A
``.gz`` is inflated in chunks into an anonymous temporary file, stopping at one byte past the length its header
declares (and never past ``MAX_IDX_BYTES``), so neither a forged size nor a gzip bomb allocates memory.

EMNIST (Cohen et al. 2017) stores every image transposed (its files were converted from column-major MATLAB
arrays); torchvision's ``EMNIST`` returns them as stored, so its letters lie on their side. Here they are
transposed back, upright as in MNIST, since a CLIP model is asked to read them. CLIP_benchmark has no EMNIST; its
``balanced`` split (47 classes, torchvision's names) is the one registered as ``emnist``. Class names are
torchvision's for all four; CLIP_benchmark replaces MNIST's by ``'0'…'9'`` later.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from mmcontrast.errors import UserError

from ..sets import ClassificationSet, RecordImages, check_classification
from .registry import Layout, register

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
UBYTE = 0x08
MAX_SIDE = 4096              # rows and columns of one image
MAX_IDX_BYTES = 2 << 30      # EMNIST byclass's train images, the largest published, are 549 MB
CHUNK = 1 << 20
EMNIST_SPLIT = "balanced"


def _header(head: bytes, path: Path, magic: int) -> tuple[int, tuple[int, ...]]:
    """The header's length and sizes, if ``head`` (its first bytes) starts an unsigned-byte IDX file of ``magic``."""
    kind = "image" if magic == IMAGES_MAGIC else "label"
    if len(head) < 4 or struct.unpack(">i", head[:4])[0] != magic:
        found = f"magic {struct.unpack('>i', head[:4])[0]}" if len(head) >= 4 else f"{len(head)} bytes"
        raise UserError(f"{path}: {found}; an IDX {kind} file starts with magic {magic} "
                        f"(0x{magic:08x}: unsigned bytes, {magic & 0xFF} dimensions)")
    ndim = magic & 0xFF
    end = 4 + 4 * ndim
    if len(head) < end:
        raise UserError(f"{path}: truncated IDX header ({len(head)} of {end} bytes)")
    dims = struct.unpack(f">{ndim}I", head[4:end])
    if ndim == 3 and not (0 < dims[1] <= MAX_SIDE and 0 < dims[2] <= MAX_SIDE):
        raise UserError(f"{path}: images of {dims[1]} × {dims[2]} pixels; IDX images have 1–{MAX_SIDE} per side")
    return end, dims


def _inflate(path: Path, magic: int) -> tuple[object, int, tuple[int, ...]]:
    """A temporary file holding the decompressed ``path``, checked to be exactly as long as its header says."""
    out = tempfile.TemporaryFile()
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(16)
            start, dims = _header(head, path, magic)
            want = start + int(np.prod(dims, dtype=object))
            if want > MAX_IDX_BYTES:
                raise UserError(f"{path}: declares {want:,} bytes, above the {MAX_IDX_BYTES:,} any IDX set needs")
            out.write(head)
            got = len(head)
            while got <= want:  # read one byte past the declared end, to catch trailing data
                piece = f.read(min(CHUNK, want + 1 - got))
                if not piece:
                    break
                out.write(piece)
                got += len(piece)
    except (OSError, EOFError, zlib.error) as e:
        out.close()
        raise UserError(f"{path}: not a readable gzip file ({e})") from None
    except UserError:
        out.close()
        raise
    if got != want:
        out.close()
        amount = f"more bytes than the {want:,}" if got > want else f"{got:,} bytes, not the {want:,}"
        raise UserError(f"{path}: decompresses to {amount} its IDX header declares "
                        f"({' × '.join(map(str, dims))} values after {start} header bytes)")
    out.flush()
    return out, start, dims


def found(path: Path) -> Path:
    """``path``, or its ``.gz`` where only that exists; one line if neither does."""
    if path.exists():
        return path
    if path.with_name(path.name + ".gz").exists():
        return path.with_name(path.name + ".gz")
    raise UserError(f"IDX file not found: {path} (nor {path.name}.gz)")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 values of the IDX file ``path`` (plain, or gzip when its name ends ``.gz``), memory-mapped and
    shaped by its header."""
    if path.suffix != ".gz":
        try:
            with open(path, "rb") as f:
                start, dims = _header(f.read(16), path, magic)
            size = path.stat().st_size
        except OSError as e:
            raise UserError(f"{path} cannot be read ({e})") from None
        want = start + int(np.prod(dims, dtype=object))
        if size != want:
            raise UserError(f"{path}: {size:,} bytes; its IDX header declares {want:,} "
                            f"({' × '.join(map(str, dims))} values after {start} header bytes): truncated or padded")
        source = path
    else:
        source, start, dims = _inflate(path, magic)
    if not all(dims):
        raise UserError(f"{path}: an IDX file of sizes {list(dims)} holds no values")
    # the memory map holds its own handle on the file, so an anonymous temporary file lives as long as it does
    return np.memmap(source, np.uint8, mode="r", offset=start, shape=dims)


@dataclass(frozen=True)
class IdxSet:
    name: str
    folder: str                       # torchvision's class name, the folder under root
    files: dict[str, str]             # split → the file stem before -images-idx3-ubyte / -labels-idx1-ubyte
    transposed: bool = False


SETS = [
    IdxSet("mnist", "MNIST", {"test": "t10k", "train": "train"}),
    IdxSet("fashion_mnist", "FashionMNIST", {"test": "t10k", "train": "train"}),
    IdxSet("kmnist", "KMNIST", {"test": "t10k", "train": "train"}),
    IdxSet("emnist", "EMNIST", {s: f"emnist-{EMNIST_SPLIT}-{s}" for s in ("test", "train")}, transposed=True),
]


def _classnames(spec: IdxSet) -> list[str]:
    from torchvision import datasets

    if spec.folder == "EMNIST":
        return list(datasets.EMNIST.classes_split_dict[EMNIST_SPLIT])
    return list(getattr(datasets, spec.folder).classes)


def read_idx_set(root: Path, split: str, spec: IdxSet) -> ClassificationSet:
    raw = root / spec.folder / "raw"
    images_path = found(raw / f"{spec.files[split]}-images-idx3-ubyte")
    labels_path = found(raw / f"{spec.files[split]}-labels-idx1-ubyte")
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(labels) != len(images):
        raise UserError(f"{labels_path}: {len(labels):,} labels for the {len(images):,} images of {images_path.name}")

    def get(i: int) -> Image.Image:
        pixels = images[i].T if spec.transposed else images[i]
        return Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")

    identity = [str(images_path.resolve()), images_path.stat().st_size]
    return check_classification(ClassificationSet(spec.name, str(images_path), RecordImages(len(images), get, identity),
                                                  np.asarray(labels).tolist(), _classnames(spec), []),
                                names_from=f"torchvision's {spec.folder} classes")


for _spec in SETS:
    register(_spec.name, Layout(f"torchvision {_spec.folder} IDX files ({_spec.folder}/raw/)", f"{_spec.folder}/raw",
                                partial(read_idx_set, spec=_spec)), splits=("test", "train"))
