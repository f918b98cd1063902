"""The model keys of the initial logit scale and bias (``model.init_logit_scale`` / ``model.init_logit_bias``)."""

from __future__ import annotations

import pytest


def test_init_logit_keys_set_the_new_model_s_scale_and_bias():
    from training.config import load_config
    from training.train import build
    model = build(load_config(None, ["model.name=tiny-siglip", "objective.name=siglip", "model.init_logit_scale=20",
                                     "model.init_logit_bias=-4.5"]))[0]
    assert model.logit_scale.exp().item() == pytest.approx(20.0) and model.logit_bias.item() == -4.5
    assert model.model_cfg["init_logit_bias"] == -4.5  # written into the model directory's open_clip config
    default = build(load_config(None, ["model.name=tiny-siglip", "objective.name=siglip"]))[0]
    assert default.logit_scale.exp().item() == pytest.approx(10.0) and default.logit_bias.item() == -10.0
    # a bias makes any preset sigmoid-ready
    assert build(load_config(None, ["model.init_logit_bias=-5", "objective.name=siglip"]))[0].logit_bias.item() == -5


@pytest.mark.parametrize("override, message", [
    ("model.init_logit_scale=-1", r"model\.init_logit_scale must be a finite number in \[0, 100\], got -1\.0"),
    ("model.init_logit_bias=1e9", r"model\.init_logit_bias must be a finite number in \[-100, 100\], got 1000000000\.0"),
])
def test_init_logit_keys_are_checked(override, message):
    from mmcontrast.errors import UserError
    from training.config import load_config
    with pytest.raises(UserError, match=message):
        load_config(None, [override])
