"""Image transforms for training and evaluation, from open_clip's ``PreprocessCfg``."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import torch
from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2
from PIL import Image


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


class RandomResizedCropUint8:
    """open_clip's training crop (torchvision's ``RandomResizedCrop`` algorithm: up to 10 tries of a
    log-uniform aspect ratio, then a centre crop) → a [3, S, S] uint8 tensor; normalise on the device
    with ``Uint8Normalize``. Per sample it costs one random draw instead of ~30 small torch ops, crops and
    resizes in one PIL call, and leaves the float conversion to one op on the whole batch; uint8 batches
    also cross to a GPU in a quarter of the bytes."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.9, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 interpolation: str = "bicubic"):
        self.size, self.scale = size, scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[interpolation]

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        for u in torch.rand(10, 4).tolist():  # the global torch generator, seeded per sample by the loader
            target = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(self.log_ratio[0] + u[1] * (self.log_ratio[1] - self.log_ratio[0]))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left, top = int(u[2] * (width - w + 1)), int(u[3] * (height - h + 1))
                return left, top, left + w, top + h
        ratio = width / height  # fallback: the central crop of the closest allowed aspect ratio
        lo, hi = math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
        if ratio < lo:
            w, h = width, round(width / lo)
        elif ratio > hi:
            w, h = round(height * hi), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB").resize((self.size, self.size), self.resample, box=self.box(*img.size))
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)


class Uint8Normalize:
    """[B, 3, H, W] uint8 → the float batch ToTensor + Normalize(mean, std) would give, in one pass."""

    def __init__(self, mean, std):
        std = torch.tensor(std, dtype=torch.float32)
        self.scale = (1 / (255 * std)).view(1, 3, 1, 1)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / std).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.scale.device != images.device:  # moved once, not every step
            self.scale, self.shift = self.scale.to(images.device), self.shift.to(images.device)
        return torch.addcmul(-self.shift, images.float(), self.scale)


def make_uint8_train_transform(preprocess_cfg: dict, scale: tuple[float, float]):
    """(per-sample transform → uint8, batch normaliser) for open_clip's default training augmentation."""
    size = preprocess_cfg["size"]
    size = size if isinstance(size, int) else size[0]
    crop = RandomResizedCropUint8(size, scale, interpolation=preprocess_cfg.get("interpolation", "bicubic"))
    return crop, Uint8Normalize(preprocess_cfg["mean"], preprocess_cfg["std"])


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
