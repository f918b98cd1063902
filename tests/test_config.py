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


@pytest.mark.parametrize("key, message", [
    ("train.steps", "unknown config key train.steps; did you mean schedule.steps? "
                    "(python -m training --help-config lists every key)"),
    ("optim.lrr", "unknown config key optim.lrr; did you mean optim.lr? "),
    ("data.batchsize", "unknown config key data.batchsize; did you mean data.batch_size or eval.batch_size? "),
    ("lr", "unknown config key lr; did you mean optim.lr? "),
    ("schedule.steps.x", "unknown config key schedule.steps.x; did you mean schedule.steps? "),
    ("nosection.x", "unknown config key nosection.x (python -m training --help-config lists every key)"),
    ("x" * 5000, "unknown config key " + "x" * 100 + "… (python"),  # the user's text quoted cut
])
def test_an_unknown_key_suggests_the_closest_real_keys_of_every_section(key, message):
    with pytest.raises(UserError) as e:
        load_config(None, [f"{key}=30"])
    assert str(e.value).startswith(message)


def test_an_unknown_key_in_yaml_suggests_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 30\n")
    with pytest.raises(UserError, match=r"^unknown config key train\.steps; did you mean schedule\.steps\?"):
        load_config(path)


def test_help_config_lists_every_key_with_type_default_and_comment():
    from training.config import TrainConfig, help_config
    from training.config_keys import leaf_fields
    rows = [line.split(None, 3) for line in help_config().splitlines()[2:]]
    assert [r[0] for r in rows] == [key for key, *_ in leaf_fields(TrainConfig)]
    assert len(rows) > 50 and all(len(r) == 4 for r in rows), [r for r in rows if len(r) < 4]  # each documented
    by_key = {r[0]: r[1:] for r in rows}
    assert by_key["schedule.steps"] == ["int", "1000", "optimizer steps in the whole run"]
    assert by_key["data.crop_scale"][:1] == ["list[float]"] and "[0.9, 1.0]" in help_config()
    assert by_key["model.pretrained"][:2] == ["str", "''"]
    assert by_key["objective.fusion.rerank_negatives"] == ["int", "7", "...that n"]
    # a comment continued on the comment-only lines under its field is joined
    assert by_key["train.chunk_size"][2].endswith("exact full-batch gradients in one chunk's activation memory (0: off)")


def test_field_comments_read_the_source_of_a_dataclass():
    from training.config_keys import field_comments
    source = (
        "import dataclasses\n\n@dataclasses.dataclass\nclass C:\n"
        "    \"\"\"A section.\"\"\"  # not a field's\n"
        "    a: int = 1  # one\n"
        "                # and more\n"
        "    b: str = \"#no\"\n"
        "    c: list = dataclasses.field(default_factory=lambda: [1,\n"
        "                                                        2])  # three\n"
        "    # about d, above it: not d's\n"
        "    d: float = 0.5\n")
    import importlib.util
    import sys
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "section_mod.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("section_mod", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["section_mod"] = module
        try:
            spec.loader.exec_module(module)
            assert field_comments(module.C) == {"a": "one and more", "c": "three"}
        finally:
            del sys.modules["section_mod"]
