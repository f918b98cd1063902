"""The evaluation programs end to end: reports, HTML thumbnails, the embedding cache, several processes."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import torch
from PIL import Image

import mmcontrast as mc
from eval.html import write_retrieval_html
from eval.readers import read_imagefolder, read_wds
from eval.report import markdown_table, result_rows
from eval.retrieval import _examples, run_retrieval
from eval.sets import FileImages, RetrievalSet
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
    table = (tmp_path / "r.md").read_text()
    assert "| image_retrieval_recall@1 |" in table
    assert f"| rsum | {record['metrics']['rsum']:.2f} |" in table
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


RECALLS = {"image_retrieval_recall@1": 0.25, "image_retrieval_recall@5": 0.5, "image_retrieval_recall@10": 0.75,
           "text_retrieval_recall@1": 0.3, "text_retrieval_recall@5": 0.6, "text_retrieval_recall@10": 0.9}
CHANCE = {"image_retrieval_recall@1": 0.01, "image_retrieval_recall@5": 0.05, "image_retrieval_recall@10": 0.1,
          "text_retrieval_recall@1": 0.02, "text_retrieval_recall@5": 0.1, "text_retrieval_recall@10": 0.2}


def test_markdown_table_has_rsum_beside_its_chance_also_after_re_ranking():
    reranked = {k: v + 0.05 for k, v in RECALLS.items()}
    result = {"metrics": {**RECALLS, "mean_recall": 0.55, "rsum": 330.0}, "chance": CHANCE,
              "reranked": {"k": 16, "metrics": {**reranked, "mean_recall": 0.6, "rsum": 360.0}}}
    lines = markdown_table(result_rows(result)).splitlines()
    assert "| rsum | 330.00 | 48.00 | 6.9 |" in lines            # 25+50+75+30+60+90; chance 1+5+10+2+10+20
    assert "| mean_recall | 55.00 | 8.00 | 6.9 |" in lines
    assert "| rsum, ITM re-ranked top 16 | 360.00 | 48.00 | 7.5 |" in lines
    assert "| text_retrieval_recall@10, ITM re-ranked top 16 | 95.00 | 20.00 | 4.8 |" in lines
    assert len(lines) == 2 + 2 * 8


# Four images (the last without a caption) and five captions; with the identity as image features each
# score image i · text t is text row t's i-th entry, so every ranking below is read off these rows.
IMAGE_FEATURES = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.25]], dtype=torch.float64)
TEXT_FEATURES = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.0, 0.6], [0.8, 0.7, 0.0], [0.0, 0.0, 1.0], [0.3, 0.2, 0.4]],
                             dtype=torch.float64)
TEXT_TO_IMAGE = torch.tensor([0, 0, 1, 2, 2])
CAPTIONS = [["a red square", "a square in red"], ["a blue circle"], ["a green star", "one green star"], []]


def test_examples_name_each_querys_best_positive_and_its_rank():
    ex = _examples(IMAGE_FEATURES, TEXT_FEATURES, TEXT_TO_IMAGE, k=2)
    assert ex["image_queries"] == [
        {"query": 0, "results": [2, 1], "hits": [False, True], "positive": 1, "positive_rank": 1},
        {"query": 1, "results": [0, 2], "hits": [False, True], "positive": 2, "positive_rank": 1},
        {"query": 2, "results": [3, 1], "hits": [True, False], "positive": 3, "positive_rank": 0},
        {"query": 3, "results": [2, 0], "hits": [False, False], "positive": None, "positive_rank": None}]
    assert ex["text_queries"] == [
        {"query": 0, "results": [1, 3], "hits": [False, False], "positive": 0, "positive_rank": 2},
        {"query": 1, "results": [2, 0], "hits": [False, True], "positive": 0, "positive_rank": 1},
        {"query": 2, "results": [0, 3], "hits": [False, False], "positive": 1, "positive_rank": 2},
        {"query": 3, "results": [2, 3], "hits": [True, False], "positive": 2, "positive_rank": 0},
        {"query": 4, "results": [2, 3], "hits": [True, False], "positive": 2, "positive_rank": 0}]


class _Queries(HTMLParser):
    """Per ``<div class='q'>``: its text, its image sources, and the text of its right-answer box."""

    def __init__(self):
        super().__init__()
        self.queries, self.depth, self.answer_depth = [], 0, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            self.depth += 1
            if attrs.get("class") == "q":
                self.queries.append({"text": "", "images": [], "answer": None, "depth": self.depth})
            elif attrs.get("class") == "answer":
                self.answer_depth = self.depth
                self.queries[-1]["answer"] = {"text": "", "images": []}
        elif tag == "img" and self.queries and self.depth >= self.queries[-1]["depth"]:
            self.queries[-1]["images"].append(attrs["src"])
            if self.answer_depth is not None:
                self.queries[-1]["answer"]["images"].append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "div":
            if self.depth == self.answer_depth:
                self.answer_depth = None
            self.depth -= 1

    def handle_data(self, data):
        if self.queries and self.depth >= self.queries[-1]["depth"]:
            self.queries[-1]["text"] += data
            if self.answer_depth is not None:
                self.queries[-1]["answer"]["text"] += data


def test_html_shows_the_right_answer_of_a_miss_and_the_re_ranked_list(tmp_path):
    paths = []
    for i, colour in enumerate(["red", "blue", "green", "gray"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 30), colour).save(paths[-1])
    ds = RetrievalSet("hand-made", str(tmp_path), FileImages(paths), CAPTIONS)
    ex = _examples(IMAGE_FEATURES, TEXT_FEATURES, TEXT_TO_IMAGE, k=2)
    reranked = {"image_queries": [([1, 2], [True, False], 0), ([4, 3], [False, False], None),
                                  ([3, 4], [True, True], 0), ([0, 1], [False, False], None)],
                "text_queries": [([3, 0], [False, True], 1), ([0, 1], [True, False], 0), ([1, 0], [True, False], 0),
                                 ([2, 3], [True, False], 0), ([2, 0], [True, False], 0)]}
    for way, lists in reranked.items():
        for example, (results, hits, rank) in zip(ex[way], lists):
            example["reranked"] = {"results": results, "hits": hits, "positive_rank": rank}
    result = {"metrics": {**RECALLS, "mean_recall": 0.55, "rsum": 330.0}, "chance": CHANCE, "images": 4, "texts": 5,
              "examples": ex, "reranked": {"k": 16, "metrics": {**RECALLS, "rsum": 330.0}}}
    page = write_retrieval_html(tmp_path / "r.html", ds, result, "hand-made")
    parser = _Queries()
    parser.feed(page.read_text())
    image_q, text_q = parser.queries[:4], parser.queries[4:]
    assert len(text_q) == 5
    assert all((tmp_path / src).is_file() for q in parser.queries for src in q["images"])
    # image 0: the dual encoder ranks its caption "a square in red" second, re-ranking first
    assert image_q[0]["text"] == ("dual encodera blue circle✓ a square in red"
                                  "ITM re-ranked (top 16)✓ a square in reda blue circle"
                                  "right answer: “a square in red”rank 2; ITM re-ranked: rank 1")
    assert image_q[0]["answer"]["text"] == "right answer: “a square in red”rank 2; ITM re-ranked: rank 1"
    assert image_q[1]["answer"]["text"] == "right answer: “a blue circle”rank 2; ITM re-ranked: not in the top 16"
    assert image_q[2]["answer"] is None  # first both ways
    assert image_q[3]["answer"]["text"] == "right answer: no positive in the set; ITM re-ranked: not in the top 16"
    # caption 0: its image (0) is third, past the two shown; re-ranking puts it second
    assert text_q[0]["images"] == ["r_thumbs/1.jpg", "r_thumbs/3.jpg", "r_thumbs/3.jpg", "r_thumbs/0.jpg",
                                   "r_thumbs/0.jpg"]
    assert text_q[0]["answer"] == {"text": "right answer: image 0rank 3; ITM re-ranked: rank 2",
                                   "images": ["r_thumbs/0.jpg"]}
    assert text_q[1]["answer"]["text"] == "right answer: image 0rank 2; ITM re-ranked: rank 1"
    assert text_q[3]["answer"] is None and text_q[4]["answer"] is None
    assert "<td>rsum</td><td>330.00</td><td>330.00</td><td>48.00</td>" in page.read_text()


def test_re_ranked_sample_queries_equal_the_joint_run(real_retrieval):
    """Each sample query's re-ranked list is its top 12 by s·cos re-sorted by ITM log-odds + s·cos, with the
    fusion output of every pair from the model's joint forward pass."""
    from eval.encode import encode_images, encode_texts, image_batches

    from .test_fusion import small_fusion_model
    model = small_fusion_model()
    _, preprocess = mc.make_transforms(model.preprocess_cfg)
    tokenizer = mc.make_tokenizer(model.model_cfg)
    ds = read_wds(real_retrieval["wds"])
    result = run_retrieval(model, preprocess, tokenizer, ds, progress=False, rerank_k=12)
    image_features = encode_images(model, preprocess, ds.images, 256, torch.device("cpu"), progress=False)
    text_features = encode_texts(model, tokenizer, ds.texts, 256, torch.device("cpu"))
    pixels = torch.cat(list(image_batches(ds.images, list(range(len(ds))), preprocess, 256, 0)))
    tokens, text_to_image = tokenizer(ds.texts), torch.tensor(ds.text_to_image)
    scale = model.logit_scale.exp()
    ways = (("image_queries", image_features, text_features,
             lambda q, c: (pixels[q].expand(len(c), -1, -1, -1), tokens[c]), lambda q, c: text_to_image[c] == q),
            ("text_queries", text_features, image_features,
             lambda q, c: (pixels[c], tokens[q].expand(len(c), -1)), lambda q, c: c == text_to_image[q]))
    checked, reordered = 0, 0
    for way, queries, gallery, pairs, positive in ways:
        for example in result["examples"][way]:
            q = example["query"]
            sim = queries[q] @ gallery.T
            candidates = sim.topk(12).indices
            with torch.no_grad():
                logits = model.fusion.itm_logits(model(*pairs(q, candidates))["fusion"]["fused"])
            score = logits[:, 1] - logits[:, 0] + scale * sim[candidates]
            order = candidates[torch.sort(-score, stable=True).indices]
            hits = positive(q, order)
            assert example["reranked"] == {"results": order[:5].tolist(), "hits": hits[:5].tolist(),
                                           "positive_rank": int(hits.int().argmax()) if hits.any() else None}, way
            checked += 1
            reordered += example["reranked"]["results"] != example["results"]
    assert checked == len(result["examples"]["image_queries"]) + len(result["examples"]["text_queries"]) == 16
    assert reordered >= 8  # re-ranking changed most lists: the check tells the two rankings apart


@pytest.mark.parametrize("argv, status", [(["--help"], 0), (["zeroshot", "--help"], 0), (["retrieval", "--help"], 0),
                                          (["zeroshot"], 2), (["rank", "--model", "m"], 2)])
def test_help_and_argument_errors_import_nothing_heavy(argv, status):
    """--help and a usage error answer before torch, open_clip, transformers or accelerate are imported."""
    code = ("import json, runpy, sys\n"
            f"sys.argv = ['eval', *{argv!r}]\n"
            "try:\n    runpy.run_module('eval', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as e:\n    status = e.code\n"
            "heavy = [m for m in ('torch', 'open_clip', 'transformers', 'accelerate', 'PIL') if m in sys.modules]\n"
            "print(json.dumps({'status': status, 'heavy': heavy}), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stderr.splitlines()[-1]) == {"status": status, "heavy": []}, proc.stderr
    assert ("usage: python -m eval" in proc.stdout) == (status == 0)


def test_every_option_has_help_and_the_model_option_names_every_form():
    from eval.__main__ import build_parser

    actions = build_parser()._actions
    assert [a.dest for a in actions if not a.help] == []
    model_help = next(a.help for a in actions if a.dest == "model")
    for form in ("model directory", "openclip:NAME", "--pretrained", "hf:/local/dir"):
        assert form in model_help, form


def _cache_lines(cache, key, compute):
    lines = []
    return cache.get_or_compute(key, compute, log=lines.append), lines


def test_a_broken_cache_entry_is_recomputed_with_a_line_saying_why(tmp_path):
    from eval.cache import EmbeddingCache
    from safetensors.torch import save_file
    cache, features = EmbeddingCache(tmp_path), torch.randn(6, 4).to(torch.bfloat16)
    entry = tmp_path / "k.safetensors"
    assert torch.equal(_cache_lines(cache, "k", lambda: features)[0], features) and entry.is_file()
    got, lines = _cache_lines(cache, "k", lambda: 1 / 0)  # read back: nothing computed
    assert torch.equal(got, features) and lines == [f"embeddings from cache: {entry}"]
    whole = entry.read_bytes()
    changed = bytearray(whole)
    changed[-1] ^= 1
    for broken, why in [(whole[:-10], f"truncated safetensors file: {entry} holds 38 of 48 data bytes after its "
                                      f"header"),
                        (bytes(changed), f"{entry} does not match the blake2b hash it records (changed since it was "
                                         f"written)"),
                        (b"", f"truncated safetensors file: {entry} holds 0 of the 8 bytes that give its header "
                              f"length")]:
        entry.write_bytes(broken)
        got, lines = _cache_lines(cache, "k", lambda: features)
        assert torch.equal(got, features)
        assert lines == [f"embedding cache entry is broken, recomputing it: {why}"]
        assert entry.read_bytes() == whole  # written again, as it was
    save_file({"features": features}, str(entry))  # as versions that recorded no hash wrote it
    assert _cache_lines(cache, "k", lambda: features)[1] == [
        f"embedding cache entry is broken, recomputing it: {entry} records no hash of its features (written by "
        f"an older version)"]
    assert entry.read_bytes() == whole


def test_a_cache_entry_that_cannot_be_written_is_left_out_and_the_evaluation_goes_on(tmp_path):
    from eval.cache import EmbeddingCache
    (tmp_path / "cache").write_text("a file where the cache folder would be")
    features = torch.randn(3, 2)
    got, lines = _cache_lines(EmbeddingCache(tmp_path / "cache"), "k", lambda: features)
    assert torch.equal(got, features)
    assert lines == [f"cannot write embedding cache entry {tmp_path / 'cache' / 'k.safetensors'} (File exists); "
                     f"the evaluation goes on without it"]


def test_a_truncated_cache_entry_is_recomputed_by_the_program_with_the_same_metrics(model_dir, real_retrieval,
                                                                                  tmp_path):
    args = ["retrieval", "--model", model_dir, "--dataset", f"wds:{real_retrieval['wds']}", "--output",
            tmp_path / "r.json", "--cache-dir", tmp_path / "cache", "--workers", "0"]
    _eval(*args)
    record = json.loads((tmp_path / "r.json").read_text())
    images = next((tmp_path / "cache").glob("*-images.safetensors"))
    whole = images.read_bytes()
    images.write_bytes(whole[:len(whole) // 2])
    out = _eval(*args)
    assert out.count("embedding cache entry is broken, recomputing it: truncated safetensors file: "
                     f"{images} holds ") == 1 and out.count("embeddings from cache") == 1
    assert json.loads((tmp_path / "r.json").read_text()) == record
    assert images.read_bytes() == whole
    assert _eval(*args).count("embeddings from cache") == 2
