"""The demo set: deterministic, and in CLIP_benchmark's layout (other inputs: ``test_shards.py``)."""

from __future__ import annotations

import json

from data_prep import shapes
from eval.readers import read_wds


def test_samples_are_a_pure_function_of_seed_and_index():
    a, b = shapes.make_sample(0, 0, 7, 5), shapes.make_sample(0, 0, 7, 5)
    assert a["jpg"] == b["jpg"] and a["captions"] == b["captions"]
    assert shapes.make_sample(0, 1, 7, 5)["jpg"] != a["jpg"]           # another split, another image
    assert len(set(a["captions"])) == 5
    assert shapes.CLASSNAMES[a["label"]] == f"{a['scene']['colour']} {a['scene']['shape']}"


def test_demo_layout(small_demo):
    manifest = json.loads((small_demo / "train" / "manifest.json").read_text())
    assert manifest["total"] == 2048 and [s["count"] for s in manifest["shards"]] == [256] * 8
    retrieval = read_wds(f"wds:{small_demo / 'retrieval'}")
    assert len(retrieval) == 120 and all(len(captions) == 5 for captions in retrieval.captions)
    zeroshot = read_wds(small_demo / "zeroshot")
    assert zeroshot.classnames == shapes.CLASSNAMES and "{c}" in zeroshot.templates[0]
    assert len(zeroshot.labels) == 160 and max(zeroshot.labels) < 64


def test_demo_build_is_deterministic(tmp_path):
    from data_prep.demo import build_demo
    for name in ("a", "b"):
        build_demo(tmp_path / name, seed=3, train_size=300, retrieval_size=10, zeroshot_size=10,
                   shard_size=100, workers=1)
    for rel in ("train/000000.tar", "train/000002.tar", "retrieval/test/0.tar", "zeroshot/test/0.tar"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
