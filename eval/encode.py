"""Encoding a benchmark set: batched, no gradient, optional autocast, with a progress bar."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def encode_images(model, preprocess: Callable, images: Iterable[Image.Image], batch_size: int,
                  device: torch.device, dtype: torch.dtype | None = None, total: int | None = None,
                  desc: str = "images", progress: bool = True) -> torch.Tensor:
    """[N, D] L2-normalised image features in fp32."""
    feats, batch = [], []

    def flush():
        pixels = torch.stack(batch).to(device)
        with _autocast(device, dtype):
            feats.append(F.normalize(model.encode_image(pixels).float(), dim=-1).cpu())
        batch.clear()

    for img in tqdm(images, total=total, desc=desc, disable=not progress, leave=False):
        batch.append(preprocess(img))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return torch.cat(feats)


@torch.no_grad()
def encode_texts(model, tokenizer: Callable, texts: list[str], batch_size: int, device: torch.device,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """[T, D] L2-normalised text features in fp32."""
    feats = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start:start + batch_size]).to(device)
        with _autocast(device, dtype):
            feats.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(feats)
