"""Towers named in a config: a timm image backbone, a transformers text encoder from a path; torch.compile."""

from __future__ import annotations

import open_clip
import pytest
import torch

import mmcontrast as mc
from mmcontrast.model import resolve_package_path
from mmcontrast.presets import MINILM
from training.config import load_config
from training.train import setup, train_step

from .test_train import _cfg
from .test_training_controls import _batch


def test_config_overrides_reach_the_tower_dicts():
    cfg = load_config(None, ["model.vision.timm_model_name=convnext_atto", "model.vision.timm_pool=avg",
                             "model.text={hf_model_name: /x, hf_pooler_type: cls_pooler}"])
    assert cfg.model.vision == {"timm_model_name": "convnext_atto", "timm_pool": "avg"}
    assert cfg.model.text == {"hf_model_name": "/x", "hf_pooler_type": "cls_pooler"}
    with pytest.raises(mc.UserError, match="config key model.vision expects dict"):
        load_config(None, ["model.vision=resnet18"])


def test_timm_image_tower_trains_and_loads_in_open_clip(small_demo, tmp_path):
    t = setup(_cfg(small_demo, "model.vision.timm_model_name=convnext_atto", "precision=fp32"), tmp_path, None)
    model = t.unwrapped
    assert type(model.visual).__name__ == "TimmModel"
    assert model.model_cfg["vision_cfg"] == {"image_size": 64, "timm_model_name": "convnext_atto"}
    before = model.visual.trunk.stem[0].weight.clone()
    losses, _, stepped, _ = train_step(t, _batch(), stop_requested=False)
    assert stepped and torch.isfinite(losses["loss"]) and not torch.equal(before, model.visual.trunk.stem[0].weight)
    mc.save_model_dir(model, tmp_path / "timm")
    reference, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'timm'}")
    ours, _, _ = mc.load(tmp_path / "timm")
    x = _batch()["image"]
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(x), reference.eval().encode_image(x),
                                   atol=1e-5, rtol=0)


def test_text_encoder_from_a_local_path_equals_the_lit_preset():
    path = resolve_package_path(MINILM)  # a plain directory, as a user's own encoder would be
    named = mc.create_model("tiny", seed=0, text={"hf_model_name": path, "hf_proj_type": "linear",
                                                  "hf_pooler_type": "mean_pooler"})
    preset = mc.create_model("tiny-lit-minilm", seed=0)
    assert type(named.text.transformer).__name__ == "BertModel"
    tokens = mc.make_tokenizer(named.model_cfg)(["a red circle", "two blue stars"])
    encoder = {k: v for k, v in named.text.state_dict().items() if k.startswith("transformer.")}
    expected = preset.text.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in encoder.items())  # the same pretrained encoder
    assert torch.equal(tokens, mc.make_tokenizer(preset.model_cfg)(["a red circle", "two blue stars"]))


def test_compiled_training_equals_eager(small_demo, tmp_path):
    small = ("model.vision.layers=1", "model.text.layers=1", "precision=fp32")  # compiles in seconds
    runs = []
    for compiled in (False, True):
        t = setup(_cfg(small_demo, *small, f"model.compile={str(compiled).lower()}"), tmp_path / str(compiled), None)
        losses = [train_step(t, _batch(), stop_requested=False)[0]["loss"].item() for _ in range(3)]
        runs.append((losses, {k: v.clone() for k, v in t.unwrapped.state_dict().items()}))
    (eager_losses, eager), (compiled_losses, compiled) = runs
    assert eager.keys() == compiled.keys()  # checkpoints keep the plain key names
    assert compiled_losses == pytest.approx(eager_losses, abs=1e-5)
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], atol=1e-5, rtol=1e-4)
