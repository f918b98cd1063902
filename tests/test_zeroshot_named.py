"""Zero-shot on named datasets: CLIP_benchmark's metrics (multi-label mAP included), ``open_dataset`` with a
registered name, ``python -m eval zeroshot --dataset NAME --root DIR``, and the Python API in both model forms."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification as cb
from sklearn.metrics import balanced_accuracy_score

import eval as mce
import mmcontrast as mc
from eval.classification import names
from eval.datasets import open_dataset
from eval.retrieval import run_retrieval
from eval.sets import ClassificationSet, RecordImages
from eval.zeroshot import run_zeroshot
from mmcontrast.errors import UserError
from mmcontrast.metrics.classification import average_precision_per_class, chance_average_precision
from mmcontrast.templates import SIMPLE

from .real_images import load_photos

# torchvision EuroSAT's class folders (eurosat/2750/<Class>/); CLIP_benchmark renames all ten
EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
           "Residential", "River", "SeaLake"]
CLASSES = ["astronaut", "coffee", "cat", "rocket", "galaxy", "coins"]


@pytest.fixture(scope="module")
def photos():
    out = []
    for photo in load_photos().values():
        photo = photo.copy()
        photo.thumbnail((64, 64))
        out.append(photo)
    return out


@pytest.fixture(scope="module")
def eurosat_root(tmp_path_factory, photos):
    """``eurosat/2750/<Class>/*.jpg``: the 15 photos over the ten classes."""
    root = tmp_path_factory.mktemp("named")
    for i, photo in enumerate(photos):
        folder = root / "eurosat" / "2750" / EUROSAT[i % 10]
        folder.mkdir(parents=True, exist_ok=True)
        photo.save(folder / f"{EUROSAT[i % 10]}_{i}.jpg")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    mc.save_model_dir(mc.create_model("tiny", seed=0), path)
    return path


def photo_set(photos, multilabel: bool) -> ClassificationSet:
    n = len(CLASSES)
    labels = [sorted({i % n, (3 * i + 1) % n}) if multilabel else i % n for i in range(len(photos))]
    return ClassificationSet("photos", "photos", RecordImages(len(photos), lambda i: photos[i], []), labels,
                             list(CLASSES), list(SIMPLE), multilabel=multilabel)


def loader(ds: ClassificationSet, preprocess) -> torch.utils.data.DataLoader:
    """CLIP_benchmark's input: (pixels, label) batches, a multi-label target as a multi-hot row."""
    def target(y):
        return torch.zeros(len(ds.classnames)).index_fill_(0, torch.tensor(y), 1) if ds.multilabel else y

    items = [(preprocess(ds.images.image(i)), target(y)) for i, y in enumerate(ds.labels)]
    return torch.utils.data.DataLoader(items, batch_size=4)


def test_average_precision_by_hand():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    targets = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0]])
    # class 0: positives at ranks 1 and 3, precision 1/1 and 2/3; class 1 has none: 0
    assert average_precision_per_class(scores, targets).tolist() == pytest.approx([(1 + 2 / 3) / 2, 0.0])


def test_average_precision_equals_clip_benchmarks_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (40, 6), generator=g).float()  # many ties: the ranking is torch.sort's
    targets = (torch.rand(40, 6, generator=g) < 0.3).float()
    targets[:, 5] = 0
    assert torch.equal(average_precision_per_class(scores, targets), cb.average_precision_per_class(scores, targets))


@pytest.mark.parametrize("positives", [0, 1, 2, 4, 5])
def test_chance_average_precision_is_the_mean_over_every_ranking(positives):
    n = 5
    rankings = torch.tensor(list(itertools.permutations(range(n)))).float().T     # [5, 120]: every order
    truth = torch.zeros(n, rankings.shape[1])
    truth[:positives] = 1
    exact = average_precision_per_class(rankings, truth).double().mean().item()
    assert chance_average_precision(positives, n) == pytest.approx(exact, abs=1e-6)


def test_zeroshot_equals_clip_benchmark_on_real_photos(tiny, photos):
    model, preprocess, tokenizer = tiny
    ds = photo_set(photos, multilabel=False)
    ours = run_zeroshot(model, preprocess, tokenizer, ds, batch_size=4, progress=False)
    # CLIP_benchmark's `evaluate` = these two calls + its `accuracy` (broken by NumPy 2: float() of an array)
    classifier = cb.zero_shot_classifier(model, tokenizer, ds.classnames, ds.templates, "cpu", amp=False)
    logits, target = cb.run_classification(model, classifier, loader(ds, preprocess), "cpu", amp=False)
    metrics = ours["metrics"]
    assert metrics["acc1"] == pytest.approx((logits.argmax(1) == target).float().mean().item(), abs=1e-6)
    top5 = logits.topk(5, dim=1).indices
    assert metrics["acc5"] == pytest.approx((top5 == target[:, None]).any(1).float().mean().item(), abs=1e-6)
    assert metrics["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(target, logits.argmax(1)),
                                                             abs=1e-6)
    assert ours["per_class_recall"] and "mean_average_precision" not in metrics


def test_multilabel_zeroshot_is_clip_benchmarks_mean_average_precision(tiny, photos):
    model, preprocess, tokenizer = tiny
    ds = photo_set(photos, multilabel=True)
    ours = run_zeroshot(model, preprocess, tokenizer, ds, batch_size=4, progress=False)
    ref = cb.evaluate(model, loader(ds, preprocess), tokenizer, ds.classnames, ds.templates, "cpu", amp=False)
    assert ours["metrics"].keys() == ref.keys() == {"mean_average_precision"}
    assert ours["metrics"]["mean_average_precision"] == pytest.approx(ref["mean_average_precision"], abs=1e-6)
    assert len(ours["per_class_average_precision"]) == len(CLASSES)
    positives = [sum(c in ys for ys in ds.labels) for c in range(len(CLASSES))]
    chance = sum(chance_average_precision(p, len(ds)) for p in positives) / len(CLASSES)
    assert ours["chance"] == {"mean_average_precision": pytest.approx(chance)}


def test_open_dataset_reads_a_registered_name_with_clip_benchmarks_names(eurosat_root, tmp_path):
    logged = []
    ds = open_dataset("eurosat", eurosat_root, log=logged.append)
    assert ds.name == "eurosat" and len(ds) == 15 and ds.labels[:3] == [0, 0, 1]  # sorted folders, two photos each
    assert ds.classnames == names.en_classnames()["eurosat"] and ds.templates == names.en_templates()["eurosat"]
    assert "eurosat/2750" in logged[0]
    mine = tmp_path / "names.txt"
    mine.write_text("\n".join(f"satellite photo class {c}" for c in range(10)))
    ds = open_dataset("eurosat", eurosat_root, classnames=str(mine), templates="simple", log=lambda *a: None)
    assert ds.classnames[0] == "satellite photo class 0" and ds.templates == list(SIMPLE)


def test_open_dataset_errors_name_the_problem(eurosat_root):
    with pytest.raises(UserError, match="--dataset eurosat needs --root DIR"):
        open_dataset("eurosat")
    with pytest.raises(UserError) as e:
        open_dataset("cifar11", eurosat_root)
    message = str(e.value)
    assert "\n" not in message and all(n in message for n in ("flickr30k", "cifar10", "imagenet1k", "voc2007"))
    with pytest.raises(UserError, match="no cifar10 files under"):
        open_dataset("cifar10", eurosat_root, log=lambda *a: None)


def test_zeroshot_program_on_a_named_dataset(model_dir, eurosat_root, tmp_path):
    out = tmp_path / "eurosat.json"
    proc = subprocess.run([sys.executable, "-m", "eval", "zeroshot", "--model", str(model_dir), "--dataset", "eurosat",
                           "--root", str(eurosat_root), "--output", str(out), "--workers", "0", "--cache-dir", ""],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["dataset"] == "eurosat" and set(record["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    per_class = json.loads((tmp_path / "eurosat.classes.json").read_text())
    assert list(per_class) == names.en_classnames()["eurosat"]
    api = mce.zeroshot("eurosat", eurosat_root, model=str(model_dir), batch_size=8, progress=False)
    for k, v in record["metrics"].items():
        assert api[k] == pytest.approx(v, abs=1e-6), k


def test_api_zeroshot_takes_a_spec_or_a_loaded_model(model_dir, eurosat_root, tmp_path, capsys):
    by_path = mce.zeroshot("eurosat", eurosat_root, model=model_dir, batch_size=8, progress=False)
    loaded = mc.load(model_dir)
    cache = tmp_path / "cache"
    by_model = mce.zeroshot("eurosat", eurosat_root, model=loaded, templates="simple", batch_size=8,
                            cache_dir=cache, progress=False)
    capsys.readouterr()
    again = mce.zeroshot("eurosat", eurosat_root, model=loaded, templates="simple", batch_size=8,
                         cache_dir=cache, progress=False)
    assert "embeddings from cache" in capsys.readouterr().out
    assert by_path["n"] == by_model["n"] == 15 and by_path["classes"] == 10
    assert by_path["chance"] == {"acc1": 0.1, "acc5": 0.5, "mean_per_class_recall": 0.1}
    assert len(list(cache.iterdir())) == 2 and again == by_model  # the images' entry and the class weights'
    ds = open_dataset("eurosat", eurosat_root, templates="simple", log=lambda *a: None)
    direct = run_zeroshot(*loaded, ds, batch_size=8, progress=False)["metrics"]
    assert {k: by_model[k] for k in direct} == pytest.approx(direct, abs=1e-6)
    with pytest.raises(UserError, match="needs the other kind"):
        mce.retrieval("eurosat", eurosat_root, model=loaded)


def test_api_retrieval_takes_a_spec_or_a_loaded_model(model_dir, real_retrieval):
    root = real_retrieval["wds"].parent
    by_path = mce.retrieval("flickr30k", root, model=str(model_dir), batch_size=8, progress=False)
    loaded = mc.load(model_dir)
    by_model = mce.retrieval("flickr30k", root, model=loaded, batch_size=8, progress=False)
    ds = open_dataset("flickr30k", root, log=lambda *a: None)
    direct = run_retrieval(*loaded, ds, batch_size=8, progress=False)
    assert by_path["images"] == by_model["images"] == len(ds) and by_model["texts"] == len(ds.texts)
    for k, v in direct["metrics"].items():
        assert by_path[k] == pytest.approx(v, abs=1e-6) and by_model[k] == pytest.approx(v, abs=1e-6), k
    with pytest.raises(UserError, match="precision 'fp8'"):
        mce.retrieval("flickr30k", root, model=loaded, precision="fp8")


def test_api_names_stay_functions_after_the_submodules_load():
    import eval.retrieval  # noqa: F401
    import eval.zeroshot  # noqa: F401

    assert callable(mce.zeroshot) and callable(mce.retrieval)
    assert mce.zeroshot.__module__ == mce.retrieval.__module__ == "eval.api"
