"""Objectives: ``objective(**model_outputs, batch=batch) -> {"loss": scalar, <named parts>}``.

Every objective is an ``Objective`` (``base.py``: what it needs, declared) and takes the model's output dict
(``image_features``, ``text_features``, ``logit_scale`` and, for SigLIP, ``logit_bias``) and the batch (for
sample ids); one that runs the model itself also takes ``model=``. ``docs/objectives.md`` gives each one's
formula, paper, defaults and cost; ``registry.py`` names them. Models with fusion blocks wrap the chosen
objective in ``WithFusion``, which adds the image–text matching and Zorro terms on the fusion stream.
``ModelAndObjective`` holds a model and its objective as the one module a trainer prepares for DDP.
"""

import importlib

# name → the submodule that defines it, imported on first use (PEP 562): the training config reads
# ``FusionTerms`` before torch is imported.
_EXPORTS = {
    "OBJECTIVES": "registry", "make_objective": "registry", "objective_options": "registry",
    "Objective": "base", "ModelAndObjective": "model_and_objective", "FusionTerms": "fusion_terms",
    "ClipLoss": "clip", "clamp_logit_scale": "clip", "SigLipLoss": "siglip", "MomentumDistillation": "momentum",
    "SLIPLoss": "slip", "NegCLIPLoss": "negclip", "WithFusion": "fusion", "DebiasedLoss": "hard_negatives", "DecoupledLoss": "hard_negatives",
    "HardNegativeHCL": "hard_negatives", "HardNegativeNCE": "hard_negatives",
    "WeightedDecoupledLoss": "hard_negatives", "sample_hard_negatives": "hard_negatives",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mmcontrast.objectives' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
