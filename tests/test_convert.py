"""transformers CLIP ↔ model directory: equal embeddings, and a round trip that returns every tensor."""

from __future__ import annotations

import subprocess
import sys

import open_clip
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

import mmcontrast as mc
from mmcontrast.conversion import clip_tokenizer
from mmcontrast.errors import UserError

TOWER = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
CAPTIONS = ["a photo of a cat.", "Two RED squares, one blue circle!", "x" * 300]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small randomly initialised transformers CLIPModel saved with its tokenizer and processor."""
    folder = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(TOWER, vocab_size=49408, max_position_embeddings=77),
                        vision_config=dict(TOWER, image_size=32, patch_size=8), projection_dim=48)
    model = CLIPModel(config)
    with torch.no_grad():  # LayerNorms start at 1/0; random ones make the mapping of every tensor count
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1 if name.endswith("weight") else 0, 0.1)
    model.save_pretrained(folder)
    clip_tokenizer(folder).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder, model.eval()


def _pixels(size: int) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_hf_to_model_dir_gives_the_same_embeddings(hf_dir, tmp_path):
    folder, hf = hf_dir
    mc.convert(folder, tmp_path / "ours")
    model, preprocess, tokenizer = mc.load(tmp_path / "ours")
    assert isinstance(model, open_clip.model.CLIP) and model.model_cfg["quick_gelu"] is True
    tokens = tokenizer(CAPTIONS)
    x = _pixels(32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x, normalize=False),
                                   hf.get_image_features(pixel_values=x).pooler_output, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_text(tokens, normalize=False),
                                   hf.get_text_features(input_ids=tokens).pooler_output, atol=1e-5, rtol=0)
    # and open_clip itself reads the converted directory
    oc, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'ours'}")
    with torch.no_grad():
        torch.testing.assert_close(oc.eval().encode_image(x), model.encode_image(x, normalize=False))


def test_round_trip_returns_every_tensor(hf_dir, tmp_path):
    folder, hf = hf_dir
    mc.convert(mc.convert(folder, tmp_path / "ours"), tmp_path / "back")
    again = CLIPModel.from_pretrained(tmp_path / "back", local_files_only=True)
    before, after = hf.state_dict(), again.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    for tower in ("vision_config", "text_config"):
        a, b = getattr(hf.config, tower).to_dict(), getattr(again.config, tower).to_dict()
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act"):
            assert a[k] == b[k], (tower, k)


def test_our_model_to_transformers(tmp_path):
    model = mc.create_model("tiny", seed=0)
    mc.save_model_dir(model, tmp_path / "tiny")
    mc.convert(tmp_path / "tiny", tmp_path / "hf")
    hf_model, _, hf_tokenizer = mc.load(f"hf:{tmp_path / 'hf'}")
    ours, _, tokenizer = mc.load(tmp_path / "tiny")
    tokens = tokenizer(CAPTIONS)
    hf_tokens = hf_tokenizer(CAPTIONS)  # the written CLIPTokenizer equals open_clip's, but for the padding
    assert torch.equal(hf_tokens[tokens != 0], tokens[tokens != 0]) and set(hf_tokens[tokens == 0].tolist()) == {49407}
    x = _pixels(64)
    with torch.no_grad():
        torch.testing.assert_close(hf_model.encode_image(x), ours.encode_image(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(hf_model.encode_text(tokens), ours.encode_text(tokens), atol=1e-5, rtol=0)


def test_unconvertible_models_are_named(tmp_path):
    mc.save_model_dir(mc.create_model("tiny-lit-minilm", seed=0), tmp_path / "lit")
    with pytest.raises(UserError, match=r"cannot hold this model \(custom_text=True, text_cfg.hf_model_name="):
        mc.convert(tmp_path / "lit", tmp_path / "hf")
    with pytest.raises(UserError, match="neither a model directory"):
        (tmp_path / "empty").mkdir()
        mc.convert(tmp_path / "empty", tmp_path / "x")


def test_command_line(hf_dir, tmp_path):
    folder, _ = hf_dir
    run = subprocess.run([sys.executable, "-m", "mmcontrast.convert", str(folder), str(tmp_path / "ours")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "ours" / "open_clip_model.safetensors").is_file()
    bad = subprocess.run([sys.executable, "-m", "mmcontrast.convert", str(folder)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: expected SRC and DST")
    assert "Traceback" not in bad.stderr


def test_training_starts_from_a_converted_model(hf_dir, small_demo, tmp_path):
    from training.train import setup

    from .test_train import _cfg

    folder, _ = hf_dir
    ours = mc.convert(folder, tmp_path / "ours")
    t = setup(_cfg(small_demo, f"model.name={ours}"), tmp_path / "run", None)
    expected, _, _ = mc.load(ours)
    got = t.unwrapped.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in expected.state_dict().items())
    assert t.unwrapped.preprocess_cfg == expected.preprocess_cfg
    with pytest.raises(UserError, match="whose weights would then not fit"):
        setup(_cfg(small_demo, f"model.name={ours}", "model.vision.layers=1"), tmp_path / "run2", None)
