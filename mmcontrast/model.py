"""Dual-encoder models: open_clip's ``CLIP`` / ``CustomTextCLIP`` built from a ``model_cfg``.

The model interface every loader returns (``DESIGN.md``):
``encode_image(image, normalize=True)`` → [B, D], ``encode_text(text, normalize=True)`` → [B, D],
``forward(image, text)`` → ``{"image_features", "text_features", "logit_scale"[, "logit_bias"]}``.
``logit_scale`` is the learnable log-temperature t, initialised to log(1/0.07) (Radford et al. 2021).
"""

from __future__ import annotations

import copy

import torch
from open_clip.model import CLIP, CustomTextCLIP

from .presets import get_model_cfg
from .transforms import preprocess_cfg_for


def build_model(model_cfg: dict, preprocess_cfg: dict | None = None) -> torch.nn.Module:
    """Instantiate an open_clip model from a ``model_cfg`` with random weights, dict outputs."""
    cfg = copy.deepcopy(model_cfg)
    is_hf_text = "hf_model_name" in cfg.get("text_cfg", {})
    if is_hf_text:
        cfg["text_cfg"]["hf_model_pretrained"] = False
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or is_hf_text
    cls = CustomTextCLIP if custom_text else CLIP
    model = cls(**cfg, output_dict=True)
    # Kept on the module so that a loaded model can be saved again without its config at hand.
    model.model_cfg = copy.deepcopy(model_cfg)
    model.preprocess_cfg = preprocess_cfg or preprocess_cfg_for(model_cfg)
    return model


def create_model(name: str, seed: int | None = None, patch_dropout: float = 0.0,
                 **cfg_overrides) -> torch.nn.Module:
    """A named preset (``tiny``) or open_clip architecture, randomly initialised.

    ``patch_dropout``: FLIP (Li et al. 2023) — the fraction of image patches dropped in training mode
    (none in eval mode). ``cfg_overrides`` replace top-level ``model_cfg`` keys; ``seed`` makes the
    init reproducible.
    """
    model_cfg = get_model_cfg(name)
    model_cfg.update(cfg_overrides)
    if patch_dropout:
        model_cfg["vision_cfg"]["patch_dropout"] = patch_dropout
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(model_cfg)
    return build_model(model_cfg)


def context_length(model: torch.nn.Module) -> int:
    return model.model_cfg.get("text_cfg", {}).get("context_length", 77)
