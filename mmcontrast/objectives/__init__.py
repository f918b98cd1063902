"""Objectives: ``objective(**model_outputs, batch=batch) -> {"loss": scalar, <named parts>}``.

Every objective takes the model's output dict (``image_features``, ``text_features``,
``logit_scale`` and, for SigLIP, ``logit_bias``) and the batch (for sample ids); ``docs/objectives.md``
gives each one's formula, paper, defaults and cost. Models with fusion blocks wrap the chosen objective
in ``WithFusion``, which adds the image–text matching and Zorro terms on the fusion stream.
"""

from __future__ import annotations

import inspect

from .clip import ClipLoss, clamp_logit_scale
from .fusion import WithFusion
from .hard_negatives import (
    DebiasedLoss,
    DecoupledLoss,
    HardNegativeHCL,
    HardNegativeNCE,
    WeightedDecoupledLoss,
    sample_hard_negatives,
)
from .momentum import MomentumDistillation
from .siglip import SigLipLoss
from .slip import SLIPLoss

OBJECTIVES = {
    "clip": ClipLoss,
    "siglip": SigLipLoss,
    "hn-nce": HardNegativeNCE,
    "hcl": HardNegativeHCL,
    "debiased": DebiasedLoss,
    "dcl": DecoupledLoss,
    "dclw": WeightedDecoupledLoss,
    "momentum": MomentumDistillation,
    "slip": SLIPLoss,
}


def objective_options(name: str) -> list[str]:
    """The keyword options an objective accepts."""
    return list(inspect.signature(OBJECTIVES[name]).parameters)


def make_objective(name: str, **kwargs):
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}")
    try:
        return OBJECTIVES[name](**kwargs)
    except TypeError as e:  # an option this objective does not have
        raise ValueError(f"objective {name!r}: {e} (its options: {objective_options(name)})") from None


__all__ = ["OBJECTIVES", "ClipLoss", "DebiasedLoss", "DecoupledLoss", "HardNegativeHCL", "HardNegativeNCE",
           "MomentumDistillation", "SLIPLoss", "SigLipLoss", "WeightedDecoupledLoss", "WithFusion", "clamp_logit_scale",
           "make_objective", "objective_options", "sample_hard_negatives"]
