"""``python -m data_prep shards``: every input format, each skip reason counted, processing options, caption
clean-up, and a killed build resumed to byte-identical output."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from data_prep.check import check_dir
from data_prep.process import ProcessOptions, clean_caption, process_image
from data_prep.shards import build_shards
from data_prep.sources import SourceOptions
from mmcontrast.errors import UserError


def _image(path, w, h, seed, fmt=None):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h)], -1)
    pixels = np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


@pytest.fixture
def photos(tmp_path):
    """Four distinct images of different sizes and formats in ``tmp_path/img``."""
    folder = tmp_path / "img"
    folder.mkdir()
    return [_image(folder / name, w, h, i) for i, (name, w, h) in
            enumerate([("a.jpg", 120, 90), ("b.png", 90, 120), ("c.jpg", 100, 100), ("d.webp", 160, 80)])]


def _samples(out, manifest=None):
    manifest = manifest or json.loads((out / "manifest.json").read_text())
    samples = []
    for shard in manifest["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            grouped = {}
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                grouped.setdefault(key, {})[ext] = tar.extractfile(member).read()
        samples += [grouped[k] for k in sorted(grouped)]
    for s in samples:
        s["meta"] = json.loads(s["json"])
        s["captions"] = s["txt"].decode().split("\n")
        s["size"] = Image.open(io.BytesIO(s["jpg"])).size
    return samples


SMALL = ProcessOptions(size=48)


def test_each_bad_pair_is_skipped_and_counted_by_reason(tmp_path, photos):
    folder = photos[0].parent
    (folder / "corrupt.jpg").write_bytes(photos[0].read_bytes()[:300])          # a truncated JPEG
    shutil.copy(photos[2], folder / "copy_of_c.jpg")                             # the same bytes again
    _image(folder / "tiny.png", 12, 9, 7)
    rows = [("a.jpg", "a red kite over the field"), ("b.png", "two dogs"), ("corrupt.jpg", "a broken file"),
            ("c.jpg", "a  tall\tbuilding "), ("d.webp", " \u200b "), ("copy_of_c.jpg", "the same building"),
            ("tiny.png", "a tiny icon"), ("gone.jpg", "a file that is not there"), ("b.png", "dogs again")]
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "".join(f"img/{i},{c}\n" for i, c in rows))
    options = ProcessOptions(size=48, min_size=32, min_caption_words=2)
    m = build_shards(tmp_path / "pairs.csv", tmp_path / "out", options=options, shard_size=2, workers=1,
                     progress=False)
    assert m["skipped"] == {"unreadable_image": 1, "empty_caption": 1, "duplicate": 2, "too_small": 1,
                            "missing_image": 1}
    assert m["records"] == 9 and m["total"] == 3 and [s["count"] for s in m["shards"]] == [2, 1]
    samples = _samples(tmp_path / "out", m)
    assert [s["captions"] for s in samples] == [["a red kite over the field"], ["two dogs"], ["a tall building"]]
    assert [s["meta"]["id"] for s in samples] == ["0", "1", "3"]
    assert samples[0]["meta"]["original_size"] == [120, 90] and samples[0]["meta"]["source"] == "pairs.csv:2"
    assert [s["size"] for s in samples] == [(64, 48), (48, 64), (48, 48)]   # shorter side 48, aspect kept
    report = (tmp_path / "out" / "report.md").read_text()
    for reason in m["skipped"]:
        assert reason in report
    assert "`pairs.csv:4`" in report  # the corrupt image is named
    assert Image.open(tmp_path / "out" / "report.png").size[0] > 800
    assert m["options"]["min_size"] == 32 and m["options"]["shard_size"] == 2 and m["source"]["format"] == "table"
    assert check_dir(tmp_path / "out", workers=1)["ok"]  # what data_prep check reads is whole


def test_caption_length_filter_keeps_the_captions_that_pass(tmp_path, photos):
    lines = ["short", "a caption of five words", "this caption is much too long to keep here"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "img/a.jpg", "caption": lines}) + "\n"
                                      + json.dumps({"image": "img/b.png", "caption": "tiny"}) + "\n"
                                      + json.dumps({"image": "img/c.jpg", "caption": lines[2]}) + "\n")
    options = ProcessOptions(size=48, min_caption_words=2, max_caption_words=6)
    m = build_shards(tmp_path / "p.jsonl", tmp_path / "out", options=options, workers=0, progress=False)
    assert m["skipped"] == {"caption_too_short": 1, "caption_too_long": 1}
    assert _samples(tmp_path / "out", m)[0]["captions"] == [lines[1]]


def test_caption_clean_up():
    assert clean_caption("  caf\u00c3\u00a9 &amp;amp;  cr\u00e8me\u200b br\u00fbl\u00e9e\n") == "café & crème brûlée"
    assert clean_caption("tab\tand\x00control\x1fchars") == "tab and control chars"
    assert clean_caption("   ") == ""


@pytest.mark.parametrize("char", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067",
                                  "\u2068", "\u2069", "\u200e", "\u200f", "\u061c"])
def test_caption_clean_up_removes_bidirectional_controls(char):
    # a right-to-left override makes "photo of a cat gpj.exe" display as "photo of a cat exe.jpg"
    assert clean_caption(f"photo of a cat {char}gpj.exe") == "photo of a cat gpj.exe"
    assert clean_caption(f"ab{char}cd {char} ef{char}") == "abcd ef"  # inside words: no space left behind
    assert clean_caption(f"\u0645\u0631\u062d\u0628\u0627{char}") == "\u0645\u0631\u062d\u0628\u0627"  # Arabic itself kept


def test_resize_modes_and_exif_orientation(tmp_path):
    path = _image(tmp_path / "x.jpg", 200, 100, 0)
    size = lambda out: Image.open(io.BytesIO(out["jpg"])).size  # noqa: E731
    assert size(process_image(str(path), ProcessOptions(size=50))) == (100, 50)
    assert size(process_image(str(path), ProcessOptions(size=50, resize="longer"))) == (50, 25)
    assert size(process_image(str(path), ProcessOptions(size=50, resize="center_crop"))) == (50, 50)
    assert size(process_image(str(path), ProcessOptions(size=400))) == (200, 100)        # never enlarged
    assert size(process_image(str(path), ProcessOptions(size=400, resize="center_crop"))) == (400, 400)
    kept = process_image(str(path), ProcessOptions(resize="none"))
    assert kept["jpg"] == path.read_bytes() and kept["size"] == [200, 100]
    assert process_image(str(path), ProcessOptions(max_aspect=1.5)) == {"skip": "bad_aspect"}
    # a phone photo stored landscape with EXIF orientation 6 (rotate 90° clockwise to show it)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(path).save(tmp_path / "phone.jpg", exif=exif)
    out = process_image(str(tmp_path / "phone.jpg"), ProcessOptions(size=50))
    assert out["size"] == [100, 200] and size(out) == (50, 100)
    centre = ProcessOptions(size=100, resize="center_crop")
    crop = np.asarray(Image.open(io.BytesIO(process_image(str(path), centre)["jpg"])), dtype=float)
    full = np.asarray(Image.open(path).convert("RGB"), dtype=float)[:, 50:150]
    assert np.abs(crop - full).mean() < 4  # the centre square, not a squeezed whole


def _table_rows(photos):
    return [{"image": f"img/{p.name}", "caption": f"photo {p.stem}", "alt": f"another view of {p.stem}",
             "uid": f"u{i}"} for i, p in enumerate(photos)]


def test_tables_csv_tsv_jsonl_parquet_give_the_same_shards(tmp_path, photos):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = _table_rows(photos)
    header = ["image", "caption", "alt", "uid"]
    for name, sep in (("t.csv", ","), ("t.tsv", "\t")):
        (tmp_path / name).write_text("\n".join(sep.join(r[h] for h in header) for r in [dict(zip(header, header))]
                                               + rows) + "\n")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Parquet with the image bytes inside, as datasets and img2dataset write them ({bytes, path})
    pq.write_table(pa.table({"image": [{"bytes": p.read_bytes(), "path": p.name} for p in photos],
                             "caption": [r["caption"] for r in rows], "alt": [r["alt"] for r in rows],
                             "uid": [r["uid"] for r in rows]}), tmp_path / "t.parquet")
    columns = SourceOptions(caption_cols=["caption", "alt"], id_col="uid")
    results = {}
    for name in ("t.csv", "t.tsv", "t.jsonl", "t.parquet"):
        m = build_shards(tmp_path / name, tmp_path / name.replace(".", "_"), source_options=columns, options=SMALL,
                         workers=1, progress=False)
        assert m["total"] == 4 and not m["skipped"] and m["source"]["format"] == "table"
        results[name] = _samples(tmp_path / name.replace(".", "_"), m)
    # LAION-style metadata: several Parquet parts in a folder (or a glob of them), read as one table
    (tmp_path / "parts").mkdir()
    for k, part in enumerate((rows[:3], rows[3:])):
        table = {h: [str(tmp_path / r[h]) if h == "image" else r[h] for r in part] for h in header}  # absolute
        pq.write_table(pa.table(table), tmp_path / "parts" / f"part-{k}.parquet")
    for name, where in (("parts", tmp_path / "parts"), ("glob", tmp_path / "parts" / "part-*.parquet")):
        m = build_shards(where, tmp_path / f"{name}_out", source_options=columns, options=SMALL, workers=1,
                         progress=False)
        assert m["total"] == 4 and m["source"]["format"] == "table"
        results[name] = _samples(tmp_path / f"{name}_out", m)
    from data_prep.sources import open_source
    resumed = list(open_source(tmp_path / "parts", options=columns).records(start=3))
    assert [(r.id, r.source) for r in resumed] == [("u3", "part-1.parquet:1")]
    first = results["t.csv"]
    assert first[1]["captions"] == ["photo b", "another view of b"] and first[1]["meta"]["id"] == "u1"
    for name, samples in results.items():
        assert [s["jpg"] for s in samples] == [s["jpg"] for s in first], name  # same pixels from paths or bytes
        assert [s["captions"] for s in samples] == [s["captions"] for s in first], name
    with pytest.raises(UserError, match="no column 'text'"):
        build_shards(tmp_path / "t.csv", tmp_path / "bad", source_options=SourceOptions(caption_cols=["text"]))
    with pytest.raises(UserError, match="not the input folder"):
        build_shards(tmp_path / "parts", tmp_path / "parts", source_options=columns)
    # as Excel writes CSV: a byte-order mark before the first column name; and a URL instead of a file
    (tmp_path / "excel.csv").write_text("\ufeffimage,caption\nimg/a.jpg,a photo\nhttps://x.org/b.jpg,a link\n",
                                        encoding="utf-8")
    m = build_shards(tmp_path / "excel.csv", tmp_path / "excel", options=SMALL, workers=0, progress=False)
    assert m["total"] == 1 and m["skipped"] == {"remote_image": 1}
    assert "img2dataset" in (tmp_path / "excel" / "report.md").read_text()


def test_folder_with_txt_and_json_sidecars(tmp_path, photos):
    photos[0].with_suffix(".txt").write_text("first caption\nsecond caption\n")
    photos[1].with_suffix(".json").write_text(json.dumps({"caption": "from json", "url": "http://x"}))
    photos[2].with_suffix(".txt").write_text("")
    m = build_shards(tmp_path / "img", tmp_path / "out", options=SMALL, workers=1, progress=False)
    assert m["source"]["format"] == "folder"
    assert m["total"] == 2 and m["skipped"] == {"empty_caption": 1, "missing_caption": 1}
    samples = _samples(tmp_path / "out", m)
    assert [s["captions"] for s in samples] == [["first caption", "second caption"], ["from json"]]
    assert [s["meta"]["id"] for s in samples] == ["a", "b"]


def test_hf_dataset_saved_to_disk(tmp_path, photos):
    import datasets
    data = {"image": [str(p) for p in photos], "sentences": [[f"photo {p.stem}", f"view {p.stem}"] for p in photos]}
    ds = datasets.Dataset.from_dict(data).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "hf"))
    columns = SourceOptions(caption_cols=["sentences"])
    m = build_shards(tmp_path / "hf", tmp_path / "out", source_options=columns, options=SMALL, workers=1,
                     progress=False)
    assert m["source"]["format"] == "hf" and m["total"] == 4 and not m["skipped"]
    samples = _samples(tmp_path / "out", m)
    assert samples[3]["captions"] == ["photo d", "view d"]
    # the same pixels as from the files themselves
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"image": str(p), "caption": "x"}) + "\n" for p in photos))
    direct = _samples(tmp_path / "direct", build_shards(tmp_path / "t.jsonl", tmp_path / "direct", options=SMALL,
                                                        workers=1, progress=False))
    assert [s["jpg"] for s in samples] == [s["jpg"] for s in direct]
    with pytest.raises(UserError, match="no split 'val'"):
        build_shards(tmp_path / "hf", tmp_path / "bad", source_options=SourceOptions(split="val"))


def test_coco_and_karpathy_annotations(tmp_path, photos):
    (tmp_path / "img" / "train2014").mkdir()
    shutil.move(photos[3], tmp_path / "img" / "train2014" / photos[3].name)
    coco = {"images": [{"id": 10 + i, "file_name": p.name} for i, p in enumerate(photos)] +
                      [{"id": 99, "file_name": "absent.jpg"}],
            "annotations": [{"id": k, "image_id": 10 + i, "caption": f"caption {k} of {p.stem}"}
                            for k, (i, p) in enumerate([(i, p) for i, p in enumerate(photos)] * 2)]}
    (tmp_path / "captions_train2014.json").write_text(json.dumps(coco))
    where = SourceOptions(image_root=str(tmp_path / "img"))
    m = build_shards(tmp_path / "captions_train2014.json", tmp_path / "coco", source_options=where, options=SMALL,
                     workers=1, progress=False)
    assert m["source"]["format"] == "coco" and m["total"] == 4 and m["skipped"] == {"missing_image": 1}
    samples = _samples(tmp_path / "coco", m)
    assert samples[0]["captions"] == ["caption 0 of a", "caption 4 of a"] and samples[3]["meta"]["id"] == "13"
    splits = ["train", "restval", "test", "train"]
    karpathy = {"dataset": "coco", "images": [
        {"filepath": "train2014" if p.suffix == ".webp" else "", "filename": p.name, "cocoid": 10 + i,
         "split": split, "sentences": [{"raw": f"karpathy {p.stem} {j}"} for j in range(3)]}
        for i, (p, split) in enumerate(zip(photos, splits))]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    m = build_shards(tmp_path / "dataset_coco.json", tmp_path / "karpathy", source_options=where, options=SMALL,
                     workers=1, progress=False)
    samples = _samples(tmp_path / "karpathy", m)
    assert m["source"]["format"] == "karpathy" and [s["meta"]["id"] for s in samples] == ["10", "11", "13"]
    assert samples[2]["captions"] == ["karpathy d 0", "karpathy d 1", "karpathy d 2"]  # found under filepath
    with pytest.raises(UserError, match="--image-root"):
        build_shards(tmp_path / "dataset_coco.json", tmp_path / "bad")


def test_webdataset_shards_resharded_and_resized(tmp_path, photos):
    rows = _table_rows(photos)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = build_shards(tmp_path / "t.jsonl", tmp_path / "ours", options=ProcessOptions(size=64), shard_size=3,
                         workers=1, progress=False)
    m = build_shards(tmp_path / "ours", tmp_path / "again", options=SMALL, shard_size=10, workers=1, progress=False)
    assert m["source"]["format"] == "webdataset" and m["total"] == first["total"] == 4
    samples = _samples(tmp_path / "again", m)
    assert [min(s["size"]) for s in samples] == [48] * 4 and samples[0]["meta"]["id"] == "000000000"
    assert [s["captions"] for s in samples] == [[r["caption"]] for r in rows]
    # img2dataset's layout: no manifest, captions in key.json, a shard cut short by a full disk
    dump = tmp_path / "img2dataset"
    dump.mkdir()
    with tarfile.open(dump / "00000.tar", "w") as tar:
        for i, p in enumerate(photos):
            for name, data in ((f"00000{i:04d}.jpg", p.read_bytes()),
                               (f"00000{i:04d}.json", json.dumps({"caption": f"alt text {i}"}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    shutil.copy(dump / "00000.tar", dump / "00001.tar")
    whole = (dump / "00001.tar").read_bytes()
    (dump / "00001.tar").write_bytes(whole[:len(whole) // 2])
    m = build_shards(dump, tmp_path / "from_dump", options=SMALL, workers=1, progress=False)
    assert m["skipped"]["unreadable_shard"] == 1 and m["skipped"]["duplicate"] >= 1  # the copy repeats the bytes
    assert _samples(tmp_path / "from_dump", m)[2]["captions"] == ["alt text 2"]


def _corpus(tmp_path, n=240):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(n):
        _image(folder / f"{i:04d}.png", 192 + i % 7, 160, i)
        (folder / f"{i:04d}.txt").write_text(f"picture {i}\n" + ("" if i % 11 else "second caption\n"))
    (folder / "0005.txt").write_text("   ")  # skipped, so shard boundaries do not follow the input
    return folder


def _build_cli(folder, out):
    return [sys.executable, "-m", "data_prep", "shards", "--input", str(folder), "--out", str(out), "--size", "64",
            "--shard-size", "8", "--workers", "2"]


def test_a_killed_build_resumes_to_byte_identical_output(tmp_path):
    folder = _corpus(tmp_path)
    options = ProcessOptions(size=64)
    manifest = build_shards(folder, tmp_path / "whole", options=options, shard_size=8, progress=False)
    proc = subprocess.Popen(_build_cli(folder, tmp_path / "killed"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "_build" / "000002.json").exists() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in (tmp_path / "killed").glob("*.tar"))
    assert 3 <= len(finished) < 30 and not (tmp_path / "killed" / "manifest.json").exists(), finished
    # shards whose resume record was written before the kill must not be written again
    recorded = [n for n in finished if (tmp_path / "killed" / "_build" / n.replace(".tar", ".json")).exists()]
    written = {name: (tmp_path / "killed" / name).stat().st_mtime_ns for name in recorded}
    assert build_shards(folder, tmp_path / "killed", options=options, shard_size=8, progress=False) == manifest
    assert len(recorded) >= 3 and all((tmp_path / "killed" / n).stat().st_mtime_ns == t for n, t in written.items())
    whole = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*") if p.is_file())
    killed = sorted(p.relative_to(tmp_path / "killed") for p in (tmp_path / "killed").rglob("*") if p.is_file())
    assert whole == killed and len(whole) > 30
    for rel in whole:
        assert (tmp_path / "whole" / rel).read_bytes() == (tmp_path / "killed" / rel).read_bytes(), rel
    assert manifest["total"] == 239 and manifest["skipped"] == {"empty_caption": 1}
    assert [s["count"] for s in manifest["shards"]] == [8] * 29 + [7]
    # a finished build run again is a no-op; other options are refused rather than mixed in
    assert build_shards(folder, tmp_path / "whole", options=options, shard_size=8) == manifest
    # a shard deleted (or damaged) after the build is written again, identical, by the same command
    (tmp_path / "whole" / "000012.tar").unlink()
    with (tmp_path / "whole" / "000020.tar").open("r+b") as f:
        f.truncate(1000)
    assert build_shards(folder, tmp_path / "whole", options=options, shard_size=8, progress=False) == manifest
    for rel in whole:
        assert (tmp_path / "whole" / rel).read_bytes() == (tmp_path / "killed" / rel).read_bytes(), rel
    with pytest.raises(UserError, match="size: 64 then, 96 now"):
        build_shards(folder, tmp_path / "whole", options=ProcessOptions(size=96), shard_size=8)


def _tree(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_resuming_a_webdataset_input_starts_in_the_shard_it_stopped_in(tmp_path):
    build_shards(_corpus(tmp_path, n=60), tmp_path / "input", options=ProcessOptions(size=64), shard_size=10,
                 workers=0, progress=False)  # 59 samples in 6 input shards
    whole = build_shards(tmp_path / "input", tmp_path / "whole", options=SMALL, shard_size=8, workers=0,
                         progress=False)
    assert whole["total"] == 59 and whole["skipped"] == {}
    # the same build stopped after its fourth shard: later shards, resume records and manifest never written
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    for late in [*(tmp_path / "cut").glob("00000[4-9].*"), *(tmp_path / "cut" / "_build").glob("00000[4-9].json"),
                 *(tmp_path / "cut").glob("manifest.json"), *(tmp_path / "cut").glob("report.*")]:
        late.unlink()
    cursor = json.loads((tmp_path / "cut" / "_build" / "000003.json").read_text())["cursor"]
    assert cursor == [3, 2]  # 32 samples read: the input's fourth shard, two samples into it
    for passed in ("000000.tar", "000001.tar", "000002.tar"):  # read again, these would be unreadable_shard
        (tmp_path / "input" / passed).write_bytes(b"not a tar")
    assert build_shards(tmp_path / "input", tmp_path / "cut", options=SMALL, shard_size=8, workers=0,
                        progress=False) == whole
    assert _tree(tmp_path / "cut") == _tree(tmp_path / "whole")
