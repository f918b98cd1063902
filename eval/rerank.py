"""Re-ranking retrieval candidates with the image–text matching head of a model with fusion blocks.

The ALBEF/BLIP convention (``docs/evaluation.md``; ALBEF ``Retrieval.py`` with ``k_test``): each query's top K
candidates by dual-encoder similarity are re-scored with the ITM head and ranked by that score; every
other candidate ranks after them (ALBEF fills their cells with −100). Recall@k for k ≤ K follows.
The score is BLIP's (ITM score + similarity) in the form the fusion objectives train
(``mmcontrast.objectives.fusion``): log p(match) − log p(no match) + s·cos, s the model's logit
scale. Ties keep the dual-encoder order.

Each process computes both modalities' stream states for the whole set (kept on the CPU: per item
depth + 1 tensors of its token count × the block width) and re-scores its share of the queries; the
per-query ranks are gathered, so every process reports the same numbers.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from mmcontrast.distributed import rank
from mmcontrast.errors import UserError
from mmcontrast.fusion import Streams
from mmcontrast.metrics.retrieval import KS, positive_lists, recall_at_k

from .distributed import gather_rows, my_indices
from .encode import _autocast, image_batches
from .sets import RetrievalSet


def _cat(parts: list[Streams]) -> Streams:
    return Streams([torch.cat([p.layers[i] for p in parts]) for i in range(len(parts[0].layers))],
                   torch.cat([p.valid for p in parts]))


@torch.no_grad()
def encode_streams(model, preprocess, tokenizer, ds: RetrievalSet, batch_size: int, device: torch.device,
                   dtype: torch.dtype | None, workers: int, progress: bool) -> tuple[Streams, Streams]:
    """Both modalities' stream states for every image and caption of ``ds``, on the CPU."""
    images, texts = [], []
    n = len(ds)
    with tqdm(total=n + len(ds.texts), desc=f"{ds.name}: streams", disable=not progress, leave=False) as bar:
        for pixels in image_batches(ds.images, list(range(n)), preprocess, batch_size, workers):
            with _autocast(device, dtype):
                images.append(model.image_streams(pixels.to(device))[1].to("cpu"))
            bar.update(len(pixels))
        for start in range(0, len(ds.texts), batch_size):
            tokens = tokenizer(ds.texts[start:start + batch_size]).to(device)
            with _autocast(device, dtype):
                texts.append(model.text_streams(tokens)[1].to("cpu"))
            bar.update(len(tokens))
    return _cat(images), _cat(texts)


def reranked_order(model, queries: Streams, gallery: Streams, candidates: torch.Tensor, similarity: torch.Tensor,
                   query_is_image: bool, device: torch.device, dtype: torch.dtype | None,
                   batch_pairs: int = 2048) -> torch.Tensor:
    """[Q, K] positions in each query's candidates [Q, K], best re-scored first; ``similarity`` [Q, K]: s·cos."""
    q, k = candidates.shape
    query_index = torch.arange(q)[:, None].expand(q, k).reshape(-1)
    gallery_index = candidates.reshape(-1)
    scores = torch.empty(q * k)
    for start in range(0, q * k, batch_pairs):
        qi, gi = query_index[start:start + batch_pairs], gallery_index[start:start + batch_pairs]
        a, b = queries.select(qi).to(device), gallery.select(gi).to(device)
        image, text = (a, b) if query_is_image else (b, a)
        with _autocast(device, dtype):
            scores[start:start + len(qi)] = model.fusion.match_score(image, text).float().cpu()
    return torch.sort(-(scores.view(q, k) + similarity), dim=1, stable=True).indices


def reranked_ranks(model, queries: Streams, gallery: Streams, candidates: torch.Tensor, similarity: torch.Tensor,
                   positives: torch.Tensor, query_is_image: bool, device: torch.device, dtype: torch.dtype | None,
                   batch_pairs: int = 2048) -> torch.Tensor:
    """Rank [Q] of the first positive after re-scoring each query's candidates [Q, K]; K when none is among them.

    ``similarity`` [Q, K]: s·cos of each candidate; ``positives`` [Q, K]: whether it is a positive of its query.
    """
    order = reranked_order(model, queries, gallery, candidates, similarity, query_is_image, device, dtype, batch_pairs)
    hits = positives.gather(1, order)
    return torch.where(hits.any(dim=1), hits.float().argmax(dim=1), torch.tensor(candidates.shape[1]))


def rerank_examples(model, examples: dict, image_streams: Streams, text_streams: Streams,
                    image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                    k_i2t: int, k_t2i: int, scale: torch.Tensor, device: torch.device, dtype: torch.dtype | None,
                    top: int = 5) -> None:
    """Adds ``"reranked"`` to each sample query of ``examples`` (``eval.retrieval``): its top ``top`` after
    re-ranking, their hits, and the rank of its best positive among the re-ranked K (None: not among them)."""
    ways = (("image_queries", image_streams, text_streams, image_features, text_features, k_i2t, True),
            ("text_queries", text_streams, image_streams, text_features, image_features, k_t2i, False))
    for way, query_streams, gallery_streams, query_features, gallery_features, k, query_is_image in ways:
        if not examples[way]:
            continue
        queries = torch.tensor([e["query"] for e in examples[way]], dtype=torch.long)
        sim, cand = (query_features[queries] @ gallery_features.T).topk(k, dim=1)
        order = reranked_order(model, query_streams.select(queries), gallery_streams, cand, scale * sim,
                               query_is_image, device, dtype)
        for example, query, ranking in zip(examples[way], queries, cand.gather(1, order)):
            hits = text_to_image[ranking] == query if query_is_image else ranking == text_to_image[query]
            first = int(hits.int().argmax()) if hits.any() else None
            example["reranked"] = {"results": ranking[:top].tolist(), "hits": hits[:top].tolist(),
                                   "positive_rank": first}


@torch.no_grad()
def rerank_metrics(model, preprocess, tokenizer, ds: RetrievalSet, image_features: torch.Tensor,
                   text_features: torch.Tensor, k: int, batch_size: int = 256, device: torch.device = "cpu",
                   dtype: torch.dtype | None = None, workers: int = 0, progress: bool = True,
                   examples: dict | None = None) -> dict:
    """{"k": K, "metrics": recall@1/5/10 both ways after re-ranking each query's top K, CLIP_benchmark names,
    plus mean_recall and rsum}; ``examples``, the report's sample queries, also get their re-ranked lists
    (``rerank_examples``)."""
    if not hasattr(model, "fusion"):
        raise UserError("re-ranking needs a model with fusion blocks and an ITM head (model.fusion); this model is "
                        "a plain dual encoder")
    if k < max(KS):
        raise UserError(f"--rerank-k {k}: re-rank at least the top {max(KS)} candidates, so recall@{max(KS)} "
                        f"is defined")
    device = torch.device(device)
    text_to_image = torch.tensor(ds.text_to_image)
    image_streams, text_streams = encode_streams(model, preprocess, tokenizer, ds, batch_size, device, dtype,
                                                 workers, progress and rank() == 0)
    k_i2t, k_t2i = min(k, len(ds.texts)), min(k, len(ds))
    scale = model.logit_scale.exp().float().cpu()
    # text → image: each caption's top images; its positive is its own image
    mine = torch.tensor(my_indices(len(ds.texts)), dtype=torch.long)
    sim, cand = (text_features[mine] @ image_features.T).topk(k_t2i, dim=1)
    t2i = reranked_ranks(model, text_streams.select(mine), image_streams, cand, scale * sim,
                         cand == text_to_image[mine, None], False, device, dtype)
    # image → text: each image's top captions; positives are all of its captions
    mine = torch.tensor(my_indices(len(ds)), dtype=torch.long)
    sim, cand = (image_features[mine] @ text_features.T).topk(k_i2t, dim=1)
    captions_of = positive_lists(text_to_image, len(ds))[mine]
    positives = (cand[:, :, None] == captions_of[:, None, :]).any(dim=2)
    i2t = reranked_ranks(model, image_streams.select(mine), text_streams, cand, scale * sim, positives, True,
                         device, dtype)
    t2i = gather_rows(t2i[:, None], len(ds.texts)).squeeze(1)
    i2t = gather_rows(i2t[:, None], len(ds)).squeeze(1)
    metrics = {f"image_retrieval_recall@{r}": v for r, v in recall_at_k(t2i).items()}
    metrics.update({f"text_retrieval_recall@{r}": v for r, v in recall_at_k(i2t).items()})
    recalls = list(metrics.values())
    metrics["mean_recall"] = sum(recalls) / len(recalls)
    metrics["rsum"] = 100 * sum(recalls)  # in percent, as the dual encoder's
    if examples is not None:
        rerank_examples(model, examples, image_streams, text_streams, image_features, text_features, text_to_image,
                        k_i2t, k_t2i, scale, device, dtype)
    return {"k": k, "metrics": metrics}
