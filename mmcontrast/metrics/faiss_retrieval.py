"""Recall@K through faiss, for galleries of millions (``pip install mmcontrast[faiss]``).

``index="flat"``: exact inner-product search (``IndexFlatIP``) on the L2-normalised embeddings —
the same scores as the torch path; exact ties may be ordered differently from the stable rule.
``index="hnsw"``: approximate (``IndexHNSWFlat``), and reported as approximate.
"""

from __future__ import annotations

import numpy as np
import torch

from .retrieval import KS


def _index(gallery: np.ndarray, kind: str):
    import faiss

    dim = gallery.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    else:
        raise ValueError(f"unknown faiss index {kind!r}: flat (exact) or hnsw (approximate)")
    index.add(gallery)
    return index


def faiss_retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor,
                            text_to_image: torch.Tensor, ks=KS, index: str = "flat",
                            batch_size: int = 65536) -> dict[str, float]:
    """The metric names of ``retrieval_metrics`` plus ``"approximate": 0.0 | 1.0``."""
    img = np.ascontiguousarray(image_features.float().cpu().numpy())
    txt = np.ascontiguousarray(text_features.float().cpu().numpy())
    t2i_map = text_to_image.cpu().numpy()
    k_max = max(ks)
    metrics = {}
    image_index = _index(img, index)
    hits = {k: 0 for k in ks}
    for s in range(0, len(txt), batch_size):
        _, found = image_index.search(txt[s:s + batch_size], k_max)              # [b, k]
        match = found == t2i_map[s:s + batch_size, None]
        for k in ks:
            hits[k] += int(match[:, :k].any(axis=1).sum())
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = hits[k] / len(txt)
    text_index = _index(txt, index)
    hits = {k: 0 for k in ks}
    for s in range(0, len(img), batch_size):
        _, found = text_index.search(img[s:s + batch_size], k_max)
        owner = np.where(found >= 0, t2i_map[np.clip(found, 0, None)], -1)
        match = owner == np.arange(s, s + len(found))[:, None]
        for k in ks:
            hits[k] += int(match[:, :k].any(axis=1).sum())
    for k in ks:
        metrics[f"text_retrieval_recall@{k}"] = hits[k] / len(img)
    values = list(metrics.values())
    metrics["mean_recall"] = sum(values) / len(values)
    metrics["rsum"] = 100 * sum(values)
    metrics["approximate"] = float(index != "flat")
    return metrics
