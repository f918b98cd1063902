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
            "checkpoint.every=0", "eval.retrieval=", "eval.zeroshot=", "precision=fp32"]
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
