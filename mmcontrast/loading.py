"""``mc.load``: one entry point for every model source, one interface out.

Sources: a model directory written here (or by open_clip), ``openclip:ARCH`` with a local
``pretrained`` weights file (``.safetensors``, or ``.bin``/``.pt`` read with ``weights_only=True``),
and ``hf:DIR`` — a local transformers CLIP or SigLIP directory (``mmcontrast.hf``; never a download).
Weight files are validated before they are read (``mmcontrast.model_files``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import UserError
from .model_dir import build_from_config, load_model_dir, load_weights, warn_if_fusion_sibling
from .model_files import read_json_object
from .presets import get_model_cfg
from .tokenizer import make_tokenizer
from .transforms import make_transforms

OPENCLIP_PREFIX = "openclip:"
HF_PREFIX = "hf:"


def load(spec: str | os.PathLike, pretrained: str | os.PathLike | None = None,
         device: str | torch.device = "cpu", allow_nonfinite: bool = False):
    """(model, preprocess, tokenizer) for a model directory, ``openclip:ARCH`` or ``hf:DIR``; model in eval mode.

    Every file is read as untrusted input: a broken one is a ``UserError`` naming it, and weights holding
    NaN or inf are refused unless ``allow_nonfinite``."""
    spec = str(spec)
    if spec.startswith(HF_PREFIX):
        if pretrained is not None:
            raise UserError("--pretrained is only for openclip:ARCH models; hf:DIR holds its own weights")
        from .hf import load_hf
        model, preprocess, tokenizer = load_hf(spec[len(HF_PREFIX):], allow_nonfinite)
        return model.to(device), preprocess, tokenizer
    if spec.startswith(OPENCLIP_PREFIX):
        model = _load_openclip(spec[len(OPENCLIP_PREFIX):], pretrained, allow_nonfinite)
    else:
        if pretrained is not None:
            raise UserError(f"--pretrained is only for openclip:ARCH models, not for {spec}")
        if not Path(spec).exists():
            raise UserError(f"model not found: {spec} (expected a model directory, openclip:ARCH or hf:DIR)")
        model = load_model_dir(spec, allow_nonfinite)
    model.to(device)
    _, preprocess = make_transforms(model.preprocess_cfg)
    return model, preprocess, make_tokenizer(model.model_cfg)


def _load_openclip(arch: str, pretrained: str | os.PathLike | None, allow_nonfinite: bool) -> torch.nn.Module:
    """An open_clip architecture (a name or a config ``.json``), with a local weights file when given."""
    if arch.endswith(".json") and Path(arch).is_file():
        read_json_object(arch)  # a broken file is named here, not as a bare JSON parser message
    try:
        model_cfg = get_model_cfg(arch)
    except ValueError as e:
        raise UserError(str(e)) from None
    model = build_from_config(model_cfg, None, f"openclip:{arch}")
    if pretrained is not None:
        pretrained = Path(pretrained)
        if pretrained.is_dir():
            raise UserError(f"pretrained weights {pretrained} is a directory: give the weights file, or load a "
                            f"model directory without openclip: and --pretrained")
        if not pretrained.is_file():
            raise UserError(f"pretrained weights file not found: {pretrained}")
        warn_if_fusion_sibling(pretrained)
        load_weights(model, pretrained, allow_nonfinite)
    return model.eval()
