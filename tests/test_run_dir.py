"""The run directory: a fresh run never mixes into an earlier one, and one trainer at a time writes into it.

Each refusal is one line and exit status 2, and the directory is byte for byte what it was. A lock left by
a run killed with SIGKILL is taken over, so ``--resume auto`` continues it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from mmcontrast.errors import UserError
from training import run_dir
from training.run_dir import LOCK, RunLock, check_run_dir, claim_run_dir, read_holder

from .spawn import run_workers

HOST = socket.gethostname()
TINY = ["--config", "training/configs/tiny.yaml", "data.batch_size=8", "data.workers=1", "data.shuffle_buffer=50",
        "schedule.steps=12", "schedule.warmup=2", "log.every=1", "checkpoint.every=2", "eval.retrieval=",
        "eval.zeroshot=", "eval.compositional=", "precision=fp32"]


def _earlier_run(path: Path) -> Path:
    """What a finished run leaves (its lock file naming a process that is gone), written by hand."""
    for rel, data in {"config.yaml": "model:\n  name: tiny\n", "metrics.jsonl": '{"step": 10, "loss": 2.5}\n',
                      "report.md": "# report\n", "curves.png": "png", "final/open_clip_config.json": "{}",
                      "final/open_clip_model.safetensors": "weights", "checkpoints/step_0000280/state.json": "{}",
                      "checkpoints/step_0000420/state.json": "{}", "checkpoints/step_0000420.tmp/rank0.pt": "x",
                      LOCK: json.dumps({"pid": 2**22 + 1, "host": HOST, "since": "2026-01-01 00:00:00 UTC"})}.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(data)
    return path


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True, timeout=timeout)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_a_fresh_run_into_an_earlier_run_is_refused_and_changes_nothing(tmp_path):
    run = _earlier_run(tmp_path / "run")
    before = _snapshot(run)
    line = _one_line(_cli("--output", str(run), *TINY))
    assert line == (f"error: run directory {run} is not empty (checkpoints/, config.yaml, curves.png, final/, "
                    f"metrics.jsonl, report.md): continue that run with --resume auto, choose another --output "
                    f"or start over with --overwrite")
    assert _snapshot(run) == before


def test_a_fresh_run_into_a_folder_of_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "photos").mkdir()
    line = _one_line(_cli("--output", str(tmp_path), *TINY))
    assert line == f"error: run directory {tmp_path} is not empty (notes.txt, photos/): choose another --output"
    assert _snapshot(tmp_path) == {"notes.txt": b"mine"} and not (tmp_path / LOCK).exists()


def test_overwrite_refuses_a_run_directory_that_holds_other_files_and_deletes_nothing(tmp_path):
    run = _earlier_run(tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "best").mkdir()  # not a name the trainer writes
    before = _snapshot(run)
    line = _one_line(_cli("--output", str(run), "--overwrite", *TINY))
    assert line == (f"error: --overwrite removes only what a run writes, and {run} also holds checkpoints/best, "
                    f"notes.txt: move them away or choose another --output")
    assert _snapshot(run) == before and (run / "checkpoints" / "best").is_dir()


def test_overwrite_removes_exactly_what_a_run_writes(tmp_path):
    run = _earlier_run(tmp_path / "run")
    (run / "final.tmp").mkdir()
    with claim_run_dir(run, None, True, True, lambda refusal: refusal):
        assert sorted(p.name for p in run.iterdir()) == [LOCK]
        assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("args, message", [
    (["--overwrite", "--resume", "auto"], "error: --overwrite starts the run over; it cannot be combined with --resume"),
    ([], "error: --output {out} is a file; a run directory is a folder: choose another --output"),
])
def test_contradictions_are_refused(tmp_path, args, message):
    out = tmp_path / "file"
    out.write_text("mine")
    assert _one_line(_cli("--output", str(out), *args, *TINY)) == message.format(out=out)
    assert out.read_text() == "mine"


def test_an_output_inside_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("mine")
    out = tmp_path / "file" / "run"
    assert _one_line(_cli("--output", str(out), *TINY)) == \
        f"error: --output {out} is inside {tmp_path / 'file'}, which is a file: choose another --output"
    assert (tmp_path / "file").read_text() == "mine"


def test_a_fresh_run_into_a_directory_holding_only_a_stale_lock_starts(tmp_path):
    (tmp_path / LOCK).write_text("{}")
    check_run_dir(tmp_path, None, False)  # the lock file alone is not an earlier run


@contextmanager
def _holder(run: Path):
    """Another process holding the lock on ``run`` until the block ends."""
    code = ("import sys; from pathlib import Path; from training.run_dir import RunLock; "
            "RunLock(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "locked\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _locked_message(run: Path, pid: int) -> str:
    info = json.loads((run / LOCK).read_text())
    assert info["pid"] == pid and info["host"] == HOST
    return (f"run directory {run} is in use by pid {pid} on {HOST} since {info['since']} ({run / LOCK}): "
            f"wait for that run to end or stop it, or choose another --output")


def _claim_on_every_rank(rank: int, world: int, run: Path):
    import torch.distributed as dist

    def share(value):
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    try:
        with claim_run_dir(run, "auto", False, rank == 0, share):
            # rank 1, another process, sees rank 0's lock: rank 0 holds it until rank 1 has looked
            seen = read_holder(run) if rank == 1 else f"pid {os.getpid()} on {HOST} since"
            dist.barrier()
            return "inside", seen
    except UserError as e:
        return "error", str(e)
    except SystemExit as e:
        return "exit", e.code


def _both_claims(rank: int, world: int, free: Path, busy: Path) -> list:
    return [_claim_on_every_rank(rank, world, free), _claim_on_every_rank(rank, world, busy)]


def test_every_process_of_a_launch_learns_the_main_process_outcome(tmp_path):
    free, busy = tmp_path / "free", tmp_path / "busy"
    with _holder(busy) as pid:
        (free_0, busy_0), (free_1, busy_1) = run_workers(_both_claims, 2, free, busy)
        assert busy_0 == ("error", _locked_message(busy, pid)) and busy_1 == ("exit", 2)
    assert free_0[0] == free_1[0] == "inside" and free_1[1].startswith(free_0[1])


def test_without_file_system_locks_the_pid_in_the_file_decides(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(run_dir.fcntl, "lockf", no_locks)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": HOST, "since": "then"}))
        with pytest.raises(UserError, match=f"is in use by pid {sleeper.pid} on {HOST} since then"):
            RunLock(tmp_path)
        (tmp_path / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": "elsewhere", "since": "then"}))
        with pytest.raises(UserError, match=f"in use by pid {sleeper.pid} on elsewhere"):  # cannot tell: refused
            RunLock(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    (tmp_path / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": HOST, "since": "then"}))
    RunLock(tmp_path).release()  # that process is gone: taken over
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()


def _logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.is_file() else []
    return [r["step"] for r in map(json.loads, lines) if "grad_norm" in r]


def test_a_second_trainer_is_refused_while_one_runs_and_a_killed_runs_lock_is_taken_over(small_demo, tmp_path):
    from training.config import load_config
    from training.train import train
    run = tmp_path / "run"
    overrides = [f"data.train={small_demo / 'train'}", *TINY[2:], "schedule.steps=400"]
    args = ["--config", TINY[1], "--output", str(run), *overrides]
    first = subprocess.Popen([sys.executable, "-m", "training", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while max(_logged_steps(run), default=0) < 3:
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.time() < deadline, "the first run logged no step in time"
            time.sleep(0.05)
        message = _locked_message(run, first.pid)
        for extra in (["--resume", "auto"], [], ["--overwrite"]):
            assert _one_line(_cli(*args, *extra)) == f"error: {message}"
        with pytest.raises(UserError) as refused:  # the lock itself, past the program's early look
            train(load_config(TINY[1], overrides), run, resume="auto")
        assert str(refused.value) == message
        assert first.poll() is None  # all the while
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert (run / "checkpoints").is_dir()  # --overwrite deleted nothing
    assert json.loads((run / LOCK).read_text())["pid"] == first.pid  # left behind by the killed run
    step = int(sorted((run / "checkpoints").glob("step_???????"))[-1].name[5:])
    train(load_config(TINY[1], overrides), run, resume="auto", stop_after=step + 1)  # taken over
    assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
    assert (run / "checkpoints" / f"step_{step + 1:07d}" / "state.json").is_file()


def test_links_are_never_what_a_run_wrote(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("mine")
    run = _earlier_run(tmp_path / "run")
    shutil.rmtree(run / "final")
    (run / "final").symlink_to(mine)
    with pytest.raises(UserError, match=r"also holds final/: move them away"):
        check_run_dir(run, None, True)
    (run / "final").unlink()
    (run / LOCK).unlink()
    (run / LOCK).symlink_to(mine / "precious.txt")
    with pytest.raises(UserError, match=f"cannot read the lock file {run / LOCK}"):
        check_run_dir(run, "auto", False)
    with pytest.raises(UserError, match=f"cannot write into run directory {run}"):
        RunLock(run)
    assert (mine / "precious.txt").read_text() == "mine"
