"""Image transforms for training and evaluation, from open_clip's ``PreprocessCfg``."""

from __future__ import annotations

from dataclasses import asdict

from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2


def preprocess_cfg_for(model_cfg: dict, overrides: dict | None = None) -> dict:
    """The preprocessing dict saved beside a model: open_clip defaults at the model's image size."""
    cfg = asdict(PreprocessCfg(size=model_cfg["vision_cfg"].get("image_size", 224)))
    cfg.update(overrides or {})
    return cfg


def make_transforms(preprocess_cfg: dict, aug_cfg: dict | None = None):
    """(train transform, eval transform). Training adds open_clip's random resized crop."""
    cfg = PreprocessCfg(**{k: v for k, v in preprocess_cfg.items() if k in PreprocessCfg.__dataclass_fields__})
    aug = AugmentationCfg(**(aug_cfg or {}))
    return image_transform_v2(cfg, is_train=True, aug_cfg=aug), image_transform_v2(cfg, is_train=False)

