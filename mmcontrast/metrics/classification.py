"""Classification metrics as CLIP_benchmark computes them (``metrics/zeroshot_classification.py``)."""

from __future__ import annotations

import math

import torch


def accuracy(logits: torch.Tensor, target: torch.Tensor, k: int) -> float:
    """Top-k accuracy; NaN when there are fewer than k classes (as CLIP_benchmark reports acc5)."""
    if logits.shape[1] < k:
        return math.nan
    topk = logits.topk(k, dim=1).indices                       # [N, k]
    return (topk == target[:, None]).any(dim=1).float().mean().item()


def mean_per_class_recall(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Balanced accuracy: the mean over classes present in ``target`` of their recall."""
    recalls = [(pred[target == c] == c).float().mean() for c in target.unique()]
    return torch.stack(recalls).mean().item()


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    return {
        "acc1": accuracy(logits, target, 1),
        "acc5": accuracy(logits, target, 5),
        "mean_per_class_recall": mean_per_class_recall(logits.argmax(dim=1), target),
    }
