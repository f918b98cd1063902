"""Encoding benchmark images and texts: batched, no gradient, split across processes, progress bar."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mmcontrast.distributed import rank
from mmcontrast.errors import UserError

from .distributed import gather_rows, my_indices
from .sets import FileImages, WdsImages


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class _Preprocessed(torch.utils.data.Dataset):
    def __init__(self, images: FileImages, indices: list[int], preprocess: Callable):
        self.images, self.indices, self.preprocess = images, indices, preprocess

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        return self.preprocess(self.images.image(self.indices[j]))


def image_batches(images, indices, preprocess, batch_size, workers):
    """Preprocessed image batches of `indices`: a shard stream read in order here, files through a DataLoader."""
    if isinstance(images, WdsImages):  # a stream: read in order in this process
        batch = []
        for _, im in images.iter_images(indices):
            batch.append(preprocess(im))
            if len(batch) == batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)
    else:
        yield from torch.utils.data.DataLoader(_Preprocessed(images, indices, preprocess), batch_size=batch_size,
                                               num_workers=workers)


@torch.no_grad()
def encode_images(model, preprocess: Callable, images: FileImages | WdsImages, batch_size: int,
                  device: torch.device, dtype: torch.dtype | None = None, workers: int = 0,
                  desc: str = "images", progress: bool = True) -> torch.Tensor:
    """[N, D] L2-normalised image features in fp32, identical on every process."""
    indices = my_indices(len(images))
    feats = []
    show = progress and rank() == 0
    with tqdm(total=len(indices), desc=desc, disable=not show, leave=False) as bar:
        for pixels in image_batches(images, indices, preprocess, batch_size, workers):
            with _autocast(device, dtype):
                feats.append(F.normalize(model.encode_image(pixels.to(device)).float(), dim=-1).cpu())
            bar.update(len(pixels))
    local = torch.cat(feats) if feats else torch.empty(0, 0)
    return gather_rows(local, len(images))


@torch.no_grad()
def encode_texts(model, tokenizer: Callable, texts: list[str], batch_size: int, device: torch.device,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """[T, D] L2-normalised text features in fp32, identical on every process."""
    indices = my_indices(len(texts))
    feats = []
    for start in range(0, len(indices), batch_size):
        tokens = tokenizer([texts[i] for i in indices[start:start + batch_size]]).to(device)
        with _autocast(device, dtype):
            feats.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    local = torch.cat(feats) if feats else torch.empty(0, 0)
    return gather_rows(local, len(texts))


def check_finite(features: torch.Tensor, what: str, rows: str) -> torch.Tensor:
    """``features`` if every value is finite; else one line saying how many of its ``rows`` hold NaN or inf.

    A non-finite feature ranks arbitrarily: the metrics would come out near chance, with exit status 0."""
    bad = ~torch.isfinite(features).all(dim=-1) if features.ndim > 1 else ~torch.isfinite(features)
    n_bad = int(bad.sum())
    if n_bad:
        raise UserError(f"the model's {what} hold NaN or inf for {n_bad:,} of {len(bad):,} {rows}; "
                        "the weights may be broken (a diverged run?): no metric computed from them")
    return features
