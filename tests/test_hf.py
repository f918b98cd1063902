"""``mc.load("hf:DIR")`` equals transformers on small CLIP and SigLIP models saved inside the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipModel

import mmcontrast as mc
from mmcontrast.conversion import clip_tokenizer
from mmcontrast.errors import UserError

TOWER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


@pytest.fixture(scope="module", params=["clip", "siglip"])
def hf_dir(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    text = dict(TOWER, vocab_size=49408, max_position_embeddings=77 if request.param == "clip" else 32)
    vision = dict(TOWER, image_size=32, patch_size=8)
    if request.param == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=48))
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    model.save_pretrained(folder)
    tokenizer = clip_tokenizer(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder, model.eval(), tokenizer, text["max_position_embeddings"]


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(3)]


def test_embeddings_equal_transformers(hf_dir):
    folder, ref, ref_tokenizer, context = hf_dir
    model, preprocess, tokenizer = mc.load(f"hf:{folder}")
    texts = ["a photo of a cat", "two dogs on a beach", "x"]
    pixels = torch.stack([preprocess(im) for im in _images()])
    ref_pixels = CLIPImageProcessor.from_pretrained(folder)(images=_images(), return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels, ref_pixels)
    ids = ref_tokenizer(texts, padding="max_length", max_length=context, truncation=True, return_tensors="pt")
    assert torch.equal(tokenizer(texts), ids["input_ids"])
    with torch.no_grad():
        ours_img, ours_txt = model.encode_image(pixels), model.encode_text(tokenizer(texts))
        ref_img = ref.get_image_features(pixel_values=ref_pixels)
        ref_txt = ref.get_text_features(input_ids=ids["input_ids"])
    ref_img = ref_img if isinstance(ref_img, torch.Tensor) else ref_img.pooler_output
    ref_txt = ref_txt if isinstance(ref_txt, torch.Tensor) else ref_txt.pooler_output
    torch.testing.assert_close(ours_img, ref_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_txt, ref_txt, atol=1e-5, rtol=0)


def test_hf_model_works_with_the_zero_shot_classifier(hf_dir):
    folder, *_ = hf_dir
    model, preprocess, tokenizer = mc.load(f"hf:{folder}")
    clf = mc.ZeroShotClassifier(model, tokenizer, preprocess, ["cat", "dog", "car"], mc.templates.SIMPLE)
    proba = clf.predict_proba(_images())
    assert proba.shape == (3, 3)
    torch.testing.assert_close(proba.sum(1), torch.ones(3))
    with torch.no_grad():
        out = model(torch.stack([preprocess(im) for im in _images()]), tokenizer(["a", "b", "c"]))
    assert ("logit_bias" in out) == (folder.name.startswith("siglip"))


def test_not_a_transformers_directory(tmp_path):
    with pytest.raises(UserError, match="config.json is missing"):
        mc.load(f"hf:{tmp_path}")


NO_NETWORK = """
import json, socket, sys
attempts = []
def deny(*args, **kwargs):
    attempts.append(repr(args)[:200])
    raise OSError("the test allows no network")
socket.socket.connect = socket.getaddrinfo = socket.create_connection = deny
import mmcontrast as mc
model, preprocess, tokenizer = mc.load("hf:" + sys.argv[1])
try:
    mc.load("hf:openai/clip-vit-base-patch32")
    refused = ""
except mc.UserError as e:
    refused = str(e)
print(json.dumps({"attempts": attempts, "refused": refused}))
"""


def test_hf_never_reaches_the_network(hf_dir, tmp_path):
    """With the hub's offline switches unset and every socket call failing: a local directory loads, a hub name is
    refused as not a directory, and nothing tried to connect."""
    folder, *_ = hf_dir
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "hf_home")  # an empty cache: nothing to fall back on
    proc = subprocess.run([sys.executable, "-c", NO_NETWORK, str(folder)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["attempts"] == []
    assert out["refused"].startswith("hf:openai/clip-vit-base-patch32 is not a directory: hf: takes a local "
                                     "transformers directory only and downloads nothing")
