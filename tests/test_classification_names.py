"""Class names and templates per dataset equal what CLIP_benchmark's ``build_dataset`` gives, on fake datasets.

``build_dataset`` is called for real, with torchvision's (and CLIP_benchmark's own) dataset classes replaced by
a fake that names its classes as our reader of that dataset would; nothing is downloaded or read.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import types
import warnings

import pytest
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from eval.classification import names
from eval.classification.registry import known
from eval.sets import ClassificationSet, RecordImages
from mmcontrast.errors import UserError

# the constructors build_dataset calls, by the module attribute it reaches them through
CONSTRUCTORS = ["CIFAR10", "CIFAR100", "DTD", "GTSRB", "MNIST", "PCAM", "STL10", "SUN397", "Country211", "EuroSAT",
                "FGVCAircraft", "Flowers102", "Food101", "ImageFolder", "ImageNet", "OxfordIIITPet", "RenderedSST2",
                "StanfordCars", "caltech101.Caltech101", "imagenetv2.ImageNetV2Dataset",
                "objectnet.ObjectNetDataset", "voc2007.PASCALVoc2007Cropped", "voc2007.PASCALVoc2007"]


@pytest.fixture(scope="module")
def builder():
    """clip_benchmark.datasets.builder; its imagenetv2 module imports ``requests`` (unused offline): a stub
    stands in when it is not installed."""
    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("requests") is None:
            mp.setitem(sys.modules, "requests", types.ModuleType("requests"))
        from clip_benchmark.datasets import builder
        yield builder


def reader_names(name: str) -> list[str]:
    """Class names as a reader might give them: as many as CLIP_benchmark has, with ``_`` and ``/`` to rewrite."""
    count = len(names.clip_benchmark_classnames(name, [])[0]) or 7
    return [f"class_{i}/part_{i}" for i in range(count)]


def fake_set(name: str, classnames: list[str], templates=()) -> ClassificationSet:
    return ClassificationSet(name, f"/data/{name}", RecordImages(1, lambda i: None, []), [0], classnames,
                             list(templates))


def reference(builder, monkeypatch, tmp_path, name: str, classes: list[str]):
    """build_dataset(name) over a fake dataset whose classes are ``classes``."""
    class Fake:
        def __init__(self, *args, **kwargs):
            self.classes = list(classes)

        def __getitem__(self, i):
            return None, 0  # label 0: Flowers102's 1-based check does not fire

    for attr in CONSTRUCTORS:
        owner, _, cls = attr.rpartition(".")
        monkeypatch.setattr(getattr(builder, owner) if owner else builder, cls, Fake)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "split argument ignored" for eurosat, sun397, caltech101
        return builder.build_dataset(name, root=str(tmp_path), split="test", download=False)


def builder_names(builder) -> set[str]:
    """The registered datasets build_dataset itself supports (svhn, resisc45 and a few others it has not)."""
    source = inspect.getsource(builder.build_dataset)
    return {name for name in known() if f'dataset_name == "{name}"' in source}


def test_openai_templates_and_imagenet_names_are_clip_benchmarks():
    templates, classnames = names.en_templates(), names.en_classnames()
    assert [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES] == templates["imagenet1k"]
    assert list(IMAGENET_CLASSNAMES) == classnames["imagenet1k"]
    assert len(templates["imagenet1k"]) == 80 and len(SIMPLE_IMAGENET_TEMPLATES) == 7


def test_every_registered_clip_benchmark_dataset_gets_build_datasets_names_and_templates(builder, monkeypatch,
                                                                                      tmp_path):
    covered = builder_names(builder)
    # the datasets the registry and build_dataset share: every one the JSON names, and the ImageNet family
    assert {"cifar10", "cifar100", "imagenet1k", "imagenet-a", "imagenet-r", "imagenet-o", "imagenetv2",
            "imagenet_sketch", "objectnet", "food101", "sun397", "mnist", "voc2007_multilabel"} <= covered
    in_json = {k for k in names.en_templates() if k in known()}
    assert in_json - covered <= {"svhn", "resisc45"}  # CLIP_benchmark has these under vtab/ only
    for name in sorted(covered):
        classes = reader_names(name)
        ref = reference(builder, monkeypatch, tmp_path, name, classes)
        ours = names.attach(fake_set(name, classes), name)
        assert ours.classnames == list(ref.classes), name
        assert ours.templates == list(ref.templates), name


def test_renamed_and_masked_names(builder, monkeypatch, tmp_path):
    food = names.attach(fake_set("food101", ["apple_pie", "baby_back_ribs"]), "food101")
    assert food.classnames == ["apple pie", "baby back ribs"]
    sun = names.attach(fake_set("sun397", ["abbey", "apartment_building/outdoor"]), "sun397")
    assert sun.classnames == ["abbey", "apartment building outdoor"]
    imagenet_r = names.attach(fake_set("imagenet-r", ["x"] * 200), "imagenet-r")
    assert imagenet_r.classnames[:3] == ["goldfish", "great white shark", "hammerhead shark"]
    assert imagenet_r.classnames == list(reference(builder, monkeypatch, tmp_path, "imagenet-r", ["x"] * 200).classes)


def test_vtab_only_sets_and_sets_clip_benchmark_lacks():
    svhn = names.attach(fake_set("svhn", [str(d) for d in range(10)]), "svhn")
    assert svhn.classnames == names.en_classnames()["svhn"] and svhn.classnames[0] == "zero"
    assert svhn.templates == names.en_templates()["svhn"]
    resisc = names.attach(fake_set("resisc45", ["airplane", "baseball_diamond"]), "resisc45")
    assert resisc.classnames == ["airplane", "baseball_diamond"]  # TFDS's names, underscores kept, as vtab/resisc45
    assert resisc.templates == names.en_templates()["resisc45"]
    kmnist = names.attach(fake_set("kmnist", ["o", "ki"]), "kmnist")
    assert kmnist.classnames == ["o", "ki"] and kmnist.templates == names.en_templates()["imagenet1k"]


def test_vtab_keys_fall_back_to_the_short_name_then_imagenet():
    assert names.lookup_keys("vtab/cifar10") == ["vtab/cifar10", "cifar10"]
    assert names.clip_benchmark_templates("vtab/cifar10") == names.en_templates()["cifar10"]
    assert names.clip_benchmark_templates("imagenet-a") == names.en_templates()["imagenet1k"]
    caltech = names.clip_benchmark_classnames("vtab/caltech101", [])[0]
    assert caltech == names.en_classnames()["caltech101_vtab"] != names.en_classnames()["caltech101"]


def test_a_readers_own_templates_are_kept_as_the_builder_keeps_a_wds_sets():
    ds = names.attach(fake_set("cifar10", ["a", "b"], ["a sketch of a {c}."]), "cifar10")
    assert ds.templates == ["a sketch of a {c}."]


def test_a_class_count_unlike_clip_benchmarks_is_one_line():
    with pytest.raises(UserError) as e:
        names.attach(fake_set("mnist", ["0", "1", "2"]), "mnist")
    message = str(e.value)
    assert "\n" not in message and "/data/mnist: 3 classes" in message and "has 10 names" in message


def test_classnames_file_replaces_names_and_checks_the_count(tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("zero\none\n")
    bad.write_text("zero\none\ntwo\n")
    ds = fake_set("digits", ["0", "1"], ["a {c}"])
    assert names.apply_overrides(ds, classnames=good).classnames == ["zero", "one"]
    with pytest.raises(UserError) as e:
        names.apply_overrides(ds, classnames=bad)
    message = str(e.value)
    assert "\n" not in message and str(bad) in message and "3 class names" in message and "has 2 classes" in message


def test_template_choices(tmp_path):
    ds = fake_set("cifar10", ["cat", "dog"], ["a {c}"])
    assert names.choose_templates(None, ds) == ["a {c}"]
    assert names.choose_templates("openai", ds) == names.en_templates()["imagenet1k"]
    assert names.choose_templates("simple", ds) == [t("{c}") for t in SIMPLE_IMAGENET_TEMPLATES]
    lines, cupl = tmp_path / "t.txt", tmp_path / "t.json"
    lines.write_text("art of a {c}.\n")
    cupl.write_text(json.dumps({"cat": ["a cat"], "dog": ["a dog"]}))
    assert names.apply_overrides(ds, templates=str(lines)).templates == ["art of a {c}."]
    assert names.choose_templates(str(cupl), ds) == {"cat": ["a cat"], "dog": ["a dog"]}
    with pytest.raises(UserError, match="not openai/simple/cupl and no such file"):
        names.choose_templates(str(tmp_path / "missing.txt"), ds)


def test_cupl_is_clip_benchmarks_file_for_imagenet_and_names_a_class_it_lacks():
    table = names.package_json("datasets/cupl_prompts.json")
    imagenet = fake_set("imagenet1k", names.en_classnames()["imagenet1k"])
    prompts = names.choose_templates("cupl", imagenet)
    assert len(prompts) == 998  # 1,000 classes, two names repeated ("crane", "maillot")
    assert prompts["goldfish"] == table["imagenet1k"]["goldfish"]
    sketch = fake_set("imagenet_sketch", names.en_classnames()["imagenet1k"][:3])  # other keys: imagenet1k's
    assert names.choose_templates("cupl", sketch)["tench"] == table["imagenet1k"]["tench"]
    with pytest.raises(UserError) as e:
        names.choose_templates("cupl", fake_set("cifar10", ["airplane", "automobile"]))
    assert "\n" not in str(e.value) and "'airplane' has none" in str(e.value)
