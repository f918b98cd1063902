"""Held-out evaluation during and after training, through the ``eval`` runners."""

from __future__ import annotations

import torch

import mmcontrast as mc
from eval.readers import read_wds
from eval.retrieval import run_retrieval
from eval.zeroshot import run_zeroshot

from .config import EvalConfig


def evaluate(model, cfg: EvalConfig, device: torch.device) -> dict:
    """{"retrieval": result, "zeroshot": result} for the configured sets (each may be skipped)."""
    _, preprocess = mc.make_transforms(model.preprocess_cfg)
    tokenizer = mc.make_tokenizer(model.model_cfg)
    results = {}
    if cfg.retrieval:
        results["retrieval"] = run_retrieval(model, preprocess, tokenizer, read_wds(cfg.retrieval),
                                             cfg.batch_size, device, progress=False, rerank_k=cfg.rerank_k)
    if cfg.zeroshot:
        results["zeroshot"] = run_zeroshot(model, preprocess, tokenizer, read_wds(cfg.zeroshot),
                                           cfg.batch_size, device, progress=False)
    return results
