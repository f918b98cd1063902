"""CIFAR (python and binary versions) and IDX (MNIST family) readers: the same pixels, labels and class names as
torchvision on the same files, the restricted unpickler, and one line for each kind of bad file."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from eval.classification import cifar, idx, registry, safe_pickle
from mmcontrast.errors import UserError
from tests.layouts import cifar as cifar_layout
from tests.layouts import idx as idx_layout

SPECS = {"cifar10": cifar.CIFAR10, "cifar100": cifar.CIFAR100}
IDX_SPECS = {spec.name: spec for spec in idx.SETS}


def pixels(ds) -> np.ndarray:
    return np.stack([np.asarray(ds.images.image(i)) for i in range(len(ds))])


def one_line(excinfo, *words: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cifar")
    expected = {name: write(root) for name, write in cifar_layout.WRITERS.items()}
    for write in cifar_layout.BINARY_WRITERS.values():
        write(root)
    return root, expected


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("idx")
    return root, {name: write(root) for name, write in idx_layout.WRITERS.items()}


def torchvision_cifar(name: str, root: Path, split: str):
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    with mock.patch("torchvision.datasets.cifar.check_integrity", return_value=True):  # md5s of the real files
        return cls(root, train=split == "train")


@pytest.mark.parametrize("split", ["test", "train"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_equals_torchvision(cifar_root, name, split):
    root, expected = cifar_root
    ds = cifar.read_python(root, split, SPECS[name])
    tv = torchvision_cifar(name, root, split)
    assert len(ds) == len(tv) == len(expected[name][split]["labels"])
    assert ds.labels == tv.targets == expected[name][split]["labels"]
    assert ds.classnames == tv.classes == expected[name][split]["classnames"]
    assert np.array_equal(pixels(ds), np.stack([np.asarray(tv[i][0]) for i in range(len(tv))]))
    assert np.array_equal(pixels(ds), expected[name][split]["pixels"])


def test_cifar100_names_are_the_files_own(cifar_root):
    root, _ = cifar_root
    names = cifar.read_python(root, "test", cifar.CIFAR100).classnames
    assert len(names) == 100 and names[1] == "aquarium_fish" and names[-1] == "worm"  # underscores kept


def test_clip_benchmark_keeps_these_readers_names():
    """CLIP_benchmark replaces only MNIST's names ('0'…'9'); CIFAR's are torchvision's, i.e. the files', and it has
    no Fashion-MNIST, KMNIST or EMNIST, so the names these readers give are the ones prompted with."""
    import json
    from importlib.resources import files

    names = json.loads((files("clip_benchmark") / "datasets" / "en_classnames.json").read_text())
    assert names["mnist"] == [str(d) for d in range(10)]
    assert not {"cifar10", "cifar100", "fashion_mnist", "kmnist", "emnist"} & set(names)


@pytest.mark.parametrize("split", ["test", "train"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_binary_equals_python(cifar_root, name, split):
    root, _ = cifar_root
    spec = SPECS[name]
    binary, python = cifar.read_binary(root, split, spec), cifar.read_python(root, split, spec)
    assert binary.labels == python.labels and binary.classnames == python.classnames
    assert np.array_equal(pixels(binary), pixels(python))
    record = spec.label_bytes + 3072
    assert sum((root / spec.bin_folder / f).stat().st_size for f in spec.bin_files[split]) == len(binary) * record


def test_cifar_python_keeps_one_batch(cifar_root):
    root, _ = cifar_root
    train, test = cifar.read_python(root, "train", cifar.CIFAR10), cifar.read_python(root, "test", cifar.CIFAR10)
    with mock.patch.object(cifar, "_python_batch", wraps=cifar._python_batch) as load:
        pixels(test)     # one file: the batch read for its labels is the one held
        pixels(train)    # five files: each loaded when its first image is asked for, the previous one dropped
        pixels(train)
    assert [call.args[0].name for call in load.call_args_list] == [f"data_batch_{k}" for k in range(1, 6)] * 2


def test_registered_layouts_pick_what_is_on_disk(cifar_root, idx_root, tmp_path):
    def read(name: str, root: Path, split: str = "test"):
        layout = next(lay for lay in registry.DATASETS[name].layouts if (root / lay.marker).exists())
        return layout, layout.read(root, split)

    layout, ds = read("cifar10", cifar_root[0])
    assert "python" in layout.description and ds.labels == cifar_root[1]["cifar10"]["test"]["labels"]
    cifar_layout.write_cifar100_binary(tmp_path)  # the binary version alone
    layout, ds = read("cifar100", tmp_path, "train")
    assert "binary" in layout.description and ds.labels == cifar_root[1]["cifar100"]["train"]["labels"]
    for name in IDX_SPECS:
        layout, ds = read(name, idx_root[0], "train")
        assert ds.labels == idx_root[1][name]["train"]["labels"]
    assert all(registry.DATASETS[n].splits == ("test", "train") for n in [*SPECS, *IDX_SPECS])


# --- the restricted unpickler


def test_restricted_unpickler_loads_numpy_pickles(tmp_path):
    entry = {"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), "labels": np.array([3, 1]),
             "filenames": [b"a.png", b"b.png"], "batch_label": "x"}
    for protocol in (2, 4):  # Python 3's: _codecs.encode for bytes (2), STACK_GLOBAL (4)
        path = tmp_path / f"p{protocol}"
        path.write_bytes(pickle.dumps(entry, protocol=protocol))
        loaded = safe_pickle.load_restricted(path, 1 << 20)
        assert np.array_equal(loaded["data"], entry["data"]) and loaded["labels"].tolist() == [3, 1]
        assert loaded["filenames"] == [b"a.png", b"b.png"] and loaded["batch_label"] == "x"


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class EvalCall:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


@pytest.mark.parametrize("protocol", [2, 4])
def test_restricted_unpickler_refuses_code(tmp_path, protocol):
    marker = tmp_path / "ran"
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({"data": Evil(marker), "labels": []}, protocol=protocol))
    assert pickle.loads(path.read_bytes()) == {"data": 0, "labels": []} and marker.exists()  # the plain loader runs it
    marker.unlink()
    with pytest.raises(UserError) as e:
        safe_pickle.load_restricted(path, 1 << 20)
    one_line(e, str(path), "system", "not loaded")
    assert not marker.exists()
    path.write_bytes(pickle.dumps([EvalCall()], protocol=protocol))
    with pytest.raises(UserError) as e:
        safe_pickle.load_restricted(path, 1 << 20)
    one_line(e, "eval", "not loaded")


def test_restricted_unpickler_bounds(tmp_path):
    path = tmp_path / "forged"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 60) + b"abc.")  # BINBYTES8 of 2^60 bytes, 3 present
    with pytest.raises(UserError) as e:
        safe_pickle.load_restricted(path, 1 << 20)
    one_line(e, "not a complete pickle")
    path.write_bytes(pickle.dumps(np.zeros(3000, np.uint8), protocol=2))
    with pytest.raises(UserError) as e:
        safe_pickle.load_restricted(path, 1000)
    one_line(e, "above the 1,000")
    path.write_bytes(pickle.dumps([np.zeros(2, np.uint8) for _ in range(6)], protocol=2))
    with pytest.raises(UserError) as e:
        safe_pickle.load_restricted(path, 1 << 20)
    one_line(e, "more than 4 arrays")
    path.write_bytes(pickle.dumps(np.array([None, 1], dtype=object), protocol=2))
    with pytest.raises(UserError) as e:
        safe_pickle.load_restricted(path, 1 << 20)
    one_line(e, "numbers only")


# --- CIFAR files that are not CIFAR's


def test_cifar_bad_batches(cifar_root, tmp_path):
    src = cifar_root[0] / "cifar-10-batches-py"
    base = tmp_path / "cifar-10-batches-py"
    shutil.copytree(src, base)
    batch = base / "test_batch"
    cases = [
        (pickle.dumps([1, 2, 3], protocol=2), "holds list"),
        (pickle.dumps({"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]}, protocol=2), "uint8 [2, 1024]"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, protocol=2), "float32"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, protocol=2), "1 labels for 2 images"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, protocol=2), "outside 0–9"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}, protocol=2), "keys ['data']"),
        (cifar_layout.py2_pickle({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})[:-40], "not a complete"),
    ]
    for content, words in cases:
        batch.write_bytes(content)
        with pytest.raises(UserError) as e:
            cifar.read_python(tmp_path, "test", cifar.CIFAR10)
        one_line(e, str(batch), words)
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}, protocol=2))
    with pytest.raises(UserError) as e:
        cifar.read_python(tmp_path, "test", cifar.CIFAR10)
    one_line(e, "batches.meta", "10 class names")


def test_cifar_bad_binary(cifar_root, tmp_path):
    base = tmp_path / "cifar-10-batches-bin"
    shutil.copytree(cifar_root[0] / "cifar-10-batches-bin", base)
    path = base / "test_batch.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(UserError) as e:
        cifar.read_binary(tmp_path, "test", cifar.CIFAR10)
    one_line(e, str(path), f"{len(data) - 1:,} bytes", "3,073-byte records")
    path.write_bytes(data[:3073] + bytes([12]) + data[3074:])
    with pytest.raises(UserError) as e:
        cifar.read_binary(tmp_path, "test", cifar.CIFAR10)
    one_line(e, "record 1 has label 12")
    path.write_bytes(data)
    (base / "batches.meta.txt").write_text("cat\ndog\n")
    with pytest.raises(UserError) as e:
        cifar.read_binary(tmp_path, "test", cifar.CIFAR10)
    one_line(e, "batches.meta.txt", "2 class names")


# --- IDX


@pytest.mark.parametrize("split", ["test", "train"])
@pytest.mark.parametrize("name", list(IDX_SPECS))
def test_idx_equals_torchvision(idx_root, name, split):
    from torchvision import datasets

    root, expected = idx_root
    spec = IDX_SPECS[name]
    ds = idx.read_idx_set(root, split, spec)
    cls = getattr(datasets, spec.folder)
    tv = cls(root, train=split == "train", **({"split": "balanced"} if name == "emnist" else {}))
    tv_pixels = np.stack([np.asarray(tv[i][0]) for i in range(len(tv))])
    if spec.transposed:  # torchvision serves EMNIST as stored, on its side; the reader turns it upright
        tv_pixels = tv_pixels.transpose(0, 2, 1)
    ours = pixels(ds)
    assert ds.labels == tv.targets.tolist() == expected[name][split]["labels"]
    assert ds.classnames == tv.classes == expected[name][split]["classnames"]
    assert np.array_equal(ours[..., 0], tv_pixels) and np.array_equal(ours, expected[name][split]["pixels"])
    if name == "emnist":
        assert len(ds.classnames) == 47 and not np.array_equal(ours[..., 0], ours[..., 0].transpose(0, 2, 1))


def test_idx_gzip_alone_equals_plain(idx_root, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(idx_root[0] / "MNIST" / "raw", raw)
    for path in raw.iterdir():
        if path.suffix != ".gz":
            path.unlink()
    for split in ("test", "train"):
        gz, plain = idx.read_idx_set(tmp_path, split, IDX_SPECS["mnist"]), idx.read_idx_set(idx_root[0], split, IDX_SPECS["mnist"])
        assert gz.labels == plain.labels and np.array_equal(pixels(gz), pixels(plain))
    images = idx.read_idx(raw / "t10k-images-idx3-ubyte.gz", idx.IMAGES_MAGIC)
    assert isinstance(images, np.memmap) and images.shape == (idx_layout.SIZES["test"], 28, 28)


def test_idx_bad_files(idx_root, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(idx_root[0] / "MNIST" / "raw", raw)
    images, labels = raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte"
    good_images, good_labels = images.read_bytes(), labels.read_bytes()
    n = idx_layout.SIZES["test"]

    def fails(*words: str) -> None:
        with pytest.raises(UserError) as e:
            idx.read_idx_set(tmp_path, "test", IDX_SPECS["mnist"])
        one_line(e, *words)

    images.write_bytes(good_labels)  # a label file where the images should be
    fails(str(images), "magic 2049", "magic 2051")
    images.write_bytes(good_images[:-5])
    fails(str(images), f"{len(good_images) - 5:,} bytes", f"declares {len(good_images):,}")
    images.write_bytes(good_images[:10])
    fails("truncated IDX header")
    images.write_bytes(good_images)
    labels.write_bytes(idx_layout.idx_bytes(np.zeros(n - 1, np.uint8), 2049))
    fails(str(labels), f"{n - 1:,} labels for the {n:,} images")
    labels.write_bytes(idx_layout.idx_bytes(np.full(n, 10, np.uint8), 2049))
    fails("label 10", "0–9")
    labels.unlink()
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    fails("IDX file not found", "t10k-labels-idx1-ubyte")


def test_idx_bad_gzip(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    header = struct.pack(">i3I", 2051, 2, 28, 28)
    cases = [
        (gzip.compress(header + bytes(2 * 784 - 1)), "decompresses to 1,583 bytes, not the 1,584"),
        (gzip.compress(header + bytes(10 * 784)), "decompresses to more bytes than the 1,584"),
        (gzip.compress(struct.pack(">i3I", 2051, 1 << 31, 1024, 1024)), "above the"),  # 2^51 bytes declared
        (gzip.compress(header + bytes(2 * 784))[:-12], "not a readable gzip file"),
        (b"not gzip at all", "not a readable gzip file"),
    ]
    for content, words in cases:
        path.write_bytes(content)
        with pytest.raises(UserError) as e:
            idx.read_idx(path, idx.IMAGES_MAGIC)
        one_line(e, str(path), words)
