"""Step checkpoints: the full training state, written atomically, the last K kept.

```
checkpoints/step_0000200/
  model.safetensors   weights (OpenCLIP key names)
  optimizer.pt        optimizer state            scheduler.pt   scheduler state
  scaler.pt           the fp16 loss scaler's state (fp16 runs only)
  rank0.pt ...        per-process RNG states and data position
  objective.safetensors  an objective's own state when it has one (momentum teacher, queues)
  state.json          step, world size, config — written last; its presence marks the checkpoint complete
```
All processes write into ``step_XXXXXXX.tmp``; rank 0 renames it when every rank is done and every file
is flushed to disk, so a run killed mid-write (or a machine that crashes) leaves only a ``.tmp``
directory, which resume ignores and the next save replaces.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from mmcontrast.durable import fsync, fsync_tree
from mmcontrast.errors import UserError

STATE = "state.json"


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_dir: Path, step: int, model: torch.nn.Module, optimizer, scheduler,
                    loader_state: dict, rank: int, world_size: int, barrier: Callable[[], None],
                    keep: int, config: dict | None = None, objective=None, scaler=None) -> Path:
    """Collective: every process calls it; returns the final path."""
    final = ckpt_dir / f"step_{step:07d}"
    tmp = ckpt_dir / f"step_{step:07d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save({"rng": _rng_state(), "loader": loader_state}, tmp / f"rank{rank}.pt")
    fsync(tmp / f"rank{rank}.pt")  # by its writer: on storage shared by nodes, only it can flush it
    if rank == 0:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        if _has_state(objective):
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in objective.state_dict().items()},
                      str(tmp / "objective.safetensors"))
    barrier()
    if rank == 0:
        (tmp / STATE).write_text(json.dumps({"step": step, "world_size": world_size, "config": config}))
        fsync_tree(tmp)  # on disk before the name says complete (mmcontrast.durable)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync(ckpt_dir)
        for old in sorted(complete_checkpoints(ckpt_dir))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("step_*") if p.suffix != ".tmp" and (p / STATE).is_file())


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = complete_checkpoints(ckpt_dir)
    return found[-1] if found else None


# Settings that do not change what is learned, so a resumed run may change them.
FREE_TO_CHANGE = ("eval.", "log.", "checkpoint.", "data.workers")


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old → new`` for every setting that differs between two config dicts."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} → {b!r}")
    return changes


def _has_state(objective) -> bool:
    return isinstance(objective, torch.nn.Module) and bool(objective.state_dict())


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, rank: int,
                    world_size: int, config: dict | None = None, objective=None, scaler=None) -> tuple[int, dict]:
    """Restore weights, optimizer, scheduler and this rank's RNG; returns (step, loader state).

    ``config``: the run's config; a checkpoint written under different training settings is refused,
    since continuing it would silently mix two runs.
    """
    state = json.loads((path / STATE).read_text())
    if state["world_size"] != world_size:
        raise UserError(f"{path} was written by {state['world_size']} processes; resume it with the same "
                           f"number (got {world_size}) to continue exactly")
    if config is not None and state.get("config") is not None:
        changes = [c for c in config_changes(state["config"], config) if not c.startswith(FREE_TO_CHANGE)]
        if changes:
            raise UserError(f"{path} was written with different settings ({'; '.join(changes)}); resume with "
                            f"the same config, or train into a new --output")
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if scaler is not None and (path / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    if _has_state(objective):
        objective.load_state_dict(load_file(str(path / "objective.safetensors")))
    own = torch.load(path / f"rank{rank}.pt", weights_only=True)
    _set_rng_state(own["rng"])
    return state["step"], own["loader"]
