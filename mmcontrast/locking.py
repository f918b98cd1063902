"""LiT tower locking (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning").

A locked tower keeps its weights (``requires_grad=False``, so they stay out of the optimizer) and
runs in eval mode while the rest trains — dropout off, normalisation statistics frozen — exactly as
at inference. ``unlocked_groups`` / ``unlocked_layers`` leave the last groups of a tower trainable
(open_clip's grouping); a partly unlocked tower trains normally.
"""

from __future__ import annotations

import torch


def lock_towers(model: torch.nn.Module, image: bool = False, image_unlocked_groups: int = 0,
                text: bool = False, text_unlocked_layers: int = 0) -> None:
    """Lock the requested towers through open_clip and remember which run in eval mode."""
    frozen = []
    if image:
        model.lock_image_tower(unlocked_groups=image_unlocked_groups, freeze_bn_stats=True)
        if image_unlocked_groups == 0:
            frozen.append(model.visual)
    if text:
        model.lock_text_tower(unlocked_layers=text_unlocked_layers, freeze_layer_norm=True)
        if text_unlocked_layers == 0:
            frozen += _text_modules(model)
    model.frozen_modules = frozen


def _text_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    if hasattr(model, "text"):  # CustomTextCLIP: one text module
        return [model.text]
    return [model.transformer, model.token_embedding, model.ln_final]


def set_train_mode(model: torch.nn.Module, training: bool = True) -> torch.nn.Module:
    """``model.train(training)``, but locked towers always stay in eval mode."""
    model.train(training)
    for module in getattr(model, "frozen_modules", []):
        module.eval()
    return model
