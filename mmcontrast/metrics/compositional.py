"""Caption-selection metrics of the compositionality benchmarks, on per-item score matrices.

An item holds I images and C ≥ I captions; ``scores[n, i, c]`` is s(image i, caption c) and image i's
true caption is caption i (the diagonal), every other caption a negative.

- SugarCrepe (Hsieh et al., NeurIPS 2023; ``main_eval.py::text_retrieval``), I = 1, C = 2: correct when
  s(i, pos) > s(i, neg), strictly, so a tie counts as wrong.
- Winoground (Thrush et al., CVPR 2022), I = C = 2: text = [s00 > s01] ∧ [s11 > s10], image =
  [s00 > s10] ∧ [s11 > s01], group = text ∧ image.
- ARO VG-Relation / VG-Attribution (Yuksekgonul et al., ICLR 2023): I = 1, correct when the true caption
  scores strictly above the false one (ARO's argmax over [false, true] picks the false one on a tie), then
  the macro mean of per-relation (per attribute-pair) accuracies after ARO's exclusions.

Keys follow CLIP_benchmark (``metrics/image_caption_selection.py``): ``text_acc`` (every image picks its
caption), ``image_acc`` (every true caption picks its image; vacuously 1 when I = 1) and ``acc`` (both).
CLIP_benchmark takes ``argmax``, whose first index wins a tie: ``clip_benchmark_selection`` reproduces that
rule, which differs from the papers' strict ``>`` only on exact ties.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

# The notebook "Replicate ARO! VG-Relation, VG-Attribution" drops these 157 relations before the macro mean:
# symmetric ones, and ones whose swapped caption can also be true.
ARO_VGR_EXCLUDED = frozenset([
    "adjusting", "attached to", "between", "bigger than", "biting", "boarding", "brushing", "chewing", "cleaning",
    "climbing", "close to", "coming from", "coming out of", "contain", "crossing", "dragging", "draped over",
    "drinking", "drinking from", "driving", "driving down", "driving on", "eating from", "eating in", "enclosing",
    "exiting", "facing", "filled with", "floating in", "floating on", "flying", "flying above", "flying in",
    "flying over", "flying through", "full of", "going down", "going into", "going through", "grazing in",
    "growing in", "growing on", "guiding", "hanging from", "hanging in", "hanging off", "hanging over",
    "higher than", "holding onto", "hugging", "in between", "jumping off", "jumping on", "jumping over", "kept in",
    "larger than", "leading", "leaning over", "leaving", "licking", "longer than", "looking in", "looking into",
    "looking out", "looking over", "looking through", "lying next to", "lying on top of", "making", "mixed with",
    "mounted on", "moving", "on the back of", "on the edge of", "on the front of", "on the other side of",
    "opening", "painted on", "parked at", "parked beside", "parked by", "parked in", "parked in front of",
    "parked near", "parked next to", "perched on", "petting", "piled on", "playing", "playing in", "playing on",
    "playing with", "pouring", "reaching for", "reading", "reflected on", "riding on", "running in", "running on",
    "running through", "seen through", "sitting behind", "sitting beside", "sitting by", "sitting in front of",
    "sitting near", "sitting next to", "sitting under", "skiing down", "skiing on", "sleeping in", "sleeping on",
    "smiling at", "sniffing", "splashing", "sprinkled on", "stacked on", "standing against", "standing around",
    "standing behind", "standing beside", "standing in front of", "standing near", "standing next to",
    "staring at", "stuck in", "surrounding", "swimming in", "swinging", "talking to", "topped with", "touching",
    "traveling down", "traveling on", "tying", "typing on", "underneath", "wading in", "waiting for",
    "walking across", "walking by", "walking down", "walking next to", "walking through", "working in",
    "working on", "worn on", "wrapped around", "wrapped in", "by", "of", "near", "next to", "with", "beside",
    "on the side of", "around"])
ARO_VGA_MIN_COUNT = 25  # ARO's VG_Attribution.evaluate_scores skips attribute pairs with fewer cases


def _check(scores: torch.Tensor) -> None:
    if scores.ndim != 3 or scores.shape[2] < scores.shape[1] or scores.shape[1] < 1:
        raise ValueError(f"scores must be [N, I, C] with 1 ≤ I ≤ C, got {list(scores.shape)}")


def selection_correct(scores: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"text", "image", "group", "tie"} [N] bool per item, under the papers' strict ``>``.

    text: every image i scores its caption i above every other caption; image: every true caption i scores
    its image above every other image; group: both; tie: some comparison of the two is an exact tie."""
    _check(scores)
    n, i_count, _ = scores.shape
    diag = torch.arange(i_count)
    true = scores[:, diag, diag]                                       # [N, I]
    others = scores.clone()
    others[:, diag, diag] = float("-inf")
    text_best = others.amax(dim=2)                                     # [N, I] best negative caption per image
    image_best = others[:, :, :i_count].amax(dim=1)                    # [N, I] best other image per true caption
    text = (true > text_best).all(dim=1)
    image = (true > image_best).all(dim=1) if i_count > 1 else torch.ones(n, dtype=torch.bool)
    tie = (true == text_best).any(dim=1) | ((true == image_best).any(dim=1) if i_count > 1 else False)
    return {"text": text, "image": image, "group": text & image, "tie": tie}


def binomial_stderr(p: float, n: int) -> float:
    """Standard error sqrt(p(1 − p)/n) of an accuracy p over n independent items (NaN without items)."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def selection_metrics(scores: torch.Tensor) -> dict[str, float]:
    """{"text_acc", "image_acc", "acc", "acc_stderr", "n", "ties"}: CLIP_benchmark's keys, strict ``>``."""
    c = selection_correct(scores)
    n = len(c["text"])
    out = {"text_acc": _mean(c["text"]), "image_acc": _mean(c["image"]), "acc": _mean(c["group"])}
    out["acc_stderr"] = binomial_stderr(out["acc"], n)
    return {**out, "n": n, "ties": int(c["tie"].sum())}


def selection_chance(images: int, captions: int) -> dict[str, float]:
    """Expected metrics of random scores: 1/C per image with one image (SugarCrepe, ARO); Winoground's
    25 / 25 / 16.67 % for two images and two captions (Thrush et al., Table 3)."""
    if images == 1:
        return {"text_acc": 1 / captions, "image_acc": 1.0, "acc": 1 / captions}
    if images == captions == 2:
        return {"text_acc": 0.25, "image_acc": 0.25, "acc": 1 / 6}
    raise ValueError(f"no chance level for items of {images} images and {captions} captions")


def clip_benchmark_selection(scores: torch.Tensor) -> dict[str, float]:
    """CLIP_benchmark's ``image_caption_selection`` rule on the same scores: image i is right when
    ``argmax`` over its captions is i, caption i when ``argmax`` over the images is i; ``argmax`` returns
    the first maximum, so a tie is won by the lower index (SugarCrepe's positive, Winoground's image 0 and
    caption 0) — where the papers count every tie as wrong."""
    _check(scores)
    gt = torch.arange(scores.shape[1])
    text = (scores.argmax(dim=2) == gt).all(dim=1)
    image = (scores.argmax(dim=1)[:, :len(gt)] == gt).all(dim=1)
    return {"text_acc": _mean(text), "image_acc": _mean(image), "acc": _mean(text & image)}


def macro_accuracy(correct: torch.Tensor, groups: list[str], exclude: frozenset[str] = frozenset(),
                   min_count: int = 1) -> dict:
    """ARO's macro accuracy: per-group accuracy over the groups not in ``exclude`` with at least
    ``min_count`` items, then their unweighted mean.

    Returns {"acc" (macro), "acc_stderr" (of that mean: sqrt(Σ p_g(1 − p_g)/n_g) / G), "micro_acc" (over
    the kept items), "n" (kept items), "groups" {name: {"acc", "n"}} (kept), "excluded_groups",
    "excluded_items"}."""
    if len(groups) != len(correct):
        raise ValueError(f"{len(groups)} group names for {len(correct)} items")
    counts = Counter(groups)
    kept = sorted(g for g, k in counts.items() if g not in exclude and k >= min_count)
    keep = set(kept)
    per = {g: {"acc": 0.0, "n": counts[g]} for g in kept}
    for g, ok in zip(groups, correct.tolist()):
        if g in keep:
            per[g]["acc"] += ok / counts[g]
    n = sum(counts[g] for g in kept)
    macro = sum(v["acc"] for v in per.values()) / len(kept) if kept else float("nan")
    var = sum(v["acc"] * (1 - v["acc"]) / v["n"] for v in per.values())
    return {"acc": macro, "acc_stderr": math.sqrt(var) / len(kept) if kept else float("nan"),
            "micro_acc": sum(v["acc"] * v["n"] for v in per.values()) / n if n else float("nan"), "n": n,
            "groups": per, "excluded_groups": len(counts) - len(kept), "excluded_items": len(groups) - n}


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(mean(a − b), its standard error) for two scorers' per-item correctness on the same items.

    The paired error std(a − b)/sqrt(n) is what a comparison of two models on one test set needs: items
    both get right or both get wrong add no noise, unlike two independent binomial errors."""
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired items must be two [N] vectors, got {list(a.shape)} and {list(b.shape)}")
    d = a.double() - b.double()
    n = len(d)
    if n < 2:
        return (float(d.mean()) if n else float("nan")), float("nan")
    return float(d.mean()), float(d.std(unbiased=True)) / math.sqrt(n)


def _mean(x: torch.Tensor) -> float:
    return float(x.double().mean()) if len(x) else float("nan")
