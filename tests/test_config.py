"""The typed training config: YAML + overrides; unknown keys and wrong types are named."""

from __future__ import annotations

import pytest

from mmcontrast.errors import UserError
from training.config import load_config


def test_tiny_yaml_and_overrides():
    cfg = load_config("training/configs/tiny.yaml", ["optim.lr=5e-4", "data.batch_size=64",
                                                      "data.crop_scale=[0.8, 1.0]", "data.train=/x/{0..3}.tar",
                                                      "precision=fp32"])
    assert cfg.optim.lr == 5e-4 and cfg.data.batch_size == 64 and cfg.data.crop_scale == [0.8, 1.0]
    assert cfg.data.train == "/x/{0..3}.tar" and cfg.precision == "fp32" and cfg.model.name == "tiny"


def test_int_is_accepted_for_float():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key optim.lrr"),
    ("nosection.x=1", "unknown config key nosection.x"),
    ("optim.lr=fast", "config key optim.lr expects float, got 'fast'"),
    ("data.batch_size=1.5", "config key data.batch_size expects int, got 1.5"),
    ("objective.local_loss=maybe", "config key objective.local_loss expects bool"),
    ("optim=3", "config key optim is a section"),
    ("precision=fp8", "precision must be one of"),
    ("lr", "must look like key.sub=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.1\n  momentum: 0.9\n")
    with pytest.raises(UserError, match="unknown config key optim.momentum"):
        load_config(path)


def test_missing_config_file():
    with pytest.raises(UserError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")
