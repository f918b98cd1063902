"""Exact recall@K for image–text retrieval, computed in chunks (memory O(chunk × gallery)).

Definitions follow CLIP_benchmark (``metrics/zeroshot_retrieval.py``): every caption is a text
query with one positive image (``image_retrieval_recall@k``, text→image); every image is a query
whose positives are all its captions (``text_retrieval_recall@k``, image→text); a query is a hit
when at least one positive is among its top k.

Tie rule (a stable sort by descending score): the rank of a candidate with score p at gallery
index j is #(score > p) + #(score == p and index < j). CLIP_benchmark leaves ties to ``torch.topk``.
"""

from __future__ import annotations

import torch

KS = (1, 5, 10)


def _first_positive_rank(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """[Q, G] scores, [Q, G] bool positives → [Q] rank of each query's best positive (stable)."""
    gallery = torch.arange(scores.shape[1], device=scores.device)
    masked = scores.masked_fill(~positive, float("-inf"))
    best = masked.max(dim=1, keepdim=True).values                          # [Q, 1]
    # the earliest positive holding the best score comes first in the stable order
    first = torch.where(positive & (scores == best), gallery, scores.shape[1]).min(dim=1, keepdim=True).values
    before = (scores > best) | ((scores == best) & (gallery < first))
    return before.sum(dim=1)


def retrieval_ranks(image_features: torch.Tensor, text_features: torch.Tensor,
                    text_to_image: torch.Tensor, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(text→image ranks [T], image→text ranks [I]) of the best positive, 0 = first."""
    text_to_image = text_to_image.to(image_features.device)
    n_images = image_features.shape[0]
    image_ids = torch.arange(n_images, device=image_features.device)
    t2i = []
    for start in range(0, text_features.shape[0], chunk_size):
        scores = text_features[start:start + chunk_size] @ image_features.T          # [c, I]
        positive = text_to_image[start:start + chunk_size, None] == image_ids[None]
        t2i.append(_first_positive_rank(scores, positive))
    i2t = []
    for start in range(0, n_images, chunk_size):
        scores = image_features[start:start + chunk_size] @ text_features.T          # [c, T]
        positive = image_ids[start:start + chunk_size, None] == text_to_image[None]
        i2t.append(_first_positive_rank(scores, positive))
    return torch.cat(t2i), torch.cat(i2t)


def recall_at_k(ranks: torch.Tensor, ks=KS) -> dict[int, float]:
    return {k: (ranks < k).float().mean().item() for k in ks}


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor,
                      text_to_image: torch.Tensor, ks=KS, chunk_size: int = 1024) -> dict[str, float]:
    """CLIP_benchmark's metric names plus ``mean_recall`` and ``rsum`` (sum of the six, in percent).

    Images with no caption still count as image→text queries that cannot hit.
    """
    t2i, i2t = retrieval_ranks(image_features, text_features, text_to_image, chunk_size)
    metrics = {}
    for k, v in recall_at_k(t2i, ks).items():
        metrics[f"image_retrieval_recall@{k}"] = v
    for k, v in recall_at_k(i2t, ks).items():
        metrics[f"text_retrieval_recall@{k}"] = v
    values = list(metrics.values())
    metrics["mean_recall"] = sum(values) / len(values)
    metrics["rsum"] = 100 * sum(values)
    return metrics


def chance_recall(gallery: int, positives: int, k: int) -> float:
    """Expected recall@k of a random ranking: P(one of ``positives`` among the first k of ``gallery``)."""
    miss = 1.0
    for i in range(min(k, gallery)):
        miss *= max(0, gallery - positives - i) / (gallery - i)
    return 1.0 - miss


def chance_metrics(text_to_image: torch.Tensor, n_images: int, ks=KS) -> dict[str, float]:
    """The recall@k a model that learned nothing scores in expectation, per metric name."""
    n_texts = text_to_image.numel()
    per_image = torch.bincount(text_to_image, minlength=n_images).tolist()
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = chance_recall(n_images, 1, k)
        out[f"text_retrieval_recall@{k}"] = sum(chance_recall(n_texts, p, k) for p in per_image) / n_images
    return out
