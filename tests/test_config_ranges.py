"""Every numeric config key checked against its range when the config is read, config files read as an attacker
would write them, and the training stops those values guard: too many bad samples (short runs too) and a batch
that does not fit in memory."""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import typing
from pathlib import Path

import pytest
import torch

from mmcontrast import objectives
from mmcontrast.errors import UserError
from training.config import TrainConfig, load_config, shipped_configs
from training.config_keys import leaf_fields
from training.config_ranges import RANGES, shown_value
from training.train import train

NUMERIC = (int, float, list[float], list[int])


def test_every_numeric_key_has_a_range_and_every_range_a_key():
    numeric = {key for key, tp, *_ in leaf_fields(TrainConfig) if tp in NUMERIC}
    assert numeric == set(RANGES), (numeric ^ set(RANGES))


def test_the_defaults_and_every_shipped_config_are_in_range():
    load_config(None)
    for name in shipped_configs():
        load_config(name)


@pytest.mark.parametrize("override, message", [
    ("optim.lr=nan", "config key optim.lr must be a finite number > 0, got nan"),
    ("optim.lr=inf", "config key optim.lr must be a finite number > 0, got inf"),
    ("optim.lr=0", "config key optim.lr must be a finite number > 0, got 0.0"),
    ("optim.lr=-1e-3", "config key optim.lr must be a finite number > 0, got -0.001"),
    ("optim.lr=1" + "0" * 400, "config key optim.lr must be a finite number, got 1" + "0" * 17 + "..." + "0" * 19),
    ("data.batch_size=1" + "0" * 400, "config key data.batch_size must be an integer below 2**63, got 1" + "0" * 17),
    ("data.workers=" + str(2**63), "config key data.workers must be an integer below 2**63, got 9223372036854775808"),
    ("optim.weight_decay=-0.1", "config key optim.weight_decay must be a finite number ≥ 0, got -0.1"),
    ("optim.weight_decay=inf", "config key optim.weight_decay must be a finite number ≥ 0, got inf"),
    ("optim.beta1=2", "config key optim.beta1 must be a finite number in [0, 1), got 2.0"),
    ("optim.beta2=1", "config key optim.beta2 must be a finite number in [0, 1), got 1.0"),
    ("optim.eps=0", "config key optim.eps must be a finite number > 0, got 0.0"),
    ("optim.grad_clip=-1", "config key optim.grad_clip must be a finite number ≥ 0, got -1.0"),
    ("checkpoint.every=-1", "config key checkpoint.every must be ≥ 0, got -1"),
    ("eval.every=-5", "config key eval.every must be ≥ 0, got -5"),
    ("log.every=0", "config key log.every must be ≥ 1, got 0"),
    ("data.workers=-1", "config key data.workers must be ≥ 0, got -1"),
    ("data.batch_size=0", "config key data.batch_size must be ≥ 1, got 0"),
    ("eval.batch_size=0", "config key eval.batch_size must be ≥ 1, got 0"),
    ("model.patch_dropout=1", "config key model.patch_dropout must be a finite number in [0, 1), got 1.0"),
    ("data.max_bad_fraction=1.5", "config key data.max_bad_fraction must be a finite number in [0, 1], got 1.5"),
    ("data.crop_scale=[0,0]", "config key data.crop_scale[0] must be a finite number in (0, 1], got 0.0"),
    ("data.crop_scale=[0.5,1.2]", "config key data.crop_scale[1] must be a finite number in (0, 1], got 1.2"),
    ("data.crop_scale=[0.9,0.5]", "config key data.crop_scale must be [lo, hi] with lo ≤ hi (fractions of the "
                                  "image area), got [0.9, 0.5]"),
    ("data.crop_scale=[0.5]", "config key data.crop_scale must be [lo, hi] with lo ≤ hi"),
    ("data.weights=[1,-1]", "config key data.weights[1] must be a finite number ≥ 0, got -1.0"),
    ("schedule.steps=0", "config key schedule.steps must be ≥ 1, got 0"),
    ("schedule.warmup=-1", "config key schedule.warmup must be ≥ 0, got -1"),
    ("data.max_image_pixels=0", "config key data.max_image_pixels must be ≥ 1, got 0"),
    ("train.chunk_size=-2", "config key train.chunk_size must be ≥ 0, got -2"),
    ("objective.fusion.zorro_temperature=0", "config key objective.fusion.zorro_temperature must be a finite "
                                             "number > 0, got 0.0"),
    ("seed=-1", "config key seed must be in [0, 4294967295], got -1"),
])
def test_a_value_out_of_range_is_one_line_naming_key_value_and_range(override, message):
    with pytest.raises(UserError) as e:
        load_config("training/configs/tiny.yaml", [override])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("override", ["optim.lr=1e-12", "optim.beta1=0", "optim.beta2=0.999999",
                                      "model.patch_dropout=0.99", "data.crop_scale=[1,1]", "data.crop_scale=[1e-3,1]",
                                      "data.max_bad_fraction=0", "data.max_bad_fraction=1", "checkpoint.every=0",
                                      "log.every=1", "data.workers=0", "optim.grad_clip=0", "checkpoint.keep=0"])
def test_the_bounds_themselves_are_accepted(override):
    load_config("training/configs/tiny.yaml", [override])


def test_a_long_value_is_quoted_cut():
    with pytest.raises(UserError) as e:
        load_config(None, ["optim.lr=" + "x" * 100_000])
    assert len(str(e.value)) < 200 and str(e.value).startswith("config key optim.lr expects float, got 'xxx")
    assert len(shown_value(list(range(10**6)))) <= 101


def test_train_validates_a_config_built_in_python_before_building_anything(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")
    monkeypatch.setattr("training.train.make_accelerator", no_model)
    monkeypatch.setattr("training.train.build", no_model)
    cfg = dataclasses.replace(TrainConfig(), log=dataclasses.replace(TrainConfig().log, every=0))
    with pytest.raises(UserError, match=r"^config key log.every must be ≥ 1, got 0$"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --- config files from a careless or hostile user

def _alias_bomb() -> str:
    """Billion laughs: 9 aliases of 9 aliases ... nine levels deep, 9⁹ = 387 million strings once expanded."""
    lines = ["model:", "  vision:", '    a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"    {name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


def _load_in_thread(path: Path) -> BaseException | None:
    """load_config(path) run in a thread; its exception, or a failure if it did not return (it hung)."""
    outcome: list = []

    def target():
        try:
            load_config(path)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 — handed to the test
            outcome.append(e)
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout=60)  # a guard against a hang, far above the milliseconds it takes
    assert outcome, "load_config did not return"
    return outcome[0]


def test_a_yaml_alias_bomb_under_model_vision_is_refused_unexpanded(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    assert len(path.read_bytes()) < 500
    error = _load_in_thread(path)
    assert isinstance(error, UserError)
    assert str(error) == (f"config file {path} is not valid YAML: YAML aliases (*name) are not accepted in a "
                          f"config; write the values out, or share settings through base: other.yaml at line 4, "
                          f"column 12")


def test_an_alias_in_an_override_is_refused():
    with pytest.raises(UserError, match=r"^override model.vision.x=…: the value is not valid YAML: YAML aliases"):
        load_config(None, ["model.vision.x=[&a [1, 1], *a, *a]"])


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("optim:\n  lr: 0.001  # taux d'apprentissage élevé\n".encode("latin-1"))
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(e.value) == f"config file {path} is not UTF-8 text (byte 0xe9 at offset 43); save it as UTF-8"


@pytest.mark.parametrize("text, message", [
    ("optim: [\n", "is not valid YAML: expected the node content, but found '<stream end>' at line 2, column 1"),
    ("optim:\n  lr: \x00\n", "is not valid YAML: unacceptable character #x0000"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "is not valid YAML: nested too deeply"),
    ("[1, 2]\n", "must hold a mapping of sections, got list"),
])
def test_broken_yaml_is_one_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(e.value).startswith(f"config file {path} {message}") and "\n" not in str(e.value)


def test_a_huge_config_file_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.truncate(2 << 20)
    with pytest.raises(UserError, match=r"is 2,097,152 bytes, more than a config holds \(1,048,576\)$"):
        load_config(path)


def test_an_override_that_is_not_yaml_is_one_line():
    with pytest.raises(UserError, match=r"^override optim.lr=…: the value is not valid YAML: expected the node"):
        load_config(None, ["optim.lr=["])


# --- the bad-sample fraction, judged at the end of a short run too

@pytest.fixture()
def half_bad_shard(tmp_path: Path) -> Path:
    """One shard of 24 samples alternating good and corrupt JPEG: half the samples are unusable."""
    from data_prep.writer import write_shard

    from .test_loader import _good, _jpeg
    samples = []
    for i in range(12):
        samples += [_good(i), {"__key__": f"corrupt{i}", "jpg": _jpeg(100 + i)[:80], "txt": "a broken image"}]
    write_shard(tmp_path / "half.tar", samples)
    return tmp_path / "half.tar"


def _short_cfg(shard: Path, *extra):
    return load_config("training/configs/tiny.yaml", [
        f"data.train={shard}", "data.batch_size=4", "data.workers=0", "data.shuffle_buffer=0", "schedule.steps=2",
        "schedule.warmup=0", "log.every=1", "checkpoint.every=0", "eval.retrieval=", "eval.zeroshot=",
        "eval.compositional=", "precision=fp32", *extra])


def test_a_short_run_with_half_its_samples_bad_fails_at_the_end(half_bad_shard, tmp_path):
    with pytest.raises(UserError) as e:
        train(_short_cfg(half_bad_shard), tmp_path / "run")
    # 8 usable samples in 2 steps, and the 7 corrupt ones between them: far under the 256 judged during a run
    assert str(e.value).startswith("at the end of the run (no final model written), 7 of 15 samples read (46.7%) "
                                   "were unusable, more than data.max_bad_fraction = 0.1 ({'corrupt_image': 7}); ")
    assert not (tmp_path / "run" / "final").exists()
    assert (tmp_path / "run" / "checkpoints" / "step_0000002" / "state.json").is_file()  # the steps are kept


def test_a_short_run_within_the_limit_finishes(half_bad_shard, tmp_path):
    train(_short_cfg(half_bad_shard, "data.max_bad_fraction=0.5"), tmp_path / "run")
    assert (tmp_path / "run" / "final" / "mmcontrast.json").is_file()


def test_the_cli_exits_2_with_the_counts(half_bad_shard, tmp_path, capsys):
    from mmcontrast.errors import run_main
    from training.__main__ import main
    args = ["--config", "training/configs/tiny.yaml", "--output", str(tmp_path / "run"),
            f"data.train={half_bad_shard}", "data.batch_size=4", "data.workers=0", "data.shuffle_buffer=0",
            "schedule.steps=2", "checkpoint.every=0", "eval.retrieval=", "eval.zeroshot=", "eval.compositional=",
            "precision=fp32"]
    with pytest.raises(SystemExit) as e:
        run_main(lambda: main(args))
    err = capsys.readouterr().err.strip().split("\n")  # the progress bar's lines, then the error
    assert e.value.code == 2 and err[-1].startswith("error: at the end of the run (no final model written), 7 of 15 ")
    assert [line for line in err if "error" in line.lower() or "Traceback" in line] == err[-1:]


# --- a batch that does not fit in memory

class _Allocates(objectives.ClipLoss):
    """InfoNCE that first asks an allocator for ``nbytes`` or raises ``error``: a batch too large for memory."""

    def __init__(self, error: BaseException | None, **kw):
        super().__init__(**kw)
        self.error = error

    def __call__(self, *args, **kw):
        if self.error is not None:
            raise self.error
        torch.empty(1 << 50, dtype=torch.uint8)  # 1 PiB: the CPU allocator refuses it at once
        return super().__call__(*args, **kw)


@pytest.mark.parametrize("error, extra, said, hint", [
    (None, [], "DefaultCPUAllocator: can't allocate memory",
     "set train.chunk_size (GradCache: the same gradients, in the activation memory of that many samples), "
     "e.g. train.chunk_size=1, or lower data.batch_size, or set model.grad_checkpointing=true"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79 GiB"),
     [], "(CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79 GiB)", "e.g. train"),
    (RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"), ["train.chunk_size=2"],
     "(MPS backend out of memory (MPS allocated: 8 GB))", "; lower train.chunk_size (now 2), or lower data.batch_size"),
])
def test_an_allocator_failure_in_a_step_names_batch_size_and_chunk_size(half_bad_shard, tmp_path, monkeypatch,
                                                                         error, extra, said, hint):
    monkeypatch.setitem(objectives.OBJECTIVES, "clip", lambda **kw: _Allocates(error, **kw))
    with pytest.raises(UserError) as e:
        train(_short_cfg(half_bad_shard, *extra), tmp_path / "run")
    message = str(e.value)
    assert re.match(r"a training step with data.batch_size = 4 does not fit in memory on \S+ \(", message), message
    assert said in message and hint in message and "\n" not in message


def test_another_runtime_error_in_a_step_is_not_called_out_of_memory(half_bad_shard, tmp_path, monkeypatch):
    monkeypatch.setitem(objectives.OBJECTIVES, "clip",
                        lambda **kw: _Allocates(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), **kw))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        train(_short_cfg(half_bad_shard), tmp_path / "run")


def test_ranges_and_types_agree():
    hints = {key: tp for key, tp, *_ in leaf_fields(TrainConfig)}
    for key, allowed in RANGES.items():
        assert hints[key] in NUMERIC, key
        if typing.get_origin(hints[key]) is None and hints[key] is int:
            assert allowed.lo == -math.inf or float(allowed.lo).is_integer(), key


def test_a_tower_setting_the_model_rejects_is_quoted_cut():
    from training.train import build
    cfg = load_config("tiny", ["model.vision.nonsense_" + "y" * 5000 + "=1"])
    with pytest.raises(UserError) as e:
        build(cfg)
    message = str(e.value)
    assert message.startswith("model 'tiny' with vision={'nonsense_yyy") and "unexpected keyword argument" in message
    assert len(message) < 400 and "\n" not in message
