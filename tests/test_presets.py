"""Every named preset is created with random weights and runs a forward pass on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

import mmcontrast as mc


@pytest.mark.parametrize("name", list(mc.PRESETS))
def test_preset_forward(name):
    model = mc.create_model(name, seed=0).eval()
    vision, text = model.model_cfg["vision_cfg"], model.model_cfg["text_cfg"]
    size = vision.get("image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    context = text.get("context_length", 77)
    images = torch.randn(2, 3, *size)
    tokens = torch.randint(1, 1000, (2, context))
    with torch.no_grad():
        out = model(images, tokens)
    dim = model.model_cfg["embed_dim"]
    assert out["image_features"].shape == (2, dim) and out["text_features"].shape == (2, dim)
    for key in ("image_features", "text_features"):
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(2))
    assert ("logit_bias" in out) == ("init_logit_bias" in model.model_cfg)


def test_siglip_preset_starts_at_the_paper_values():
    model = mc.create_model("ViT-B-16-SigLIP", seed=0)
    assert model.logit_scale.item() == pytest.approx(math.log(10))
    assert model.logit_bias.item() == pytest.approx(-10.0)


def test_open_clip_model_config_file_is_a_model_name(tmp_path):
    import json

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(mc.PRESETS["tiny"]))
    a, b = mc.create_model(str(path), seed=0), mc.create_model("tiny", seed=0)
    assert a.model_cfg == b.model_cfg
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an open_clip model config"):
        mc.create_model(str(tmp_path / "bad.json"))
