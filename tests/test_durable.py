"""What must never be half-written is flushed to disk before its name appears (``mmcontrast.durable``)."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

import mmcontrast as mc
from data_prep.writer import write_shard
from mmcontrast.durable import Tally, write_verified
from mmcontrast.model_dir import save_model_dir


def _record(monkeypatch) -> list:
    """Paths fsynced, in order, and ("renamed", src, dst) where each rename happens."""
    events, real_fsync = [], os.fsync

    def fsync(fd):
        events.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def recorded(real):
        def rename(src, dst, *args, **kwargs):
            events.append(("renamed", os.path.realpath(src), os.path.realpath(dst)))
            return real(src, dst, *args, **kwargs)
        return rename

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", recorded(os.rename))
    monkeypatch.setattr(os, "replace", recorded(os.replace))
    return events


def _flushed_before_rename(synced: list, tmp: str) -> set:
    """What was fsynced before ``tmp`` was renamed; asserts the new name's directory is fsynced after."""
    i = next(i for i, s in enumerate(synced) if isinstance(s, tuple) and s[1] == tmp)
    parent = os.path.dirname(synced[i][2])
    assert parent in synced[i + 1:], f"{parent} not flushed after the rename"
    return {s for s in synced[:i] if isinstance(s, str)}


def test_checkpoints_model_dirs_and_shards_are_flushed_before_they_are_named(tmp_path, monkeypatch):
    from training.checkpoint import save_checkpoint
    from training.config import OptimConfig, ScheduleConfig
    from training.optim import make_optimizer, make_scheduler
    model = mc.create_model("tiny", seed=0)
    optimizer = make_optimizer(model, OptimConfig())
    scheduler = make_scheduler(optimizer, ScheduleConfig())
    synced = _record(monkeypatch)

    final = save_checkpoint(tmp_path / "ckpt", 3, model, optimizer, scheduler, {}, 0, 1, lambda: None, keep=2)
    flushed = _flushed_before_rename(synced, str(tmp_path / "ckpt" / "step_0000003.tmp"))
    tmp = tmp_path / "ckpt" / "step_0000003.tmp"
    assert {str(tmp / p.name) for p in final.iterdir()} | {str(tmp)} <= flushed
    assert len(list(final.iterdir())) >= 5

    save_model_dir(model, tmp_path / "model")
    flushed = _flushed_before_rename(synced, str(tmp_path / "model.tmp"))
    assert {str(tmp_path / "model.tmp" / p.name) for p in (tmp_path / "model").iterdir()} <= flushed

    write_shard(tmp_path / "000000.tar", [{"__key__": "a", "txt": "x", "jpg": b"\xff\xd8"}])
    assert str(tmp_path / "000000.tar.tmp") in _flushed_before_rename(synced, str(tmp_path / "000000.tar.tmp"))


def test_a_file_that_reads_back_other_than_written_is_refused(tmp_path):
    path, tally = tmp_path / "f", Tally()

    def write_then_cut(f):  # another writer truncates the file between the write and the flush to disk
        f.write(b"0123456789" * 100)
        f.flush()
        os.truncate(path, 10)
    with pytest.raises(OSError) as refused:
        write_verified(path, write_then_cut, tally)
    assert refused.value.errno == errno.EIO and tally.bytes == 1000
    assert refused.value.strerror == f"{path} reads back as 10 bytes that differ from the 1,000 written"
    assert write_verified(path, lambda f: f.write(b"abc")) == {
        "bytes": 3, "blake2b": hashlib.blake2b(b"abc", digest_size=32).hexdigest()}
