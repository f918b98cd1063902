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



def simclr_view_transform(preprocess_cfg: dict):
    """SimCLR's augmentations as SLIP uses them (Mu et al. 2022, ``datasets.py``), at the model's size:
    random resized crop (scale 0.08–1), colour jitter (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale
    with p = 0.2, Gaussian blur σ ∈ [0.1, 2] with p = 0.5, horizontal flip; then the model's normalisation."""
    from torchvision import transforms as T

    size = preprocess_cfg["size"]
    size = size if isinstance(size, int) else size[0]
    kernel = max(3, (size // 10) | 1)  # odd, about a tenth of the image as in SimCLR
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(preprocess_cfg["mean"], preprocess_cfg["std"]),
    ])
