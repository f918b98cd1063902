"""Faults during training: a non-finite loss skips the step; SIGTERM leaves a checkpoint to resume from."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmcontrast import objectives
from mmcontrast.errors import UserError
from training.config import load_config
from training.train import train

from .test_train import _cfg


class _NanOnCalls(objectives.ClipLoss):
    """InfoNCE whose loss is NaN on the given call numbers."""

    def __init__(self, bad_calls, **kw):
        super().__init__(**kw)
        self.calls, self.bad_calls = 0, bad_calls

    def __call__(self, *args, **kw):
        self.calls += 1
        out = super().__call__(*args, **kw)
        if self.calls in self.bad_calls:
            out["loss"] = out["loss"] * math.nan
        return out


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_non_finite_steps_are_skipped(small_demo, tmp_path, monkeypatch):
    monkeypatch.setitem(objectives.OBJECTIVES, "clip", lambda **kw: _NanOnCalls({3, 4}, **kw))
    cfg = _cfg(small_demo, "schedule.steps=6", "eval.retrieval=", "eval.zeroshot=")
    train(cfg, tmp_path)
    records = _records(tmp_path)
    assert [r["step"] for r in records if "skipped_step" in r] == [2, 2]
    assert [r["step"] for r in records if "grad_norm" in r] == [1, 2, 3, 4, 5, 6]
    from safetensors.torch import load_file
    assert all(torch.isfinite(v).all() for v in load_file(str(tmp_path / "final/open_clip_model.safetensors")).values())


def test_persistent_non_finite_loss_stops_the_run(small_demo, tmp_path, monkeypatch):
    monkeypatch.setitem(objectives.OBJECTIVES, "clip", lambda **kw: _NanOnCalls(set(range(3, 100)), **kw))
    cfg = _cfg(small_demo, "schedule.steps=20", "checkpoint.every=2", "eval.retrieval=", "eval.zeroshot=")
    with pytest.raises(UserError, match="loss was not finite for 5 steps in a row at step 2"):
        train(cfg, tmp_path)
    assert (tmp_path / "checkpoints" / "step_0000002" / "state.json").is_file()


def test_sigterm_saves_a_checkpoint_and_resume_finishes(small_demo, tmp_path):
    args = [sys.executable, "-m", "training", "--config", "training/configs/tiny.yaml", "--output", str(tmp_path),
            f"data.train={small_demo / 'train'}", "data.batch_size=16", "schedule.steps=400", "log.every=1",
            "checkpoint.every=0", "eval.retrieval=", "eval.zeroshot=", "eval.compositional=", "precision=fp32"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    saved = sorted((tmp_path / "checkpoints").iterdir())
    assert len(saved) == 1 and (saved[0] / "state.json").is_file()
    step = json.loads((saved[0] / "state.json").read_text())["step"]
    assert 3 <= step < 400
    cfg = load_config("training/configs/tiny.yaml", args[args.index(str(tmp_path)) + 1:])
    train(cfg, tmp_path, resume="auto", stop_after=step + 2)  # continues the same run for two more steps
    resumed = [r["step"] for r in _records(tmp_path) if "grad_norm" in r]
    assert resumed[-3:] == [step, step + 1, step + 2]
    assert (tmp_path / "checkpoints" / f"step_{step + 2:07d}" / "state.json").is_file()


@pytest.fixture()
def faulty_shards(tmp_path: Path) -> Path:
    """Two shards of 40 samples: 3 corrupt JPEGs in each, 3 samples without a caption in a.tar; b.tar is
    truncated in the middle of its sample 36. Per pass: 67 usable samples, 9 bad ones, 1 truncated shard."""
    from data_prep.writer import write_shard

    from .test_loader import _good, _jpeg
    for name, base in (("a", 0), ("b", 100)):
        samples = [_good(base + i) for i in range(40)]
        for j in (3, 11, 19):
            samples[j] = {"__key__": f"corrupt{base + j}", "jpg": _jpeg(base + j)[:80], "txt": "a broken image"}
        if name == "a":
            for j in (5, 13, 21):
                samples[j] = {"__key__": f"nocaption{j}", "jpg": _jpeg(j)}
        write_shard(tmp_path / f"{name}.tar", samples)
    data = (tmp_path / "b.tar").read_bytes()
    (tmp_path / "b.tar").write_bytes(data[:data.index(b"k0136.jpg") + 512 + 100])
    return tmp_path


def _faulty_cfg(shards: Path, *extra):
    return load_config("training/configs/tiny.yaml", [
        f"data.train={shards}/{{a,b}}.tar", "data.batch_size=8", "data.workers=1", "data.shuffle_buffer=0",
        "schedule.steps=40", "log.every=5", "checkpoint.every=0", "eval.retrieval=", "eval.zeroshot=",
        "eval.compositional=", "precision=fp32", *extra])


def test_broken_samples_and_shards_are_skipped_counted_and_reported(faulty_shards, tmp_path):
    train(_faulty_cfg(faulty_shards, "data.max_bad_fraction=0.2"), tmp_path / "run")
    records = [r for r in _records(tmp_path / "run") if "grad_norm" in r]
    assert records[-1]["step"] == 40 and records[-1]["samples_read"] == 320
    counts = records[-1]["skipped_samples"]
    # 320 usable samples are 4.8 passes, each skipping 6 corrupt images and 3 missing captions before its
    # last usable sample, and a truncated shard at its very end — not yet reached in the fifth pass, whose
    # (seeded) shard order reads b.tar last
    assert counts == {"corrupt_image": 30, "missing_caption": 15, "truncated_shard": 4}, counts
    meta = json.loads((tmp_path / "run" / "final" / "mmcontrast.json").read_text())
    assert meta["skipped_samples"] == counts
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"corrupt_image {counts['corrupt_image']}, missing_caption {counts['missing_caption']}" in report


def test_too_many_bad_samples_stop_the_run(faulty_shards, tmp_path):
    with pytest.raises(UserError, match=r"were unusable, more than data.max_bad_fraction = 0.05"):
        train(_faulty_cfg(faulty_shards, "data.max_bad_fraction=0.05"), tmp_path / "run")
    assert not (tmp_path / "run" / "final").exists()


@pytest.fixture()
def infinite_lr(monkeypatch):
    """The trainer's optimizer with lr = inf, as `optim.lr=inf` gave before the config refused it: the first
    step makes every parameter but the clamped logit scale non-finite."""
    import training.train
    real = training.train.make_optimizer

    def make_optimizer(*args, **kwargs):
        optimizer = real(*args, **kwargs)
        for group in optimizer.param_groups:
            group["lr"] = math.inf
        return optimizer
    monkeypatch.setattr(training.train, "make_optimizer", make_optimizer)


def test_a_model_gone_non_finite_is_never_saved_as_a_checkpoint(small_demo, tmp_path, infinite_lr):
    import mmcontrast as mc
    model = mc.create_model("tiny", seed=0)
    floats = sum(t.is_floating_point() for t in model.state_dict().values())
    total = floats + 3 * sum(p.requires_grad for p in model.parameters())  # and Adam's two moments and step
    cfg = _cfg(small_demo, "schedule.steps=6", "checkpoint.every=1", "eval.retrieval=", "eval.zeroshot=")
    with pytest.raises(UserError) as stopped:
        train(cfg, tmp_path)
    assert str(stopped.value).startswith(f"step 1: {floats - 1} of the {total} tensors of the training state hold "
                                         f"NaN or inf (model.")
    assert str(stopped.value).endswith("), so it is not saved as a checkpoint; there is no complete checkpoint; "
                                       "lower optim.lr and train into a new --output (resuming repeats the same "
                                       "steps)")
    assert not (tmp_path / "checkpoints").exists()


def test_the_non_finite_loss_stop_names_the_checkpoint_that_exists_or_says_there_is_none(small_demo, tmp_path,
                                                                                         monkeypatch, infinite_lr):
    cfg = _cfg(small_demo, "schedule.steps=20", "checkpoint.every=0", "eval.retrieval=", "eval.zeroshot=")
    with pytest.raises(UserError) as stopped:
        train(cfg, tmp_path / "none")
    assert str(stopped.value) == ("loss was not finite for 5 steps in a row at step 1; there is no complete "
                                  "checkpoint; lower optim.lr?")
    monkeypatch.undo()
    monkeypatch.setitem(objectives.OBJECTIVES, "clip", lambda **kw: _NanOnCalls(set(range(3, 100)), **kw))
    with pytest.raises(UserError) as stopped:
        train(_cfg(small_demo, "schedule.steps=20", "checkpoint.every=2", "eval.retrieval=", "eval.zeroshot="),
              tmp_path / "two")
    assert str(stopped.value) == (f"loss was not finite for 5 steps in a row at step 2; the last complete "
                                  f"checkpoint, {tmp_path / 'two' / 'checkpoints' / 'step_0000002'}, is kept; "
                                  f"lower optim.lr?")
