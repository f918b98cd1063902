"""A checkpoint is complete only when its state is finite and every file reads back as written; resume
verifies and falls back past broken checkpoints; a failed write (a full disk) leaves no ``.tmp`` and keeps
the checkpoint before it (``training.checkpoint``)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mmcontrast as mc
from mmcontrast.errors import UserError
from training.checkpoint import load_checkpoint, resume_checkpoint, save_checkpoint
from training.config import OptimConfig, ScheduleConfig, load_config
from training.optim import make_optimizer, make_scheduler


@pytest.fixture()
def state():
    """(model, optimizer, scheduler) of the tiny model after one optimizer step (the optimizer holds state)."""
    model = mc.create_model("tiny", seed=0)
    optimizer = make_optimizer(model, OptimConfig())
    scheduler = make_scheduler(optimizer, ScheduleConfig())
    sum((p.float() ** 2).sum() for p in model.parameters()).backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def _save(ckpt: Path, step: int, state, keep: int = 10) -> Path:
    model, optimizer, scheduler = state
    return save_checkpoint(ckpt, step, model, optimizer, scheduler, {"at": step}, 0, 1, lambda: None, keep=keep)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _blake2b(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=32).hexdigest()


def test_state_json_records_the_size_and_hash_of_every_other_file(tmp_path, state):
    path = _save(tmp_path, 3, state)
    recorded = json.loads((path / "state.json").read_text())
    assert recorded["step"] == 3 and recorded["world_size"] == 1
    others = sorted(p.name for p in path.iterdir() if p.name != "state.json")
    assert others == ["model.safetensors", "optimizer.pt", "rank0.pt", "scheduler.pt"]
    assert recorded["files"] == {name: {"bytes": (path / name).stat().st_size, "blake2b": _blake2b(path / name)}
                                 for name in others}


def test_a_state_holding_nan_or_inf_is_never_saved(tmp_path, state):
    model, optimizer, _ = state
    _save(tmp_path, 1, state)
    before = _snapshot(tmp_path)
    first = optimizer.state_dict()["param_groups"][0]["params"][0]
    with torch.no_grad():
        model.logit_scale.fill_(math.nan)
        next(iter(optimizer.state.values()))["exp_avg"].view(-1)[0] = math.inf
    floats = sum(t.is_floating_point() for t in model.state_dict().values()) + 3 * len(optimizer.state)
    with pytest.raises(UserError) as refused:
        _save(tmp_path, 2, state)
    assert str(refused.value) == (
        f"step 2: 2 of the {floats} tensors of the training state hold NaN or inf (model.logit_scale, "
        f"optimizer.state.{first}.exp_avg), so it is not saved as a checkpoint; the last complete checkpoint, "
        f"{tmp_path / 'step_0000001'}, is kept; lower optim.lr and train into a new --output (resuming repeats "
        f"the same steps)")
    assert _snapshot(tmp_path) == before  # no step_0000002, no .tmp


def _broken_checkpoints(tmp_path: Path, state) -> Path:
    """step 1 intact; 2 without rank0.pt; 3 with a changed byte in optimizer.pt; 4 with garbage state.json;
    5 with model.safetensors cut in half."""
    for step in range(1, 6):
        _save(tmp_path, step, state)
    (tmp_path / "step_0000002" / "rank0.pt").unlink()
    optim = tmp_path / "step_0000003" / "optimizer.pt"
    data = bytearray(optim.read_bytes())
    data[len(data) // 2] ^= 1
    optim.write_bytes(bytes(data))
    (tmp_path / "step_0000004" / "state.json").write_bytes(b"\x00garbage{")
    weights = tmp_path / "step_0000005" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:size // 2])
    return tmp_path


def test_resume_auto_takes_the_newest_checkpoint_that_verifies_and_says_what_it_skipped(tmp_path, state):
    ckpt = _broken_checkpoints(tmp_path, state)
    size = json.loads((ckpt / "step_0000005" / "state.json").read_text())["files"]["model.safetensors"]["bytes"]
    lines = []
    assert resume_checkpoint("auto", ckpt, lines.append) == ckpt / "step_0000001"
    assert lines == [
        f"--resume auto: skipped step_0000005: {ckpt}/step_0000005/model.safetensors is {size // 2:,} bytes, but "
        f"state.json records {size:,} (truncated or replaced since it was written)",
        f"--resume auto: skipped step_0000004: {ckpt}/step_0000004/state.json is not valid JSON (Expecting value "
        f"at line 1 column 1)",
        f"--resume auto: skipped step_0000003: {ckpt}/step_0000003/optimizer.pt does not match the blake2b hash "
        f"state.json records (changed since it was written)",
        f"--resume auto: skipped step_0000002: {ckpt}/step_0000002/rank0.pt is missing"]
    model, optimizer, scheduler = state
    step, loader = load_checkpoint(ckpt / "step_0000001", model, optimizer, scheduler, 0, 1)
    assert (step, loader) == (1, {"at": 1})


def test_resume_auto_refuses_when_no_checkpoint_verifies_and_starts_fresh_when_there_is_none(tmp_path, state):
    ckpt = _broken_checkpoints(tmp_path, state)
    (ckpt / "step_0000001" / "state.json").write_text("[]")
    lines = []
    with pytest.raises(UserError) as refused:
        resume_checkpoint("auto", ckpt, lines.append)
    assert str(refused.value) == (f"--resume auto: none of the 5 checkpoints in {ckpt} verifies (each is named "
                                  f"above with what is wrong); continue a copy with --resume PATH, or train into "
                                  f"a new --output")
    assert lines[-1] == f"--resume auto: skipped step_0000001: {ckpt}/step_0000001/state.json holds a JSON list, " \
                        f"not an object"
    assert resume_checkpoint("auto", tmp_path / "none", lines.append) is None and len(lines) == 5


def test_a_checkpoint_without_recorded_hashes_is_verified_by_loading_it(tmp_path, state):
    """Written before state.json recorded hashes: accepted when every file loads and its tensors are finite."""
    for step in (1, 2, 3):
        path = _save(tmp_path, step, state)
        recorded = json.loads((path / "state.json").read_text())
        del recorded["files"]
        (path / "state.json").write_text(json.dumps(recorded))
    weights = tmp_path / "step_0000003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    model = state[0]
    nan = {k: v.clone() for k, v in model.state_dict().items()}
    nan["logit_scale"].fill_(math.nan)
    save_file(nan, str(tmp_path / "step_0000002" / "model.safetensors"))
    lines = []
    assert resume_checkpoint("auto", tmp_path, lines.append) == tmp_path / "step_0000001"
    assert re.fullmatch(rf"--resume auto: skipped step_0000003: truncated safetensors file: {weights} holds "
                        rf"[\d,]+ of [\d,]+ data bytes after its header; copy or save it again", lines[0]), lines[0]
    assert lines[1] == (f"--resume auto: skipped step_0000002: 1 of the "
                        f"{sum(t.is_floating_point() for t in model.state_dict().values()) + 3 * len(state[1].state)} "
                        f"tensors in {tmp_path / 'step_0000002'} hold NaN or inf (model.logit_scale); it was written "
                        f"before checkpoints were checked for them")


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path, state):
    """A run resumed from step 2 (a broken step 5 skipped) keeps what it writes, whatever sorts after it."""
    for step in (1, 2, 5):
        _save(tmp_path, step, state)
    _save(tmp_path, 3, state, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000002", "step_0000003", "step_0000005"]


TINY = ["data.batch_size=8", "data.workers=1", "data.shuffle_buffer=50", "schedule.steps=8", "schedule.warmup=2",
        "log.every=1", "checkpoint.every=2", "eval.retrieval=", "eval.zeroshot=", "eval.compositional=",
        "precision=fp32"]


def _cli(run: Path, *args, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", "--config", "training/configs/tiny.yaml", "--output",
                           str(run), *args], capture_output=True, text=True, timeout=300, preexec_fn=preexec_fn)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line, exit status 2, no traceback; the progress bar (tqdm, carriage returns) aside."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = re.findall(r"error: [^\r\n]*", proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_resume_path_to_a_broken_checkpoint_is_one_line(small_demo, tmp_path, state):
    path = _save(tmp_path / "ckpt", 1, state)
    optim = path / "optimizer.pt"
    size = optim.stat().st_size
    optim.write_bytes(optim.read_bytes()[:1000])
    line = _one_line(_cli(tmp_path / "run", "--resume", str(path), f"data.train={small_demo / 'train'}", *TINY))
    assert line == (f"error: --resume {path}: not a checkpoint to continue from: {optim} is 1,000 bytes, but "
                    f"state.json records {size:,} (truncated or replaced since it was written)")
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


WRITE_LIMIT = 16 * 2**20  # bytes a file may grow to: less than model.safetensors of the tiny model (32 MB)


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (WRITE_LIMIT, WRITE_LIMIT))


def test_a_checkpoint_that_cannot_be_written_leaves_no_tmp_and_keeps_the_one_before(small_demo, tmp_path):
    """As a full disk: the resumed run may write no file over 16 MB, so its checkpoint at step 4 fails."""
    from training.train import train
    run, overrides = tmp_path / "run", [f"data.train={small_demo / 'train'}", *TINY]
    train(load_config("training/configs/tiny.yaml", overrides), run, stop_after=2)
    before = _snapshot(run / "checkpoints")
    line = _one_line(_cli(run, "--resume", "auto", *overrides, preexec_fn=_limit_file_size))
    model = mc.create_model("tiny", seed=0)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.is_floating_point())
    params = sum(p.requires_grad for p in model.parameters())
    needed = 3 * weights + 4 * params  # weights, Adam's two moments, and its step count per parameter
    tmp = run / "checkpoints" / "step_0000004.tmp"
    m = re.fullmatch(
        rf"error: cannot write checkpoint file {tmp}/model\.safetensors \(File too large\): ([\d,]+) of the about "
        rf"{needed:,} bytes a checkpoint needs were written and [\d,]+ bytes are free there; step_0000004\.tmp "
        rf"removed, the last complete checkpoint, {run}/checkpoints/step_0000002, is kept; free space \(or lower "
        rf"checkpoint\.keep\) and continue with --resume auto", line)
    assert m, line
    assert 0 < int(m[1].replace(",", "")) < 100_000  # rank0.pt only: model.safetensors is one write, refused
    assert _snapshot(run / "checkpoints") == before  # step_0000002 byte for byte, no .tmp


@pytest.mark.parametrize("change, why", [
    ({"step": "7"}, "gives no step (a whole number, 0 or more)"),
    ({"world_size": 0}, "gives no world_size (a whole number from 1 to 65,536)"),
    ({"config": [1]}, "holds a config that is not a mapping"),
    ({"step": 2}, "says step 2, but the directory is step_0000001"),
    ({"files": {"model.safetensors": {"bytes": 1}}}, ": its files entry is not a map of names to sizes and "
                                                     "blake2b hashes"),
    ({"files": {"../../x": {"bytes": 1, "blake2b": "0" * 64}}}, "records files no checkpoint holds: ../../x")])
def test_a_state_json_that_does_not_hold_what_it_must_does_not_verify(tmp_path, state, change, why):
    path = _save(tmp_path, 1, state)
    recorded = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**recorded, **change}))
    with pytest.raises(UserError) as refused:
        resume_checkpoint(str(path), tmp_path, print)
    assert str(refused.value) == f"--resume {path}: not a checkpoint to continue from: {path / 'state.json'}" + (
        why if why.startswith(":") else f" {why}")
