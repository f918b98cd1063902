"""Nothing a program did not write is deleted or overwritten: ``mmcontrast.convert`` and model-directory
replacement, ``data_prep shards``' temporary files, ``python -m eval``'s output paths; the HTML page escapes
every attribute. Each case compares every file's hash before and after, or the one-line error and exit status."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

import mmcontrast as mc
from eval.__main__ import input_paths, parse_args
from eval.html import write_retrieval_html
from eval.report import check_outputs, output_paths
from eval.retrieval import _examples
from eval.sets import FileImages, RetrievalSet
from mmcontrast.errors import UserError
from mmcontrast.model_dir import check_replaceable

from .test_eval_cli import CAPTIONS, CHANCE, IMAGE_FEATURES, RECALLS, TEXT_FEATURES, TEXT_TO_IMAGE


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's SHA-256, ``dir`` for a directory."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "tiny"
    mc.save_model_dir(mc.create_model("tiny", seed=0), path)
    return path


@pytest.fixture
def run_dir(tmp_path, model) -> Path:
    """A training run: a model in ``final/`` beside checkpoints and the user's notes."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step_0000010").mkdir(parents=True)
    (run / "checkpoints" / "step_0000010" / "model.safetensors").write_bytes(b"weights" * 100)
    (run / "notes.txt").write_text("lr sweep, do not delete")
    for f in model.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    return run


# ---------------------------------------------------------------- mmcontrast.convert


def test_convert_refuses_a_non_empty_destination_and_with_overwrite_one_holding_other_files(tmp_path, model,
                                                                                           run_dir):
    before = snapshot(tmp_path)
    refused = _cli("-m", "mmcontrast.convert", model, run_dir)
    _one_line_error(refused, f"{run_dir} already exists and is not empty; nothing was changed")
    assert "--overwrite" in refused.stderr
    forced = _cli("-m", "mmcontrast.convert", model, run_dir, "--overwrite")
    _one_line_error(forced, f"{run_dir} holds 2 entries that no model directory holds ('checkpoints', "
                            f"'notes.txt'); nothing was removed")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["same", "inside", "above", "tmp sibling", "old sibling"])
def test_convert_refuses_a_destination_overlapping_the_source(tmp_path, model, where):
    src = tmp_path / "m"
    src.mkdir()
    for f in model.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    dst = {"same": tmp_path / "." / "m", "inside": src / "hf", "above": tmp_path,
           "tmp sibling": tmp_path / "m.tmp" / ".." / "x", "old sibling": tmp_path / "m"}[where]
    if where == "tmp sibling":  # SRC is named like DST's temporary sibling, which a replacement clears
        src = src.rename(tmp_path / "x.tmp")
    if where == "old sibling":
        src = src.rename(tmp_path / "m.old")
    before = snapshot(tmp_path)
    relation = {"same": "is the source", "inside": "is inside the source", "above": "holds the source",
                "tmp sibling": "is the source", "old sibling": "is the source"}[where]
    with pytest.raises(UserError, match=f"{relation} .*; nothing was changed"):
        mc.convert(src, dst, overwrite=True)
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_only_a_model_or_transformers_directory(tmp_path, model):
    (tmp_path / "beside.txt").write_text("mine")
    hf = mc.convert(model, tmp_path / "hf")
    hf_files = sorted(p.name for p in hf.iterdir())
    back = mc.convert(hf, tmp_path / "back")
    with pytest.raises(UserError, match="already exists and is not empty"):
        mc.convert(hf, back)
    mc.convert(hf, back, overwrite=True)  # a model directory replaced by a model directory
    mc.convert(model, back, overwrite=True)  # ... and by a transformers directory
    assert sorted(p.name for p in back.iterdir()) == hf_files
    (tmp_path / "empty").mkdir()
    mc.convert(model, tmp_path / "empty")  # an empty directory needs no --overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "beside.txt", "empty", "hf"]
    assert (tmp_path / "beside.txt").read_text() == "mine"


@pytest.mark.parametrize("name", ["m", "m.tmp", "m.old"])
def test_saving_a_model_directory_never_removes_other_files(tmp_path, name):
    """``save_model_dir`` replaces ``m`` through ``m.tmp`` and ``m.old``: none of the three may hold other files."""
    model = mc.create_model("tiny", seed=0)
    mc.save_model_dir(model, tmp_path / "m")
    (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / name / "eval.json").write_text("{}")
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match=f"{tmp_path / name} holds 1 entry that no model directory holds "
                                        f"\\('eval.json'\\); nothing was removed"):
        mc.save_model_dir(model, tmp_path / "m")
    assert snapshot(tmp_path) == before


def test_a_file_or_link_in_place_of_a_model_directory_is_not_replaced(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    for path, what in ((tmp_path / "f", "a file"), (tmp_path / "link", "a symbolic link")):
        with pytest.raises(UserError, match=f"{path} is {what}, not a model directory; nothing was removed"):
            check_replaceable(path)
    assert snapshot(tmp_path) == {"f": hashlib.sha256(b"x").hexdigest(), "link": hashlib.sha256(b"x").hexdigest()}


# ---------------------------------------------------------------- data_prep shards


def test_resumed_shard_build_removes_only_its_own_temporary_files(tmp_path):
    from data_prep.process import ProcessOptions
    from data_prep.shards import build_shards

    folder = tmp_path / "in"
    folder.mkdir()
    for i, colour in enumerate(["red", "blue", "green", "gray", "white"]):
        Image.new("RGB", (40 + i, 30), colour).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a {colour} picture\n")
    out = tmp_path / "out"
    options = ProcessOptions(size=32)
    manifest = build_shards(folder, out, options=options, shard_size=2, progress=False)
    (out / "manifest.json").unlink()  # as if killed before the end
    (out / "000002.tar").rename(out / "000002.tar.tmp")
    (out / "manifest.json.tmp").write_text("{")
    mine = {"notes.tmp": b"the user's", "000002.tmp": b"not a shard name", "x000001.tar.tmp": b"nor this"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    assert build_shards(folder, out, options=options, shard_size=2, progress=False) == manifest
    assert not (out / "000002.tar.tmp").exists() and not (out / "manifest.json.tmp").exists()
    assert {name: (out / name).read_bytes() for name in mine} == mine


# ---------------------------------------------------------------- python -m eval


def test_eval_output_must_be_json_and_nothing_is_written(tmp_path, model):
    before = snapshot(tmp_path)
    proc = _cli("-m", "eval", "retrieval", "--model", model, "--dataset", f"karpathy:{tmp_path / 'a.json'}",
                "--output", tmp_path / "r.html", "--cache-dir", "")
    _one_line_error(proc, f"--output '{tmp_path / 'r.html'}' does not end in .json: the result JSON is written "
                          f"there, the Markdown table (.md) and the HTML page (.html, _thumbs/) beside it")
    assert snapshot(tmp_path) == before
    with pytest.raises(UserError, match=r"the chart \(.classes.png, .classes.json\) beside it"):
        output_paths("z.md", "zeroshot")


def _check(tmp_path: Path, *argv: str, source: str | None = None) -> None:
    args = parse_args([str(a) for a in argv])
    check_outputs(output_paths(args.output, args.task), input_paths(args, source or args.dataset.partition(":")[2]))


def test_eval_outputs_never_collide_with_an_input(tmp_path, model):
    ann = tmp_path / "ann.json"
    ann.write_text("{}")
    base = ["retrieval", "--model", str(model), "--dataset", f"karpathy:{ann}", "--cache-dir", ""]
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match=f"the result JSON {ann} is the input --dataset {ann}; nothing was written"):
        _check(tmp_path, *base, "--output", str(ann))
    classes = tmp_path / "c.classes.json"
    classes.write_text("a\nb\n")
    with pytest.raises(UserError, match=f"the per-class JSON {classes} is the input --classnames {classes}"):
        _check(tmp_path, "zeroshot", "--model", model, "--dataset", f"imagefolder:{tmp_path}", "--output",
               tmp_path / "c.json", "--classnames", classes, "--cache-dir", "")
    with pytest.raises(UserError, match=f"the thumbnail folder {tmp_path / 'imgs_thumbs'} holds the input --root"):
        _check(tmp_path, *base, "--root", tmp_path / "imgs_thumbs" / "photos", "--output", tmp_path / "imgs.json")
    found = tmp_path / "dataset_flickr30k.json"
    with pytest.raises(UserError, match=f"the result JSON {found} is the input dataset file {found}"):
        _check(tmp_path, "retrieval", "--model", model, "--dataset", "flickr30k", "--root", tmp_path,
               "--output", found, "--cache-dir", "", source=str(found))
    with pytest.raises(UserError, match=f"the Markdown table {tmp_path / 'm.md'} would replace an existing "
                                        f"directory"):
        (tmp_path / "m.md").mkdir()
        _check(tmp_path, *base, "--output", tmp_path / "m.json")
    with pytest.raises(UserError, match=f"the result JSON {ann / 'r.json'} cannot be written: {ann} is not a "
                                        f"directory"):
        _check(tmp_path, *base, "--output", ann / "r.json")
    (tmp_path / "p_thumbs").mkdir()
    (tmp_path / "p_thumbs" / "0.jpg").write_bytes(b"old thumbnail")
    _check(tmp_path, *base, "--output", tmp_path / "p.json")  # a folder of thumbnails is the program's own
    (tmp_path / "p_thumbs" / "holiday.png").write_bytes(b"a user's photo")
    with pytest.raises(UserError, match=r"holds 1 entry this program does not write \('holiday.png' \.\.\.\)"):
        _check(tmp_path, *base, "--output", tmp_path / "p.json")
    assert set(snapshot(tmp_path)) - set(before) == {"c.classes.json", "m.md", "p_thumbs", "p_thumbs/0.jpg",
                                                     "p_thumbs/holiday.png"}
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.text = [], [], ""

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data):
        self.text += data


def test_html_page_escapes_every_attribute_and_text(tmp_path):
    hostile = "x'\"><script>alert(1)</script>"
    paths = []
    for i, colour in enumerate(["red", "blue", "green", "gray"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 30), colour).save(paths[-1])
    captions = [[c + hostile for c in image] for image in CAPTIONS]
    ds = RetrievalSet("hand-made", str(tmp_path / hostile), FileImages(paths), captions)
    ex = _examples(IMAGE_FEATURES, TEXT_FEATURES, TEXT_TO_IMAGE, k=2)
    result = {"metrics": {**RECALLS, "rsum": 330.0}, "chance": CHANCE, "images": 4, "texts": 5, "examples": ex}
    out = tmp_path / "out"
    out.mkdir()
    page = write_retrieval_html(out / "r'\"><script>alert(1).html", ds, result, f"retrieval · {hostile}")
    parser = _Page()
    parser.feed(page.read_text())
    assert "script" not in parser.tags and parser.tags.count("img") == len(parser.images) > 8
    assert all(set(img) <= {"class", "src", "alt", "title"} for img in parser.images)
    assert all((out / unquote(img["src"])).is_file() for img in parser.images)
    assert "<script>" not in page.read_text() and parser.text.count(f"retrieval · {hostile}") == 2
    assert f"Source: {tmp_path / hostile}" in parser.text
    shown = [ds.texts[t] for q in ex["image_queries"] for t in q["results"]]
    assert parser.text.count(hostile) >= 3 + len(shown) and all(c in parser.text for c in shown)
