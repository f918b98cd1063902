"""Objectives: ``objective(**model_outputs, batch=batch) -> {"loss": scalar, <named parts>}``."""

from .clip import ClipLoss, clamp_logit_scale

OBJECTIVES = {
    "clip": ClipLoss,
}


def make_objective(name: str, **kwargs):
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](**kwargs)


__all__ = ["OBJECTIVES", "ClipLoss", "clamp_logit_scale", "make_objective"]
