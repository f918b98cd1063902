"""Step checkpoints: the full training state, written atomically and verified, the last K kept.

```
checkpoints/step_0000200/
  model.safetensors   weights (OpenCLIP key names)
  optimizer.pt        optimizer state            scheduler.pt   scheduler state
  scaler.pt           the fp16 loss scaler's state (fp16 runs only)
  rank0.pt ...        per-process RNG states and data position
  objective.safetensors  an objective's own state when it has one (momentum teacher, queues)
  state.json          step, world size, config, and every other file's size and blake2b hash — written last
```
All processes write into ``step_XXXXXXX.tmp``. Rank 0 renames it — the name without ``.tmp`` is what makes
a checkpoint complete — only when every rank is done and every file is flushed to disk and reads back as it
was written (``mmcontrast.durable.write_verified``). A state holding NaN or inf in any floating tensor of the
model, optimizer or objective is never saved: resuming it would train nothing. A run killed mid-write (or a
machine that crashes) leaves only a ``.tmp`` directory, which resume ignores and the next save replaces; a
write that fails (a full disk) removes it and says how far it got; the checkpoints before it stay.

Resuming verifies first: state.json parses and records the files a checkpoint must hold, each with the size
and hash it has on disk; ``--resume auto`` takes the newest checkpoint that verifies and says which newer ones
it skipped and why. A checkpoint written before hashes were recorded is verified by loading every file
(safetensors headers checked against the file size, torch files through ``weights_only``) and checking that
its model and optimizer tensors are finite.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save as safetensors_bytes

from mmcontrast.durable import Tally, file_digest, fsync, write_verified
from mmcontrast.errors import UserError
from mmcontrast.model_files import list_names, read_json_object, read_state_dict
from mmcontrast.objectives import Objective

STATE = "state.json"
MAX_STATE_BYTES = 16 * 2**20  # step, world size, config and a line per file: kilobytes in any real run
MAX_PROCESSES = 2**16  # bounds the rank files a state.json can make us look for
REQUIRED = ("model.safetensors", "optimizer.pt", "scheduler.pt")  # and rank{i}.pt for every process
OPTIONAL = ("scaler.pt", "objective.safetensors")
NAME = re.compile(r"step_(\d{7})")
RANK_FILE = re.compile(r"rank\d{1,5}\.pt")
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


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


def _floating(value, name: str, out: list) -> list[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) of every floating tensor in nested dicts and lists."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            out.append((name, value))
    elif isinstance(value, dict):
        for k, v in value.items():
            _floating(v, f"{name}.{k}", out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _floating(v, f"{name}.{i}", out)
    return out


def _finite(t: torch.Tensor) -> bool:
    # A finite sum proves every element finite (NaN and inf propagate through it) at a fraction of isfinite's
    # cost; a sum that overflowed is settled element by element.
    t = t.detach()
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def nonfinite(states: dict) -> tuple[list[str], int]:
    """Names of the floating tensors holding NaN or inf in ``{"model": state_dict, "optimizer": ...}``
    (``model.visual.conv1.weight``, ``optimizer.state.3.exp_avg``), and how many floating tensors there are."""
    tensors = _floating(states, "", [])
    return [name[1:] for name, t in tensors if not _finite(t)], len(tensors)


def _training_state(model, optimizer, objective: Objective | None) -> dict:
    states = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    objective_state = {} if objective is None else objective.checkpoint_state()
    if objective_state:
        states["objective"] = objective_state
    return states


def _tensor_bytes(value) -> int:
    return sum(t.numel() * t.element_size() for _, t in _floating(value, "", [])) if value is not None else 0


def save_checkpoint(ckpt_dir: Path, step: int, model: torch.nn.Module, optimizer, scheduler,
                    loader_state: dict, rank: int, world_size: int, barrier: Callable[[], None],
                    keep: int, config: dict | None = None, objective: Objective | None = None, scaler=None) -> Path:
    """Collective: every process calls it; returns the final path.

    Raises ``UserError``, with nothing saved and the checkpoints before kept, when the state holds NaN or inf
    (every process holds the same copy, so all refuse alike) or when a file cannot be written (a full disk).
    """
    final, tmp = ckpt_dir / f"step_{step:07d}", ckpt_dir / f"step_{step:07d}.tmp"
    states = _training_state(model, optimizer, objective)
    bad, total = nonfinite(states)
    if bad:
        raise UserError(f"step {step}: {len(bad)} of the {total} tensors of the training state hold NaN or inf "
                        f"({list_names(bad)}), so it is not saved as a checkpoint; "
                        f"{last_complete(ckpt_dir, step - 1)}; lower optim.lr and train into a new --output "
                        f"(resuming repeats the same steps)")
    tally = Tally()
    if rank == 0:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        except OSError as e:
            raise _write_failed(e, tmp, tally, _tensor_bytes(states), ckpt_dir, step) from None
    barrier()
    try:
        own = {"rng": _rng_state(), "loader": loader_state}
        # flushed and verified by its writer: on storage shared by nodes, only it can
        write_verified(tmp / f"rank{rank}.pt", lambda f: torch.save(own, f), tally)
        if rank == 0:
            files = _write_main_files(tmp, states, scheduler, scaler, tally)
    except OSError as e:
        raise _write_failed(e, tmp, tally, _tensor_bytes(states), ckpt_dir, step, remove=rank == 0) from None
    barrier()
    if rank == 0:
        try:
            for r in range(world_size):
                size, digest = file_digest(tmp / f"rank{r}.pt")
                files[f"rank{r}.pt"] = {"bytes": size, "blake2b": digest}
            state = json.dumps({"step": step, "world_size": world_size, "config": config, "files": files}).encode()
            write_verified(tmp / STATE, lambda f: f.write(state), tally)
            fsync(tmp)  # its entries on disk before the name says complete (mmcontrast.durable)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            fsync(ckpt_dir)
        except OSError as e:
            raise _write_failed(e, tmp, tally, _tensor_bytes(states), ckpt_dir, step) from None
        _prune(ckpt_dir, step, keep)
    barrier()
    return final


def _write_main_files(tmp: Path, states: dict, scheduler, scaler, tally: Tally) -> dict:
    """Rank 0's files, each verified; {name: {"bytes", "blake2b"}}."""
    model = {k: v.detach().cpu().contiguous() for k, v in states["model"].items()}
    data = safetensors_bytes(model)  # the file's bytes in memory once (a copy of the weights), hashed as written
    files = {"model.safetensors": write_verified(tmp / "model.safetensors", lambda f: f.write(data), tally)}
    del data
    pickled = {"optimizer.pt": states["optimizer"], "scheduler.pt": scheduler.state_dict()}
    if scaler is not None:
        pickled["scaler.pt"] = scaler.state_dict()
    for name, value in pickled.items():
        files[name] = write_verified(tmp / name, lambda f: torch.save(value, f), tally)
    if "objective" in states:
        objective = {k: v.detach().cpu().contiguous().clone() for k, v in states["objective"].items()}
        data = safetensors_bytes(objective)
        files["objective.safetensors"] = write_verified(tmp / "objective.safetensors", lambda f: f.write(data),
                                                        tally)
    return files


def _write_failed(error: OSError, tmp: Path, tally: Tally, needed: int, ckpt_dir: Path, step: int,
                  remove: bool = True) -> UserError:
    """The one line for a checkpoint that could not be written, its ``.tmp`` removed first (by rank 0)."""
    if remove:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        free = f"{shutil.disk_usage(ckpt_dir).free:,} bytes are free there"
    except OSError:
        free = "the free space there is unknown"
    what = error.strerror or str(error)
    return UserError(f"cannot write checkpoint file {tally.file or tmp} ({what}): {tally.bytes:,} of the about "
                     f"{needed:,} bytes a checkpoint needs were written and {free}; "
                     f"{tmp.name} {'removed' if remove else 'left (resume ignores it, the next save replaces it)'}, "
                     f"{last_complete(ckpt_dir, step - 1)}; free space (or lower checkpoint.keep) and continue "
                     f"with --resume auto")


def _prune(ckpt_dir: Path, step: int, keep: int) -> None:
    """Keep ``keep`` checkpoints up to ``step``: the one just written and the newest before it. Newer ones (left
    by a run resumed from an earlier checkpoint) are not counted, so the one just written is never deleted."""
    if keep <= 0:
        return
    older = [p for p in complete_checkpoints(ckpt_dir) if _step_of(p) < step]
    for old in older[:max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def _step_of(path: Path) -> int:
    return int(NAME.fullmatch(path.name)[1])


def checkpoint_dirs(ckpt_dir: Path) -> list[Path]:
    """Every ``step_XXXXXXX`` directory (no ``.tmp``), oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if NAME.fullmatch(p.name) and p.is_dir())


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    return [p for p in checkpoint_dirs(ckpt_dir) if (p / STATE).is_file()]


def latest_checkpoint(ckpt_dir: Path, upto: int | None = None) -> Path | None:
    """The newest complete checkpoint (of a step ``upto`` or before, when given)."""
    found = [p for p in complete_checkpoints(ckpt_dir) if upto is None or _step_of(p) <= upto]
    return found[-1] if found else None


def last_complete(ckpt_dir: Path, upto: int | None = None) -> str:
    """What a message says of the checkpoint a stopped run leaves: the one that exists, or that there is none."""
    latest = latest_checkpoint(ckpt_dir, upto)
    return f"the last complete checkpoint, {latest}, is kept" if latest else "there is no complete checkpoint"


def verify_checkpoint(path: Path) -> dict:
    """The parsed state.json of a checkpoint whose files are all there and intact; ``UserError`` saying what is
    wrong otherwise. Reads every file once (hashes, or the whole load of a checkpoint without them)."""
    if not (path / STATE).is_file():
        raise UserError(f"{path} has no {STATE} (not a checkpoint)")
    state = read_json_object(path / STATE, MAX_STATE_BYTES)
    step, world = state.get("step"), state.get("world_size")
    if type(step) is not int or step < 0:
        raise UserError(f"{path / STATE} gives no step (a whole number, 0 or more)")
    if type(world) is not int or not 1 <= world <= MAX_PROCESSES:
        raise UserError(f"{path / STATE} gives no world_size (a whole number from 1 to {MAX_PROCESSES:,})")
    if not isinstance(state.get("config"), (dict, type(None))):
        raise UserError(f"{path / STATE} holds a config that is not a mapping")
    named = NAME.fullmatch(path.name)
    if named and int(named[1]) != step:
        raise UserError(f"{path / STATE} says step {step}, but the directory is {path.name}")
    needed = [*REQUIRED, *(f"rank{r}.pt" for r in range(world))]
    if "files" in state:
        _verify_recorded(path, state["files"], needed)
    else:
        _verify_by_loading(path, needed)
    return state


def _verify_recorded(path: Path, files, needed: list[str]) -> None:
    """Every file state.json records is there with its size and hash; sizes first, so a truncated file is found
    without reading the others."""
    if not isinstance(files, dict) or not all(_file_entry_ok(r) for r in files.values()):
        raise UserError(f"{path / STATE}: its files entry is not a map of names to sizes and blake2b hashes")
    unknown = [n[:100] for n in files if n not in REQUIRED + OPTIONAL and not RANK_FILE.fullmatch(n)]
    if unknown:
        raise UserError(f"{path / STATE} records files no checkpoint holds: {list_names(unknown)}")
    missing = [n for n in needed if n not in files]
    if missing:
        raise UserError(f"{path / STATE} records no {list_names(missing)}")
    for name, record in files.items():
        if not (path / name).is_file():
            raise UserError(f"{path / name} is missing")
        size = (path / name).stat().st_size
        if size != record["bytes"]:
            raise UserError(f"{path / name} is {size:,} bytes, but {STATE} records {record['bytes']:,} "
                            f"(truncated or replaced since it was written)")
    for name, record in files.items():
        try:
            _, digest = file_digest(path / name)
        except OSError as e:
            raise UserError(f"cannot read {path / name}: {e.strerror}") from None
        if digest != record["blake2b"]:
            raise UserError(f"{path / name} does not match the blake2b hash {STATE} records (changed since it "
                            f"was written)")


def _file_entry_ok(record) -> bool:
    return (isinstance(record, dict) and type(record.get("bytes")) is int and record["bytes"] >= 0
            and isinstance(record.get("blake2b"), str) and bool(HEX_DIGEST.fullmatch(record["blake2b"])))


def _verify_by_loading(path: Path, needed: list[str]) -> None:
    """A checkpoint written before hashes were recorded: every file loads, model and optimizer are finite."""
    loaded = {}
    for name in [*needed, *(n for n in OPTIONAL if (path / n).is_file())]:
        if not (path / name).is_file():
            raise UserError(f"{path / name} is missing")
        loaded[name] = _read(path / name)
    bad, total = nonfinite({"model": loaded["model.safetensors"], "optimizer": loaded["optimizer.pt"]})
    if bad:
        raise UserError(f"{len(bad)} of the {total} tensors in {path} hold NaN or inf ({list_names(bad)}); it "
                        f"was written before checkpoints were checked for them")


def _read(path: Path):
    """A checkpoint file's contents, or ``UserError`` for one that is truncated or corrupt."""
    if path.suffix == ".safetensors":
        return read_state_dict(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, KeyError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{path} is truncated or corrupt ({reason})") from None


def resume_checkpoint(resume: str, ckpt_dir: Path, log: Callable[[str], None]) -> Path | None:
    """The verified checkpoint ``--resume`` means: a path, or for ``auto`` the newest one in ``ckpt_dir`` that
    verifies (``log`` gets a line for each newer one skipped), None when ``ckpt_dir`` holds none at all."""
    if resume != "auto":
        try:
            verify_checkpoint(Path(resume))
        except UserError as e:
            raise UserError(f"--resume {resume}: not a checkpoint to continue from: {e}") from None
        return Path(resume)
    found = checkpoint_dirs(ckpt_dir)
    for path in reversed(found):
        try:
            verify_checkpoint(path)
            return path
        except UserError as e:
            log(f"--resume auto: skipped {path.name}: {e}")
    if found:
        raise UserError(f"--resume auto: none of the {len(found)} checkpoints in {ckpt_dir} verifies (each is "
                        f"named above with what is wrong); continue a copy with --resume PATH, or train into a "
                        f"new --output")
    return None


# Settings that do not change what is learned, so a resumed run may change them.
FREE_TO_CHANGE = ("eval.", "log.", "checkpoint.", "data.workers", "data.max_bad_fraction")


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


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, rank: int,
                    world_size: int, config: dict | None = None, objective: Objective | None = None,
                    scaler=None) -> tuple[int, dict]:
    """Restore weights, optimizer, scheduler and this rank's RNG; returns (step, loader state).

    ``config``: the run's config; a checkpoint written under different training settings is refused,
    since continuing it would silently mix two runs.
    """
    state = read_json_object(path / STATE, MAX_STATE_BYTES)
    if state.get("world_size") != world_size:
        raise UserError(f"{path} was written by {state.get('world_size')} processes; resume it with the same "
                        f"number (got {world_size}) to continue exactly")
    if config is not None and isinstance(state.get("config"), dict):
        changes = [c for c in config_changes(state["config"], config) if not c.startswith(FREE_TO_CHANGE)]
        if changes:
            raise UserError(f"{path} was written with different settings ({'; '.join(changes)}); resume with "
                            f"the same config, or train into a new --output")
    model.load_state_dict(_read(path / "model.safetensors"))
    optimizer.load_state_dict(_read(path / "optimizer.pt"))
    scheduler.load_state_dict(_read(path / "scheduler.pt"))
    if scaler is not None and (path / "scaler.pt").is_file():
        scaler.load_state_dict(_read(path / "scaler.pt"))
    if objective is not None and objective.checkpoint_state():
        objective.load_checkpoint_state(_read(path / "objective.safetensors"))
    own = _read(path / f"rank{rank}.pt")
    _set_rng_state(own["rng"])
    return state["step"], own["loader"]
