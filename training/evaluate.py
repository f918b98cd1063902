"""Held-out evaluation during and after training, through the ``eval`` runners."""

from __future__ import annotations

from pathlib import Path

import torch

import mmcontrast as mc
from eval.compositional import run_compositional
from eval.compositional_sets import read_shapes
from eval.readers import read_wds
from eval.retrieval import run_retrieval
from eval.zeroshot import run_zeroshot
from mmcontrast.errors import UserError

from .config import EvalConfig

COMPOSITIONAL_KEYS = ("acc", "acc_stderr", "n", "ties")   # per category in metrics.jsonl; two-image
PAIR_KEYS = ("text_acc", "image_acc")                      # (Winoground) categories also keep these


def evaluate(model, cfg: EvalConfig, device: torch.device) -> dict:
    """{"retrieval": result, "zeroshot": result, "compositional": result} for the configured sets (each may be
    skipped)."""
    _, preprocess = mc.make_transforms(model.preprocess_cfg)
    tokenizer = mc.make_tokenizer(model.model_cfg)
    results = {}
    if cfg.retrieval:
        results["retrieval"] = run_retrieval(model, preprocess, tokenizer, read_wds(cfg.retrieval),
                                             cfg.batch_size, device, progress=False, rerank_k=cfg.rerank_k)
    if cfg.zeroshot:
        results["zeroshot"] = run_zeroshot(model, preprocess, tokenizer, read_wds(cfg.zeroshot),
                                           cfg.batch_size, device, progress=False)
    if cfg.compositional:
        results["compositional"] = evaluate_compositional(model, preprocess, tokenizer, cfg.compositional,
                                                          cfg.batch_size, device)
    return results


def evaluate_compositional(model, preprocess, tokenizer, root: str, batch_size: int, device: torch.device) -> dict:
    """The generated shapes set under ``root`` (``python -m data_prep compositional``; SugarCrepe's categories
    and Winoground-style groups, Hsieh et al. 2023, Thrush et al. 2022) scored as ``python -m eval
    compositional --dataset shapes`` scores it: {"metrics": {scorer: {category: compact metrics}}, "chance":
    {category: chance}, "root", "items", "images", "texts"}; scorers are "embeddings" and, with fusion blocks, "itm"."""
    if not Path(root).is_dir():
        raise UserError(f"dataset not found: {root} (eval.compositional: build it with `python -m data_prep "
                        f"compositional --out {root}`, or set eval.compositional='' to skip it)")
    ds = read_shapes(root)
    result = run_compositional(model, preprocess, tokenizer, ds, batch_size, device, progress=False)
    pure = result["scorers"]["embeddings"]
    chance = {short_category(k): v for k, v in pure["chance"].items() if k != "overall"}
    metrics = {scorer: compact_scores(scored) for scorer, scored in result["scorers"].items()}
    return {"metrics": metrics, "chance": {**chance, "mean": pure["chance"]["overall"]}, "root": str(root),
            **{k: result[k] for k in ("items", "images", "texts")}}


def short_category(name: str) -> str:
    """``shapes_crepe/swap_att`` → ``swap_att``, ``shapes_winoground`` → ``winoground``."""
    return name.removeprefix("shapes_crepe/").removeprefix("shapes_")


def compact_scores(scored: dict) -> dict:
    """One scorer's ``score_set`` result as metrics.jsonl keeps it: per category accuracy, its standard error,
    items and ties (text and image accuracy too where a case has two images), and SugarCrepe's mean over the
    one-image categories as "mean"."""
    out = {}
    for name, m in scored["categories"].items():
        two_images = scored["chance"][name]["image_acc"] < 1  # chance 1: one image, its accuracy is always 1
        keys = COMPOSITIONAL_KEYS + (PAIR_KEYS if two_images else ())
        out[short_category(name)] = {k: m[k] for k in keys}
    out["mean"] = {k: scored["metrics"][k] for k in COMPOSITIONAL_KEYS}
    return out
