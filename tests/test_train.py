"""The trainer: a short run learns; a resumed run ends with the same parameters as an uninterrupted one."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import mmcontrast as mc
from mmcontrast.errors import UserError
from training.config import load_config
from training.train import train


def _cfg(demo, *extra):
    return load_config("training/configs/tiny.yaml", [
        f"data.train={demo / 'train'}", "data.batch_size=32", "data.workers=1", "data.shuffle_buffer=200",
        "schedule.steps=60", "schedule.warmup=10", "optim.lr=1e-3", "log.every=1",
        "checkpoint.every=20", "eval.every=0", f"eval.retrieval={demo / 'retrieval'}",
        f"eval.zeroshot={demo / 'zeroshot'}", "eval.compositional=", "eval.batch_size=64", *extra])


def _losses(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def full_run(small_demo, tmp_path_factory):
    run = tmp_path_factory.mktemp("full")
    result = train(_cfg(small_demo), run)
    return run, result


def test_short_run_learns_and_writes_everything(full_run):
    run, result = full_run
    losses = _losses(run)
    assert len(losses) == 60
    # A collapsed model (all embeddings equal) sits at ln(batch) = 3.47; learning goes well below it.
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < math.log(32) - 0.6 and last < first - 0.6, (first, last)
    for name in ("config.yaml", "metrics.jsonl", "report.md", "curves.png", "final/open_clip_config.json",
                 "final/open_clip_model.safetensors", "final/mmcontrast.json"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000040", "step_0000060"]
    assert set(result) == {"retrieval", "zeroshot"}
    assert result["retrieval"]["images"] == 120 and result["retrieval"]["texts"] == 600
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("loss", "lr", "logit_scale", "grad_norm", "samples_per_s", "data_wait", "skipped_samples"):
        assert key in record


def test_resume_ends_with_identical_parameters(small_demo, tmp_path):
    cfg = _cfg(small_demo, "schedule.steps=12", "checkpoint.every=3", "eval.retrieval=", "eval.zeroshot=")
    train(cfg, tmp_path / "whole")
    train(cfg, tmp_path / "resumed", stop_after=6)            # "killed" after step 6 (checkpointed at 6)
    assert not (tmp_path / "resumed" / "final").exists()
    # a setting that does not change the steps may differ on resume: the bad-fraction limit
    train(_cfg(small_demo, "schedule.steps=12", "checkpoint.every=3", "eval.retrieval=", "eval.zeroshot=",
               "data.max_bad_fraction=0.5"), tmp_path / "resumed", resume="auto")
    ref = load_file(str(tmp_path / "whole" / "final" / "open_clip_model.safetensors"))
    got = load_file(str(tmp_path / "resumed" / "final" / "open_clip_model.safetensors"))
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_weight_decay_groups():
    from training.config import OptimConfig
    from training.optim import param_groups
    model = mc.create_model("tiny", seed=0)
    decay, no_decay = param_groups(model, OptimConfig().weight_decay)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert "logit_scale" in {names[id(p)] for p in no_decay["params"]}
    assert all(p.ndim < 2 or names[id(p)] == "logit_scale" for p in no_decay["params"])


def test_resume_refuses_changed_training_settings(full_run, small_demo):
    run, _ = full_run
    before = (run / "config.yaml").read_text()
    with pytest.raises(UserError, match=r"optim\.lr: 0\.001 → 0\.002.*same config"):
        train(_cfg(small_demo, "optim.lr=2e-3"), run, resume="auto")
    assert (run / "config.yaml").read_text() == before  # the run's record is not overwritten


def test_weighted_resampled_sources_train(small_demo, tmp_path):
    """Two sources (shards 0–5 and 6–7) mixed 1:3 with virtual epochs of 64 samples, through the config."""
    a, b = f"{small_demo}/train/{{000000..000005}}.tar", f"{small_demo}/train/{{000006..000007}}.tar"
    cfg = _cfg(small_demo, f"data.train={a}::{b}", "data.resampled=true", "data.weights=[1, 3]",
               "data.epoch_samples=64", "schedule.steps=4", "eval.retrieval=", "eval.zeroshot=")
    train(cfg, tmp_path)
    assert [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4]


def test_checkpoint_keeps_the_fp16_loss_scaler(tmp_path):
    from training.checkpoint import load_checkpoint, save_checkpoint
    from training.config import OptimConfig, ScheduleConfig
    from training.optim import make_optimizer, make_scheduler
    model = mc.create_model("tiny", seed=0)
    optimizer = make_optimizer(model, OptimConfig())
    scheduler = make_scheduler(optimizer, ScheduleConfig())
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    path = save_checkpoint(tmp_path, 3, model, optimizer, scheduler, {}, 0, 1, lambda: None, keep=2, scaler=scaler)
    fresh = torch.amp.GradScaler("cpu", init_scale=1.0)
    step, _ = load_checkpoint(path, model, optimizer, scheduler, 0, 1, scaler=fresh)
    assert step == 3 and fresh.get_scale() == 512.0 and fresh.get_growth_interval() == 7
