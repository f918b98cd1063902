"""Every registered classification dataset opened the way a user opens it: its fixture written in its published
layout (``tests/layouts``), read by ``open_classification``, with the labels the writer wrote and the class names
and templates CLIP_benchmark's ``build_dataset`` gives.

Where ``build_dataset`` can read the fixture itself (torchvision checks no checksum: 21 of the datasets), it is
called for real on the same files, and its targets must equal ours too. CIFAR, STL-10, Flowers-102 and ImageNet
(torchvision refuses files whose MD5 is not the archive's) and ImageNet-V2 (CLIP_benchmark downloads it whenever
its folder is not its own download) get ``build_dataset`` over a stand-in dataset named as our reader names the
classes (as ``test_classification_names``). CLIP_benchmark has no builder for SVHN and RESISC45 (VTAB only) nor
for Fashion-MNIST, KMNIST and EMNIST: their names and templates are the JSON files' or the reader's.
Then ``python -m eval zeroshot --dataset NAME --root R`` runs on three of them, in one shared root.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import mmcontrast as mc
from eval.classification import names
from eval.classification.registry import find_layout, known, open_classification
from eval.zeroshot import run_zeroshot
from mmcontrast.errors import UserError
from tests.layouts import cifar, classes, folders, idx, imagenet, records
from tests.layouts.suite_root import DATASETS as SUITE_DATASETS
from tests.layouts.suite_root import write_suite_root
from tests.test_classification_names import reference

WRITERS = {**cifar.WRITERS, **idx.WRITERS, **records.WRITERS, **folders.WRITERS, **imagenet.WRITERS,
           "voc2007_multilabel": folders.write_voc2007}
# CLIP_benchmark names these datasets' every class: a fixture with fewer classes is (rightly) refused
FULL = {"caltech101", "country211", "eurosat"}
# the folder build_dataset is given, relative to the fixture's root, where it reads the fixture itself
BUILDER_ROOT = {name: "" for name in (
    "caltech101", "cars", "country211", "dtd", "eurosat", "fgvc_aircraft", "food101", "gtsrb", "mnist", "objectnet",
    "pcam", "pets", "renderedsst2", "sun397", "voc2007", "voc2007_multilabel")}
BUILDER_ROOT.update({"fer2013": "fer2013", "imagenet-a": "imagenet-a", "imagenet-r": "imagenet-r",
                     "imagenet-o": "imagenet-o", "imagenet_sketch": "sketch"})
STAND_IN = {"cifar10", "cifar100", "flowers", "stl10", "imagenet1k", "imagenetv2"}
NO_BUILDER = {"svhn", "resisc45", "fashion_mnist", "kmnist", "emnist"}


def test_every_registered_dataset_is_sorted_into_one_way_of_checking():
    assert set(WRITERS) == set(known()) == set(BUILDER_ROOT) | STAND_IN | NO_BUILDER
    assert not (set(BUILDER_ROOT) & STAND_IN) and not (NO_BUILDER & (set(BUILDER_ROOT) | STAND_IN))


def test_the_full_class_lists_match_clip_benchmarks_names():
    en = names.en_classnames()
    assert len(classes.EUROSAT) == len(en["eurosat"]) == 10 and classes.EUROSAT == sorted(classes.EUROSAT)
    assert len(classes.CALTECH101) == len(en["caltech101"]) == 102 and classes.CALTECH101[1:3] == ["Faces",
                                                                                                  "Faces_easy"]
    assert en["caltech101"][1:3] == ["off-center face", "centered face"]
    assert len(classes.COUNTRY211) == len(en["country211"]) == 211 == len(set(classes.COUNTRY211))
    assert classes.COUNTRY211 == sorted(classes.COUNTRY211)  # ImageFolder's order = the names' order
    assert [en["country211"][classes.COUNTRY211.index(c)] for c in ("AD", "GB", "XK", "ZW")] == [
        "Andorra", "United Kingdom", "Kosovo", "Zimbabwe"]
    assert [b.replace("_", " ").lower() for b in classes.PETS] == [n.lower() for n in en["pets"]]
    assert len(classes.DTD) == 47 == len(set(classes.DTD)) and classes.DTD == sorted(classes.DTD)


def _write(name: str, root: Path) -> dict:
    """The writer's expected labels per split (ImageNet writers give one split's, the default's)."""
    writer = WRITERS[name]
    expected = writer(root, per_class=1, size=24) if name in FULL else writer(root)
    return {"test": expected} if "labels" in expected else expected


def _listed(split: dict) -> list[int]:
    """The writer's labels in the order the reader lists the images: FER2013's writer gives them in CSV row
    order with each image's file, the folder reader (first found) lists by class folder, then file name."""
    if "files" not in split:
        return split["labels"]
    return [label for _, label in sorted(zip(map(str, split["files"]), split["labels"]))]


def _targets(ds) -> list:
    """build_dataset's targets as our readers list labels: ints, or the classes present for a multi-hot one."""
    out = []
    for i in range(len(ds)):
        target = ds[i][1]
        out.append(torch.nonzero(target).flatten().tolist() if torch.is_tensor(target) and target.ndim else
                   int(target))
    return out


@pytest.fixture(scope="module")
def builder():
    from clip_benchmark.datasets import builder
    return builder


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_open_classification_reads_the_fixture_as_clip_benchmark(name, builder, tmp_path, monkeypatch):
    expected = _write(name, tmp_path)
    ds = open_classification(name, tmp_path, log=lambda line: None)
    split = known()[name].splits[0]
    assert ds.multilabel == (name == "voc2007_multilabel")
    assert ds.labels == (expected[split]["multilabel"] if ds.multilabel else _listed(expected[split]))
    if name in BUILDER_ROOT:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "split argument ignored" (eurosat, sun397, caltech101)
            ref = builder.build_dataset(name, root=str(tmp_path / BUILDER_ROOT[name]), split=split, download=False)
        targets = _targets(ref)
        if name in ("imagenet-a", "imagenet-r", "imagenet-o"):
            # ImageFolder numbers the folders present; ours are fixed 200-way: the same folder either way
            folder = {i: w for w, i in ref.class_to_idx.items()}
            wnids = imagenet.clip_benchmark_subsets()[name]
            targets = [wnids.index(folder[t]) for t in targets]
        elif name == "imagenet_sketch":
            folder = {i: w for w, i in ref.class_to_idx.items()}
            targets = [imagenet.all_wnids().index(folder[t]) for t in targets]
        if name == "sun397":  # torchvision lists SUN397 in rglob order, which the filesystem decides
            assert sorted(targets) == sorted(ds.labels)
        else:
            assert targets == ds.labels
    elif name in STAND_IN:
        own = find_layout(name, tmp_path, split).read(tmp_path, split).classnames  # the reader's, before names
        ref = reference(builder, monkeypatch, tmp_path / "stand-in", name, own)
    if name in NO_BUILDER:
        en = names.en_classnames()
        assert ds.classnames == (en["svhn"] if name == "svhn" else expected[split].get("classnames", ds.classnames))
        assert ds.templates == names.en_templates()[name if name in ("svhn", "resisc45") else "imagenet1k"]
        if name == "resisc45":
            assert ds.classnames == ["airplane", "airport", "baseball_diamond"]
    else:
        assert ds.classnames == list(ref.classes)
        assert ds.templates == list(ref.templates)


def test_every_class_is_needed_where_clip_benchmark_names_them(tmp_path):
    folders.write_eurosat(tmp_path)  # the small fixture: 3 of the 10 classes
    with pytest.raises(UserError, match="3 classes.*10 names"):
        open_classification("eurosat", tmp_path, log=lambda line: None)


@pytest.mark.parametrize("name", sorted(SUITE_DATASETS))
def test_every_class_fixtures_read_alike_by_both(name, builder, tmp_path):
    """The benchmark's writers (every class, ``per_class`` images each): our labels are the writer's and
    ``build_dataset``'s, on one shared root through the links CLIP_benchmark's CLI is given."""
    from tests.layouts.suite_root import clip_benchmark_view

    expected = write_suite_root(tmp_path / "root", {name: 2})[name]["test"]
    ds = open_classification(name, tmp_path / "root", log=lambda line: None)
    assert ds.labels == _listed(expected) and len(set(ds.labels)) == len(ds.classnames)  # every class present
    template = clip_benchmark_view(tmp_path / "root", tmp_path / "view", [name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = builder.build_dataset(name, root=template.format(dataset=name), split="test", download=False)
    assert _targets(ref) == ds.labels and list(ref.classes) == ds.classnames


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    """Three datasets under one root, and a random tiny model directory."""
    base = tmp_path_factory.mktemp("open")
    expected = write_suite_root(base / "datasets", {"eurosat": 1, "mnist": 2, "fer2013": 1})
    mc.save_model_dir(mc.create_model("tiny", seed=0), base / "tiny")
    return base, expected


def test_zeroshot_program_on_named_datasets_in_one_root(shared_root):
    """The program's metrics equal ``run_zeroshot``'s in this process, on the set ``open_classification`` gives."""
    base, expected = shared_root
    root, model_dir = base / "datasets", base / "tiny"
    net, preprocess, tokenizer = mc.load(str(model_dir))
    for name in ("eurosat", "mnist", "fer2013"):
        out = base / f"{name}.json"
        proc = subprocess.run([sys.executable, "-m", "eval", "zeroshot", "--model", str(model_dir), "--dataset", name,
                               "--root", str(root), "--output", str(out), "--cache-dir", "", "--workers", "0"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"{name}: reading {root}" in proc.stdout
        record = json.loads(out.read_text())
        assert record["dataset"] == name and record["task"] == "zeroshot_classification"
        ds = open_classification(name, root, log=lambda line: None)
        assert ds.labels == _listed(expected[name]["test"])
        ours = run_zeroshot(net.eval(), preprocess, tokenizer, ds, batch_size=64, progress=False)["metrics"]
        assert record["metrics"].keys() == ours.keys()
        for metric, value in ours.items():
            assert record["metrics"][metric] == pytest.approx(value, abs=1e-6, nan_ok=True), (name, metric)
