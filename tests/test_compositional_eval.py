"""Compositional evaluation: the metric identities, parity with CLIP_benchmark, the readers, bad input, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image, ImageDraw

import mmcontrast as mc
from eval.compositional import run_compositional
from eval.compositional_sets import SUGAR_CREPE, open_selection_set
from mmcontrast.errors import UserError
from mmcontrast.metrics import (clip_benchmark_selection, macro_accuracy, paired_difference, selection_correct,
                                selection_metrics)

from .spawn import run_workers
from .test_eval_cli import _Images
from .test_fusion import small_fusion_model

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]


def _picture(path, n: int, size: int = 48) -> None:
    """A distinct small picture per ``n``: a coloured shape on grey."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(im)
    box = (4 + n % 5, 6 + n % 7, size - 6 - n % 3, size - 4 - n % 4)
    (draw.ellipse if n % 2 else draw.rectangle)(box, fill=COLOURS[n % len(COLOURS)])
    im.save(path)


def _sugar_crepe(root, image_dir="val2017", categories=SUGAR_CREPE, per=3):
    """SugarCrepe's layout: one JSON per category keyed by (non-contiguous) string indices, images by name."""
    for c, category in enumerate(categories):
        items = {}
        for k in range(per):
            n = c * per + k
            name = f"{n:012d}.jpg"
            _picture(root / image_dir / name, n)
            items[str(2 * k + 1)] = {"filename": name, "caption": f"a {COLOURS[n % 6]} shape number {n}",
                                     "negative_caption": f"a {COLOURS[(n + 1) % 6]} shape number {n}"}
        (root / f"{category}.json").write_text(json.dumps(items))


def _winoground(folder, n=3):
    """Winoground's ``examples.jsonl`` with its fields, and ``images/ex_<id>_img_<k>.png`` beside it."""
    rows = []
    for i in range(n):
        for k in range(2):
            _picture(folder / "images" / f"ex_{i}_img_{k}.png", 40 + 2 * i + k)
        rows.append({"id": i, "image_0": f"ex_{i}_img_0", "image_1": f"ex_{i}_img_1",
                     "caption_0": f"a red circle above a blue square {i}",
                     "caption_1": f"a blue square above a red circle {i}", "tag": "Noun", "secondary_tag": "",
                     "num_main_preds": 1, "collapsed_tag": "Object"})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    _sugar_crepe(root, "images")
    _winoground(root, 2)
    return root


# --- metric identities (spec §7) -------------------------------------------------------------------------------

def test_sugar_crepe_strict_rule_and_clip_benchmarks_tie_rule():
    won = torch.tensor([[[0.9, 0.8]]])
    tie = torch.tensor([[[0.8, 0.8]]])
    assert selection_metrics(won)["acc"] == 1.0 and selection_metrics(won)["ties"] == 0
    assert selection_metrics(tie)["acc"] == 0.0 and selection_metrics(tie)["ties"] == 1
    # CLIP_benchmark's argmax gives a tie to index 0, SugarCrepe's positive: the one place the two differ
    assert clip_benchmark_selection(tie)["acc"] == 1.0
    # ...and with the positive at index 1, as ARO orders [false, true], argmax gives the tie to the negative
    assert clip_benchmark_selection(tie.flip(2))["acc"] == 1.0 and selection_metrics(tie.flip(2))["acc"] == 0.0


def test_winoground_text_image_group():
    eye = selection_metrics(torch.eye(2)[None])
    assert (eye["text_acc"], eye["image_acc"], eye["acc"]) == (1.0, 1.0, 1.0)
    m = selection_metrics(torch.tensor([[[0.9, 0.8], [0.95, 0.97]]]))   # rows: images, columns: captions
    assert (m["text_acc"], m["image_acc"], m["acc"]) == (1.0, 0.0, 0.0)
    scores = torch.randn(500, 2, 2, generator=torch.Generator().manual_seed(0))
    c = selection_correct(scores)
    assert (c["group"] <= c["text"]).all() and (c["group"] <= c["image"]).all()
    m = selection_metrics(scores)
    assert m["acc"] <= min(m["text_acc"], m["image_acc"])
    assert 0.15 < m["text_acc"] < 0.35 and 0.1 < m["acc"] < 0.25   # chance 25 % and 16.7 %


def test_winoground_ties_differ_from_clip_benchmark_only_at_index_0():
    s = torch.tensor([[[0.5, 0.5], [0.1, 0.9]]])    # image 0 ties its two captions
    assert selection_metrics(s)["text_acc"] == 0.0 and clip_benchmark_selection(s)["text_acc"] == 1.0
    s = torch.tensor([[[0.9, 0.1], [0.5, 0.5]]])    # image 1 ties: argmax picks caption 0, wrong in both
    assert selection_metrics(s)["text_acc"] == clip_benchmark_selection(s)["text_acc"] == 0.0


def test_one_image_gives_image_acc_one_for_any_scores():
    scores = torch.randn(64, 1, 2, generator=torch.Generator().manual_seed(1))
    assert clip_benchmark_selection(scores)["image_acc"] == 1.0 == selection_metrics(scores)["image_acc"]
    assert clip_benchmark_selection(scores)["acc"] == clip_benchmark_selection(scores)["text_acc"]


def test_aro_macro_accuracy_is_the_mean_over_kept_relations_not_the_micro_accuracy():
    # "on": 3 of 4 right, "under": 0 of 1, "next to" (excluded by ARO, symmetric): 2 of 2
    groups = ["on"] * 4 + ["under"] + ["next to"] * 2
    correct = torch.tensor([1, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    m = macro_accuracy(correct, groups, exclude=frozenset({"next to"}))
    assert m["acc"] == pytest.approx((0.75 + 0.0) / 2) and m["micro_acc"] == pytest.approx(3 / 5)
    assert m["n"] == 5 and m["excluded_groups"] == 1 and m["excluded_items"] == 2
    assert m["acc_stderr"] == pytest.approx((0.75 * 0.25 / 4) ** 0.5 / 2)
    assert macro_accuracy(correct, groups, min_count=2)["groups"].keys() == {"on", "next to"}   # VG-A's rule


def test_paired_difference():
    a = torch.tensor([1, 1, 0, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 0, 0], dtype=torch.bool)
    diff, se = paired_difference(a, b)
    assert diff == 0.5 and se == pytest.approx(torch.tensor([0.0, 1, 0, 1]).std().item() / 2)


# --- parity with CLIP_benchmark's own function on the same embeddings ----------------------------------------

class _Lookup(torch.nn.Module):
    """A 'model' whose image and text encoders return rows of fixed tables: index in, embedding out."""

    def __init__(self, image_table, text_table):
        super().__init__()
        self.image_table, self.text_table = image_table, text_table

    def encode_image(self, x):
        return self.image_table[x.flatten().long()]

    def encode_text(self, tokens):
        return self.text_table[tokens]


@pytest.mark.parametrize("images, captions", [(1, 2), (2, 2), (1, 5)])
def test_equals_clip_benchmark_image_caption_selection(images, captions):
    from clip_benchmark.metrics.image_caption_selection import evaluate

    g = torch.Generator().manual_seed(images * 10 + captions)
    n = 40
    image_table = torch.nn.functional.normalize(torch.randn(n * images, 8, generator=g), dim=-1)
    text_table = torch.nn.functional.normalize(torch.randn(n * captions, 8, generator=g), dim=-1)
    batches = [(torch.arange(s * images, (s + 10) * images).view(10, images, 1, 1, 1).float(),
                [[str(s * captions + k * captions + c) for c in range(captions)] for k in range(10)])
               for s in range(0, n, 10)]
    ref = evaluate(_Lookup(image_table, text_table), batches, lambda texts: torch.tensor([int(t) for t in texts]),
                   "cpu", amp=False)
    scores = torch.einsum("nid,ncd->nic", image_table.view(n, images, 8), text_table.view(n, captions, 8))
    assert selection_metrics(scores)["ties"] == 0
    ours = selection_metrics(scores)
    assert {k: ours[k] for k in ref} == pytest.approx(ref, abs=1e-7)
    assert clip_benchmark_selection(scores) == pytest.approx(ref, abs=1e-7)


# --- readers ----------------------------------------------------------------------------------------------------

def test_sugar_crepe_reader(tmp_path):
    _sugar_crepe(tmp_path)
    ds = open_selection_set("sugar_crepe", tmp_path)
    assert len(ds) == 21 and ds.categories() == [f"sugar_crepe/{c}" for c in SUGAR_CREPE]
    item = ds.items[0]
    assert [ds.texts[c] for c in item.captions] == ["a red shape number 0", "a blue shape number 0"]
    assert ds.images.paths[item.images[0]] == str(tmp_path / "val2017" / "000000000000.jpg")
    assert item.id == "add_att.json:1"      # the file's own (odd) key
    one = open_selection_set("sugar_crepe/swap_att", tmp_path)
    assert one.categories() == ["sugar_crepe/swap_att"] and len(one) == 3


def test_winoground_reader(tmp_path):
    _winoground(tmp_path / "data")
    ds = open_selection_set("winoground", tmp_path)
    assert len(ds) == 3 and len(ds.images) == 6
    item = ds.items[1]
    assert ds.images.paths[item.images[1]] == str(tmp_path / "data" / "images" / "ex_1_img_1.png")
    assert [ds.texts[c] for c in item.captions] == ["a red circle above a blue square 1",
                                                    "a blue square above a red circle 1"]


def _aro(root, cases, name="visual_genome_relation.json"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    _picture(root / "images" / "1.jpg", 0, size=64)
    (root / name).write_text(json.dumps([{"image_path": "1.jpg", "bbox_x": 8, "bbox_y": 4, "bbox_w": 30,
                                          "bbox_h": 20, **c} for c in cases]))


def test_aro_reader_crops_and_keeps_relations(tmp_path):
    _aro(tmp_path, [{"relation_name": "on", "true_caption": "the cup is on the table",
                     "false_caption": "the table is on the cup"},
                    {"relation_name": "next to", "true_caption": "the dog is next to the cat",
                     "false_caption": "the cat is next to the dog"}])
    ds = open_selection_set("aro_vgr", tmp_path)
    assert ds.categories() == ["on", "next to"] and len(ds.images) == 1   # one image and box, read once
    assert ds.images.image(0).size == (30, 20)
    assert ds.texts[ds.items[0].captions[0]] == "the cup is on the table"  # the true caption first


def test_aro_attribution_names_pairs_like_aro(tmp_path):
    _aro(tmp_path, [{"attributes": ["white", "black"], "true_caption": "the white cat and the black dog",
                     "false_caption": "the black cat and the white dog"}], "visual_genome_attribution.json")
    assert open_selection_set("aro_vga", tmp_path).categories() == ["white_black"]


def test_shapes_reader_reads_both_layouts(shapes_root):
    ds = open_selection_set("shapes", shapes_root)
    assert ds.categories() == [f"shapes_crepe/{c}" for c in SUGAR_CREPE] + ["shapes_winoground"]
    assert ds.images.paths[0].startswith(str(shapes_root / "images"))


# --- bad input: one line naming the file and the item ----------------------------------------------------------

def test_missing_image_names_file_and_item(tmp_path):
    _sugar_crepe(tmp_path, categories=["swap_att"])
    (tmp_path / "val2017" / "000000000001.jpg").unlink()
    with pytest.raises(UserError, match=r"swap_att\.json: item '3' names image '000000000001\.jpg'"):
        open_selection_set("sugar_crepe/swap_att", tmp_path)


def test_empty_category_file(tmp_path):
    (tmp_path / "swap_obj.json").write_text("{}")
    with pytest.raises(UserError, match=r"swap_obj\.json: no items"):
        open_selection_set("sugar_crepe/swap_obj", tmp_path)


def test_winoground_row_without_both_captions(tmp_path):
    _winoground(tmp_path)
    lines = (tmp_path / "examples.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    del row["caption_1"]
    lines[1] = json.dumps(row)
    (tmp_path / "examples.jsonl").write_text("\n".join(lines))
    with pytest.raises(UserError, match=r"examples\.jsonl:2: example '1' lacks caption_1"):
        open_selection_set("winoground", tmp_path)


def test_bad_input_is_one_line_from_the_program(tmp_path):
    (tmp_path / "add_obj.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "eval", "compositional", "--model", "x", "--dataset",
                           "sugar_crepe/add_obj", "--root", tmp_path, "--output", tmp_path / "o.json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "add_obj.json: no items" in proc.stderr


# --- scoring a model --------------------------------------------------------------------------------------------

def test_fusion_model_is_scored_by_both_and_itm_is_the_heads_score(shapes_root):
    model = small_fusion_model()
    _, preprocess = mc.make_transforms(model.preprocess_cfg)
    tokenizer = mc.make_tokenizer(model.model_cfg)
    ds = open_selection_set("shapes", shapes_root)
    result = run_compositional(model, preprocess, tokenizer, ds, batch_size=5, progress=False)
    assert result["scorers"].keys() == {"embeddings", "itm"}
    assert result["differences"].keys() == set(ds.categories())
    item = ds.items[0]
    pixels = preprocess(ds.images.image(item.images[0]))[None]
    with torch.no_grad():
        image = model.image_streams(pixels)[1]
        text = model.text_streams(tokenizer([ds.texts[c] for c in item.captions]))[1]
        direct = model.fusion.match_score(image.select(torch.tensor([0, 0])), text)
    failures = {f["id"]: f for f in result["scorers"]["itm"]["failures"]}
    wins = direct[0] > direct[1]
    category = result["scorers"]["itm"]["categories"][item.category]
    assert (item.id in failures) != bool(wins) and category["n"] == 3
    if item.id in failures:
        assert failures[item.id]["rows"][0]["true_score"] == pytest.approx(float(direct[0]), abs=1e-5)


def _worker(rank, world, root):
    model = small_fusion_model()
    _, preprocess = mc.make_transforms(model.preprocess_cfg)
    result = run_compositional(model, preprocess, mc.make_tokenizer(model.model_cfg),
                               open_selection_set("shapes", root), batch_size=4, progress=False)
    return {k: v["categories"] for k, v in result["scorers"].items()}


def test_two_processes_equal_one(shapes_root):
    single = _worker(0, 1, shapes_root)
    for result in run_workers(_worker, 2, shapes_root):
        assert result.keys() == single.keys()
        for scorer in single:
            for category, m in single[scorer].items():
                assert result[scorer][category] == pytest.approx(m, abs=1e-6, nan_ok=True)




def test_program_end_to_end_with_the_tiny_model(shapes_root, tmp_path):
    model_dir = tmp_path / "tiny"
    mc.save_model_dir(mc.create_model("tiny", seed=0), model_dir)
    proc = subprocess.run([sys.executable, "-m", "eval", "compositional", "--model", model_dir, "--dataset",
                           "shapes", "--root", shapes_root, "--output", tmp_path / "c.json", "--cache-dir", "",
                           "--workers", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["task"] == "image_caption_selection" and record["dataset"] == "shapes"
    assert {"text_acc", "image_acc", "acc", "acc_stderr", "n", "ties"} <= record["metrics"].keys()
    assert record["categories"].keys() == {f"shapes_crepe/{c}" for c in SUGAR_CREPE} | {"shapes_winoground"}
    crepe = [record["categories"][f"shapes_crepe/{c}"]["acc"] for c in SUGAR_CREPE]
    assert record["metrics"]["acc"] == pytest.approx(sum(crepe) / 7)
    assert record["chance"]["shapes_winoground"]["acc"] == pytest.approx(1 / 6)
    table = (tmp_path / "c.md").read_text()
    assert "| shapes_winoground | image_acc |" in table and "| 16.67 |" in table and "| 50.00 |" in table
    page = _Images()
    page.feed((tmp_path / "c.html").read_text())
    assert all((tmp_path / src).is_file() for src in page.sources)
    wrong = sum(round(m["n"] * (1 - m["acc"])) for m in record["categories"].values())
    assert len(page.sources) >= min(wrong, 1)
