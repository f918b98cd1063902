"""A model directory's file names, and reading what it holds without building a model.

Both ``mmcontrast.model`` (``create_model`` takes an architecture from a model directory) and
``mmcontrast.model_dir`` (which builds models to save and load them) read directories through this
module; it imports neither, so neither imports the other to read one. The layout and its guarantees
are described in ``mmcontrast.model_dir``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError
from .model_files import read_json_object

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
EXTRAS_NAME = "extras.safetensors"
META_NAME = "mmcontrast.json"


def is_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / CONFIG_NAME).is_file()


def read_meta(path: str | os.PathLike) -> dict:
    """A model directory's ``mmcontrast.json`` ({} for directories written by open_clip)."""
    meta_file = Path(path).expanduser() / META_NAME
    meta = read_json_object(meta_file) if meta_file.is_file() else {}
    if not isinstance(meta.get("fusion", {}), dict):
        raise UserError(f"{meta_file}: 'fusion' is not an object")
    return meta


def read_model_dir(path: str | os.PathLike) -> tuple[dict, Path]:
    """(``{"model_cfg", "preprocess_cfg"}``, weights file) of a model directory written here or by open_clip.

    ``model_cfg`` includes the fusion config from ``mmcontrast.json`` when the model has fusion blocks."""
    path = Path(path).expanduser()
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        hint = " (a weights file goes with openclip:ARCH and --pretrained)" if path.is_file() else ""
        raise UserError(f"{path} is not a model directory: {CONFIG_NAME} is missing{hint}")
    config = read_json_object(config_file)
    if not isinstance(config.get("model_cfg"), dict):
        raise UserError(f"{config_file} has no 'model_cfg' object (open_clip's layout: "
                        f'{{"model_cfg": {{...}}, "preprocess_cfg": {{...}}}})')
    if not isinstance(config.get("preprocess_cfg", {}), dict):
        raise UserError(f"{config_file}: 'preprocess_cfg' is not an object")
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
