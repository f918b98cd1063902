"""Every evaluation input is validated before it counts: one line naming the file and the item, never a metric.

Each case is a file a careless user could hand to ``python -m eval`` that used to give a plausible number with
exit status 0 (or a traceback): class names of another set, labels out of range, repeated images, images
without captions, null captions, empty prompt lists, empty or broken template files, a model whose features
are NaN, undecodable captions, a garbage ``nshards.txt``. The readers and runners are swept in-process; a
handful go through the program, which must exit 2 with one line and write no result.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import mmcontrast as mc
from eval.datasets import open_dataset
from eval.readers import read_blip, read_coco_captions, read_karpathy, read_templates, read_wds
from eval.retrieval import run_retrieval
from eval.zeroshot import run_zeroshot
from mmcontrast.errors import UserError

COLOURS = ["red", "blue", "green", "yellow"]


def png(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def wds_set(root: Path, kind: str, targets: list[bytes], nshards: str = "1", classnames: str | bytes = "red\nblue\n",
            templates: str = "a photo of {c}.\n") -> Path:
    """A CLIP_benchmark webdataset directory: one shard of small images, ``.cls`` or ``.txt`` from ``targets``."""
    (root / "test").mkdir(parents=True)
    (root / "dataset_type.txt").write_text(kind)
    (root / "test" / "nshards.txt").write_text(nshards)
    ext = "txt" if kind == "retrieval" else "cls"
    members = {}
    for i, target in enumerate(targets):
        members[f"s{i:07d}.png"] = png(COLOURS[i % len(COLOURS)])
        members[f"s{i:07d}.{ext}"] = target
    write_tar(root / "test" / "0.tar", members)
    if kind == "classification":
        _file(root / "classnames.txt", classnames)
        (root / "zeroshot_classification_templates.txt").write_text(templates)
    return root


def image_files(root: Path, n: int) -> list[str]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        names.append(f"{i}.png")
        (root / "images" / names[-1]).write_bytes(png(COLOURS[i % len(COLOURS)]))
    return names


def karpathy(root: Path, images: list[dict]) -> Path:
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"dataset": "flickr30k", "images": images}))
    return path


def kimage(name: str, *captions, imgid: int | None = None) -> dict:
    entry = {"filename": name, "filepath": "images", "split": "test",
             "sentences": [{"raw": c} for c in captions]}
    return entry if imgid is None else {**entry, "imgid": imgid}


# --- the readers --------------------------------------------------------------------------------------------

def _cls(tmp, labels, **kw):
    return wds_set(tmp / "wds", "classification", [str(y).encode() for y in labels], **kw)


def _txt(tmp, captions, **kw):
    return wds_set(tmp / "wds", "retrieval", captions, **kw)


READER_CASES = {
    "label_7_of_2_classes": (lambda t: read_wds(_cls(t, [0, 1, 7, 1])),
                             "image 's0000002' has label 7, not a class index 0–1 of the 2 class names in "
                             ".*classnames.txt \\(1 of 4 labels out of range\\)"),
    "label_minus_1": (lambda t: read_wds(_cls(t, [-1, 1, 0, -1])),
                      "image 's0000000' has label -1, not a class index 0–1 .* \\(2 of 4 labels out of range\\)"),
    "label_not_an_integer": (lambda t: read_wds(_cls(t, [0, "1.0", 1, 0])),
                             "0.tar: sample 's0000001': its .cls label '1.0' is not an integer class index"),
    "label_of_4_kib": (lambda t: read_wds(_cls(t, [0, "9" * 4096])),
                       "sample 's0000001': its .cls label '9999999999.*' is not an integer class index"),
    "classnames_of_another_set": (lambda t: open_dataset(f"wds:{_cls(t, [0, 1, 0, 1])}",
                                                         classnames=_file(t / "names.txt", "a\nb\nc\n")),
                                  "--classnames .*names.txt: 3 class names, but .*classnames.txt has 2"),
    "classnames_too_few_for_the_labels": (
        lambda t: read_wds(_cls(t, [0, 1, 2, 1], classnames="red\nblue\n")),
        "image 's0000002' has label 2, not a class index 0–1"),
    "empty_classnames": (lambda t: read_wds(_cls(t, [0, 0], classnames="\n\n")), "classnames.txt: no class names"),
    "classnames_not_utf8": (lambda t: read_wds(_cls(t, [0, 0], classnames="caf\xe9\n".encode("latin-1"))),
                            "classnames.txt is not UTF-8 text \\(byte 3\\)"),
    "caption_not_utf8": (lambda t: read_wds(_txt(t, [b"a red one", b"a blue \xff one"])),
                         "0.tar: sample 's0000001': its .txt captions are not UTF-8 \\(byte 7\\)"),
    "sample_without_captions": (lambda t: read_wds(_txt(t, [b"a red one", b"  \n", b"", b"a yellow one"])),
                                "image 's0000001' has no caption \\(2 of 4 images have none\\)"),
    "nshards_not_a_number": (lambda t: read_wds(_txt(t, [b"x"], nshards="one")),
                             "nshards.txt should hold the number of shards, 1 to 100,000; it holds 'one'"),
    "nshards_negative": (lambda t: read_wds(_txt(t, [b"x"], nshards="-3")), "it holds '-3'"),
    "nshards_zero": (lambda t: read_wds(_txt(t, [b"x"], nshards="0")), "it holds '0'"),
    "nshards_huge": (lambda t: read_wds(_txt(t, [b"x"], nshards="10000000000")), "it holds '10000000000'"),
    "nshards_of_1_mib": (lambda t: read_wds(_txt(t, [b"x"], nshards="1" * (1 << 20))),
                         "nshards.txt is not one short line of UTF-8 text"),
    "coco_repeated_image_id": (lambda t: read_coco_captions(_coco(t), t),
                               "coco.json: image id 1 occurs 2 times \\(1 repeated in all\\)"),
    "coco_null_caption": (lambda t: read_coco_captions(_coco(t, ids=[1, 2, 3], caption=None), t),
                          "coco.json: annotation 12: the caption is None, not a string"),
    "karpathy_repeated_image": (
        lambda t: read_karpathy(karpathy(t, [kimage(n, "a shape") for n in image_files(t, 3) + ["1.png"]]), t),
        "dataset_flickr30k.json: image id '1.png' occurs 2 times"),
    "karpathy_repeated_file_other_ids": (
        lambda t: read_karpathy(karpathy(t, [kimage(n, "a shape", imgid=i)
                                             for i, n in enumerate(image_files(t, 3) + ["2.png", "2.png"])]), t),
        "dataset_flickr30k.json: image file 'images/2.png' occurs 3 times \\(1 repeated in all\\)"),
    "karpathy_images_without_captions": (
        lambda t: read_karpathy(karpathy(t, [kimage(n, *(["a shape"] if i % 2 == 0 else []))
                                             for i, n in enumerate(image_files(t, 4))]), t),
        "dataset_flickr30k.json: image '1.png' has no caption \\(2 of 4 images have none\\)"),
    "karpathy_null_caption": (
        lambda t: read_karpathy(karpathy(t, [kimage("0.png", "a shape", None)]), t),
        "images\\[0\\] \\('0.png'\\) sentence 1: the caption is None, not a string"),
    "karpathy_split_of_another_type": (
        lambda t: read_karpathy(karpathy(t, [{**kimage("0.png", "a shape"), "split": ["test"]}]), t),
        "has no images in split 'test' \\(splits: \\[\"\\['test'\\]\"\\]\\)"),
    "coco_image_id_of_another_type": (
        lambda t: read_coco_captions(_file(t / "coco.json", json.dumps(
            {"images": [{"id": 1, "file_name": "a.png"}],
             "annotations": [{"id": 1, "image_id": [1], "caption": "x"}]})), t), "coco.json: annotations\\[0\\] needs an 'id', an 'image_id' and a 'caption'"),
    "blip_null_caption": (lambda t: read_blip(_file(t / "blip.json", json.dumps(
                              [{"image": f"images/{n}", "caption": ["x", None]} for n in image_files(t, 2)])), t),
                          "blip.json: item 0 \\('images/0.png'\\): the caption is None"),
    "blip_repeated_image": (lambda t: read_blip(_file(t / "blip.json", json.dumps(
                                [{"image": f"images/{n}", "caption": "x"} for n in image_files(t, 2) * 2])), t),
                            "blip.json: image 'images/0.png' \\('0.png'\\) occurs 2 times "
                            "\\(2 images repeated in all\\)"),
    "annotation_not_utf8": (lambda t: read_karpathy(_file(t / "k.json", b'{"images": ["\xff"]}'), t),
                            "k.json is not UTF-8 text \\(byte 13\\)"),
    "cupl_empty_prompt_list": (lambda t: read_templates(_file(t / "cupl.json", json.dumps(
                                   {"red": ["a red thing"], "blue": []}))),
                               "cupl.json: class 'blue' needs a non-empty list of prompt strings"),
    "cupl_null_prompt": (lambda t: read_templates(_file(t / "cupl.json", json.dumps({"red": [None]}))),
                         "cupl.json: class 'red' needs a non-empty list"),
    "cupl_empty_object": (lambda t: read_templates(_file(t / "cupl.json", "{}")), "cupl.json: CuPL prompts must be"),
    "empty_templates_file": (lambda t: read_templates(_file(t / "t.txt", "\n  \n")), "t.txt: no templates"),
    "template_without_c": (lambda t: read_templates(_file(t / "t.txt", "a photo of {c}.\na photo.\n")),
                           "t.txt: template 2 \\('a photo.'\\) has no {c} placeholder"),
    "template_with_x": (lambda t: read_templates(_file(t / "t.txt", "a {x} photo of {c}.\n")),
                        "t.txt: template 1 .* has a placeholder {x} other than {c}"),
    "template_with_attribute": (lambda t: read_templates(_file(t / "t.txt", "{c.__class__.__mro__}\n")),
                                "has a placeholder {c.__class__.__mro__} other than {c}"),
    "template_with_lone_brace": (lambda t: read_templates(_file(t / "t.txt", "a {c} photo}\n")),
                                 "template 1 .* is not a format string"),
    "imagefolder_empty_templates": (lambda t: open_dataset(f"imagefolder:{_folder(t, templates='')}"),
                                    "zeroshot_classification_templates.txt: no templates"),
}


def _file(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _coco(root: Path, ids=(1, 2, 1), caption="a shape") -> Path:
    names = image_files(root, len(ids))
    images = [{"id": i, "file_name": f"images/{n}"} for i, n in zip(ids, names)]
    anns = [{"id": 10 + k, "image_id": i, "caption": "a shape" if k != 2 else caption} for k, i in enumerate(ids)]
    return _file(root / "coco.json", json.dumps({"images": images, "annotations": anns}))


def _folder(root: Path, templates: str) -> Path:
    for name in ("cat", "dog"):
        (root / "folder" / name).mkdir(parents=True)
        (root / "folder" / name / "0.png").write_bytes(png("red"))
    (root / "folder" / "zeroshot_classification_templates.txt").write_text(templates)
    return root / "folder"


@pytest.mark.parametrize("case", sorted(READER_CASES))
def test_a_bad_input_is_refused_in_one_line_naming_the_file_and_item(case, tmp_path):
    read, message = READER_CASES[case]
    with pytest.raises(UserError, match=message) as err:
        read(tmp_path)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_sound_sets_still_read(tmp_path):
    ds = read_wds(_cls(tmp_path / "a", [0, 1, 1, 0]))
    assert ds.labels == [0, 1, 1, 0] and ds.classnames == ["red", "blue"] and ds.templates == ["a photo of {c}."]
    ds = read_wds(_txt(tmp_path / "b", [b"a red one\nred\n", b"a blue one"]))
    assert ds.captions == [["a red one", "red"], ["a blue one"]]
    ds = read_coco_captions(_coco(tmp_path / "c", ids=[1, 2, 3]), tmp_path / "c")
    assert ds.captions == [["a shape"]] * 3 and ds.ids == ["1", "2", "3"]
    assert read_templates(_file(tmp_path / "t.txt", "{{literal}} {c}\n")) == ["{{literal}} {c}"]


@pytest.mark.parametrize("k", [-1, 0])
def test_captions_per_image_below_one_is_refused(k, tmp_path):
    ds = read_wds(_txt(tmp_path, [b"a\nb\nc", b"d\ne"]))
    assert ds.first_captions(2).captions == [["a", "b"], ["d", "e"]]
    with pytest.raises(UserError, match=f"--captions-per-image must be a positive number of captions to keep, "
                                        f"got {k}"):
        ds.first_captions(k)


# --- the runners: what the model computes is checked before any metric --------------------------------------

class _Broken(torch.nn.Module):
    """The tiny model with NaN in chosen rows of its image or text features."""

    def __init__(self, model, image_rows=(), text_rows=()):
        super().__init__()
        self.model, self.image_rows, self.text_rows = model, list(image_rows), list(text_rows)
        self.seen_images = self.seen_texts = 0

    def encode_image(self, pixels):
        out = self.model.encode_image(pixels)
        out, self.seen_images = _poison(out, self.seen_images, self.image_rows)
        return out

    def encode_text(self, tokens):
        out = self.model.encode_text(tokens)
        out, self.seen_texts = _poison(out, self.seen_texts, self.text_rows)
        return out


def _poison(out, seen, rows):
    out = out.clone()
    for r in rows:
        if seen <= r < seen + len(out):
            out[r - seen] = float("nan")
    return out, seen + len(out)


def test_nan_image_features_stop_the_zero_shot_run(tiny, tmp_path):
    model, preprocess, tokenizer = tiny
    ds = read_wds(_cls(tmp_path, [0, 1, 0, 1, 1]))
    result = run_zeroshot(model, preprocess, tokenizer, ds, batch_size=2, progress=False)
    assert result["n"] == 5 and result["classes"] == 2
    with pytest.raises(UserError, match="the model's image features hold NaN or inf for 2 of 5 images; "
                                        "the weights may be broken"):
        run_zeroshot(_Broken(model, image_rows=[1, 4]), preprocess, tokenizer, ds, batch_size=2, progress=False)
    with pytest.raises(UserError, match="the model's class weights \\(from its text features\\) hold NaN or inf "
                                        "for 1 of 2 classes"):
        run_zeroshot(_Broken(model, text_rows=[0]), preprocess, tokenizer, ds, batch_size=2, progress=False)


def test_nan_features_stop_the_retrieval_run(tiny, tmp_path):
    model, preprocess, tokenizer = tiny
    ds = read_wds(_txt(tmp_path, [b"a red one\nred", b"a blue one", b"green\ngreen one", b"yellow"]))
    assert run_retrieval(model, preprocess, tokenizer, ds, batch_size=3, progress=False)["texts"] == 6
    with pytest.raises(UserError, match="image features hold NaN or inf for 1 of 4 images"):
        run_retrieval(_Broken(model, image_rows=[3]), preprocess, tokenizer, ds, batch_size=3, progress=False)
    with pytest.raises(UserError, match="text features hold NaN or inf for 3 of 6 captions"):
        run_retrieval(_Broken(model, text_rows=[0, 2, 5]), preprocess, tokenizer, ds, batch_size=3, progress=False)


@pytest.mark.parametrize("templates, message", [
    ({"red": ["a red thing"], "blue": []}, "the prompts for class 'blue' are not a non-empty list"),
    ({"red": ["a red thing"]}, "no prompts for classes \\['blue'\\]"),
    ([], "no templates"),
    (["a {x} of {c}"], "template 'a {x} of {c}' has a placeholder {x} other than {c}"),
])
def test_prompts_that_leave_a_class_without_weights_stop_the_run(templates, message, tiny, tmp_path):
    model, preprocess, tokenizer = tiny
    ds = read_wds(_cls(tmp_path, [0, 1]))
    with pytest.raises(UserError, match="wds: the zero-shot prompts \\(--templates or the set's templates file\\): "
                                        + message):
        run_zeroshot(model, preprocess, tokenizer, ds, templates=templates, progress=False)


def test_the_library_refuses_prompts_that_give_nan_weights(tiny):
    model, _, tokenizer = tiny
    with pytest.raises(ValueError, match="the prompts for class 'b' are not a non-empty list"):
        mc.build_class_weights(model, tokenizer, ["a", "b"], {"a": ["an a"], "b": []})
    with pytest.raises(ValueError, match="the class weights hold NaN or inf for 2 of 2 classes"):
        mc.ZeroShotClassifier(_Broken(model, text_rows=[0, 1]), tokenizer, None, ["a", "b"], ["a photo of {c}"])
    with pytest.raises(ValueError, match="template '\\{0\\} and \\{c\\}' has a placeholder \\{0\\} other than \\{c\\}"):
        mc.build_class_weights(model, tokenizer, ["a"], ["{0} and {c}"])


# --- the program: exit 2, one line, no result written ------------------------------------------------------

def _models(root: Path) -> Path:
    """A sound tiny model directory (``good``) and one whose image projection is NaN (``nan``)."""
    model = mc.create_model("tiny", seed=0)
    mc.save_model_dir(model, root / "good")
    with torch.no_grad():
        model.visual.proj.fill_(float("nan"))
    mc.save_model_dir(model, root / "nan")
    return root


# name → (the arguments, given the input folder; the model; the error line expected): three kinds of refusal
# (a reader's, an argument's, the features') through the program; every case is asserted in-process above
CLI_CASES = {
    "label_out_of_range": (lambda t: ["zeroshot", "--dataset", f"wds:{_cls(t, [0, 7])}"],
                           "good", "image 's0000001' has label 7, not a class index 0–1"),
    "captions_per_image_minus_1": (
        lambda t: ["retrieval", "--dataset", f"wds:{_txt(t, [b'a', b'c'])}", "--captions-per-image", "-1"],
        "good", "--captions-per-image must be a positive number of captions to keep, got -1"),
    "nan_model_allowed_to_load": (
        lambda t: ["zeroshot", "--dataset", f"wds:{_cls(t, [0, 1, 1])}", "--allow-nonfinite"],
        "nan", "the model's image features hold NaN or inf for 3 of 3 images"),
}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """case → (exit status, stderr, output folder) of every case, the programs run side by side."""
    root = tmp_path_factory.mktemp("cli")
    models = _models(root / "models")
    procs = {}
    for case, (make, model, _) in CLI_CASES.items():
        out = root / case / "out"
        args = [*make(root / case / "in"), "--model", models / model, "--output", out / "r.json", "--cache-dir", "",
                "--workers", "0", "--device", "cpu"]
        procs[case] = (subprocess.Popen([sys.executable, "-m", "eval", *map(str, args)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True), out)
    results = {}
    for case, (p, out) in procs.items():
        stderr = p.communicate(timeout=300)[1]
        results[case] = (p.returncode, stderr, out)
    return results


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_the_program_exits_2_with_one_line_and_writes_nothing(case, cli_runs):
    status, stderr, out = cli_runs[case]
    assert status == 2, stderr[-3000:]
    lines = [ln for ln in stderr.strip().splitlines() if "%|" not in ln and ln.strip()]  # not the progress bar
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert re.search(CLI_CASES[case][2], lines[0]), lines[0]
    assert not out.exists()
