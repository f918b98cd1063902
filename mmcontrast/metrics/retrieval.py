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


def _ranks_from_positive_lists(scores: torch.Tensor, positives: torch.Tensor,
                               max_rank: int | None = None) -> torch.Tensor:
    """[Q, G] scores and [Q, P] gallery indices of each query's positives (−1 = padding) → [Q] ranks.

    The best positive is found among the P gathered scores. With ``max_rank`` every rank at or past it
    is reported as ``max_rank`` — all recall@k with k ≤ max_rank needs — and the work per row is one
    ``topk(max_rank)`` instead of two full comparison passes (3× less time per block on CPU). Rows
    where a tie could matter take the exact path.
    """
    n_gallery = scores.shape[1]
    valid = positives >= 0
    pos_scores = scores.gather(1, positives.clamp(min=0)).masked_fill(~valid, float("-inf"))   # [Q, P]
    best = pos_scores.max(dim=1, keepdim=True).values                                       # [Q, 1]
    first = torch.where(valid & (pos_scores == best), positives, n_gallery).min(dim=1, keepdim=True).values
    if max_rank is None or max_rank >= n_gallery:
        ranks = _exact_ranks(scores, best, first)
    else:
        top = scores.topk(max_rank, dim=1).values                                           # [Q, K]
        greater = (top > best).sum(dim=1)
        equal = (top == best).sum(dim=1)
        # Fewer than K scores beat the best positive, so all of them are in the top K; when its score
        # is there once with room to spare, nothing else ties it and the rank is the count above it.
        clear = (greater < max_rank) & (equal == 1) & (greater + 1 < max_rank)
        ranks = torch.where(clear, greater, max_rank)
        unsure = ((greater < max_rank) & ~clear).nonzero().flatten()
        if unsure.numel():
            ranks[unsure] = _exact_ranks(scores[unsure], best[unsure], first[unsure]).clamp(max=max_rank)
    ranks[~valid.any(dim=1)] = n_gallery if max_rank is None else min(n_gallery, max_rank)  # never hits
    return ranks


def _exact_ranks(scores: torch.Tensor, best: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """#(score > best) + #(score == best before index ``first``), per row: two passes (">" and "=="),
    the second resolved only on rows with exact ties — rare with real embeddings."""
    ranks = (scores > best).sum(dim=1)
    ties = (scores == best).sum(dim=1)                         # includes the best positive itself
    tied_rows = (ties > 1).nonzero().flatten()
    if tied_rows.numel():
        gallery = torch.arange(scores.shape[1], device=scores.device)
        earlier = (scores[tied_rows] == best[tied_rows]) & (gallery < first[tied_rows])
        ranks[tied_rows] += earlier.sum(dim=1)
    return ranks


def positive_lists(text_to_image: torch.Tensor, n_images: int) -> torch.Tensor:
    """[I, P] caption indices of every image, padded with −1 (P = most captions of one image)."""
    counts = torch.bincount(text_to_image, minlength=n_images)
    width = max(1, int(counts.max().item()) if counts.numel() else 1)
    order = torch.argsort(text_to_image, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(text_to_image.numel(), device=text_to_image.device) - starts[text_to_image[order]]
    out = torch.full((n_images, width), -1, dtype=torch.long, device=text_to_image.device)
    out[text_to_image[order], slot] = order
    return out


def retrieval_ranks(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                    chunk_size: int = 1024, max_rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(text→image ranks [T], image→text ranks [I]) of the best positive, 0 = first.

    ``max_rank``: report ranks at or past it as ``max_rank`` (exact below it), which is much faster.
    """
    text_to_image = text_to_image.to(image_features.device).long()
    n_images = image_features.shape[0]
    t2i = [_ranks_from_positive_lists(scores, text_to_image[s:s + len(scores), None], max_rank)
           for s, scores in _score_blocks(text_features, image_features, chunk_size)]
    captions_of = positive_lists(text_to_image, n_images)
    i2t = [_ranks_from_positive_lists(scores, captions_of[s:s + len(scores)], max_rank)
           for s, scores in _score_blocks(image_features, text_features, chunk_size)]
    return torch.cat(t2i), torch.cat(i2t)


def _score_blocks(queries: torch.Tensor, gallery: torch.Tensor, chunk_size: int):
    """(start, [c, G] scores) per chunk of queries, all written into one buffer: a fresh gigabyte-sized
    block per chunk costs the CPU page faults that take longer than the matmul itself."""
    buffer = torch.empty(min(chunk_size, len(queries)), len(gallery), device=queries.device,
                         dtype=torch.result_type(queries, gallery))
    for start in range(0, len(queries), chunk_size):
        block = queries[start:start + chunk_size]
        yield start, torch.mm(block, gallery.T, out=buffer[:len(block)])


def recall_at_k(ranks: torch.Tensor, ks=KS) -> dict[int, float]:
    return {k: (ranks < k).float().mean().item() for k in ks}


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor,
                      text_to_image: torch.Tensor, ks=KS, chunk_size: int = 1024) -> dict[str, float]:
    """CLIP_benchmark's metric names plus ``mean_recall`` and ``rsum`` (sum of the six, in percent).

    Images with no caption still count as image→text queries that cannot hit.
    """
    t2i, i2t = retrieval_ranks(image_features, text_features, text_to_image, chunk_size, max_rank=max(ks))
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
