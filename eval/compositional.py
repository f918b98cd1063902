"""Compositional evaluation: which caption (and which image) each test case's scores pick.

Scores are cosines of L2-normalised fp32 embeddings (``eval.encode``, split across processes); a model
with fusion blocks is also scored by its image–text matching head, log p(match) − log p(no match)
(``mmcontrast.fusion.PartitionedFusion.match_score``), the score ARO and SugarCrepe give ITM models, each
process scoring its share of the pairs. Metrics: ``mmcontrast.metrics.compositional`` (strict ``>``,
ties counted). The headline of each set is its paper's: SugarCrepe's per-category accuracy (and their
mean), Winoground's text / image / group scores, ARO's macro accuracy after its exclusions.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from mmcontrast.distributed import rank
from mmcontrast.errors import UserError
from mmcontrast.fusion import Streams
from mmcontrast.metrics.compositional import (ARO_VGA_MIN_COUNT, ARO_VGR_EXCLUDED, macro_accuracy,
                                              paired_difference, selection_chance, selection_correct,
                                              selection_metrics)

from .cache import EmbeddingCache
from .compositional_sets import SelectionSet
from .distributed import gather_rows, my_indices
from .encode import _autocast, check_finite, encode_images, encode_texts, image_batches

N_FAILURES = 6          # failures shown per category in the HTML page
N_FAILURE_GROUPS = 12   # ARO has hundreds of relations: the page shows its largest kept ones


def category_scores(sim: torch.Tensor, ds: SelectionSet, category: str) -> tuple[list[int], torch.Tensor]:
    """(item positions, [N, I, C] scores) of one category's items, read from ``sim`` [images, texts]."""
    where = [n for n, item in enumerate(ds.items) if item.category == category]
    images = torch.tensor([ds.items[n].images for n in where])                 # [N, I]
    captions = torch.tensor([ds.items[n].captions for n in where])             # [N, C]
    return where, sim[images[:, :, None], captions[:, None, :]]


def _crepe_mean(categories: dict[str, dict]) -> dict:
    """SugarCrepe's summary: the unweighted mean over categories, its standard error from theirs."""
    k = len(categories)
    out = {m: sum(c[m] for c in categories.values()) / k for m in ("text_acc", "image_acc", "acc")}
    out["acc_stderr"] = math.sqrt(sum(c["acc_stderr"] ** 2 for c in categories.values())) / k
    return {**out, "n": sum(c["n"] for c in categories.values()), "ties": sum(c["ties"] for c in categories.values())}


def score_set(sim: torch.Tensor, ds: SelectionSet) -> dict:
    """{"metrics", "categories", "chance", "correct" {category: [N] bool}, "failures"} for [images, texts] scores."""
    categories, chance, correct, ties, failures = {}, {}, {}, {}, {}
    for category in ds.categories():
        where, scores = category_scores(sim, ds, category)
        c = selection_correct(scores)
        correct[category], ties[category] = c["group"], c["tie"]
        categories[category] = selection_metrics(scores)
        chance[category] = selection_chance(scores.shape[1], scores.shape[2])
        failures[category] = _failures(ds, where, scores, c["group"])
    if ds.kind in ("aro_vgr", "aro_vga"):
        flags = torch.zeros(len(ds.items), dtype=torch.bool)
        for category, ok in correct.items():
            flags[[n for n, item in enumerate(ds.items) if item.category == category]] = ok
        aro = macro_accuracy(flags, [item.category for item in ds.items],
                             ARO_VGR_EXCLUDED if ds.kind == "aro_vgr" else frozenset(),
                             ARO_VGA_MIN_COUNT if ds.kind == "aro_vga" else 1)
        if not aro["n"]:
            raise UserError(f"{ds.source}: no test case is left after ARO's exclusions (VG-Relation: "
                            f"{len(ARO_VGR_EXCLUDED)} symmetric relations; VG-Attribution: pairs with fewer than "
                            f"{ARO_VGA_MIN_COUNT} cases); no metric computed")
        kept = sorted(aro.pop("groups"), key=lambda g: -categories[g]["n"])
        metrics = {"text_acc": aro["acc"], "image_acc": 1.0, **aro, "ties": sum(int(ties[g].sum()) for g in kept)}
        categories = {g: categories[g] for g in sorted(kept)}
        failures = {g: failures[g] for g in kept[:N_FAILURE_GROUPS]}
        overall_chance = selection_chance(1, 2)
    elif ds.kind == "winoground":
        metrics, overall_chance = categories[ds.name], chance[ds.name]
    else:  # SugarCrepe's summary is over its one-image categories (the shapes set's pairs are reported apart)
        crepe = {k: v for k, v in categories.items() if chance[k]["image_acc"] == 1.0}
        metrics, overall_chance = _crepe_mean(crepe), selection_chance(1, 2)
    chance = {"overall": overall_chance, **{k: chance[k] for k in categories}}
    return {"metrics": metrics, "categories": categories, "chance": chance,
            "correct": correct, "failures": [f for fs in failures.values() for f in fs]}


def _failures(ds: SelectionSet, where: list[int], scores: torch.Tensor, right: torch.Tensor) -> list[dict]:
    """The first ``N_FAILURES`` wrong items: per image its true caption and the best other caption, scored."""
    out = []
    for j in (~right).nonzero().flatten()[:N_FAILURES].tolist():
        item = ds.items[where[j]]
        rows = []
        for i, image in enumerate(item.images):
            others = scores[j, i].clone()
            others[i] = float("-inf")
            best = int(others.argmax())
            rows.append({"image": image, "true": item.captions[i], "true_score": float(scores[j, i, i]),
                         "negative": item.captions[best], "negative_score": float(scores[j, i, best])})
        out.append({"category": item.category, "id": item.id, "rows": rows})
    return out


@torch.no_grad()
def match_scores(model, preprocess, tokenizer, ds: SelectionSet, batch_size: int, device: torch.device,
                 dtype: torch.dtype | None, workers: int, progress: bool) -> torch.Tensor:
    """[images, texts] ITM scores, filled for the pairs the items compare (NaN elsewhere); each process
    scores every W-th pair, running only the images and captions its pairs need through the blocks."""
    pairs = sorted({(i, c) for item in ds.items for i in item.images for c in item.captions})
    mine = [pairs[p] for p in my_indices(len(pairs))]
    images = sorted({i for i, _ in mine})
    texts = sorted({c for _, c in mine})
    image_at = {i: n for n, i in enumerate(images)}
    text_at = {c: n for n, c in enumerate(texts)}
    image_streams, text_streams = [], []
    with tqdm(total=len(images) + len(texts), desc=f"{ds.name}: streams", disable=not progress, leave=False) as bar:
        for pixels in image_batches(ds.images, images, preprocess, batch_size, workers):
            with _autocast(device, dtype):
                image_streams.append(model.image_streams(pixels.to(device))[1].to("cpu"))
            bar.update(len(pixels))
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer([ds.texts[c] for c in texts[start:start + batch_size]]).to(device)
            with _autocast(device, dtype):
                text_streams.append(model.text_streams(tokens)[1].to("cpu"))
            bar.update(len(tokens))
    scores = torch.empty(len(mine))
    if mine:
        image_all, text_all = _cat(image_streams), _cat(text_streams)
        for start in range(0, len(mine), batch_size):
            chunk = mine[start:start + batch_size]
            a = image_all.select(torch.tensor([image_at[i] for i, _ in chunk])).to(device)
            b = text_all.select(torch.tensor([text_at[c] for _, c in chunk])).to(device)
            with _autocast(device, dtype):
                scores[start:start + len(chunk)] = model.fusion.match_score(a, b).float().cpu()
    every = gather_rows(scores[:, None], len(pairs)).squeeze(1)
    sim = torch.full((len(ds.images), len(ds.texts)), float("nan"))
    index = torch.tensor(pairs)
    sim[index[:, 0], index[:, 1]] = every
    return sim


def _cat(parts: list[Streams]) -> Streams:
    return Streams([torch.cat([p.layers[i] for p in parts]) for i in range(len(parts[0].layers))],
                   torch.cat([p.valid for p in parts]))


def run_compositional(model, preprocess, tokenizer, ds: SelectionSet, batch_size: int = 256,
                      device: str | torch.device = "cpu", dtype: torch.dtype | None = None, workers: int = 0,
                      cache: EmbeddingCache | None = None, cache_key: str = "", progress: bool = True) -> dict:
    """{"scorers": {"embeddings": score_set(...)[, "itm": ...]}, "differences" (fusion models: ITM −
    embeddings per category, with the paired standard error), "items", "images", "texts"}."""
    device = torch.device(device)
    cache = cache or EmbeddingCache(None)
    show = progress and rank() == 0

    def images():
        return encode_images(model, preprocess, ds.images, batch_size, device, dtype, workers,
                             desc=f"{ds.name}: images", progress=show)

    def texts():
        return encode_texts(model, tokenizer, ds.texts, batch_size, device, dtype)

    def itm():
        return match_scores(model, preprocess, tokenizer, ds, batch_size, device, dtype, workers, show)

    def cached(suffix, compute):
        return cache.get_or_compute(f"{cache_key}-{suffix}", compute) if cache_key else compute()

    image_features = check_finite(cached("images", images), "image features", "images")
    text_features = check_finite(cached("texts", texts), "text features", "captions")
    scorers = {"embeddings": score_set(image_features @ text_features.T, ds)}
    result = {"scorers": scorers, "items": len(ds), "images": len(ds.images), "texts": len(ds.texts)}
    if hasattr(model, "fusion"):
        sim = cached("itm", itm)
        compared = ~torch.isnan(sim)
        check_finite(sim[compared], "ITM scores", "image–caption pairs")
        scorers["itm"] = score_set(sim, ds)
        pure = scorers["embeddings"]["correct"]
        result["differences"] = {k: dict(zip(("diff", "stderr"), paired_difference(itm_right, pure[k])))
                                 for k, itm_right in scorers["itm"]["correct"].items()
                                 if k in scorers["itm"]["categories"]}  # ARO: the relations it keeps
    return result
