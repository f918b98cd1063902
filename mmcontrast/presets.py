"""Named model presets: open_clip model configs (``model_cfg`` dicts) plus preprocessing.

A preset is exactly what open_clip writes into ``open_clip_config.json``, so a model made here
loads in open_clip unchanged. Any open_clip architecture name (``ViT-B-32``, ...) is a preset too.
"""

from __future__ import annotations

import copy

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

# The demo images are small renders, not ImageNet photos: ImageNet statistics still work and keep
# the model loadable by any CLIP tool that assumes them.
PRESETS: dict[str, dict] = {
    "tiny": TINY,
}


def list_presets() -> list[str]:
    """Our presets first, then every open_clip architecture."""
    return list(PRESETS) + open_clip.list_models()


def get_model_cfg(name: str) -> dict:
    """A copy of the ``model_cfg`` for a preset or open_clip architecture name."""
    if name in PRESETS:
        return copy.deepcopy(PRESETS[name])
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown model {name!r}: use one of {list(PRESETS)} or an open_clip "
                         f"architecture (open_clip.list_models())")
    return cfg
