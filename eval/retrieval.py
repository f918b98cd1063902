"""Image–text retrieval on a benchmark set: every caption kept, exact chunked recall@K.

Backends: ``torch`` (exact, chunked, the stable tie rule), ``faiss-flat`` (exact scores, faiss's
order among exact ties), ``faiss-hnsw`` (approximate; the metrics carry ``"approximate": 1.0``).
"""

from __future__ import annotations

import torch

from mmcontrast.metrics import chance_metrics, retrieval_metrics

from .cache import EmbeddingCache
from .encode import check_finite, encode_images, encode_texts
from .rerank import rerank_metrics
from .sets import RetrievalSet

N_EXAMPLES = 8  # sample queries shown in the HTML report, each way


def _examples(image_features, text_features, text_to_image, k: int = 5) -> dict:
    """Top-k results of evenly spaced sample queries, for the report, each with its best-ranked positive."""
    n_img, n_txt = image_features.shape[0], text_features.shape[0]
    img_q = torch.linspace(0, n_img - 1, min(N_EXAMPLES, n_img)).long().unique()
    txt_q = torch.linspace(0, n_txt - 1, min(N_EXAMPLES, n_txt)).long().unique()
    # a stable sort, so tied results (and the positive's rank) are in the order the metrics rank them
    i2t = torch.sort(-(image_features[img_q] @ text_features.T), dim=1, stable=True).indices
    t2i = torch.sort(-(text_features[txt_q] @ image_features.T), dim=1, stable=True).indices
    return {"image_queries": [_example(q, r, text_to_image[r] == q, k) for q, r in zip(img_q, i2t)],
            "text_queries": [_example(q, r, r == text_to_image[q], k) for q, r in zip(txt_q, t2i)]}


def _example(query: torch.Tensor, ranking: torch.Tensor, hits: torch.Tensor, k: int) -> dict:
    """A query's top ``k``, which of them are positives, and its best-ranked positive with that rank
    (0 = first; both None when the query has no positive, an image without captions)."""
    first = int(hits.int().argmax()) if hits.any() else None
    return {"query": int(query), "results": ranking[:k].tolist(), "hits": hits[:k].tolist(),
            "positive": None if first is None else int(ranking[first]), "positive_rank": first}


def run_retrieval(model, preprocess, tokenizer, ds: RetrievalSet, batch_size: int = 256,
                  device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                  chunk_size: int = 1024, workers: int = 0, cache: EmbeddingCache | None = None,
                  cache_key: str = "", progress: bool = True, backend: str = "torch", rerank_k: int = 0) -> dict:
    """{"metrics": CLIP_benchmark names + mean_recall + rsum, "chance", "images", "texts", "examples"}.

    ``rerank_k``: also re-rank each query's top K with the model's ITM head (``eval.rerank``), reported
    under ``"reranked"`` beside the dual-encoder metrics."""
    device = torch.device(device)
    cache = cache or EmbeddingCache(None)
    texts = ds.texts

    def images():
        return encode_images(model, preprocess, ds.images, batch_size, device, dtype, workers,
                             desc=f"{ds.name}: images", progress=progress)

    def captions():
        return encode_texts(model, tokenizer, texts, batch_size, device, dtype)

    if cache_key:
        image_features = cache.get_or_compute(f"{cache_key}-images", images)
        text_features = cache.get_or_compute(f"{cache_key}-texts", captions)
    else:
        image_features, text_features = images(), captions()
    check_finite(image_features, "image features", "images")
    check_finite(text_features, "text features", "captions")
    text_to_image = torch.tensor(ds.text_to_image)
    if backend == "torch":
        metrics = retrieval_metrics(image_features, text_features, text_to_image, chunk_size=chunk_size)
    elif backend in ("faiss-flat", "faiss-hnsw"):
        from mmcontrast.metrics.faiss_retrieval import faiss_retrieval_metrics
        metrics = faiss_retrieval_metrics(image_features, text_features, text_to_image,
                                          index=backend.removeprefix("faiss-"))
    else:
        raise ValueError(f"unknown retrieval backend {backend!r}: torch, faiss-flat or faiss-hnsw")
    result = {"metrics": metrics, "chance": chance_metrics(text_to_image, len(ds)), "images": len(ds),
              "texts": len(texts), "examples": _examples(image_features, text_features, text_to_image)}
    if rerank_k:
        result["reranked"] = rerank_metrics(model, preprocess, tokenizer, ds, image_features, text_features,
                                            rerank_k, batch_size, device, dtype, workers, progress,
                                            examples=result["examples"])
    return result
