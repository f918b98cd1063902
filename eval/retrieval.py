"""Image–text retrieval on a benchmark set: every caption kept, exact chunked recall@K."""

from __future__ import annotations

import torch

from mmcontrast.metrics import chance_metrics, retrieval_metrics

from .datasets import WdsDataset, iter_samples
from .encode import encode_images, encode_texts


def run_retrieval(model, preprocess, tokenizer, ds: WdsDataset, batch_size: int = 256,
                  device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                  chunk_size: int = 1024, progress: bool = True) -> dict:
    """{"metrics": CLIP_benchmark names + mean_recall + rsum, "chance": ..., "images": I, "texts": T}."""
    device = torch.device(device)
    texts: list[str] = []
    text_to_image: list[int] = []

    def images():
        for i, (_, image, captions) in enumerate(iter_samples(ds)):
            texts.extend(captions)
            text_to_image.extend([i] * len(captions))
            yield image

    image_features = encode_images(model, preprocess, images(), batch_size, device, dtype,
                                   desc=f"{ds.name}: images", progress=progress)
    text_features = encode_texts(model, tokenizer, texts, batch_size, device, dtype)
    text_to_image = torch.tensor(text_to_image)
    metrics = retrieval_metrics(image_features, text_features, text_to_image, chunk_size=chunk_size)
    return {"metrics": metrics, "chance": chance_metrics(text_to_image, image_features.shape[0]),
            "images": image_features.shape[0], "texts": len(texts)}
