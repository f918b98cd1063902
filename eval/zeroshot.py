"""Zero-shot classification on a benchmark set, metrics as CLIP_benchmark defines them."""

from __future__ import annotations

import torch

from mmcontrast.metrics import classification_metrics
from mmcontrast.zeroshot import build_class_weights

from .datasets import WdsDataset, iter_samples
from .encode import encode_images


def run_zeroshot(model, preprocess, tokenizer, ds: WdsDataset, batch_size: int = 256,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 templates: list[str] | None = None, progress: bool = True) -> dict:
    """{"metrics": {acc1, acc5, mean_per_class_recall}, "chance": ..., "per_class_recall": [...], "n": N}."""
    device = torch.device(device)
    labels: list[int] = []

    def images():
        for _, image, label in iter_samples(ds):
            labels.append(label)
            yield image

    image_features = encode_images(model, preprocess, images(), batch_size, device, dtype,
                                   desc=f"{ds.name}: images", progress=progress)
    weights = build_class_weights(model, tokenizer, ds.classnames, templates or ds.templates, device).cpu()
    logits = 100.0 * image_features @ weights                           # [N, C]
    target = torch.tensor(labels)
    pred = logits.argmax(dim=1)
    per_class = [(pred[target == c] == c).float().mean().item() if (target == c).any() else float("nan")
                 for c in range(len(ds.classnames))]
    n_classes = len(ds.classnames)
    chance = {"acc1": 1 / n_classes, "acc5": min(1.0, 5 / n_classes), "mean_per_class_recall": 1 / n_classes}
    return {"metrics": classification_metrics(logits, target), "chance": chance,
            "per_class_recall": per_class, "n": len(labels), "classes": n_classes}
