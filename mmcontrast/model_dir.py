"""The model directory: a finished model that OpenCLIP and CLIP_benchmark load unchanged.

```
final/
  open_clip_config.json         {"model_cfg": {...}, "preprocess_cfg": {...}}
  open_clip_model.safetensors   towers, projections, logit_scale (OpenCLIP key names)
  extras.safetensors            what OpenCLIP has no place for: fusion blocks and the ITM head (``fusion.*``)
  mmcontrast.json               what OpenCLIP does not know: provenance, the fusion config
```
Written into a temporary sibling directory and renamed, so a reader never sees half a model.

A model with fusion blocks keeps its towers loadable in OpenCLIP: ``open_clip_config.json`` holds the
towers' config only. With ``fusion.pure_from = streams`` OpenCLIP then computes the *pre-fusion*
(tower) embeddings, which differ from ``mc.load``'s; ``mmcontrast.json`` says so (``openclip_embeddings``).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import torch
from open_clip.factory import load_checkpoint
from safetensors.torch import load_file, save_file

from .durable import fsync, fsync_tree
from .errors import UserError
from .model import build_model

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
EXTRAS_NAME = "extras.safetensors"
META_NAME = "mmcontrast.json"
EXTRA_PREFIX = "fusion."  # state-dict keys OpenCLIP's CLIP does not have


def save_model_dir(model: torch.nn.Module, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model`` as a model directory at ``path`` (replacing it atomically)."""
    path = Path(path)
    tmp = fresh_tmp_dir(path)
    model_cfg = {k: v for k, v in model.model_cfg.items() if k != "fusion"}
    config = {"model_cfg": model_cfg, "preprocess_cfg": model.preprocess_cfg}
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file({k: v for k, v in state.items() if not k.startswith(EXTRA_PREFIX)}, str(tmp / WEIGHTS_NAME))
    meta = {"format": 1, **(meta or {})}
    if "fusion" in model.model_cfg:
        save_file({k: v for k, v in state.items() if k.startswith(EXTRA_PREFIX)}, str(tmp / EXTRAS_NAME))
        meta["fusion"] = model.model_cfg["fusion"]
        meta["openclip_embeddings"] = ("equal to mc.load's" if model.fusion.cfg.pure_from == "towers" else
                                       "pre-fusion (the towers' outputs); mc.load gives the fusion blocks' "
                                       "modality streams, which differ")
    (tmp / META_NAME).write_text(json.dumps(meta, indent=2))
    return replace_dir(tmp, path)


def fresh_tmp_dir(path: Path) -> Path:
    """An empty sibling ``PATH.tmp`` to write into before ``replace_dir``."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, path: Path) -> Path:
    """Move a completely written ``tmp`` to ``path``, replacing what was there by renames only."""
    fsync_tree(tmp)
    if path.exists():
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    fsync(path.parent)
    return path


def is_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / CONFIG_NAME).is_file()


def read_meta(path: str | os.PathLike) -> dict:
    """A model directory's ``mmcontrast.json`` ({} for directories written by open_clip)."""
    meta_file = Path(path).expanduser() / META_NAME
    return json.loads(meta_file.read_text()) if meta_file.is_file() else {}


def read_model_dir(path: str | os.PathLike) -> tuple[dict, Path]:
    """(``{"model_cfg", "preprocess_cfg"}``, weights file) of a model directory written here or by open_clip.

    ``model_cfg`` includes the fusion config from ``mmcontrast.json`` when the model has fusion blocks."""
    path = Path(path).expanduser()
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise UserError(f"{path} is not a model directory: {CONFIG_NAME} is missing")
    config = json.loads(config_file.read_text())
    if "model_cfg" not in config:
        raise UserError(f"{config_file} has no 'model_cfg'")
    fusion = read_meta(path).get("fusion")
    if fusion is not None:
        config["model_cfg"]["fusion"] = fusion
        if not (path / EXTRAS_NAME).is_file():
            raise UserError(f"{path}: {META_NAME} describes fusion blocks but {EXTRAS_NAME}, which holds their "
                            f"weights, is missing")
    weights = next((path / n for n in (WEIGHTS_NAME, "open_clip_pytorch_model.bin", "open_clip_model.pt")
                    if (path / n).is_file()), None)
    if weights is None:
        raise UserError(f"{path} holds no weights: expected {WEIGHTS_NAME}")
    return config, weights


def load_model_dir(path: str | os.PathLike) -> torch.nn.Module:
    """A model from a model directory written here or by open_clip (config + weights)."""
    config, _ = read_model_dir(path)
    model = build_model(config["model_cfg"], config.get("preprocess_cfg"))
    load_dir_weights(model, path)
    return model.eval()


def load_dir_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a model directory's weights into ``model``: the towers, and the extras when it has fusion blocks."""
    _, weights = read_model_dir(path)
    load_weights(model, weights)
    if hasattr(model, "fusion"):
        extras = Path(path).expanduser() / EXTRAS_NAME
        if not extras.is_file():
            raise UserError(f"{path} has no {EXTRAS_NAME}: it holds no fusion blocks for this model")
        state = {k.removeprefix(EXTRA_PREFIX): v for k, v in load_file(str(extras)).items()}
        model.fusion.load_state_dict(state, strict=True)


def warn_if_fusion_sibling(weights: str | os.PathLike) -> None:
    """Warn when a bare weights file comes from a model directory whose fusion blocks it leaves out."""
    meta = read_meta(Path(weights).parent)
    if meta.get("fusion") and meta["fusion"].get("pure_from", "streams") == "streams":
        warnings.warn(f"{weights} holds only the towers of a model with fusion blocks: loaded this way its "
                      f"embeddings are the pre-fusion ones, not what the model directory {Path(weights).parent} "
                      f"gives; load the directory itself to use the blocks", stacklevel=3)

def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a ``.safetensors`` file, or a ``.bin``/``.pt`` through ``torch.load(weights_only=True)``.

    A pickle that holds anything but tensors and plain containers is refused before any of its code
    runs: unpickling arbitrary objects can execute code.
    """
    try:
        # a model with fusion blocks takes the towers from such a file; its blocks stay as they are
        incompatible = load_checkpoint(model, str(path), strict=not hasattr(model, "fusion"), weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1][:200]
        raise UserError(f"{path} is a pickle that holds more than weights ({reason}); it was not loaded and none "
                        f"of its code ran. If you trust its source, load it yourself and save the state_dict "
                        f"with safetensors") from None
    if not hasattr(incompatible, "missing_keys"):  # big_vision .npz weights: open_clip checks those itself
        return
    missing = [k for k in incompatible.missing_keys if not k.startswith(EXTRA_PREFIX)]
    if missing or incompatible.unexpected_keys:
        raise UserError(f"{path} does not fit this model's towers: missing {missing[:5]}, unexpected "
                        f"{incompatible.unexpected_keys[:5]}")
