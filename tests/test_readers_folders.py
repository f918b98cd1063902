"""The torchvision-folder and VOC 2007 readers against torchvision's and CLIP_benchmark's own dataset classes on
the same files (``tests/layouts/folders.py``): the same images pixel for pixel, the same labels, the same class
names; and bad input stopped with one line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from eval.classification import folders  # noqa: F401  (registers the readers)
from eval.classification.registry import DATASETS
from mmcontrast.errors import UserError
from tests.layouts.folders import WRITERS

METRICS = {"pets": "mean_per_class_recall", "flowers": "mean_per_class_recall",
           "caltech101": "mean_per_class_recall", "fgvc_aircraft": "mean_per_class_recall",
           "voc2007_multilabel": "mean_average_precision", "voc2007": "acc1", "dtd": "acc1", "eurosat": "acc1",
           "gtsrb": "acc1", "sun397": "acc1", "cars": "acc1", "country211": "acc1", "food101": "acc1",
           "renderedsst2": "acc1", "resisc45": "acc1"}
CASES = [(name, split) for name in WRITERS if name != "voc2007" for split in DATASETS[name].splits]


def read(name: str, root: Path, split: str | None = None):
    spec = DATASETS[name]
    split = split or spec.splits[0]
    layouts = [lay for lay in spec.layouts if (root / lay.marker.format(split=split)).exists()]
    assert layouts, f"no {name} layout under {root}"
    return layouts[0].read(root, split)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("folders")  # one root for all, as torchvision's root= is shared
    return root, {name: write(root) for name, write in WRITERS.items()}


def reference(name: str, root: Path, split: str):
    """torchvision's dataset (CLIP_benchmark's for Caltech-101; torchgeo's ImageFolder filter for RESISC45)."""
    import torchvision.datasets as tv

    if name == "flowers":
        class Flowers(tv.Flowers102):
            def _check_integrity(self):  # the md5 sums are those of the real archive's files
                return True
        return Flowers(root, split=split)
    if name == "caltech101":
        from clip_benchmark.datasets.caltech101 import Caltech101
        return Caltech101(str(root))
    if name == "resisc45":
        names = set((root / "resisc45" / f"resisc45-{split}.txt").read_text().split())
        return tv.ImageFolder(str(root / "resisc45" / "NWPU-RESISC45"),
                              is_valid_file=lambda p: os.path.basename(p) in names)
    make = {"pets": tv.OxfordIIITPet, "dtd": tv.DTD, "gtsrb": tv.GTSRB, "cars": tv.StanfordCars,
            "country211": tv.Country211, "food101": tv.Food101, "renderedsst2": tv.RenderedSST2}
    if name in make:
        return make[name](root, split=split)
    if name == "fgvc_aircraft":
        return tv.FGVCAircraft(root, split=split, annotation_level="variant")
    return {"eurosat": tv.EuroSAT, "sun397": tv.SUN397}[name](root)


def classes_of(name: str, ref) -> list[str] | None:
    if name == "caltech101":
        return ref.categories
    return None if name in ("flowers", "gtsrb") else ref.classes


def test_registered_with_the_metric_of_open_clips_table():
    assert {name: DATASETS[name].metric for name in METRICS} == METRICS
    assert all(DATASETS[name].splits[0] == "test" for name in METRICS)


@pytest.mark.parametrize("name,split", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_same_images_and_labels_as_the_reference(written, name, split):
    root, expected = written
    ds = read(name, root, split)
    ref = reference(name, root, split)
    assert ds.labels == expected[name][split]["labels"]
    assert ds.templates == [] and not ds.multilabel
    order = range(len(ref))
    if name == "sun397":  # torchvision lists rglob's order; ours is sorted by path
        assert ds.ids == sorted(ds.ids)
        order = sorted(order, key=lambda i: ref._image_files[i].relative_to(root / "SUN397").as_posix())
    assert len(ds) == len(ref) > 0
    for ours, i in enumerate(order):
        image, label = ref[i]
        if name == "gtsrb" and split == "train":  # torchvision numbers only the class folders present
            label = int(sorted(p.name for p in (root / "gtsrb/GTSRB/Training").iterdir())[label])
        assert ds.labels[ours] == label
        assert np.array_equal(np.asarray(ds.images.image(ours)), np.asarray(image.convert("RGB")))
    names = classes_of(name, ref)
    if names is not None:
        assert ds.classnames == names
    assert len(ds.classnames) == {"flowers": 102, "gtsrb": 43}.get(name, len(ds.classnames))


def test_caltech101_keeps_background_google_as_clip_benchmark(written):
    root, _ = written
    ds = read("caltech101", root)
    assert ds.classnames == ["BACKGROUND_Google", "Faces", "accordion"]
    assert ds.labels[:2] == [0, 0]


@pytest.mark.parametrize("split", ["test", "train"])
def test_voc2007_boxes_and_multilabel_as_clip_benchmark(written, split):
    from clip_benchmark.datasets.voc2007 import PASCALVoc2007, PASCALVoc2007Cropped

    root, expected = written
    crops = read("voc2007", root, split)
    ref = PASCALVoc2007Cropped(str(root), split)
    assert crops.labels == expected["voc2007"][split]["labels"]
    assert crops.classnames == ref.classes and len(crops) == len(ref)
    for i in range(len(ref)):
        image, label = ref[i]
        assert crops.labels[i] == label
        assert np.array_equal(np.asarray(crops.images.image(i)), np.asarray(image))
    whole = read("voc2007_multilabel", root, split)
    ref = PASCALVoc2007(str(root), split)
    assert whole.multilabel and whole.labels == expected["voc2007"][split]["multilabel"]
    assert whole.labels == [np.flatnonzero(row.numpy()).tolist() for row in ref.labels]
    for i in range(len(ref)):
        assert np.array_equal(np.asarray(whole.images.image(i)), np.asarray(ref[i][0]))
    assert crops.images.fingerprint() != whole.images.fingerprint()


def _one_line_error(name: str, root: Path, match: str, split: str | None = None) -> str:
    with pytest.raises(UserError, match=match) as e:
        read(name, root, split)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_annotation_file(tmp_path):
    WRITERS["pets"](tmp_path)
    (tmp_path / "oxford-iiit-pet/annotations/test.txt").unlink()
    assert str(tmp_path / "oxford-iiit-pet/annotations/test.txt") in _one_line_error(
        "pets", tmp_path, "annotation file not found")


@pytest.mark.parametrize("doctype", [
    '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>',
    '<!DOCTYPE annotation [<!ENTITY name SYSTEM "file:///etc/passwd">]>',
    '<!DOCTYPE annotation>'])
def test_voc_xml_with_a_doctype_is_refused(tmp_path, doctype):
    WRITERS["voc2007"](tmp_path)
    xml = tmp_path / "VOCdevkit/VOC2007/Annotations/000004.xml"
    xml.write_text(doctype + "\n" + xml.read_text().replace("tvmonitor", "&lol2;"))
    assert "000004.xml" in _one_line_error("voc2007", tmp_path, "declares a DOCTYPE")


def test_label_out_of_range(tmp_path):
    from scipy.io import savemat

    WRITERS["flowers"](tmp_path)
    savemat(tmp_path / "flowers-102/imagelabels.mat", {"labels": np.array([[3, 1, 2, 1, 103, 2, 2, 1]], float)})
    _one_line_error("flowers", tmp_path, r"imagelabels.mat: image 5 has label 103, outside 1..102")
    WRITERS["gtsrb"](tmp_path)
    csv = tmp_path / "gtsrb/GT-final_test.csv"
    csv.write_text(csv.read_text().replace(";42\n", ";43\n"))
    _one_line_error("gtsrb", tmp_path, r"GT-final_test.csv: image '00002.ppm' has label 43, not a class index 0–42")
    WRITERS["voc2007"](tmp_path)
    xml = tmp_path / "VOCdevkit/VOC2007/Annotations/000002.xml"
    xml.write_text(xml.read_text().replace("<name>cat</name>", "<name>unicorn</name>"))
    _one_line_error("voc2007", tmp_path, r"000002.xml object 3: class 'unicorn' is not one of the 20 VOC classes")


def test_other_bad_files(tmp_path):
    WRITERS["food101"](tmp_path)
    (tmp_path / "food-101/meta/test.json").write_text('{"apple_pie": ["../../../etc/passwd"]}')
    _one_line_error("food101", tmp_path, "is not a path inside")
    WRITERS["caltech101"](tmp_path)
    (tmp_path / "caltech101/101_ObjectCategories/accordion/image_0002.jpg").unlink()
    _one_line_error("caltech101", tmp_path, r"accordion holds 'image_0003.jpg'; expected image_0001.jpg to image_0002")
    WRITERS["cars"](tmp_path)
    (tmp_path / "stanford_cars/devkit/cars_meta.mat").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(600))
    _one_line_error("cars", tmp_path, "cars_meta.mat")
    WRITERS["dtd"](tmp_path)
    (tmp_path / "dtd/dtd/images/banded/banded_0008.jpg").unlink()
    _one_line_error("dtd", tmp_path, r"test1.txt names 1 image\(s\) that are not on disk, the first .*banded_0008.jpg")
