"""The linear probe equals CLIP_benchmark's on the same features, without its leak; few-shot draws; the program.

CLIP_benchmark's ``linear_probe.evaluate`` is run on the CPU: its ``.cuda()`` calls are made no-ops, its
``device == 'cuda'`` assertion is met by a device string that compares equal to "cuda" but names the CPU, its
``accuracy`` (which breaks on numpy 2's scalar conversion) is replaced by the same top-k count, and its
``torch.randperm`` over the train rows is given our seed's generator, so both start from the same row order.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.metrics import linear_probe as cb

from eval.linear_probe import ProbeConfig, fit_probe, linear_probe, train_linear
from mmcontrast.errors import UserError

C, D = 5, 16
SMALL = ProbeConfig(wd_grid=tuple(np.logspace(-6, 2, 9).tolist()), coarse_step=4, epochs=5)  # 3 + 2 × 3 fits


def small(**settings) -> ProbeConfig:
    """The small grid and few epochs, with ``settings``."""
    return replace(SMALL, **settings)


def clusters(n: int, seed: int, noise: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, D] unit-norm features of C Gaussian clusters (one set of centres for every split) and their labels."""
    centres = torch.randn(C, D, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % C
    x = centres[y] + noise * torch.randn(n, D, generator=torch.Generator().manual_seed(seed))
    return F.normalize(x, dim=-1), y


# noisy enough that the search settles inside the grid (about 0.06), not at its first point
TRAIN, VAL, TEST = clusters(300, 1), clusters(100, 2), clusters(200, 3)


class _CpuCalledCuda(str):
    """A device string equal to "cuda" for CLIP_benchmark's assertion and "cpu" to torch."""

    def __eq__(self, other):
        return other == "cuda" or str.__eq__(self, other)

    __hash__ = str.__hash__


class _Features(torch.nn.Module):
    def encode_image(self, x):
        return x


def _loader(x, y):
    return torch.utils.data.DataLoader(list(zip(x, y)), batch_size=64)


def clip_benchmark_probe(monkeypatch, tmp_path, seed: int, fewshot_k: int, val: bool) -> tuple[dict, list]:
    """CLIP_benchmark's metrics and the (weight decay, classifier) of every ``train`` call, in order."""
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(cb, "accuracy", lambda output, target, topk=(1,): [
        float((output.topk(k, 1)[1] == target.view(-1, 1)).any(1).sum()) / len(target) for k in topk])
    randperm = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda n, *a, generator=None, **k: randperm(
        n, *a, generator=generator or torch.Generator().manual_seed(seed), **k))
    fits, train = [], cb.train

    def recording_train(*args, **kwargs):
        model = train(*args, **kwargs)
        fits.append((args[3], model))
        return model
    monkeypatch.setattr(cb, "train", recording_train)
    metrics = cb.evaluate(_Features(), _loader(*TRAIN), _loader(*TEST), fewshot_k, 64, 0, 0.1, 10, "m", seed,
                          str(tmp_path), _CpuCalledCuda("cpu"), val_dataloader=_loader(*VAL) if val else None,
                          amp=False)
    return metrics, fits


@pytest.mark.parametrize("seed", [0, 1])
def test_full_probe_with_search_equals_clip_benchmark(monkeypatch, tmp_path, seed):
    theirs, fits = clip_benchmark_probe(monkeypatch, tmp_path, seed, -1, val=True)
    ours = fit_probe(*TRAIN, *TEST, *VAL, seed=seed)
    assert [ProbeConfig().wd_grid[i] for i, _ in ours.search] == [wd for wd, _ in fits[:-1]]  # the same 19 fits
    assert ours.weight_decay == theirs["weight_decay"]
    assert 1e-3 < ours.weight_decay < 1  # the refinement moved off the coarse points' first
    final = fits[-1][1].module  # DataParallel without a GPU holds the Linear as it is
    torch.testing.assert_close(ours.classifier.weight, final.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.classifier.bias, final.bias, rtol=0, atol=1e-6)
    for name in ("lp_acc1", "lp_mean_per_class_recall"):
        assert abs(ours.metrics[name] - theirs[name]) < 0.005, name
    assert 0.35 < ours.metrics["lp_acc1"] < 0.9  # chance is 0.2; the clusters overlap
    assert math.isnan(ours.metrics["lp_acc5"]) and math.isnan(theirs["lp_acc5"])  # 5 classes
    assert {k: ours.metrics[k] for k in ("epochs", "seed", "fewshot_k", "normalized")} == \
        {k: theirs[k] for k in ("epochs", "seed", "fewshot_k", "normalized")}


@pytest.mark.parametrize("k", [1, 4])
def test_fewshot_probe_equals_clip_benchmark(monkeypatch, tmp_path, k):
    theirs, fits = clip_benchmark_probe(monkeypatch, tmp_path, 0, k, val=False)
    ours = fit_probe(*TRAIN, *TEST, config=ProbeConfig(fewshot_k=k))
    assert ours.weight_decay == theirs["weight_decay"] == 0
    torch.testing.assert_close(ours.classifier.weight, fits[-1][1].module.weight, rtol=0, atol=1e-6)
    assert abs(ours.metrics["lp_acc1"] - theirs["lp_acc1"]) < 0.005


def test_train_linear_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_linear(*TRAIN, C, 0.0, SMALL, seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("setting", [dict(val=True), dict(fewshot_k=4, val_proportion=0.5),
                                     dict(val_proportion=0.25)])
def test_test_labels_never_reach_the_search_or_the_fit(setting):
    val = setting.get("val", False)
    config = small(**{k: v for k, v in setting.items() if k != "val"})
    x_test, y_test = TEST
    shuffled = y_test[torch.randperm(len(y_test), generator=torch.Generator().manual_seed(9))]
    runs = [fit_probe(*TRAIN, x_test, y, *(VAL if val else ()), config=config, seed=0) for y in (y_test, shuffled)]
    assert runs[0].search == runs[1].search and runs[0].weight_decay == runs[1].weight_decay
    assert torch.equal(runs[0].classifier.weight, runs[1].classifier.weight)
    assert torch.equal(runs[0].classifier.bias, runs[1].classifier.bias)
    assert runs[0].metrics["lp_acc1"] != runs[1].metrics["lp_acc1"]  # the test labels do reach the scores


@pytest.mark.parametrize("k", [1, 3, 7])
def test_fewshot_draws_k_per_class_and_keeps_validation_out_of_the_final_fit(k):
    x, y = TRAIN
    config = small(fewshot_k=k, val_proportion=0.1)
    result = fit_probe(x, y, *TEST, config=config)
    assert result.val_from == "train"
    assert torch.bincount(y[result.fit_rows], minlength=C).tolist() == [k] * C
    assert torch.bincount(y[result.val_rows], minlength=C).tolist() == [k] * C
    assert not set(result.fit_rows.tolist()) & set(result.val_rows.tolist())
    assert len(result.fit_val_rows) == 0
    alone = train_linear(x[result.fit_rows], y[result.fit_rows], C, result.weight_decay, config, seed=0)
    assert torch.equal(result.classifier.weight, alone.weight)  # the final fit saw the k-shot rows and nothing else
    assert (result.metrics["n_train"], result.metrics["n_val"]) == (k * C, k * C)


def test_fewshot_validation_from_a_given_split_is_k_per_class_and_not_fit():
    config = small(fewshot_k=2)
    result = fit_probe(*TRAIN, *TEST, *VAL, config=config)
    assert result.val_from == "val" and len(result.fit_val_rows) == 0
    assert torch.bincount(VAL[1][result.val_rows], minlength=C).tolist() == [2] * C
    alone = train_linear(TRAIN[0][result.fit_rows], TRAIN[1][result.fit_rows], C, result.weight_decay, config, 0)
    assert torch.equal(result.classifier.weight, alone.weight)


def test_full_probe_holds_out_a_share_of_train_then_fits_all_of_it():
    x, y = TRAIN
    result = fit_probe(x, y, *TEST, config=small(val_proportion=0.2))
    assert len(result.val_rows) == 60
    assert sorted(result.fit_rows.tolist()) == list(range(300))  # the search's train rows, then its validation
    assert not set(result.fit_rows[:240].tolist()) & set(result.val_rows.tolist())
    assert result.metrics["n_train"] == 300 and result.metrics["n_val"] == 0


def test_the_search_walks_the_grid_as_clip_benchmark_does():
    result = fit_probe(*TRAIN, *TEST, *VAL, config=SMALL)
    indices = [i for i, _ in result.search]
    assert indices[:3] == [0, 4, 8] and len(indices) == 9
    peak = max(result.search[:3], key=lambda s: s[1])[0]  # max keeps the first of equal scores
    for span, start in ((2, 3), (1, 6)):
        assert indices[start:start + 3] == [max(peak - span, 0), peak, min(peak + span, 8)]
        peak = max(result.search[start:start + 3], key=lambda s: s[1])[0]
    assert result.weight_decay == SMALL.wd_grid[peak]


def test_seeds_give_mean_and_std():
    config = small(fewshot_k=3)
    metrics = linear_probe(*TRAIN, *TEST, seeds=(0, 1, 2), config=config)
    each = [fit_probe(*TRAIN, *TEST, config=config, seed=s).metrics["lp_acc1"] for s in (0, 1, 2)]
    assert len(set(each)) > 1  # each seed draws its own 3 per class
    assert metrics["lp_acc1"] == pytest.approx(statistics.fmean(each))
    assert metrics["lp_acc1_std"] == pytest.approx(statistics.stdev(each))
    assert metrics["seed"] == [0, 1, 2] and len(metrics["per_seed"]) == 3


def test_a_class_short_of_k_is_one_line_naming_it():
    x, y = TRAIN
    keep = (y != 2) | (torch.arange(len(y)) < 20)  # class 2 keeps 4 of its 60 rows
    with pytest.raises(UserError) as e:
        fit_probe(x[keep], y[keep], *TEST, classnames=list("abcde"), config=ProbeConfig(fewshot_k=5))
    assert "class 2 ('c') has 4 train example(s)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="class 2 .* needs 6 per class"):  # k for training and k for validation
        fit_probe(x[keep], y[keep], *TEST, config=ProbeConfig(fewshot_k=3, val_proportion=0.1))


def test_a_class_absent_from_train_is_detected():
    x, y = TRAIN
    with pytest.raises(UserError, match="class 4 has 0 train example"):
        fit_probe(x[y != 4], y[y != 4], *TEST)


@pytest.mark.parametrize("config, message", [
    (dict(fewshot_k=0), "fewshot k must be -1"), (dict(val_proportion=1.0), "proportion must be in"),
    (dict(coarse_step=5), "cannot be searched every 5"), (dict(epochs=0), "epochs must be at least 1")])
def test_bad_settings_are_one_line(config, message):
    with pytest.raises(UserError, match=message):
        ProbeConfig(**config)


# ---- the program: MNIST IDX files from real digits, the tiny model, the embedding cache


def _write_mnist(root, n_train: int = 60, n_test: int = 30) -> None:
    from sklearn.datasets import load_digits

    from tests.layouts.idx import idx_bytes
    digits = load_digits()
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem, start, n in (("train", 0, n_train), ("t10k", n_train, n_test)):
        images = (digits.images[start:start + n] * 16).clip(0, 255).astype(np.uint8)
        (raw / f"{stem}-images-idx3-ubyte").write_bytes(idx_bytes(images, 2051))
        labels = digits.target[start:start + n].astype(np.uint8)
        (raw / f"{stem}-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 2049))


def _args(tmp_path, **over) -> argparse.Namespace:
    values = dict(model="tiny", pretrained=None, allow_nonfinite=False, dataset="mnist", root=str(tmp_path / "data"),
                  split="test", output=str(tmp_path / "out" / "probe.json"), classnames=None, templates=None,
                  captions_per_image=0, backend="torch", rerank_k=0, batch_size=16, workers=0, precision="fp32",
                  device="cpu", cache_dir=str(tmp_path / "cache"), train_split="train", val_split=None,
                  val_proportion=0.0, fewshot_k=-1, seeds=[0], lp_lr=0.1, lp_epochs=3, lp_batch_size=64)
    return argparse.Namespace(**{**values, **over})


def test_program_writes_clip_benchmark_json_and_caches_features(tiny, tmp_path):
    from eval.__main__ import input_paths
    from eval.linear_probe_cli import run

    _write_mnist(tmp_path / "data")
    model, preprocess, tokenizer = tiny
    calls = []

    def load_model(args, state):
        calls.append(args.model)
        return torch.device("cpu"), model, preprocess, tokenizer, None, ["tiny", 0]

    encoded = []
    encode_image = model.encode_image
    model.encode_image = lambda x, **k: (encoded.append(len(x)), encode_image(x, **k))[1]
    try:
        args = _args(tmp_path, fewshot_k=2, val_proportion=0.5, seeds=[0, 1])
        run(args, input_paths, load_model)
        first = json.loads((tmp_path / "out" / "probe.json").read_text())
        assert sum(encoded) == 90  # 60 train + 30 test images
        run(args, input_paths, load_model)
        assert sum(encoded) == 90  # the second run read both splits from the cache
    finally:
        model.encode_image = encode_image
    again = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert first == again and first["task"] == "linear_probe" and first["dataset"] == "mnist"
    metrics = first["metrics"]
    assert metrics["seed"] == [0, 1] and metrics["fewshot_k"] == 2 and metrics["normalized"] is True
    assert (metrics["n_train"], metrics["n_val"]) == (20, 20)
    assert "lp_acc1_std" in metrics and 0 <= metrics["lp_acc1"] <= 1
    assert "lp_mean_per_class_recall" in (tmp_path / "out" / "probe.md").read_text()


def test_program_refuses_a_short_class_and_exclusive_options(tiny, tmp_path):
    from eval.__main__ import input_paths
    from eval.linear_probe_cli import run

    _write_mnist(tmp_path / "data", n_train=40)  # load_digits' first 40: four of each digit
    model, preprocess, tokenizer = tiny

    def load_model(args, state):
        return torch.device("cpu"), model, preprocess, tokenizer, None, ["tiny", 0]

    with pytest.raises(UserError, match=r"class \d \('[^']+'\) has \d train example"):
        run(_args(tmp_path, fewshot_k=5), input_paths, load_model)
    with pytest.raises(UserError, match="exclude each other"):
        run(_args(tmp_path, val_split="train", val_proportion=0.2), input_paths, load_model)
    with pytest.raises(UserError, match="does not end in .json"):
        run(_args(tmp_path, output=str(tmp_path / "probe.txt")), input_paths, load_model)
