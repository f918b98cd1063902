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
import re
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from .durable import fsync, fsync_tree
from .errors import UserError
from .model import build_model, resolve_package_path
# is_model_dir, read_meta and read_model_dir are this module's API too (training and eval import them from here)
from .model_dir_layout import (CONFIG_NAME, EXTRAS_NAME, META_NAME, WEIGHTS_NAME, is_model_dir, read_meta,
                               read_model_dir)
from .model_files import check_finite, check_fit, read_state_dict

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


# What this project writes into a model directory, and into a transformers directory (``mmcontrast.convert``,
# by ``save_pretrained`` of transformers 4.38 to 5.x). Replacing a directory removes these names only: a directory
# holding anything else (a run's checkpoints, a user's files) is refused, never removed.
MODEL_DIR_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, EXTRAS_NAME, META_NAME})
HF_DIR_FILES = frozenset({"config.json", "model.safetensors", "model.safetensors.index.json", "vocab.json",
                          "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                          "added_tokens.json", "preprocessor_config.json"})
_HF_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def _replaceable(entry: Path) -> bool:
    """A file (or link) named as one this project writes into a model or transformers directory."""
    named = entry.name in MODEL_DIR_FILES or entry.name in HF_DIR_FILES or _HF_SHARD.fullmatch(entry.name)
    return bool(named) and (entry.is_symlink() or entry.is_file())


def foreign_entries(path: Path) -> list[str]:
    """The names in directory ``path`` that no model or transformers directory written here holds."""
    return sorted(e.name for e in path.iterdir() if not _replaceable(e))


def check_replaceable(path: Path) -> None:
    """Refuse (one line naming what is in the way) unless ``path`` is absent or a directory that
    holds only the files of a model or transformers directory."""
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or not path.is_dir():
        raise UserError(f"{path} is {'a symbolic link' if path.is_symlink() else 'a file'}, not a model "
                        f"directory; nothing was removed: move it away or choose another destination")
    foreign = foreign_entries(path)
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        shown = ", ".join(repr(n[:80]) for n in foreign[:5]) + more
        raise UserError(f"{path} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} that no model "
                        f"directory holds ({shown}); nothing was removed: move them, or choose another destination")


def check_can_replace(path: Path) -> None:
    """Refuse unless ``path`` and its siblings ``PATH.tmp`` and ``PATH.old`` may be replaced (``replace_dir``)."""
    for p in (path, _sibling(path, ".tmp"), _sibling(path, ".old")):
        check_replaceable(p)


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _remove_model_files(path: Path) -> None:
    """Remove a directory that ``check_replaceable`` accepted: its files one by one, then the directory, so
    that anything that appeared since the check stops the removal (``rmdir`` of a non-empty directory fails)."""
    check_replaceable(path)
    if not path.exists():
        return
    for entry in path.iterdir():
        if _replaceable(entry):
            entry.unlink()
    path.rmdir()


def fresh_tmp_dir(path: Path) -> Path:
    """An empty sibling ``PATH.tmp`` to write into before ``replace_dir``; a leftover one is removed only if it
    holds nothing but model files."""
    check_can_replace(path)
    tmp = _sibling(path, ".tmp")
    _remove_model_files(tmp)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, path: Path) -> Path:
    """Move a completely written ``tmp`` to ``path``, replacing what was there by renames only. What was there is
    removed only when it holds nothing but model files (``check_replaceable``); else nothing changes."""
    fsync_tree(tmp)
    old = _sibling(path, ".old")
    check_replaceable(path)  # tmp is not checked: it holds what the caller just wrote
    check_replaceable(old)
    if path.exists():
        _remove_model_files(old)
        path.rename(old)
        tmp.rename(path)
        _remove_model_files(old)
    else:
        tmp.rename(path)
    fsync(path.parent)
    return path


def build_from_config(model_cfg: dict, preprocess_cfg: dict | None, where: str | os.PathLike) -> torch.nn.Module:
    """``build_model``, with a config it cannot build reported as one line naming ``where``.

    A transformers text tower or tokenizer must be a local directory: open_clip would look any other name up
    on the hub, and loading a model never reaches the network."""
    text_cfg = model_cfg.get("text_cfg")
    for key in ("hf_model_name", "hf_tokenizer_name"):
        name = text_cfg.get(key) if isinstance(text_cfg, dict) else None
        if name is not None and not (isinstance(name, str) and Path(resolve_package_path(name)).is_dir()):
            raise UserError(f"{where}: text_cfg.{key} {str(name)[:200]!r} is not a local directory; a transformers "
                            f"text tower is read from a local directory only (nothing is downloaded)")
    try:
        return build_model(model_cfg, preprocess_cfg)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as e:
        reason = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"{where}: its model_cfg does not describe a model ({type(e).__name__}: {reason})") from None


def load_model_dir(path: str | os.PathLike, allow_nonfinite: bool = False) -> torch.nn.Module:
    """A model from a model directory written here or by open_clip (config + weights)."""
    config, _ = read_model_dir(path)
    model = build_from_config(config["model_cfg"], config.get("preprocess_cfg"), Path(path) / CONFIG_NAME)
    load_dir_weights(model, path, allow_nonfinite)
    return model.eval()


def load_dir_weights(model: torch.nn.Module, path: str | os.PathLike, allow_nonfinite: bool = False) -> None:
    """Load a model directory's weights into ``model``: the towers, and the extras when it has fusion blocks."""
    _, weights = read_model_dir(path)
    load_weights(model, weights, allow_nonfinite)
    if hasattr(model, "fusion"):
        extras = Path(path).expanduser() / EXTRAS_NAME
        if not extras.is_file():
            raise UserError(f"{path} has no {EXTRAS_NAME}: it holds no fusion blocks for this model")
        state = read_state_dict(extras)
        if not allow_nonfinite:
            check_finite(state, extras)
        state = {k.removeprefix(EXTRA_PREFIX): v for k, v in state.items()}
        check_fit(model.fusion.state_dict(), state, extras)
        model.fusion.load_state_dict(state, strict=True)


def warn_if_fusion_sibling(weights: str | os.PathLike) -> None:
    """Warn when a bare weights file comes from a model directory whose fusion blocks it leaves out."""
    meta = read_meta(Path(weights).parent)
    if meta.get("fusion") and meta["fusion"].get("pure_from", "streams") == "streams":
        warnings.warn(f"{weights} holds only the towers of a model with fusion blocks: loaded this way its "
                      f"embeddings are the pre-fusion ones, not what the model directory {Path(weights).parent} "
                      f"gives; load the directory itself to use the blocks", stacklevel=3)


def load_weights(model: torch.nn.Module, path: str | os.PathLike, allow_nonfinite: bool = False) -> None:
    """Load a ``.safetensors`` file, or a ``.bin``/``.pt`` through ``torch.load(weights_only=True)``.

    A file is validated before its tensors are read (``mmcontrast.model_files``); a pickle that holds anything
    but tensors and plain containers is refused before any of its code runs. Weights holding NaN or inf are
    refused unless ``allow_nonfinite``. A model with fusion blocks takes its towers from such a file.
    """
    path = Path(path)
    if path.suffix in (".npz", ".npy"):
        _load_big_vision(model, path, allow_nonfinite)
        return
    state = read_state_dict(path)
    if not allow_nonfinite:
        check_finite(state, path)
    state = openclip_layout(model, state)
    check_fit(model.state_dict(), state, path, optional_prefix=EXTRA_PREFIX if hasattr(model, "fusion") else None)
    model.load_state_dict(state, strict=not hasattr(model, "fusion"))


def openclip_layout(model: torch.nn.Module, state: dict) -> dict:
    """What ``open_clip.load_checkpoint`` does to a state dict before loading it: third-party layouts
    converted, scalar/1-d logit scale and bias reconciled, position embeddings resized to the model's grid."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for name in ("logit_scale", "logit_bias"):
        ours = getattr(model, name, None)
        if name in state and ours is not None and ours.ndim != state[name].ndim and state[name].numel() == 1:
            state[name] = state[name].reshape(ours.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])  # a CLIP checkpoint for a SigLIP model
    state.pop("text.transformer.embeddings.position_ids", None)
    before = {k: state[k] for k in ("visual.positional_embedding", "positional_embedding") if k in state}
    try:
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
    except (RuntimeError, ValueError, IndexError, TypeError):
        state.update(before)  # a grid that cannot be resized: check_fit names the mismatch
    return state


def _load_big_vision(model: torch.nn.Module, path: Path, allow_nonfinite: bool) -> None:
    """big_vision (SigLIP) ``.npz`` weights, which open_clip maps and checks itself."""
    from open_clip.convert import load_big_vision_weights

    try:
        load_big_vision_weights(model, str(path))
    except (OSError, ValueError, KeyError, EOFError, RuntimeError, zipfile.BadZipFile) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{path} is not big_vision weights that fit this model ({reason})") from None
    if not allow_nonfinite:
        check_finite(model.state_dict(), path)
