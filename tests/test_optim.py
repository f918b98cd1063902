"""The optimizer's parameter groups: the logit scalars' own learning rate (``optim.logit_lr_mult``)."""

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


def test_logit_lr_mult_gives_the_scalars_their_own_scheduled_lr():
    model = mc.create_model("tiny-siglip", seed=0)
    optimizer = make_optimizer(model, OptimConfig(lr=1e-3, logit_lr_mult=50))
    decay, no_decay, logits = optimizer.param_groups
    assert _names(model, logits) == ["logit_bias", "logit_scale"]
    assert logits["weight_decay"] == 0 and logits["lr"] == pytest.approx(0.05)
    assert not {"logit_bias", "logit_scale"} & set(_names(model, decay) + _names(model, no_decay))
    scheduler = make_scheduler(optimizer, ScheduleConfig(steps=100, warmup=10))
    assert logits["lr"] == pytest.approx(0.05 / 10) and decay["lr"] == pytest.approx(1e-3 / 10)  # warmup applies
    # One Adam step moves a scalar by about its lr, whatever the gradient's size: 50× the weights' lr.
    before = model.logit_bias.detach().clone()
    model.logit_bias.grad = torch.tensor(-123.0)
    optimizer.step()
    scheduler.step()
    assert (model.logit_bias.detach() - before).item() == pytest.approx(0.005, rel=1e-3)


def test_logit_lr_mult_must_be_positive():
    from mmcontrast.errors import UserError
    from training.config import load_config
    with pytest.raises(UserError, match=r"optim\.logit_lr_mult must be a finite number > 0, got 0\.0"):
        load_config(None, ["optim.logit_lr_mult=0"])
