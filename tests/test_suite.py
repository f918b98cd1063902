"""``python -m eval suite``: discovery, numbers equal to each task run alone, the cache, --compare, failures,
two processes.

The root holds two tiny classification sets in layouts written here (CIFAR's binary records, 10 real digit images
per class, and a labelled folder of real photos) with readers registered here, a broken MNIST file, the
real-photo retrieval fixture as Flickr30k and MSCOCO, and a three-example Winoground. The registry is replaced by
these readers and the class names/templates step by a fixed template, so the suite is tested apart from the
real readers (each has its own tests).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmcontrast as mc
from eval import suite_cli
from eval.__main__ import build_parser, input_paths, load_model
from eval.__main__ import main as eval_main
from eval.cache import file_identity
from eval.classification import names, registry
from eval.classification.registry import DatasetSpec, Layout, open_classification
from eval.encode import encode_images
from eval.sets import ClassificationSet, FileImages, RecordImages
from eval.suite import LoadedModel, discover, run_suite
from eval.suite_report import OPENCLIP_COLUMNS
from eval.zeroshot import run_zeroshot
from mmcontrast.errors import UserError

from .real_images import CAPTIONS, load_photos
from .spawn import run_workers

# docs/openclip_results.csv of mlfoundations/open_clip, its header after "name,pretrained,Average perf. on 38 datasets"
OPENCLIP_HEADER = ("ImageNet 1k,Caltech-101,CIFAR-10,CIFAR-100,CLEVR Counts,CLEVR Distance,Country211,Describable "
                   "Textures,EuroSAT,FGVC Aircraft,Food-101,GTSRB,ImageNet Sketch,ImageNet v2,ImageNet-A,ImageNet-O,"
                   "ImageNet-R,KITTI Vehicle Distance,MNIST,ObjectNet,Oxford Flowers-102,Oxford-IIIT Pet,Pascal VOC "
                   "2007,PatchCamelyon,Rendered SST2,RESISC45,Stanford Cars,STL-10,SUN397,SVHN,Flickr,MSCOCO,"
                   "WinoGAViL,iWildCam,Camelyon17,FMoW,Dollar Street,GeoDE")
CIFAR_RECORD = 1 + 3 * 32 * 32
TEMPLATE = "a photo of a {c}."
GOOD = ["cifar10", "flowers", "flickr30k", "mscoco", "winoground"]


def _read_cifar_bin(root: Path, split: str) -> ClassificationSet:
    """CIFAR-10's binary version: records of <label byte><1024 R><1024 G><1024 B>, memory-mapped."""
    folder = root / "cifar-10-batches-bin"
    path = folder / f"{split}_batch.bin"
    if path.stat().st_size % CIFAR_RECORD:
        raise UserError(f"{path}: {path.stat().st_size} bytes, not a multiple of {CIFAR_RECORD}")
    records = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, CIFAR_RECORD)

    def get(i: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(records[i, 1:].reshape(3, 32, 32).transpose(1, 2, 0)))

    names = (folder / "batches.meta.txt").read_text().split()
    return ClassificationSet("cifar10", str(path), RecordImages(len(records), get, file_identity(path)),
                             [int(y) for y in records[:, 0]], names, [])


def _read_labelled_folder(root: Path, split: str) -> ClassificationSet:
    """A folder of images with ``labels.txt``: ``<file> <class index>`` per line, class names in ``classes.txt``."""
    folder = root / "flowers-102"
    rows = [line.split() for line in (folder / "labels.txt").read_text().splitlines()]
    return ClassificationSet("flowers", str(folder), FileImages([folder / r[0] for r in rows]),
                             [int(r[1]) for r in rows], (folder / "classes.txt").read_text().split(), [])


def _read_idx(root: Path, split: str) -> ClassificationSet:
    path = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    magic = int.from_bytes(path.read_bytes()[:4], "big")
    raise UserError(f"{path}: magic number {magic}, not 2051 (an IDX file of uint8 images)")


def fake_registry() -> dict[str, DatasetSpec]:
    """cifar10 and flowers as written by ``write_root``, a broken mnist, and an imagenet1k never written."""
    layouts = {"cifar10": ("acc1", Layout("CIFAR-10 binary", "cifar-10-batches-bin/{split}_batch.bin",
                                          _read_cifar_bin)),
               "flowers": ("mean_per_class_recall", Layout("labelled folder", "flowers-102/labels.txt",
                                                           _read_labelled_folder)),
               "mnist": ("acc1", Layout("IDX", "MNIST/raw/t10k-images-idx3-ubyte", _read_idx)),
               "imagenet1k": ("acc1", Layout("ImageFolder", "val", _read_labelled_folder))}
    return {name: DatasetSpec(name, metric, [layout], ("test", "train") if name == "cifar10" else ("test",))
            for name, (metric, layout) in layouts.items()}


def _attach(ds: ClassificationSet, name: str) -> ClassificationSet:
    ds.templates = [TEMPLATE]
    return ds


def install_fakes(setattr_, setitem) -> None:
    setattr_(registry, "READER_MODULES", ())
    setattr_(registry, "DATASETS", fake_registry())
    setattr_(names, "attach", _attach)  # open_classification imports it at call time


@pytest.fixture(autouse=True)
def fakes(monkeypatch):
    install_fakes(monkeypatch.setattr, monkeypatch.setitem)


def _png(image: Image.Image, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path.name


def write_root(root: Path, retrieval_root: Path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    (root / "cifar-10-batches-bin").mkdir(parents=True)
    for split, first in (("test", 0), ("train", 10)):  # 10 digits of each class per split, none in both
        picked = [i for c in range(10) for i in np.flatnonzero(digits.target == c)[first:first + 10]]
        records = np.zeros((len(picked), CIFAR_RECORD), dtype=np.uint8)
        for n, i in enumerate(picked):
            grey = np.array(Image.fromarray((digits.images[i] * 16).clip(0, 255).astype(np.uint8)).resize((32, 32)))
            records[n, 0] = digits.target[i]
            records[n, 1:] = np.stack([grey, 255 - grey, grey // 2]).reshape(-1)  # the planes, R then G then B
        records.tofile(root / "cifar-10-batches-bin" / f"{split}_batch.bin")
    (root / "cifar-10-batches-bin" / "batches.meta.txt").write_text(
        "zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n")
    photos = load_photos()
    folder = root / "flowers" / "flowers-102"  # under ROOT/<name>, where a set of its own may sit
    rows = [f"{_png(im.resize((48, 48)), folder / f'{name}.png')} {n % 3}"
            for n, (name, im) in enumerate(photos.items())]
    (folder / "labels.txt").write_text("\n".join(rows) + "\n")
    (folder / "classes.txt").write_text("tulip\nrose\ndaisy\n")
    (root / "MNIST" / "raw").mkdir(parents=True)
    (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(8))
    for name in ("flickr30k", "mscoco"):
        (root / name).symlink_to(retrieval_root, target_is_directory=True)
    names = list(CAPTIONS)
    wino = root / "winoground"
    rows = []
    for n in range(3):
        a, b = names[2 * n], names[2 * n + 1]
        _png(photos[a].resize((40, 40)), wino / "images" / f"ex{n}_0.png")
        _png(photos[b].resize((40, 40)), wino / "images" / f"ex{n}_1.png")
        rows.append(json.dumps({"id": n, "image_0": f"ex{n}_0", "image_1": f"ex{n}_1",
                                "caption_0": CAPTIONS[a][0], "caption_1": CAPTIONS[b][0]}))
    (wino / "examples.jsonl").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory, real_retrieval):
    return write_root(tmp_path_factory.mktemp("datasets"), real_retrieval["karpathy_flickr"].parent)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    return [mc.save_model_dir(mc.create_model("tiny", seed=seed), out / f"tiny{seed}") for seed in (0, 1)]


def suite_args(model, root, output, **options):
    """The program's own options for ``model``, made a suite run (the lead wires ``suite`` into the parser)."""
    args = build_parser().parse_args(["zeroshot", "--model", str(model), "--dataset", "x", "--output", "x.json",
                                      "--workers", "0", "--batch-size", "16", "--cache-dir", ""])
    vars(args).update(task="suite", dataset=None, root=str(root), output=str(output), tasks=None, datasets=None,
                      compare=None, compare_pretrained=None)
    vars(args).update(options)
    return args


def run_suite_program(*args, **options):
    suite_cli.run(suite_args(*args, **options), input_paths, load_model)


def _json(out: Path, task: str, dataset: str, slot: str = "model") -> dict:
    return json.loads((out / slot / task / f"{dataset}.json").read_text())


def _csv(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_column_titles_are_open_clips_in_its_order():
    assert list(OPENCLIP_COLUMNS.values()) == OPENCLIP_HEADER.split(",")


def test_discovery_lists_what_is_there_and_every_path_looked_for_the_rest(root):
    found = {(f.task, f.dataset): f for f in discover(root)}
    assert {k for k, f in found.items() if f.status == "found"} == {
        ("zeroshot", "cifar10"), ("zeroshot", "flowers"), ("zeroshot", "mnist"), ("retrieval", "flickr30k"),
        ("retrieval", "mscoco"), ("compositional", "winoground")}
    assert found["zeroshot", "cifar10"].folder == root             # a shared torchvision root
    assert found["zeroshot", "flowers"].folder == root / "flowers"  # ROOT/<name>
    assert found["retrieval", "flickr30k"].where.endswith("dataset_flickr30k.json (karpathy)")
    assert found["retrieval", "mscoco"].where.endswith("dataset_coco.json (karpathy)")
    missing = {k for k, f in found.items() if f.status == "missing"}
    assert missing == {("zeroshot", "imagenet1k"), ("retrieval", "flickr8k"), ("compositional", "sugar_crepe"),
                       ("compositional", "aro_vgr"), ("compositional", "aro_vga"), ("compositional", "shapes")}
    assert found["zeroshot", "imagenet1k"].where == f"looked for {root / 'val'}, {root / 'imagenet1k' / 'val'}"
    assert str(root / "aro" / "visual_genome_relation.json") in found["compositional", "aro_vgr"].where
    assert [(f.task, f.dataset) for f in discover(root, ("zeroshot", "retrieval"), ["mscoco", "cifar10"])] == [
        ("zeroshot", "cifar10"), ("retrieval", "mscoco")]
    with pytest.raises(UserError, match="--datasets cifar10: no such dataset for the tasks retrieval; known: flickr"):
        discover(root, ("retrieval",), ["mscoco", "cifar10"])
    with pytest.raises(UserError, match="--datasets imagenet: no such dataset.*known: aro_vga"):
        discover(root, datasets=["imagenet"])


def test_numbers_equal_each_task_run_alone_and_a_failing_set_leaves_the_others(root, models, tmp_path):
    out = tmp_path / "suite"
    with pytest.raises(UserError, match=r"^1 evaluation failed: zeroshot mnist \("):
        run_suite_program(models[0], root, out)
    model, preprocess, tokenizer = mc.load(str(models[0]))
    for name in ("cifar10", "flowers"):
        alone = run_zeroshot(model, preprocess, tokenizer, open_classification(name, root if name == "cifar10"
                                                                                else root / name),
                             batch_size=5, progress=False)
        assert _json(out, "zeroshot", name)["metrics"] == pytest.approx(alone["metrics"], abs=1e-6, nan_ok=True)
    for task, name in (("retrieval", "flickr30k"), ("retrieval", "mscoco"), ("compositional", "winoground")):
        eval_main([task, "--model", str(models[0]), "--dataset", name, "--root", str(root / name), "--workers", "0",
                   "--cache-dir", "", "--output", str(tmp_path / f"{name}.json")])
        alone = json.loads((tmp_path / f"{name}.json").read_text())
        ours = _json(out, task, name)
        assert ours == {**alone, "metrics": pytest.approx(alone["metrics"], abs=1e-6)}
    flickr = _json(out, "retrieval", "flickr30k")["metrics"]
    cifar = _json(out, "zeroshot", "cifar10")["metrics"]
    flowers = _json(out, "zeroshot", "flowers")["metrics"]
    (row,) = _csv(out)
    mean_r1 = (flickr["image_retrieval_recall@1"] + flickr["text_retrieval_recall@1"]) / 2
    assert list(row) == ["name", "pretrained", "Average perf. on 4 datasets", "CIFAR-10", "Oxford Flowers-102",
                         "Flickr", "MSCOCO", "Winoground"]
    assert float(row["CIFAR-10"]) == cifar["acc1"] and float(row["Flickr"]) == mean_r1
    assert float(row["Oxford Flowers-102"]) == flowers["mean_per_class_recall"]  # DataComp's metric for Flowers
    assert float(row["Average perf. on 4 datasets"]) == pytest.approx(
        (cifar["acc1"] + flowers["mean_per_class_recall"] + 2 * mean_r1) / 4)  # the same images: MSCOCO = Flickr
    table = (out / "results.md").read_text()
    assert f"| zeroshot | CIFAR-10 (`cifar10`) | acc1 | {100 * cifar['acc1']:.2f} |" in table
    assert "| zeroshot | MNIST (`mnist`) |  | failed |" in table
    assert "| zeroshot | ImageNet 1k (`imagenet1k`) |  | missing |" in table
    assert f"- zeroshot `mnist`: {root / 'MNIST/raw/t10k-images-idx3-ubyte'}: magic number 2049, not 2051" in table
    assert f"- zeroshot `imagenet1k`: looked for {root / 'val'}" in table
    assert "#### Missing (6)" in table and not (out / "model" / "zeroshot" / "mnist.json").exists()
    assert (out / "results.png").stat().st_size > 5000


def test_a_second_run_reads_every_embedding_from_the_cache(root, models, tmp_path, monkeypatch):
    calls = []
    model_class = type(mc.load(str(models[0]))[0])
    encode_image = model_class.encode_image
    monkeypatch.setattr(model_class, "encode_image", lambda self, x: calls.append(len(x)) or encode_image(self, x))
    cache = tmp_path / "cache"
    runs = []
    for n in range(2):
        run_suite_program(models[0], root, tmp_path / f"run{n}", datasets=GOOD, cache_dir=str(cache))
        runs.append(len(calls))
    assert runs[0] > 0 and runs[1] == runs[0]  # the second run encoded no image
    for task, name in (("zeroshot", "cifar10"), ("retrieval", "mscoco"), ("compositional", "winoground")):
        assert _json(tmp_path / "run1", task, name) == _json(tmp_path / "run0", task, name)


def test_compare_puts_a_second_model_beside_with_the_differences_of_the_two_runs(root, models, tmp_path):
    alone = []
    for n, model in enumerate(models):
        run_suite_program(model, root, tmp_path / f"alone{n}", datasets=GOOD)
        alone.append(_csv(tmp_path / f"alone{n}")[0])
    out = tmp_path / "both"
    run_suite_program(models[0], root, out, datasets=GOOD, compare=str(models[1]))
    first, second = _csv(out)
    assert (first["name"], second["name"]) == (str(models[0]), str(models[1]))
    assert first == alone[0] and second == alone[1]
    table = (out / "results.md").read_text()
    for column, dataset in (("CIFAR-10", "cifar10"), ("Flickr", "flickr30k"), ("Winoground", "winoground")):
        a, b = float(alone[0][column]), float(alone[1][column])
        assert f"| {100 * a:.2f} | {100 * b:.2f} | {100 * (b - a):+.2f} |" in table, column
        assert _json(out, "zeroshot" if dataset == "cifar10" else
                     "retrieval" if dataset == "flickr30k" else "compositional", dataset, "compare")["model"] == \
            str(models[1])
    (average,) = [line for line in table.splitlines() if "Average perf. on 4 datasets" in line]
    a, b = (float(alone[n]["Average perf. on 4 datasets"]) for n in range(2))
    assert f"| {100 * a:.2f} | {100 * b:.2f} | {100 * (b - a):+.2f} |" in average


def test_the_linear_probe_equals_the_probe_on_the_features_and_shares_zero_shots_test_images(root, models, tmp_path,
                                                                                               monkeypatch):
    probe = pytest.importorskip("eval.linear_probe")
    found = {(f.task, f.dataset): f.status for f in discover(root, ("linear_probe",))}
    assert found == {("linear_probe", "cifar10"): "found", ("linear_probe", "flowers"): "skipped",
                     ("linear_probe", "mnist"): "skipped", ("linear_probe", "imagenet1k"): "skipped"}
    model, preprocess, tokenizer = mc.load(str(models[0]))
    features = {}
    for split in ("train", "test"):
        ds = open_classification("cifar10", root, split)
        features[split] = (encode_images(model, preprocess, ds.images, 16, torch.device("cpu"), progress=False),
                           torch.tensor(ds.labels))
    alone = probe.linear_probe(*features["train"], *features["test"])
    calls = []
    encode_image = type(model).encode_image
    monkeypatch.setattr(type(model), "encode_image", lambda self, x: calls.append(len(x)) or encode_image(self, x))
    out = tmp_path / "lp"
    run_suite_program(models[0], root, out, tasks=["zeroshot", "linear_probe"], datasets=["cifar10"],
                      cache_dir=str(tmp_path / "cache"))
    assert _json(out, "linear_probe", "cifar10")["metrics"] == pytest.approx(alone, nan_ok=True)
    assert _json(out, "linear_probe", "cifar10")["task"] == "linear_probe"
    assert sum(calls) == 200  # 100 test images for zero-shot, read again from the cache by the probe; 100 train
    (row,) = _csv(out)
    assert float(row["CIFAR-10 (linear probe)"]) == alone["lp_acc1"]


def test_the_linear_probe_is_skipped_with_a_line_when_its_module_is_absent(root, monkeypatch):
    monkeypatch.setitem(sys.modules, "eval.linear_probe", None)  # import eval.linear_probe raises ImportError
    found = discover(root, ("linear_probe",), ["cifar10"])
    assert [(f.status, f.where.split(" (")[0]) for f in found] == [
        ("skipped", "eval.linear_probe cannot be imported")]


def test_options_of_a_single_dataset_are_refused(root, models, tmp_path):
    with pytest.raises(UserError, match="--templates is for a single dataset's task"):
        run_suite_program(models[0], root, tmp_path / "o", templates="simple")
    with pytest.raises(UserError, match="suite writes a folder"):
        run_suite_program(models[0], root, tmp_path / "o.json")


def test_a_root_with_no_benchmark_is_one_line(models, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"--root .*empty: none of the \d+ known benchmarks is there"):
        run_suite_program(models[0], tmp_path / "empty", tmp_path / "o")


def _distributed_suite(rank: int, world: int, root: Path) -> list:
    install_fakes(setattr, dict.__setitem__)
    model = mc.create_model("tiny", seed=0).eval()
    _, preprocess = mc.make_transforms(model.preprocess_cfg)
    loaded = LoadedModel(model, preprocess, mc.make_tokenizer(model.model_cfg), ["tiny"], batch_size=7,
                         progress=False)
    return [(o.task, o.dataset, o.status, o.value) for o in run_suite(discover(root), loaded, log=lambda *a: None)]


def test_two_processes_give_what_one_gives(root, tiny):
    model, preprocess, tokenizer = tiny
    single = [(o.task, o.dataset, o.status, o.value) for o in
              run_suite(discover(root), LoadedModel(model, preprocess, tokenizer, ["tiny"], batch_size=7,
                                                    progress=False), log=lambda *a: None)]
    assert sum(status == "ok" for _, _, status, _ in single) == 5
    for result in run_workers(_distributed_suite, 2, root):
        assert [r[:3] for r in result] == [s[:3] for s in single]
        assert [r[3] for r in result] == pytest.approx([s[3] for s in single], abs=1e-6)
