"""Zero-shot classification on a benchmark set, with metrics as CLIP_benchmark defines them
(``metrics/zeroshot_classification.py``: ``acc1``, ``acc5``, ``mean_per_class_recall``; for a multi-label set,
``mean_average_precision`` alone).

With a cache, both halves of the classifier are read back on a second run: the image features (keyed by
``cache_key``) and the class weights (keyed by the model, the class names and every prompt as formatted, so
a changed template or name never reuses them; ImageNet's 1,000 classes × 80 templates are 80,000 prompts)."""

from __future__ import annotations

import torch

from mmcontrast.errors import UserError
from mmcontrast.metrics.classification import (average_precision_per_class, chance_average_precision,
                                               classification_metrics)
from mmcontrast.zeroshot import build_class_weights, class_prompts

from .cache import EmbeddingCache, cache_key as hash_key
from .encode import check_finite, encode_images
from .sets import ClassificationSet, check_classification


def run_zeroshot(model, preprocess, tokenizer, ds: ClassificationSet, batch_size: int = 256,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None, templates=None,
                 workers: int = 0, cache: EmbeddingCache | None = None, cache_key: str = "",
                 progress: bool = True, model_key: str = "") -> dict:
    """{"metrics", "chance", "per_class_recall", "n", "classes", "predictions"}; a multi-label set gives
    "per_class_average_precision" instead of "per_class_recall". Labels, prompts, image features and class
    weights are checked first (one line, no metric, when any is unusable).

    ``cache_key`` names the model and the set (the image features' entry); ``model_key``, the model alone
    (``eval.cache.cache_key`` of its identity), lets sets with the same classes and prompts share one class
    weights entry (ImageNet and its variants); without it the weights are keyed by ``cache_key``."""
    device = torch.device(device)

    def encode():
        return encode_images(model, preprocess, ds.images, batch_size, device, dtype, workers,
                             desc=f"{ds.name}: images", progress=progress)

    def class_weights():
        return build_class_weights(model, tokenizer, ds.classnames, prompts, device).cpu()  # [D, C]

    check_classification(ds)
    prompts = ds.templates if templates is None else templates
    try:
        per_class = class_prompts(ds.classnames, prompts)  # a class with no prompt, or one that fails, stops here
    except ValueError as e:
        raise UserError(f"{ds.name}: the zero-shot prompts (--templates or the set's templates file): {e}") from None
    cache = cache or EmbeddingCache(None)
    image_features = cache.get_or_compute(f"{cache_key}-images", encode) if cache_key else encode()
    check_finite(image_features, "image features", "images")
    text_key = model_key or cache_key
    if text_key:
        shape = (image_features.shape[1], len(ds.classnames))  # a valid entry of another shape is recomputed
        weights = cache.get_or_compute(class_weights_key(text_key, ds.classnames, per_class), class_weights,
                                       shape=shape)
    else:
        weights = class_weights()
    check_finite(weights.T, "class weights (from its text features)", "classes")
    logits = 100.0 * image_features @ weights                           # [N, C]
    scores = multilabel_scores(logits, ds.labels) if ds.multilabel else single_label_scores(logits, ds.labels)
    return {**scores, "n": len(ds), "classes": len(ds.classnames), "predictions": logits.argmax(dim=1).tolist()}


def class_weights_key(model_key: str, classnames: list[str], prompts: list[list[str]]) -> str:
    """The cache key of the class weights: the model, the class names and each class's prompts as formatted
    (callable templates are keyed by what they give, not by the function)."""
    return f"{hash_key('class weights', model_key, classnames, prompts)}-class-weights"


def single_label_scores(logits: torch.Tensor, labels: list[int]) -> dict:
    n_classes = logits.shape[1]
    target = torch.tensor(labels)
    pred = logits.argmax(dim=1)
    per_class = [(pred[target == c] == c).float().mean().item() if (target == c).any() else float("nan")
                 for c in range(n_classes)]
    chance = {"acc1": 1 / n_classes, "acc5": min(1.0, 5 / n_classes), "mean_per_class_recall": 1 / n_classes}
    return {"metrics": classification_metrics(logits, target), "chance": chance, "per_class_recall": per_class}


def multilabel_scores(logits: torch.Tensor, labels: list[list[int]]) -> dict:
    n, n_classes = logits.shape
    target = torch.zeros(n, n_classes)                                  # [N, C] multi-hot, as CLIP_benchmark's
    for i, classes in enumerate(labels):
        target[i, classes] = 1
    ap = average_precision_per_class(logits, target)
    chance = sum(chance_average_precision(int(p), n) for p in target.sum(dim=0).tolist()) / n_classes
    return {"metrics": {"mean_average_precision": ap.mean().item()},
            "chance": {"mean_average_precision": chance}, "per_class_average_precision": ap.tolist()}
