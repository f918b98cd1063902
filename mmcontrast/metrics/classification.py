"""Classification metrics as CLIP_benchmark computes them (``metrics/zeroshot_classification.py``): top-k accuracy,
mean per-class recall, and for multi-label sets the per-class average precision."""

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


def average_precision_per_class(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[C] average precision of each class: over the images ranked by that class's score (``torch.sort``,
    descending), the mean of precision@rank at its positives; 0 for a class with none. ``targets``: [N, C]
    multi-hot. As CLIP_benchmark's ``average_precision_per_class`` (from torchnet's APMeter): no interpolation
    and no VOC "difficult" objects, so it is not the VOC devkit's AP."""
    ap = torch.zeros(scores.shape[1])
    ranks = torch.arange(1, scores.shape[0] + 1).float()             # [N]
    for k in range(scores.shape[1]):  # one column at a time, as the reference sorts: ties keep its order
        truth = targets[:, k][torch.sort(scores[:, k], 0, True).indices]
        precision = truth.float().cumsum(0).div(ranks)
        ap[k] = precision[truth.bool()].sum() / max(float(truth.sum()), 1)
    return ap


def chance_average_precision(positives: int, n: int) -> float:
    """The expected average precision of a uniformly random ranking of ``n`` images, ``positives`` of them
    positive: E[1/r] + (p−1)/(n−1)·(1 − E[1/r]) with r uniform on 1..n, E[1/r] = H_n / n (a positive at rank r
    has on average (p−1)(r−1)/(n−1) positives above it)."""
    if positives == 0:
        return 0.0
    inv_rank = torch.arange(1, n + 1, dtype=torch.float64).reciprocal().sum().item() / n
    return 1.0 if n == 1 else inv_rank + (positives - 1) / (n - 1) * (1 - inv_rank)
