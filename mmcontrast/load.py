"""``mc.load``: one entry point for every model source, one interface out.

Sources: a model directory written here (or by open_clip), ``openclip:ARCH`` with a local
``pretrained`` weights file (``.safetensors``, or ``.bin``/``.pt`` read with ``weights_only=True``),
and ``hf:DIR`` — a transformers CLIP or SigLIP directory (``mmcontrast.hf``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import UserError
from .model import build_model
from .model_dir import load_model_dir, load_weights, warn_if_fusion_sibling
from .presets import get_model_cfg
from .tokenizer import make_tokenizer
from .transforms import make_transforms

OPENCLIP_PREFIX = "openclip:"
HF_PREFIX = "hf:"


def load(spec: str | os.PathLike, pretrained: str | None = None, device: str | torch.device = "cpu"):
    """(model, preprocess, tokenizer) for a model directory or ``openclip:ARCH``; model in eval mode."""
    spec = str(spec)
    if spec.startswith(HF_PREFIX):
        if pretrained is not None:
            raise UserError("--pretrained is only for openclip:ARCH models; hf:DIR holds its own weights")
        from .hf import load_hf
        model, preprocess, tokenizer = load_hf(spec[len(HF_PREFIX):])
        return model.to(device), preprocess, tokenizer
    if spec.startswith(OPENCLIP_PREFIX):
        arch = spec[len(OPENCLIP_PREFIX):]
        try:
            model_cfg = get_model_cfg(arch)
        except ValueError as e:
            raise UserError(str(e)) from None
        model = build_model(model_cfg)
        if pretrained is not None:
            if not Path(pretrained).is_file():
                raise UserError(f"pretrained weights file not found: {pretrained}")
            warn_if_fusion_sibling(pretrained)
            load_weights(model, pretrained)
        model.eval()
    else:
        if pretrained is not None:
            raise UserError(f"--pretrained is only for openclip:ARCH models, not for {spec}")
        if not Path(spec).exists():
            raise UserError(f"model not found: {spec} (expected a model directory or openclip:ARCH)")
        model = load_model_dir(spec)
    model.to(device)
    _, preprocess = make_transforms(model.preprocess_cfg)
    return model, preprocess, make_tokenizer(model.model_cfg)
