"""The SVHN, STL-10, PCam and FER2013 readers give torchvision's images and labels on the same files; the MAT-file
parser gives scipy's arrays; the two FER2013 layouts label each image alike; bad files fail with one line."""

from __future__ import annotations

import csv
import struct
import sys
import zlib

import numpy as np
import pytest
import scipy.io
from torchvision import datasets as tvd

from eval.classification import records, records_mat
from eval.classification.records_fer import read_fer_csv, read_fer_folders
from eval.classification.registry import DATASETS
from mmcontrast.errors import UserError

from .layouts.records import WRITERS


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """{dataset: (root, what its writer wrote)} for every writer, each under its own root."""
    out = {}
    for name, write in WRITERS.items():
        root = tmp_path_factory.mktemp(name)
        out[name] = (root, write(root))
    return out


def _layout(name, root, split):
    """The first registered layout of ``name`` present under ``root`` (the registry's rule)."""
    return next(lay for lay in DATASETS[name].layouts if (root / lay.marker.format(split=split)).exists())


def _read(name, root, split):
    return _layout(name, root, split).read(root, split)


def _pixels(ds) -> np.ndarray:
    return np.stack([np.asarray(im) for _, im in ds.images.iter_images(range(len(ds)))])


def _torchvision(ds) -> tuple[np.ndarray, list[int]]:
    pairs = [ds[i] for i in range(len(ds))]
    return np.stack([np.asarray(im.convert("RGB")) for im, _ in pairs]), [int(y) for _, y in pairs]


def _one_line(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


@pytest.mark.parametrize("split", ["test", "train"])  # test compressed (zlib streams), train plain
@pytest.mark.parametrize("chunk", [1 << 20, 777])     # 777 bytes: every read spans inflate calls
def test_mat_arrays_equal_loadmat(data, split, chunk, monkeypatch):
    monkeypatch.setattr(records_mat, "CHUNK", chunk)
    path = data["svhn"][0] / f"{split}_32x32.mat"
    ours, theirs = records_mat.read_mat(path, {"X", "y"}), scipy.io.loadmat(path)
    assert (ours["X"].mclass, ours["y"].mclass) == ("uint8", "double")
    for name in ("X", "y"):
        a = ours[name]
        assert a.dims == theirs[name].shape
        np.testing.assert_array_equal(a.data.reshape(a.dims, order="F"), theirs[name])
    assert isinstance(ours["X"].data, np.memmap)


def test_mat_double_stored_as_uint8(tmp_path):
    """MATLAB stores a double array of small integers as uint8: the class is double, the data uint8."""
    path = tmp_path / "test_32x32.mat"
    x = np.arange(32 * 32 * 3 * 2, dtype=np.uint8).reshape(32, 32, 3, 2)
    scipy.io.savemat(path, {"y": np.array([[10], [3]], np.uint8), "X": x})
    raw = bytearray(path.read_bytes())
    assert struct.unpack("<II", raw[136:144]) == (6, 8) and raw[144] == 9  # y's array flags: mxUINT8_CLASS
    raw[144] = 6                                                           # now mxDOUBLE_CLASS, data still uint8
    path.write_bytes(bytes(raw))
    assert scipy.io.loadmat(path, mat_dtype=True)["y"].dtype == np.float64  # the class, not the storage
    y = records_mat.read_mat(path, {"y"})["y"]
    assert y.mclass == "double" and y.data.dtype == np.uint8
    assert records.read_svhn(tmp_path, "test").labels == [0, 3]


@pytest.mark.parametrize("split", ["test", "train"])
def test_svhn_equals_torchvision(data, split, monkeypatch):
    root, written = data["svhn"]
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)  # the md5s are the real files'
    ours = _read("svhn", root, split)
    pixels, labels = _torchvision(tvd.SVHN(str(root), split=split))
    np.testing.assert_array_equal(_pixels(ours), pixels)
    assert ours.labels == labels == written[split]["labels"]
    assert 10 not in ours.labels and np.bincount(ours.labels, minlength=10).sum() == len(ours)
    assert ours.classnames == [str(d) for d in range(10)]


@pytest.mark.parametrize("split", ["test", "train"])
def test_stl10_equals_torchvision(data, split, monkeypatch):
    root, written = data["stl10"]
    monkeypatch.setattr(tvd.STL10, "_check_integrity", lambda self: True)
    ours = _read("stl10", root, split)
    theirs = tvd.STL10(str(root), split=split)
    pixels, labels = _torchvision(theirs)
    np.testing.assert_array_equal(_pixels(ours), pixels)
    np.testing.assert_array_equal(pixels, written[split]["pixels"])
    assert ours.labels == labels == written[split]["labels"]
    assert ours.classnames == theirs.classes


@pytest.mark.parametrize("split", ["test", "val"])
def test_pcam_equals_torchvision(data, split):
    root, written = data["pcam"]
    ours = _read("pcam", root, split)
    pixels, labels = _torchvision(tvd.PCAM(str(root), split=split))
    np.testing.assert_array_equal(_pixels(ours), pixels)
    assert ours.labels == labels == written[split]["labels"]


@pytest.mark.parametrize("split", ["test", "train"])
def test_fer_csv_equals_torchvision_remapped(data, split, monkeypatch):
    root, written = data["fer2013"]
    monkeypatch.setattr(tvd.fer2013, "check_integrity", lambda *a, **k: True)
    ours = read_fer_csv(root / "fer2013" / "fer2013.csv", split)
    pixels, codes = _torchvision(tvd.FER2013(str(root), split=split))
    np.testing.assert_array_equal(_pixels(ours), pixels)
    # the challenge's codes 4 Sad, 5 Surprise, 6 Neutral are the folders' 5, 6, 4
    assert ours.labels == [[0, 1, 2, 3, 5, 6, 4][c] for c in codes] == written[split]["labels"]
    assert len(ours) == 14 and ours.classnames[4] == "neutral"


@pytest.mark.parametrize("split", ["test", "train"])
def test_fer_folders_equal_image_folder_and_the_csv(data, split):
    root, written = data["fer2013"]
    folders = _read("fer2013", root, split)
    assert _layout("fer2013", root, split).marker == "fer2013/{split}/angry"
    theirs = tvd.ImageFolder(str(root / "fer2013" / split))  # what CLIP_benchmark's builder reads
    assert folders.images.paths == [p for p, _ in theirs.samples]
    assert folders.labels == theirs.targets and folders.classnames == theirs.classes
    # the same image has the same label in both layouts
    position = {p: i for i, p in enumerate(folders.images.paths)}
    order = [position[str(p)] for p in written[split]["files"]]
    csv_set = read_fer_csv(root / "fer2013" / "fer2013.csv", split)
    assert [folders.labels[i] for i in order] == csv_set.labels
    jpeg = _pixels(folders)[order].astype(int)
    assert np.abs(jpeg - _pixels(csv_set)).mean() < 2  # JPEG quality 95


def test_fer_folders_as_clip_benchmark_root(data):
    """CLIP_benchmark's --dataset_root is the unzipped archive itself: {train,test}/<emotion>/."""
    root = data["fer2013"][0] / "fer2013"
    assert _layout("fer2013", root, "test").marker == "{split}/angry"
    assert _read("fer2013", root, "test").labels == read_fer_folders(root, "test").labels


def test_fer_other_csvs(data, tmp_path):
    """icml_face_data.csv (columns reordered, with spaces) and train.csv (quoted pixels) give the same sets."""
    root, _ = data["fer2013"]
    with open(root / "fer2013" / "fer2013.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    base = tmp_path / "fer2013"
    base.mkdir()
    with open(base / "icml_face_data.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([["emotion", " Usage", " pixels"]]
                                                     + [[e, u, p] for e, p, u in rows])
    with open(base / "train.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC).writerow(["emotion", "pixels"])
        f.writelines(f'{e},"{p}"\n' for e, p, u in rows if u == "Training")
    (base / "test.csv").write_text("pixels\n" + "".join(f'"{p}"\n' for e, p, u in rows if u != "Training"))
    reference = {s: read_fer_csv(root / "fer2013" / "fer2013.csv", s) for s in ("train", "test")}
    for split in ("train", "test"):
        icml = _read("fer2013", tmp_path, split)
        assert icml.source.endswith("icml_face_data.csv")
        assert icml.labels == reference[split].labels
        np.testing.assert_array_equal(_pixels(icml), _pixels(reference[split]))
    train = read_fer_csv(base / "train.csv", "train")
    assert train.labels == reference["train"].labels
    np.testing.assert_array_equal(_pixels(train), _pixels(reference["train"]))
    with pytest.raises(UserError) as e:
        read_fer_csv(base / "test.csv", "test")
    _one_line(e, "test.csv", "no labels")


# ---- bad input: one line each, naming the file


def _svhn_file(tmp_path, compress=False, **arrays):
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 2), dtype=np.uint8)  # compresses to ~6 kB
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[1.0], [2.0]]), **arrays},
                     do_compression=compress)
    return tmp_path / "test_32x32.mat"


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_mat(tmp_path, compress):
    path = _svhn_file(tmp_path, compress=compress)
    raw = path.read_bytes()
    for end in (100, 140, len(raw) // 2, len(raw) - 1):  # in the header, a tag, X's data, y's data
        path.write_bytes(raw[:end])
        with pytest.raises(UserError) as e:
            records.read_svhn(tmp_path, "test")
        _one_line(e, str(path), "truncated MAT-file")


@pytest.mark.parametrize("x, expected", [(np.zeros((32, 32, 3, 2), np.float32), "single array"),
                                         (np.zeros((32, 32, 2), np.uint8), "dimensions [32, 32, 2]"),
                                         (np.zeros((28, 28, 3, 2), np.uint8), "dimensions [28, 28, 3, 2]")])
def test_svhn_x_of_wrong_type_or_shape(tmp_path, x, expected):
    path = _svhn_file(tmp_path, X=x)
    with pytest.raises(UserError) as e:
        records.read_svhn(tmp_path, "test")
    _one_line(e, str(path), expected, "uint8 [32, 32, 3, N]")


def test_svhn_bad_labels_and_missing_y(tmp_path):
    _svhn_file(tmp_path, y=np.array([[1.0], [11.0]]))
    with pytest.raises(UserError) as e:
        records.read_svhn(tmp_path, "test")
    _one_line(e, "y 1 is 11.0", "1–10")
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(UserError) as e:
        records.read_svhn(tmp_path, "test")
    _one_line(e, "no variable 'y'")


def test_not_a_mat_file(tmp_path):
    path = tmp_path / "test_32x32.mat"
    path.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(512, b" ") + b"\x89HDF\r\n\x1a\n")
    with pytest.raises(UserError) as e:
        records.read_svhn(tmp_path, "test")
    _one_line(e, str(path), "MATLAB 7.3 (HDF5)")
    path.write_bytes(b"\x00" * 300)
    with pytest.raises(UserError) as e:
        records.read_svhn(tmp_path, "test")
    _one_line(e, str(path), "not a MATLAB 5 MAT-file")


def test_mat_sizes_are_checked(tmp_path):
    """A tag that declares more bytes than the file holds, and a corrupt zlib stream."""
    path = _svhn_file(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[132:136] = struct.pack("<I", 1 << 31)  # the first variable's byte count
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as e:
        records.read_svhn(tmp_path, "test")
    _one_line(e, str(path), "declares 2,147,483,648 bytes")
    path = _svhn_file(tmp_path, compress=True)
    raw = bytearray(path.read_bytes())
    raw[136:144] = zlib.compress(b"\xff" * 64)[:8]  # a valid zlib header, then garbage
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as e:
        records.read_svhn(tmp_path, "test")
    _one_line(e, str(path))


def test_stl10_sizes(data, tmp_path):
    root, _ = data["stl10"]
    base = tmp_path / "stl10_binary"
    base.mkdir()
    (base / "class_names.txt").write_bytes((root / "stl10_binary" / "class_names.txt").read_bytes())
    x = (root / "stl10_binary" / "test_X.bin").read_bytes()
    (base / "test_X.bin").write_bytes(x + b"\x00" * 5)
    (base / "test_y.bin").write_bytes(bytes([1] * 12))
    with pytest.raises(UserError) as e:
        records.read_stl10(tmp_path, "test")
    _one_line(e, "test_X.bin", "not a whole number of 3×96×96 images")
    (base / "test_X.bin").write_bytes(x)
    (base / "test_y.bin").write_bytes(bytes([1] * 11))
    with pytest.raises(UserError) as e:
        records.read_stl10(tmp_path, "test")
    _one_line(e, "test_y.bin", "11 labels for the 12 images")
    (base / "test_y.bin").write_bytes(bytes([1] * 11 + [0]))
    with pytest.raises(UserError) as e:
        records.read_stl10(tmp_path, "test")
    _one_line(e, "label 11 is 0", "1–10")


def _fer_csv(tmp_path, pixels: str) -> object:
    path = tmp_path / "fer2013.csv"
    good = " ".join(["7"] * 2304)
    path.write_text(f"emotion,pixels,Usage\n0,{good},PublicTest\n3,{pixels},PrivateTest\n")
    return path


def test_fer_csv_bad_rows(tmp_path):
    path = _fer_csv(tmp_path, " ".join(["7"] * 2303))
    with pytest.raises(UserError) as e:
        read_fer_csv(path, "test")
    _one_line(e, str(path), "line 3 has 2,303 pixel values, not 2,304")
    path = _fer_csv(tmp_path, " ".join(["7"] * 2303 + ["256"]))
    ds = read_fer_csv(path, "test")
    assert ds.labels == [0, 3] and np.asarray(ds.images.image(0)).max() == 7
    with pytest.raises(UserError) as e:
        ds.images.image(1)
    _one_line(e, str(path), "line 3 has pixel values outside 0–255")
    path.write_text("emotion,pixels,Usage\n7," + " ".join(["7"] * 2304) + ",PublicTest\n")
    with pytest.raises(UserError) as e:
        read_fer_csv(path, "test")
    _one_line(e, "line 2 has emotion '7'")


def test_pcam_bad_files(data, tmp_path, monkeypatch):
    import h5py

    base = tmp_path / "pcam"
    base.mkdir()
    with h5py.File(base / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
        f.create_dataset("x", data=np.zeros((2, 96, 96), np.uint8))
    with pytest.raises(UserError) as e:
        records.read_pcam(tmp_path, "test")
    _one_line(e, "split_test_x.h5", "uint8 [2, 96, 96]", "[N, 96, 96, 3]")
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(UserError) as e:
        records.read_pcam(data["pcam"][0], "test")
    _one_line(e, "pip install h5py")


@pytest.mark.parametrize("name, split", [("pcam", "test"), ("svhn", "test"), ("fer2013", "test")])
def test_records_through_loader_workers(data, name, split):
    """The encoder's DataLoader workers (forked) read the same pixels: h5py reopens per process, maps are shared."""
    import torch

    from eval.encode import image_batches

    root, _ = data[name]
    ds = (read_fer_csv(root / "fer2013" / "fer2013.csv", split) if name == "fer2013" else _read(name, root, split))
    expected = _pixels(ds)  # opens the files in this process first
    to_tensor = lambda im: torch.from_numpy(np.asarray(im).copy())  # noqa: E731
    batches = list(image_batches(ds.images, list(range(len(ds))), to_tensor, batch_size=3, workers=2))
    np.testing.assert_array_equal(torch.cat(batches).numpy(), expected)
