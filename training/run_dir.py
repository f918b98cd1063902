"""The run directory: one trainer at a time, and a fresh run never mixes into an old one.

A trainer holds ``RUN/train.lock`` for its whole run: a POSIX record lock (``fcntl.lockf``), which the
OS drops when the process dies, however it dies, and which forked DataLoader workers do not inherit, so a
run killed with SIGKILL leaves nothing that stops ``--resume auto``. The file names the holder (pid, host,
start time) for the message a second trainer prints. Only the main process takes it; every process
learns its outcome (``claim_run_dir``), so all stop alike. Imports no torch: ``check_run_dir`` runs
before the program loads it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mmcontrast.errors import UserError

LOCK = "train.lock"
# Everything a run writes at the top of its directory (file or folder); `--overwrite` removes these only.
RUN_FILES = {"config.yaml": "file", "metrics.jsonl": "file", "report.md": "file", "curves.png": "file",
             LOCK: "file", "checkpoints": "dir", "final": "dir", "final.tmp": "dir", "final.old": "dir"}
CHECKPOINT_NAME = re.compile(r"step_\d{7}(\.tmp)?")  # what checkpoints/ holds (training.checkpoint)
SHOWN = 10  # names listed in a message; the rest counted


def _listing(names: list[str]) -> str:
    more = f", and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _entries(out: Path) -> list[str]:
    """What ``out`` holds (folders with a trailing /), the lock file left out; [] when it does not exist."""
    if not out.exists():
        parent = next((p for p in out.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise UserError(f"--output {out} is inside {parent}, which is a file: choose another --output")
        return []
    if not out.is_dir():
        raise UserError(f"--output {out} is a file; a run directory is a folder: choose another --output")
    try:
        children = sorted(out.iterdir())
    except OSError as e:
        raise UserError(f"cannot read run directory {out}: {e.strerror}") from None
    return [p.name + "/" * p.is_dir() for p in children if p.name != LOCK]


def _foreign(out: Path, entries: list[str]) -> list[str]:
    """The entries of ``out`` a run does not write (a link never is one), and anything in checkpoints/ but
    checkpoints."""
    foreign = []
    for entry in entries:
        name = entry.rstrip("/")
        if RUN_FILES.get(name) != ("dir" if entry.endswith("/") else "file") or (out / name).is_symlink():
            foreign.append(entry)
        elif name == "checkpoints":
            foreign += [f"checkpoints/{p.name}" for p in sorted((out / name).iterdir())
                        if p.is_symlink() or not (p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name))]
    return foreign


def read_holder(out: Path) -> str | None:
    """Who holds the lock on ``out`` ("pid 12 on host since …"), or None when nobody does."""
    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"cannot read the lock file {path}: {e.strerror}") from None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                return _live_holder_without_locks(os.read(fd, 4096))
            return _describe(os.read(fd, 4096))
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)  # drops this process's locks on the file: never called by the holder itself


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        return f"pid {int(info['pid'])} on {str(info['host'])[:64]} since {str(info['since'])[:32]}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no name in it"


def _live_holder_without_locks(raw: bytes) -> str | None:
    """Where the file system has no locks: the holder named in the file, if it runs on this host."""
    try:
        info = json.loads(raw)
        pid, host = int(info["pid"]), str(info["host"])
    except (ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname():
        return _describe(raw)  # cannot tell whether it still runs: assume it does
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return _describe(raw)


def _locked(out: Path, holder: str) -> UserError:
    return UserError(f"run directory {out} is in use by {holder} ({out / LOCK}): wait for that run to end "
                     f"or stop it, or choose another --output")


def check_run_dir(out: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse, before anything is written, a run directory this run must not write into. Reads only."""
    if overwrite and resume:
        raise UserError("--overwrite starts the run over; it cannot be combined with --resume")
    entries = _entries(out)
    holder = read_holder(out)
    if holder:
        raise _locked(out, holder)
    foreign = _foreign(out, entries)
    if overwrite and foreign:
        raise UserError(f"--overwrite removes only what a run writes, and {out} also holds {_listing(foreign)}: "
                        f"move them away or choose another --output")
    if entries and not resume and not overwrite:
        ways = ["continue that run with --resume auto"] if any(e not in foreign for e in entries) else []
        ways.append("choose another --output")
        if not foreign:
            ways.append("start over with --overwrite")
        either = " or ".join(filter(None, [", ".join(ways[:-1]), ways[-1]]))
        raise UserError(f"run directory {out} is not empty ({_listing(entries)}): {either}")


class RunLock:
    """The held lock on a run directory; ``release`` (or the process's end) frees it."""

    def __init__(self, out: Path):
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise UserError(f"cannot write into run directory {out}: {e.strerror}") from None
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            held = e.errno in (errno.EAGAIN, errno.EACCES)  # else a file system without locks (ENOLCK)
            raw = os.pread(self.fd, 4096, 0)
            holder = _describe(raw) if held else _live_holder_without_locks(raw)
            if holder:
                os.close(self.fd)
                raise _locked(out, holder) from None
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, info + b"\n", 0)

    def release(self) -> None:
        os.close(self.fd)  # the file stays: removing it would race a trainer that has just opened it


def remove_run_files(out: Path) -> None:
    """What a previous run wrote into ``out`` (``RUN_FILES``), the lock excepted; checked by ``check_run_dir``."""
    for name, kind in RUN_FILES.items():
        path = out / name
        if name == LOCK or not path.exists():
            continue
        try:
            shutil.rmtree(path) if kind == "dir" else path.unlink()
        except OSError as e:
            raise UserError(f"--overwrite cannot remove {e.filename or path}: {e.strerror}") from None


@contextmanager
def claim_run_dir(out: Path, resume: str | None, overwrite: bool, is_main: bool,
                  share: Callable[[str | None], str | None]) -> Iterator[None]:
    """The run directory, locked by the main process for as long as the block runs.

    Every process calls it; ``share`` hands the main process's outcome to all (a broadcast), so that
    when the main process refuses (its one line), the others stop too, with exit status 2 and no word.
    """
    lock, refusal = None, None
    if is_main:
        try:
            check_run_dir(out, resume, overwrite)
            lock = RunLock(out)
            if overwrite:
                remove_run_files(out)
        except UserError as e:
            if lock:
                lock.release()
                lock = None
            refusal = str(e)
    refusal = share(refusal)
    if refusal:
        if is_main:
            raise UserError(refusal)
        raise SystemExit(2)
    try:
        yield
    finally:
        if lock:
            lock.release()
