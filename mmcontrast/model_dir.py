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
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = {"model_cfg": model.model_cfg, "preprocess_cfg": model.preprocess_cfg}
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_NAME))
    (tmp / META_NAME).write_text(json.dumps({"format": 1, **(meta or {})}, indent=2))
    if path.exists():
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    return path


def load_model_dir(path: str | os.PathLike) -> torch.nn.Module:
    """A model from a model directory written here or by open_clip (config + weights)."""
    path = Path(path)
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
    model = build_model(config["model_cfg"], config.get("preprocess_cfg"))
    load_checkpoint(model, str(weights), strict=True, weights_only=True)
    return model.eval()
