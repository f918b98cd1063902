"""The ImageNet-family readers against torchvision's ``ImageNet``/``ImageFolder`` and CLIP_benchmark's own loaders,
on small real-photo fixtures (``tests/layouts/imagenet.py``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import ImageFolder, folder
from torchvision.datasets import imagenet as tv_imagenet

from eval.classification import imagenet, registry
from eval.sets import FileImages
from mmcontrast.errors import UserError
from tests.layouts import imagenet as layouts


@pytest.fixture(autouse=True)
def only_these_readers(monkeypatch):
    """Look datasets up among this module's readers only (the other reader families are not needed here)."""
    monkeypatch.setattr(registry, "READER_MODULES", ("imagenet",))


def _open(name: str, root: Path, split: str = "test"):
    layout = registry.find_layout(name, root, split)
    assert layout is not None, f"no {name} layout found under {root}"
    return layout.read(root, split)


def test_class_lists_are_clip_benchmarks():
    import clip_benchmark.datasets as cb

    en = json.loads((Path(cb.__file__).parent / "en_classnames.json").read_text())
    subsets = layouts.clip_benchmark_subsets()
    assert list(imagenet.imagenet_wnids()) == layouts.all_wnids()
    assert list(imagenet.subset_wnids("imagenet-a")) == subsets["imagenet-a"]
    assert list(imagenet.subset_wnids("imagenet-r")) == subsets["imagenet-r"]
    assert list(imagenet.subset_wnids("imagenet-o")) == subsets["imagenet-o"]
    assert imagenet.classnames_of(imagenet.imagenet_wnids()) == en["imagenet1k"]
    assert imagenet.IMG_EXTENSIONS == folder.IMG_EXTENSIONS
    # the "class folders in --root" layouts are told apart by their first class folder
    firsts = {n: lay.marker for n in ("imagenet-a", "imagenet-r", "imagenet-o", "imagenet_sketch")
              for lay in registry.DATASETS[n].layouts if "in --root" in lay.description}
    assert firsts == {**{n: s[0] for n, s in subsets.items()}, "imagenet_sketch": layouts.all_wnids()[0]}
    assert registry.DATASETS["imagenet1k"].splits == ("test", "val")


@pytest.mark.parametrize("key", list(layouts.LAYOUTS), ids="/".join)
def test_each_layout_gives_the_written_labels(key, tmp_path):
    name, _ = key
    expected = layouts.LAYOUTS[key](tmp_path)
    ds = _open(name, tmp_path)
    assert isinstance(ds.images, FileImages) and ds.templates == []
    assert (ds.labels, ds.ids, len(ds.images)) == (expected["labels"], expected["ids"], expected["n"])
    assert ds.images.paths == [str(tmp_path / i) for i in expected["ids"]]
    assert len(ds.classnames) == {"imagenet-a": 200, "imagenet-r": 200, "imagenet-o": 200, "objectnet": 3}.get(name, 1000)
    assert ds.images.image(0).mode == "RGB"


def test_devkit_as_torchvision_parses_it(tmp_path, monkeypatch):
    """torchvision's ImageNet unpacks the fixture's archives; the devkit reader (before) and the torchvision
    layout (after) give its images and wnids."""
    layouts.write_devkit(tmp_path)
    devkit = _open("imagenet1k", tmp_path)
    assert devkit.source.endswith("ILSVRC2012_validation_ground_truth.txt")
    for kind, archive in (("devkit", "ILSVRC2012_devkit_t12.tar.gz"), ("val", "ILSVRC2012_img_val.tar")):
        from torchvision.datasets.utils import calculate_md5
        monkeypatch.setitem(tv_imagenet.ARCHIVE_META, kind, (archive, calculate_md5(tmp_path / archive)))
    tv = tv_imagenet.ImageNet(str(tmp_path), split="val")
    wnids = layouts.all_wnids()
    # meta.bin's val_wnids: torchvision's own ID → wnid map over the ground truth
    assert [wnids[y] for y in devkit.labels] == tv_imagenet.load_meta_file(str(tmp_path))[1]
    by_name = {Path(p).name: (Path(p).read_bytes(), tv.wnids[t]) for p, t in tv.samples}
    assert {Path(p).name: (Path(p).read_bytes(), wnids[y]) for p, y in zip(devkit.images.paths, devkit.labels)} \
        == by_name
    after = _open("imagenet1k", tmp_path, "val")  # val/<wnid>/ now exists and comes first
    assert after.images.paths == [p for p, _ in tv.samples]
    assert [wnids[y] for y in after.labels] == [tv.wnids[t] for t in tv.targets]


def test_devkit_id_map_is_a_permutation_with_the_sea_snake_at_490(tmp_path):
    layouts.write_meta_mat(tmp_path / "meta.mat", layouts.devkit_order())
    to_index = {i: imagenet.wnid_index()[w] for i, w in imagenet.devkit_ids(tmp_path / "meta.mat").items()}
    assert sorted(to_index.values()) == list(range(1000)) and sorted(to_index) == list(range(1, 1001))
    assert imagenet.devkit_ids(tmp_path / "meta.mat")[490] == "n01751748" and to_index[490] == 65
    assert sum(to_index[i] != i - 1 for i in to_index) > 990  # "ID − 1" as a label would be wrong


def test_imagenetv2_folder_10_is_class_10_not_imagefolders(tmp_path):
    layouts.write_imagenetv2(tmp_path)
    ds = _open("imagenetv2", tmp_path)
    top = tmp_path / "ImageNetV2-matched-frequency"
    assert {y for p, y in zip(ds.images.paths, ds.labels) if Path(p).parent.name == "10"} == {10}
    # CLIP_benchmark's rule, int(parent folder), for every image; ImageFolder would call "10" class 1
    assert ds.labels == [int(Path(p).parent.name) for p in ds.images.paths]
    assert ImageFolder(str(top)).class_to_idx["10"] == 1


@pytest.mark.parametrize("name", ["imagenet_sketch", "imagenet-r", "imagenet-o"])
def test_every_class_present_equals_imagefolder(name, tmp_path):
    """With every class folder present, CLIP_benchmark's ImageFolder gives the same images and labels, and its
    masked class names are ours."""
    import clip_benchmark.datasets as cb

    en = json.loads((Path(cb.__file__).parent / "en_classnames.json").read_text())["imagenet1k"]
    wnids = layouts.all_wnids()
    if name == "imagenet_sketch":
        layouts.write_wnid_tree(tmp_path, "sketch", wnids, wnids, per_class=1)
        top, names = tmp_path / "sketch", en
    else:
        subset = layouts.clip_benchmark_subsets()[name]
        layouts.write_subset(name, tmp_path, wnids=subset)
        top, names = tmp_path / name, [c for c, w in zip(en, wnids) if w in set(subset)]  # the builder's mask
    ds = _open(name, tmp_path)
    ref = ImageFolder(str(top))
    assert ds.images.paths == [p for p, _ in ref.samples] and ds.labels == ref.targets
    assert ds.classnames == names


@pytest.mark.parametrize("name", ["imagenet-a", "imagenet-r", "imagenet-o"])
def test_subset_argmax_equals_masked_1k_argmax(name, tmp_path):
    """wise-ft scores the 1k logits restricted to the subset's columns; our 200-way labels index those columns."""
    expected = layouts.write_subset(name, tmp_path)
    ds = _open(name, tmp_path)
    wnids, subset = layouts.all_wnids(), set(layouts.clip_benchmark_subsets()[name])
    columns = [i for i, w in enumerate(wnids) if w in subset]                     # the masked 1k columns
    ours = [wnids.index(w) for w in imagenet.subset_wnids(name)]                  # our class order in 1k terms
    logits = np.random.default_rng(0).normal(size=(64, 1000))
    assert (logits[:, ours].argmax(1) == logits[:, columns].argmax(1)).all()
    image_wnids = [Path(p).parent.name for p in ds.images.paths]
    assert [wnids[columns[y]] for y in ds.labels] == image_wnids and ds.labels == expected["labels"]


def test_objectnet_equals_clip_benchmark(tmp_path):
    from clip_benchmark.datasets.objectnet import ObjectNetDataset

    layouts.write_objectnet(tmp_path)
    ds = _open("objectnet", tmp_path)
    ref = ObjectNetDataset(str(tmp_path), transform=None)
    assert ds.images.paths == [p for p, _ in ref.samples]
    assert ds.labels == [ref.label_map[Path(p).parent.name] for p, _ in ref.samples]
    assert ds.classnames == ref.classes == ["alarm clock", "banana", "tv"]


def _rewrite_line(path: Path, n: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[n - 1] = text
    path.write_text("\n".join(lines) + "\n")


GT = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
META = "ILSVRC2012_devkit_t12/data/meta.mat"
KAGGLE_VAL = "ILSVRC/Data/CLS-LOC/val"
BAD = {  # case → (layout writer, damage(root), what the one line says)
    "truth_0": ("devkit", lambda r: _rewrite_line(r / GT, 3, "0"), "ground_truth.txt:3: '0' is not an ILSVRC2012_ID"),
    "truth_1001": ("devkit", lambda r: _rewrite_line(r / GT, 2, "1001"), ":2: '1001' is not an ILSVRC2012_ID"),
    "truth_word": ("devkit", lambda r: _rewrite_line(r / GT, 5, "n01440764"), ":5: 'n01440764' is not an"),
    "no_meta": ("devkit", lambda r: (r / META).unlink(), "meta.mat is missing"),
    "meta_garbage": ("devkit", lambda r: (r / META).write_bytes(b"x" * 300), "is not a MATLAB 5 MAT-file"),
    "meta_truncated": ("devkit", lambda r: (r / META).write_bytes((r / META).read_bytes()[:2000]), "truncated"),
    "meta_999": ("devkit", lambda r: layouts.write_meta_mat(r / META, layouts.devkit_order()[:999]),
                 "are not the 1,000 ImageNet-1k classes"),
    "devkit_image_gone": ("devkit", lambda r: (r / "ILSVRC2012_img_val/ILSVRC2012_val_00000007.JPEG").unlink(),
                          "ILSVRC2012_val_00000007.JPEG is absent"),
    "kaggle_image_gone": ("kaggle", lambda r: (r / KAGGLE_VAL / "ILSVRC2012_val_00000004.JPEG").unlink(),
                          "has a row for ILSVRC2012_val_00000004, but"),
    "kaggle_no_row": ("kaggle", lambda r: (r / KAGGLE_VAL / "ILSVRC2012_val_00000099.JPEG").write_bytes(b""),
                      "ILSVRC2012_val_00000099.JPEG has no row"),
    "kaggle_wnid": ("kaggle", lambda r: _rewrite_line(r / "LOC_val_solution.csv", 4, "ILSVRC2012_val_00000003,"
                                                      "n99999999 1 2 3 4"), ":4: 'n99999999' is not an ImageNet-1k"),
    "kaggle_order": ("kaggle", lambda r: _rewrite_line(r / "LOC_synset_mapping.txt", 1, "n01443537 goldfish"),
                     "in sorted order"),
    "kaggle_no_mapping": ("kaggle", lambda r: (r / "LOC_synset_mapping.txt").unlink(),
                          "LOC_synset_mapping.txt is missing"),
    "torchvision_wnid": ("torchvision", lambda r: (r / "val/n99999999").mkdir(), "'n99999999' is not a WordNet id"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_imagenet1k_input_is_one_line(case, tmp_path):
    layout, damage, message = BAD[case]
    layouts.LAYOUTS[("imagenet1k", layout)](tmp_path)
    damage(tmp_path)
    with pytest.raises(UserError) as e:
        _open("imagenet1k", tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_meta_mat_that_inflates_too_far_stops(tmp_path, monkeypatch):
    layouts.write_meta_mat(tmp_path / "meta.mat", layouts.devkit_order())
    monkeypatch.setattr(imagenet, "MAX_INFLATED", 10_000)
    with pytest.raises(UserError, match="inflates past 10,000 bytes"):
        imagenet.devkit_ids(tmp_path / "meta.mat")


@pytest.mark.parametrize("name, damage, message", [
    ("imagenetv2", lambda r: (r / "ImageNetV2-matched-frequency/1000").mkdir(), "labels 0 to 999, not '1000'"),
    ("imagenetv2", lambda r: (r / "ImageNetV2-matched-frequency/010").mkdir(), "labels 0 to 999, not '010'"),
    ("imagenet-r", lambda r: (r / "imagenet-r/n01440764").mkdir(), "'n01440764' is not a WordNet id of imagenet-r"),
    ("imagenet-o", lambda r: (r / "imagenet-o/n01440764").mkdir(), "'n01440764' is not a WordNet id of imagenet-o"),
    ("imagenet_sketch", lambda r: (r / "sketch/cat").mkdir(), "'cat' is not a WordNet id of imagenet_sketch"),
    ("objectnet", lambda r: (r / "objectnet_to_imagenet_1k.json").write_text('{"Kettle": "teapot"}'),
     "ObjectNet class 'Kettle' has no folder"),
    ("objectnet", lambda r: (r / "folder_to_objectnet_label.json").write_text("[1, 2]"), "string → string"),
])
def test_bad_test_set_input_is_one_line(name, damage, message, tmp_path):
    layouts.WRITERS[name](tmp_path)
    damage(tmp_path)
    with pytest.raises(UserError) as e:
        _open(name, tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_readers_do_not_open_images(tmp_path):
    """Reading lists files only: an undecodable image is found when it is used, not when the set is read."""
    expected = layouts.write_torchvision(tmp_path)
    bad = tmp_path / expected["ids"][3]
    bad.write_bytes(b"not a jpeg")
    ds = _open("imagenet1k", tmp_path)
    assert ds.labels == expected["labels"]
    with pytest.raises(UserError, match="cannot be decoded"):
        ds.images.image(3)
    assert os.path.samefile(ds.images.paths[3], bad)
