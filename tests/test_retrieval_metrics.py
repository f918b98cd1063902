"""Recall@K on hand-written score matrices: ties, several captions per image, chunking, CLIP_benchmark."""

from __future__ import annotations

import pytest
import torch
from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k as cb_recall_at_k

from mmcontrast.metrics import chance_recall, retrieval_metrics, retrieval_ranks
from mmcontrast.metrics.retrieval import _ranks_from_positive_lists

# texts × images; text_to_image = [0, 0, 1, 2]
S = torch.tensor([
    [0.9, 0.5, 0.1],    # t0 → img0: rank 0
    [0.3, 0.3, 0.8],    # t1 → img0: img2 above, img1 ties but comes later → rank 1
    [0.7, 0.7, 0.2],    # t2 → img1: ties with img0, which comes first → rank 1
    [0.1, 0.2, 0.05],   # t3 → img2: rank 2
])
T2I = torch.tensor([0, 0, 1, 2])


def _features(scores):
    """Image features = identity, text features = the score rows: text @ image.T == scores."""
    return torch.eye(scores.shape[1]), scores.clone()


def test_ranks_with_ties_and_several_captions():
    t2i, i2t = retrieval_ranks(*_features(S), T2I)
    assert t2i.tolist() == [0, 1, 1, 2]
    # img0 over texts [0.9, 0.3, 0.7, 0.1], positives t0, t1 → rank 0
    # img1 over [0.5, 0.3, 0.7, 0.2], positive t2 → 0;  img2 over [0.1, 0.8, 0.2, 0.05], positive t3 → 3
    assert i2t.tolist() == [0, 0, 3]


def test_first_positive_rank_tie_rule():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5], [0.2, 0.4, 0.4, 0.1], [0.3, 0.3, 0.3, 0.3]])
    positives = torch.tensor([[2, 3], [1, 2], [3, -1]])  # gallery indices, −1 = padding
    # row 0: best positive 0.5 at index 2; before it: 0.9 (higher) and index 0 (tie, earlier) → 2
    # row 1: best 0.4 first at index 1; nothing higher, no earlier tie → 0
    # row 2: all tied; the positive is last → 3
    assert _ranks_from_positive_lists(scores, positives).tolist() == [2, 0, 3]
    assert _ranks_from_positive_lists(scores[:1], torch.tensor([[-1, -1]])).tolist() == [4]  # no positive


def test_recall_values_and_sums():
    m = retrieval_metrics(*_features(S), T2I, ks=(1, 2, 3))
    assert m["image_retrieval_recall@1"] == pytest.approx(1 / 4)
    assert m["image_retrieval_recall@2"] == pytest.approx(3 / 4)
    assert m["image_retrieval_recall@3"] == pytest.approx(1.0)
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert m["text_retrieval_recall@3"] == pytest.approx(2 / 3)
    assert m["rsum"] == pytest.approx(100 * (1 / 4 + 3 / 4 + 1 + 2 / 3 + 2 / 3 + 2 / 3))
    assert m["mean_recall"] == pytest.approx(m["rsum"] / 600)


def test_image_without_caption_never_hits():
    t2i, i2t = retrieval_ranks(torch.eye(3), S[:3, :].clone(), torch.tensor([0, 0, 1]))
    assert i2t[2].item() == 4 - 1  # gallery of 3 texts: rank = gallery size, never < k


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunking_does_not_change_ranks(chunk):
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(23, 8, generator=g), torch.randn(61, 8, generator=g)
    t2i_map = torch.randint(0, 23, (61,), generator=g)
    ref = retrieval_ranks(img, txt, t2i_map, chunk_size=10_000)
    got = retrieval_ranks(img, txt, t2i_map, chunk_size=chunk)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])


def test_equals_clip_benchmark_without_ties():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(40, 16, generator=g), torch.randn(200, 16, generator=g)
    t2i_map = torch.arange(200) // 5
    ours = retrieval_metrics(img, txt, t2i_map, chunk_size=16)
    scores = txt @ img.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(200), t2i_map] = True
    for k in (1, 5, 10):
        cb_t2i = (cb_recall_at_k(scores, positive, k) > 0).float().mean().item()
        cb_i2t = (cb_recall_at_k(scores.T, positive.T, k) > 0).float().mean().item()
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(cb_t2i, abs=1e-7)
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(cb_i2t, abs=1e-7)


def test_chance_recall_closed_form():
    assert chance_recall(1000, 1, 1) == pytest.approx(1 / 1000)
    assert chance_recall(5000, 5, 1) == pytest.approx(5 / 5000)
    assert chance_recall(10, 1, 5) == pytest.approx(0.5)
    assert chance_recall(10, 2, 9) == pytest.approx(1.0)


def _full_matrix_reference(img, txt, t2i_map):
    """Ranks from the full score matrices and a stable sort: the definition, written the slow way."""
    scores = txt @ img.T
    t2i_order = torch.argsort(-scores, dim=1, stable=True)
    t2i = (t2i_order == t2i_map[:, None]).float().argmax(dim=1)
    i2t_order = torch.argsort(-scores.T, dim=1, stable=True)
    positive = t2i_map[i2t_order] == torch.arange(img.shape[0])[:, None]
    i2t = torch.where(positive.any(1), positive.float().argmax(dim=1), torch.tensor(txt.shape[0]))
    return t2i, i2t


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_equals_full_matrix_with_ties(chunk):
    g = torch.Generator().manual_seed(2)
    # coarse integer embeddings: many exact ties, and duplicated captions and images
    img = torch.randint(-2, 3, (37, 4), generator=g).float()
    txt = torch.randint(-2, 3, (90, 4), generator=g).float()
    txt[10:20] = txt[0]
    img[5] = img[6]
    t2i_map = torch.randint(0, 36, (90,), generator=g)  # image 36 has no caption
    ref = _full_matrix_reference(img, txt, t2i_map)
    got = retrieval_ranks(img, txt, t2i_map, chunk_size=chunk)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


@pytest.mark.parametrize("max_rank", [1, 2, 5, 10, 36])
def test_capped_ranks_equal_exact_ranks_below_the_cap(max_rank):
    """The topk path (ranks ≥ max_rank reported as max_rank) on tie-heavy embeddings and on random ones."""
    g = torch.Generator().manual_seed(3)
    tied_img = torch.randint(-2, 3, (37, 4), generator=g).float()
    tied_txt = torch.randint(-2, 3, (90, 4), generator=g).float()
    tied_txt[10:20] = tied_txt[0]
    t2i_map = torch.randint(0, 36, (90,), generator=g)
    rand_img, rand_txt = torch.randn(37, 4, generator=g), torch.randn(90, 4, generator=g)
    for img, txt in ((tied_img, tied_txt), (rand_img, rand_txt)):
        exact = retrieval_ranks(img, txt, t2i_map, chunk_size=7)
        capped = retrieval_ranks(img, txt, t2i_map, chunk_size=7, max_rank=max_rank)
        for e, c in zip(exact, capped):
            assert torch.equal(c, e.clamp(max=max_rank))


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_faiss_backend_equals_exact_without_ties(index):
    from mmcontrast.metrics.faiss_retrieval import faiss_retrieval_metrics
    g = torch.Generator().manual_seed(4)
    img = torch.nn.functional.normalize(torch.randn(300, 32, generator=g), dim=-1)
    noise = 0.8 * torch.randn(900, 32, generator=g)
    txt = torch.nn.functional.normalize(img.repeat_interleave(3, 0) + noise, dim=-1)
    t2i_map = torch.arange(300).repeat_interleave(3)
    exact = retrieval_metrics(img, txt, t2i_map)
    got = faiss_retrieval_metrics(img, txt, t2i_map, index=index)
    assert got.pop("approximate") == (index == "hnsw")
    for k, v in exact.items():
        # HNSW with efSearch 128 on 900 vectors finds the true neighbours; flat is exact by construction
        tol = (1e-6 if index == "flat" else 0.01) * (100 if k == "rsum" else 1)  # rsum is in percent
        assert got[k] == pytest.approx(v, abs=tol), k
