"""The model directory: a finished model that OpenCLIP and CLIP_benchmark load unchanged.

```
final/
  open_clip_config.json         {"model_cfg": {...}, "preprocess_cfg": {...}}
  open_clip_model.safetensors   towers, projections, logit_scale (OpenCLIP key names)
  mmcontrast.json               what OpenCLIP does not know: provenance, extras
```
Written into a temporary sibling directory and renamed, so a reader never sees half a model.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import torch
from open_clip.factory import load_checkpoint
from safetensors.torch import save_file

from .errors import UserError
from .model import build_model

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
META_NAME = "mmcontrast.json"


def save_model_dir(model: torch.nn.Module, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model`` as a model directory at ``path`` (replacing it atomically)."""
    path = Path(path)
    tmp = fresh_tmp_dir(path)
    config = {"model_cfg": model.model_cfg, "preprocess_cfg": model.preprocess_cfg}
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_NAME))
    (tmp / META_NAME).write_text(json.dumps({"format": 1, **(meta or {})}, indent=2))
    return replace_dir(tmp, path)


def fresh_tmp_dir(path: Path) -> Path:
    """An empty sibling ``PATH.tmp`` to write into before ``replace_dir``."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, path: Path) -> Path:
    """Move a completely written ``tmp`` to ``path``, replacing what was there by renames only."""
    if path.exists():
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    return path


def is_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / CONFIG_NAME).is_file()


def read_model_dir(path: str | os.PathLike) -> tuple[dict, Path]:
    """(``{"model_cfg", "preprocess_cfg"}``, weights file) of a model directory written here or by open_clip."""
    path = Path(path).expanduser()
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise UserError(f"{path} is not a model directory: {CONFIG_NAME} is missing")
    config = json.loads(config_file.read_text())
    if "model_cfg" not in config:
        raise UserError(f"{config_file} has no 'model_cfg'")
    weights = next((path / n for n in (WEIGHTS_NAME, "open_clip_pytorch_model.bin", "open_clip_model.pt")
                    if (path / n).is_file()), None)
    if weights is None:
        raise UserError(f"{path} holds no weights: expected {WEIGHTS_NAME}")
    return config, weights


def load_model_dir(path: str | os.PathLike) -> torch.nn.Module:
    """A model from a model directory written here or by open_clip (config + weights)."""
    config, weights = read_model_dir(path)
    model = build_model(config["model_cfg"], config.get("preprocess_cfg"))
    load_weights(model, weights)
    return model.eval()


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a ``.safetensors`` file, or a ``.bin``/``.pt`` through ``torch.load(weights_only=True)``.

    A pickle that holds anything but tensors and plain containers is refused before any of its code
    runs: unpickling arbitrary objects can execute code.
    """
    try:
        load_checkpoint(model, str(path), strict=True, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1][:200]
        raise UserError(f"{path} is a pickle that holds more than weights ({reason}); it was not loaded and none "
                        f"of its code ran. If you trust its source, load it yourself and save the state_dict "
                        f"with safetensors") from None
