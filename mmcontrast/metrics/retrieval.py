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


def _ranks_from_positive_lists(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """[Q, G] scores and [Q, P] gallery indices of each query's positives (−1 = padding) → [Q] ranks.

    Two passes over the scores (">" and "=="): the best positive is found among the P gathered
    scores, and exact ties — rare with real embeddings — are resolved only where they occur.
    """
    n_gallery = scores.shape[1]
    valid = positives >= 0
    pos_scores = scores.gather(1, positives.clamp(min=0)).masked_fill(~valid, float("-inf"))   # [Q, P]
    best = pos_scores.max(dim=1, keepdim=True).values                                       # [Q, 1]
    first = torch.where(valid & (pos_scores == best), positives, n_gallery).min(dim=1, keepdim=True).values
    ranks = (scores > best).sum(dim=1)
    ties = (scores == best).sum(dim=1)                         # includes the best positive itself
    tied_rows = (ties > 1).nonzero().flatten()
    if tied_rows.numel():
        gallery = torch.arange(n_gallery, device=scores.device)
        earlier = (scores[tied_rows] == best[tied_rows]) & (gallery < first[tied_rows])
        ranks[tied_rows] += earlier.sum(dim=1)
    ranks[~valid.any(dim=1)] = n_gallery                       # a query without positives never hits
    return ranks


def _positive_lists(text_to_image: torch.Tensor, n_images: int) -> torch.Tensor:
    """[I, P] caption indices of every image, padded with −1 (P = most captions of one image)."""
    counts = torch.bincount(text_to_image, minlength=n_images)
    width = max(1, int(counts.max().item()) if counts.numel() else 1)
    order = torch.argsort(text_to_image, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(text_to_image.numel(), device=text_to_image.device) - starts[text_to_image[order]]
    out = torch.full((n_images, width), -1, dtype=torch.long, device=text_to_image.device)
    out[text_to_image[order], slot] = order
    return out


def retrieval_ranks(image_features: torch.Tensor, text_features: torch.Tensor,
                    text_to_image: torch.Tensor, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(text→image ranks [T], image→text ranks [I]) of the best positive, 0 = first."""
    text_to_image = text_to_image.to(image_features.device).long()
    n_images = image_features.shape[0]
    t2i = [_ranks_from_positive_lists(text_features[s:s + chunk_size] @ image_features.T,   # [c, I]
                                      text_to_image[s:s + chunk_size, None])
           for s in range(0, text_features.shape[0], chunk_size)]
    captions_of = _positive_lists(text_to_image, n_images)
    i2t = [_ranks_from_positive_lists(image_features[s:s + chunk_size] @ text_features.T,   # [c, T]
                                      captions_of[s:s + chunk_size])
           for s in range(0, n_images, chunk_size)]
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
