"""Shard building: the demo set is deterministic and in CLIP_benchmark's layout; CSV/folder → shards."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from data_prep import shapes
from data_prep.shards import build_shards
from eval.readers import read_wds
from mmcontrast.errors import UserError


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


def _photos(folder, n=5):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (300 + 10 * i, 400, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_csv_to_shards_skips_and_counts(tmp_path):
    paths = _photos(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    with (tmp_path / "captions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for i, p in enumerate(paths):
            w.writerow([p.name, f"photo number {i}, with a comma"])
        w.writerow(["broken.jpg", "a broken file"])
        w.writerow(["missing.jpg", "a file that is not there"])
        w.writerow([paths[0].name, "  "])
        w.writerow([paths[1].name, "the same photo, another caption"])
    m = build_shards(tmp_path / "captions.csv", tmp_path / "out", max_side=128, shard_size=3, workers=1)
    assert m["total"] == 6 and [s["count"] for s in m["shards"]] == [3, 3]
    assert m["skipped"] == {"unreadable_image": 1, "missing_image": 1, "missing_caption": 1}
    sizes, captions = [], []
    for shard in m["shards"]:
        with tarfile.open(tmp_path / "out" / shard["name"]) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()
                if member.name.endswith(".jpg"):
                    sizes.append(Image.open(io.BytesIO(data)).size)
                elif member.name.endswith(".txt"):
                    captions.append(data.decode())
    assert all(max(size) == 128 for size in sizes) and len(sizes) == 6
    assert sorted(captions) == sorted([f"photo number {i}, with a comma" for i in range(5)]
                                      + ["the same photo, another caption"])


def test_folder_to_shards_via_cli(tmp_path):
    (tmp_path / "in").mkdir()
    paths = _photos(tmp_path / "in", n=3)
    for p in paths[:2]:
        p.with_suffix(".txt").write_text(f"caption of {p.stem}\n")
    proc = subprocess.run([sys.executable, "-m", "data_prep", "shards", "--input", str(tmp_path / "in"),
                           "--out", str(tmp_path / "out"), "--max-side", "64", "--workers", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["total"] == 2 and manifest["skipped"] == {"missing_caption": 1}


def _shard_contents(out, manifest):
    samples = {}
    for shard in manifest["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return [samples[k] for k in sorted(samples)]


def test_jsonl_and_parquet_with_image_bytes_and_several_caption_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    paths = _photos(tmp_path)
    rows = [{"file": p.name, "en": f"photo {i}", "alt": f"  another   view {i} "} for i, p in enumerate(paths)]
    rows[1]["alt"] = None  # one caption only for this image
    rows[2]["en"] = rows[2]["alt"] = ""  # none: skipped
    with (tmp_path / "rows.jsonl").open("w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    m = build_shards(tmp_path / "rows.jsonl", tmp_path / "jsonl", image_col="file", caption_col=["en", "alt"],
                     max_side=64, workers=1)
    assert m["total"] == len(paths) - 1 and m["skipped"] == {"missing_caption": 1}
    samples = _shard_contents(tmp_path / "jsonl", m)
    assert samples[0]["txt"].decode() == "photo 0\nanother view 0"
    assert samples[1]["txt"].decode() == "photo 1"
    assert [json.loads(s["json"])["row"] for s in samples] == [0, 1, 3, 4]
    # Parquet holding the image bytes themselves, as datasets / img2dataset write them ({bytes, path})
    table = pa.table({"image": [{"bytes": p.read_bytes(), "path": p.name} for p in paths],
                      "caption": [r["en"] or "x" for r in rows]})
    pq.write_table(table, tmp_path / "rows.parquet")
    m2 = build_shards(tmp_path / "rows.parquet", tmp_path / "parquet", max_side=64, workers=1)
    assert m2["total"] == len(paths) and not m2["skipped"]
    from_parquet = _shard_contents(tmp_path / "parquet", m2)
    assert from_parquet[0]["jpg"] == samples[0]["jpg"]  # same pixels whether read from a path or from bytes
    with pytest.raises(UserError, match="no column 'caption'"):
        build_shards(tmp_path / "rows.jsonl", tmp_path / "bad", image_col="file", workers=1)
