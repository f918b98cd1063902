"""The objectives by the name a config gives (``objective.name``)."""

from __future__ import annotations

import inspect

from .base import Objective
from .clip import ClipLoss
from .hard_negatives import DebiasedLoss, DecoupledLoss, HardNegativeHCL, HardNegativeNCE, WeightedDecoupledLoss
from .momentum import MomentumDistillation
from .negclip import NegCLIPLoss
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
    "negclip": NegCLIPLoss,
}


def objective_options(name: str) -> list[str]:
    """The keyword options an objective accepts."""
    return list(inspect.signature(OBJECTIVES[name]).parameters)


def make_objective(name: str, **kwargs) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}")
    try:
        return OBJECTIVES[name](**kwargs)
    except TypeError as e:  # an option this objective does not have
        raise ValueError(f"objective {name!r}: {e} (its options: {objective_options(name)})") from None
