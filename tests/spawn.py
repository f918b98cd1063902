"""Run a function in W real processes joined in a gloo group on 127.0.0.1; collect the results."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_threads() -> list[str]:
    tasks = Path("/proc/self/task")
    names = [(t / "comm").read_text().strip() for t in tasks.iterdir()] if tasks.is_dir() else []
    return [n for n in names if "gloo" in n]


def _entry(rank: int, fn, world: int, port: int, out: str, args: tuple) -> None:
    # open_clip → timm → torch._dynamo imported after the group exists keeps a reference to it, so
    # destroy_process_group leaves its gloo threads running, and about one exit in a hundred then aborts
    # (SIGABRT, "terminate called without an active exception"). The programs import it first too.
    import mmcontrast.model  # noqa: F401
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, world, *args), Path(out) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()
    left = _gloo_threads()
    assert not left, f"rank {rank}: the process group outlived destroy_process_group ({left} still running)"


def run_workers(fn, world: int, *args) -> list:
    """``fn(rank, world, *args)`` in each of ``world`` processes; returns their results in rank order."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_entry, args=(fn, world, _free_port(), out, args), nprocs=world,
                           join=True, start_method="spawn")
        return [torch.load(Path(out) / f"{r}.pt", weights_only=False) for r in range(world)]
