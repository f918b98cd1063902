"""Shards from an http server on 127.0.0.1 and from a `pipe:` command train like local ones."""

from __future__ import annotations

import functools
import http.server
import json
import threading

import pytest
import torch

import mmcontrast as mc
from training.train import train

from .test_train import _cfg


@pytest.fixture()
def http_shards(small_demo):
    """An http server on a free port of 127.0.0.1 serving the demo's training shards."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(small_demo / "train"))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    names = [s["name"] for s in json.loads((small_demo / "train" / "manifest.json").read_text())["shards"]]
    yield f"http://127.0.0.1:{server.server_port}/", names
    server.shutdown()


def _first_batches(urls, n=3):
    model = mc.create_model("tiny", seed=0)
    _, transform = mc.make_transforms(model.preprocess_cfg)
    loader = mc.make_loader(urls, transform, mc.make_tokenizer(model.model_cfg), 16, shuffle_buffer=0)
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_http_and_pipe_sources_give_the_local_stream(small_demo, http_shards):
    base, names = http_shards
    local = [str(small_demo / "train" / n) for n in names]
    expected = _first_batches(local)
    for urls in ([base + n for n in names], [f"pipe:cat {p}" for p in local]):
        got = _first_batches(urls)
        for a, b in zip(got, expected):
            assert a["key"] == b["key"]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["text"], b["text"])


def test_training_from_an_http_source(small_demo, http_shards, tmp_path):
    base, names = http_shards
    brace = base + "{" + ",".join(n.removesuffix(".tar") for n in names) + "}.tar"
    cfg = _cfg(small_demo, f"data.train={brace}", "schedule.steps=3", "eval.retrieval=", "eval.zeroshot=")
    train(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert all(not r["skipped_samples"] for r in records if "loss" in r)


def test_an_unreachable_shard_is_counted_not_fatal(small_demo, http_shards):
    base, names = http_shards
    urls = [base + n for n in names] + [base + "missing.tar"]
    model = mc.create_model("tiny", seed=0)
    _, transform = mc.make_transforms(model.preprocess_cfg)
    loader = mc.make_loader(urls, transform, mc.make_tokenizer(model.model_cfg), 64, shuffle_buffer=0, repeat=False)
    n = sum(len(b["key"]) for b in loader)
    assert n == 2048 and loader.skipped == {"unreadable_shard": 1}, loader.skipped
