"""Tokenizers: open_clip's CLIP BPE (shipped inside the package, no download) or a local HF one."""

from __future__ import annotations

import open_clip


def make_tokenizer(model_cfg: dict):
    """The tokenizer a model config asks for, with its context length."""
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = text_cfg.get("context_length", 77)
    if "hf_tokenizer_name" in text_cfg:
        from .model import resolve_package_path
        return open_clip.tokenizer.HFTokenizer(resolve_package_path(text_cfg["hf_tokenizer_name"]),
                                               context_length=context_length)
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
