"""The optimizer's parameter groups: SigLIP's bias at its own learning rate (``optim.logit_bias_lr_mult``);
the model keys of the initial logit scale and bias."""

from __future__ import annotations

import pytest
import torch

import mmcontrast as mc
from training.config import OptimConfig, ScheduleConfig
from training.optim import make_optimizer, make_scheduler


def _names(model, group):
    names = {id(p): n for n, p in model.named_parameters()}
    return sorted(names[id(p)] for p in group["params"])


def test_default_keeps_the_two_groups_of_earlier_checkpoints():
    model = mc.create_model("tiny-siglip", seed=0)
    groups = make_optimizer(model, OptimConfig()).param_groups
    assert len(groups) == 2
    assert {"logit_scale", "logit_bias"} <= set(_names(model, groups[1]))
    assert groups[1]["weight_decay"] == 0


def test_logit_bias_lr_mult_gives_the_bias_its_own_scheduled_lr():
    model = mc.create_model("tiny-siglip", seed=0)
    optimizer = make_optimizer(model, OptimConfig(lr=1e-3, logit_bias_lr_mult=50))
    decay, no_decay, logits = optimizer.param_groups
    assert _names(model, logits) == ["logit_bias"]
    assert logits["weight_decay"] == 0 and logits["lr"] == pytest.approx(0.05)
    assert "logit_scale" in _names(model, no_decay)  # the scale keeps the weights' lr
    assert "logit_bias" not in _names(model, decay) + _names(model, no_decay)
    scheduler = make_scheduler(optimizer, ScheduleConfig(steps=100, warmup=10))
    assert logits["lr"] == pytest.approx(0.05 / 10) and decay["lr"] == pytest.approx(1e-3 / 10)  # warmup applies
    # One Adam step moves a scalar by about its lr, whatever the gradient's size: 50× the weights' lr.
    before = model.logit_bias.detach().clone()
    model.logit_bias.grad = torch.tensor(-123.0)
    optimizer.step()
    scheduler.step()
    assert (model.logit_bias.detach() - before).item() == pytest.approx(0.005, rel=1e-3)


def test_logit_bias_lr_mult_must_be_positive():
    from mmcontrast.errors import UserError
    from training.config import load_config
    with pytest.raises(UserError, match=r"optim\.logit_bias_lr_mult must be a finite number > 0, got 0\.0"):
        load_config(None, ["optim.logit_bias_lr_mult=0"])


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
