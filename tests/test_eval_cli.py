"""The evaluation programs end to end: reports, HTML thumbnails, the embedding cache, several processes."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser

import pytest

import mmcontrast as mc
from eval.readers import read_imagefolder, read_wds
from eval.retrieval import run_retrieval
from eval.zeroshot import run_zeroshot

from .spawn import run_workers


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    mc.save_model_dir(mc.create_model("tiny", seed=0), path)
    return path


def _eval(*args):
    proc = subprocess.run([sys.executable, "-m", "eval", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_retrieval_program_reports_and_caches(model_dir, real_retrieval, tmp_path):
    root = real_retrieval["wds"].parent
    args = ["retrieval", "--model", model_dir, "--dataset", "flickr30k", "--root", root,
            "--output", tmp_path / "r.json", "--cache-dir", tmp_path / "cache", "--workers", "0"]
    first = _eval(*args)
    assert "flickr30k: using" in first and "dataset_flickr30k.json (karpathy)" in first
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["task"] == "zeroshot_retrieval" and record["dataset"] == "flickr30k"
    assert set(record["metrics"]) >= {f"{w}_retrieval_recall@{k}" for w in ("image", "text") for k in (1, 5, 10)}
    assert "| image_retrieval_recall@1 |" in (tmp_path / "r.md").read_text()
    page = _Images()
    page.feed((tmp_path / "r.html").read_text())
    assert len(page.sources) >= 8 + 8 * 5
    assert all((tmp_path / src).is_file() for src in page.sources)
    second = _eval(*args)
    assert second.count("embeddings from cache") == 2
    assert json.loads((tmp_path / "r.json").read_text()) == record


def test_zeroshot_program_with_template_choices(model_dir, real_classification, tmp_path):
    out = _eval("zeroshot", "--model", model_dir, "--dataset", f"imagefolder:{real_classification['digits_folder']}",
                "--templates", "simple", "--output", tmp_path / "z.json", "--cache-dir", "", "--workers", "0")
    record = json.loads((tmp_path / "z.json").read_text())
    assert record["task"] == "zeroshot_classification" and set(record["metrics"]) == {
        "acc1", "acc5", "mean_per_class_recall"}
    assert (tmp_path / "z.classes.png").stat().st_size > 1000 and "acc1" in out


def _distributed_worker(rank, world, real_retrieval, real_classification):
    model = mc.create_model("tiny", seed=0).eval()
    _, preprocess = mc.make_transforms(model.preprocess_cfg)
    tokenizer = mc.make_tokenizer(model.model_cfg)
    ret = run_retrieval(model, preprocess, tokenizer, read_wds(real_retrieval["wds"]), batch_size=4, progress=False)
    cls = run_zeroshot(model, preprocess, tokenizer, read_imagefolder(real_classification["lfw_folder"]),
                       batch_size=16, progress=False)
    return ret["metrics"], cls["metrics"]


def test_two_processes_give_the_same_metrics(tiny, real_retrieval, real_classification):
    model, preprocess, tokenizer = tiny
    single = (run_retrieval(model, preprocess, tokenizer, read_wds(real_retrieval["wds"]), batch_size=4,
                            progress=False)["metrics"],
              run_zeroshot(model, preprocess, tokenizer, read_imagefolder(real_classification["lfw_folder"]),
                           batch_size=16, progress=False)["metrics"])
    for result in run_workers(_distributed_worker, 2, real_retrieval, real_classification):
        for ours, ref in zip(result, single):
            assert ours.keys() == ref.keys()
            for k in ref:
                assert ours[k] == pytest.approx(ref[k], abs=1e-6, nan_ok=True), k
