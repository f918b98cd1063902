"""A run killed with SIGKILL and resumed with ``--resume auto`` ends bit-identical to an uninterrupted run.

Both runs go through the command line, one and two processes (``accelerate launch``, gloo on the CPU).
The kill lands wherever the run happens to be — mid-step, mid-checkpoint-write — once it has logged a
step past the first checkpoint; resume continues from the last complete checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

STEPS, KILL_AFTER = 8, 5


def _command(small_demo, out: Path, processes: int, *extra) -> list[str]:
    launch = [sys.executable, "-m", "training"]
    if processes > 1:
        launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
                  str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "-m", "training"]
    return [*launch, "--config", "training/configs/tiny.yaml", "--output", str(out),
            f"data.train={small_demo / 'train'}", "data.batch_size=8", "data.workers=2", "data.shuffle_buffer=50",
            f"schedule.steps={STEPS}", "schedule.warmup=2", "log.every=1", "checkpoint.every=2",
            "checkpoint.keep=2", "eval.retrieval=", "eval.zeroshot=", "eval.compositional=", "precision=fp32", *extra]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")[:-1]  # a line is complete once its newline is written
    return [r["step"] for r in map(json.loads, lines) if "grad_norm" in r]


def _kill_midway(cmd: list[str], run: Path, after: int = KILL_AFTER) -> None:
    """Start the run in its own process group and SIGKILL the whole group once step ``after`` is logged."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while max(_logged_steps(run), default=0) < after:
        assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "the run logged no step in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "final").exists()


@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_then_resume_equals_the_uninterrupted_run(small_demo, tmp_path, processes):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(_command(small_demo, whole, processes))
    _kill_midway(_command(small_demo, killed, processes), killed)
    _run(_command(small_demo, killed, processes, "--resume", "auto"))
    # the resumed run logged every step again from its checkpoint on, with the world size asked for
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert {r["world_size"] for r in records if "grad_norm" in r} == {processes}
    assert _logged_steps(killed)[-1] == STEPS
    ref = load_file(str(whole / "final" / "open_clip_model.safetensors"))
    got = load_file(str(killed / "final" / "open_clip_model.safetensors"))
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    kept = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert kept == [f"step_{STEPS - 2:07d}", f"step_{STEPS:07d}"]  # the last two, no leftover .tmp


def test_sigkill_then_broken_newest_checkpoints_resume_falls_back_and_ends_identical(small_demo, tmp_path):
    """Killed after step 7, then the newest checkpoint's weights cut to a third and the one before it given a
    garbage state.json: --resume auto skips both, a line each saying why, continues from the third newest and
    ends bit-identical to the uninterrupted run."""
    steps, extra = 10, ["schedule.steps=10", "checkpoint.keep=3"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(_command(small_demo, whole, 1, *extra))
    _kill_midway(_command(small_demo, killed, 1, *extra), killed, after=7)
    done = sorted(p for p in (killed / "checkpoints").iterdir() if p.suffix != ".tmp")
    assert [p.name for p in done] in (["step_0000002", "step_0000004", "step_0000006"],
                                      ["step_0000004", "step_0000006", "step_0000008"])
    third, second, newest = done
    weights = newest / "model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size // 3)
    (second / "state.json").write_text("garbage")
    proc = subprocess.run(_command(small_demo, killed, 1, *extra, "--resume", "auto"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = int(third.name.removeprefix("step_"))
    assert proc.stdout.splitlines()[:3] == [
        f"--resume auto: skipped {newest.name}: {weights} is {size // 3:,} bytes, but state.json records {size:,} "
        f"(truncated or replaced since it was written)",
        f"--resume auto: skipped {second.name}: {second / 'state.json'} is not valid JSON (Expecting value at line "
        f"1 column 1)",
        f"resumed from {third} at step {step}"]
    assert _logged_steps(killed)[-(steps - step):] == list(range(step + 1, steps + 1))
    ref = load_file(str(whole / "final" / "open_clip_model.safetensors"))
    got = load_file(str(killed / "final" / "open_clip_model.safetensors"))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == [
        "step_0000006", "step_0000008", "step_0000010"]  # the broken ones written again, no .tmp


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return [d for c in children for d in (c, *_descendants(c))]


def test_sigterm_to_every_process_of_a_two_process_launch_with_a_data_worker_ends_in_a_checkpoint(small_demo,
                                                                                                  tmp_path):
    """As a scheduler stops a job: SIGTERM to the launcher, both ranks and their data workers at once. The ranks
    agree on a step, write its checkpoint and exit with status 1, without a traceback. The launcher's own exit is
    accelerate's: from accelerate 1.16 it turns torch elastic's SignalException into status 128 + 15 = 143 with no
    traceback; before, the exception's traceback and status 1 came through."""
    run = tmp_path / "run"
    cmd = _command(small_demo, run, 2, "data.workers=1", "schedule.steps=1000", "checkpoint.every=0")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # ranks on the CPU: Accelerator(cpu=True)
    deadline = time.time() + 240
    while max(_logged_steps(run), default=0) < 2:
        assert proc.poll() is None, f"the run ended before the signal: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "the run logged no step in time"
        time.sleep(0.05)
    everyone = [proc.pid, *_descendants(proc.pid)]
    names = [Path(f"/proc/{p}/comm").read_text().strip() for p in everyone]
    assert names.count("pt_data_worker") == 2, names  # one data worker per rank
    for pid in everyone:
        os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode in (1, 143), err[-3000:]
    saved = sorted((run / "checkpoints").iterdir())
    assert len(saved) == 1, saved
    state = json.loads((saved[0] / "state.json").read_text())
    assert state["world_size"] == 2 and (saved[0] / "rank1.pt").is_file()
    assert f"stopped by signal at step {state['step']}; continue with --resume auto" in out
    assert {r["world_size"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())} == {2}
    assert not [line for line in err.splitlines() if line.startswith("[rank")], err[-3000:]  # a rank's traceback
    assert "DataLoader worker" not in err
    launcher_traceback = f"SignalException: Process {proc.pid} got signal: 15" in err
    assert err.count("Traceback") == (proc.returncode == 1) == launcher_traceback, err[-3000:]
