"""``python -m data_prep check``: every kind of damage to a shard directory is found and named."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_prep.check import check_dir, format_report
from data_prep.writer import ShardWriter
from mmcontrast.errors import UserError


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def _build(root, broken: bool):
    writer = ShardWriter(root, max_count=4)
    for i in range(16):
        sample = {"__key__": f"{i:04d}", "jpg": _jpeg(i), "txt": f"caption {i}\nanother caption"}
        if broken and i == 1:
            sample["jpg"] = sample["jpg"][:200]      # a JPEG cut short
        if broken and i == 2:
            sample["txt"] = "  \n"                   # no caption
        if broken and i == 3:
            del sample["jpg"]                        # no image
        writer.write(sample)
    return writer.close()


def test_a_sound_directory_is_ok(tmp_path):
    _build(tmp_path, broken=False)
    report = check_dir(tmp_path, workers=1, progress=False)
    assert report["ok"] and report["samples"] == report["expected"] == 16 and not report["problems"]


def test_every_kind_of_damage_is_reported(tmp_path):
    _build(tmp_path, broken=True)
    data = (tmp_path / "000001.tar").read_bytes()
    (tmp_path / "000001.tar").write_bytes(data[:len(data) // 2])          # truncated shard
    (tmp_path / "000002.tar").unlink()                                     # missing shard
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][3]["count"] = 5                                     # count disagrees
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "000009.tar").write_bytes((tmp_path / "000000.tar").read_bytes())  # not in the manifest

    report = check_dir(tmp_path, workers=2, progress=False)
    assert not report["ok"]
    shards = report["shards"]
    assert shards["000000.tar"]["problems"] == {"corrupt_image": 1, "missing_caption": 1, "missing_image": 1}
    assert shards["000000.tar"]["examples"]["corrupt_image"] == ["0001"]
    assert shards["000001.tar"]["error"].startswith("truncated_shard after 3 samples") and shards["000001.tar"]["samples"] < 4
    assert shards["000002.tar"]["error"] == "missing" and shards["000002.tar"]["samples"] == 0
    assert shards["000003.tar"]["samples"] == 4 and shards["000003.tar"]["expected"] == 5
    assert report["unlisted"] == ["000009.tar"]
    text = format_report(report)
    for needle in ("000000.tar: corrupt_image 1 (e.g. 0001)", "000002.tar: missing", "4 samples, manifest says 5",
                   "000009.tar: in the directory but not in the manifest", "PROBLEMS FOUND"):
        assert needle in text, needle

    proc = subprocess.run([sys.executable, "-m", "data_prep", "check", str(tmp_path), "--workers", "1",
                           "--json", str(tmp_path / "report.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "PROBLEMS FOUND" in proc.stdout
    assert json.loads((tmp_path / "report.json").read_text())["problems"]["corrupt_image"] == 1


def test_a_directory_without_a_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no manifest.json"):
        check_dir(tmp_path, progress=False)
