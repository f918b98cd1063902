"""The benchmark evaluations as Python functions, for notebooks and scripts::

    import eval as mce
    mce.zeroshot("cifar10", "~/data", model="runs/demo/final")      # {"acc1": ..., "n": 10000, ...}
    mce.retrieval("flickr30k", "~/data/flickr30k", model="openclip:ViT-B-32", pretrained="vit_b_32.safetensors")

The dataset is named as ``python -m eval`` takes it (``--dataset``, ``--root``, ``--split``); the model is a
spec string as ``--model`` takes it (``mmcontrast.load``: a model directory, ``openclip:ARCH`` with
``pretrained``, ``hf:DIR``) or an already loaded ``(model, preprocess, tokenizer)``. Each returns the metrics,
flat, with the set's size and the metrics' chance levels. With ``cache_dir`` the image (and caption)
embeddings are cached as the command line caches them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mmcontrast.errors import UserError

from .cache import EmbeddingCache, cache_key, features_digest, file_identity
from .datasets import open_dataset
from .retrieval import run_retrieval
from .sets import ClassificationSet, RetrievalSet
from .zeroshot import run_zeroshot

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
Model = str | os.PathLike | tuple


def zeroshot(dataset: str, root: str | os.PathLike | None = None, *, model: Model,
             pretrained: str | os.PathLike | None = None, split: str | None = None,
             classnames: str | os.PathLike | None = None, templates: str | None = None, batch_size: int = 256,
             device: str | torch.device | None = None, precision: str = "fp32",
             cache_dir: str | os.PathLike | None = None, workers: int = 0, progress: bool = True) -> dict:
    """Zero-shot classification of ``dataset``: ``{acc1, acc5, mean_per_class_recall}`` (a multi-label set:
    ``mean_average_precision``) with ``n`` (images), ``classes`` and ``chance``. ``templates``: ``openai``,
    ``simple``, ``cupl`` or a file; default: CLIP_benchmark's for the dataset."""
    ds = _open(dataset, root, split, classnames, templates, ClassificationSet)
    net, preprocess, tokenizer, device, dtype = _load(model, pretrained, device, precision)
    identity = _identity(model, pretrained, net, preprocess, precision)
    key = cache_key(identity, file_identity(ds.source), ds.images.fingerprint()) if cache_dir else ""
    result = run_zeroshot(net, preprocess, tokenizer, ds, batch_size, device, dtype, workers=workers,
                          cache=EmbeddingCache(cache_dir), cache_key=key,
                          model_key=cache_key(identity) if cache_dir else "", progress=progress)
    return {**result["metrics"], "n": result["n"], "classes": result["classes"], "chance": result["chance"]}


def retrieval(dataset: str, root: str | os.PathLike | None = None, *, model: Model,
              pretrained: str | os.PathLike | None = None, split: str | None = None, captions_per_image: int = 0,
              backend: str = "torch", rerank_k: int = 0, batch_size: int = 256,
              device: str | torch.device | None = None, precision: str = "fp32",
              cache_dir: str | os.PathLike | None = None, workers: int = 0, progress: bool = True) -> dict:
    """Image↔text retrieval on ``dataset``: CLIP_benchmark's recall@K (plus ``mean_recall``, ``rsum``) with
    ``images``, ``texts`` and ``chance``; with ``rerank_k``, also ``reranked`` (the ITM head's metrics)."""
    ds = _open(dataset, root, split, None, None, RetrievalSet)
    if captions_per_image:
        ds = ds.first_captions(captions_per_image)
    net, preprocess, tokenizer, device, dtype = _load(model, pretrained, device, precision)
    key = cache_key(_identity(model, pretrained, net, preprocess, precision), file_identity(ds.source),
                    ds.images.fingerprint(), ds.texts) if cache_dir else ""
    result = run_retrieval(net, preprocess, tokenizer, ds, batch_size, device, dtype, workers=workers,
                           cache=EmbeddingCache(cache_dir), cache_key=key, progress=progress, backend=backend,
                           rerank_k=rerank_k)
    out = {**result["metrics"], "images": result["images"], "texts": result["texts"], "chance": result["chance"]}
    if "reranked" in result:
        out["reranked"] = result["reranked"]
    return out


def _open(dataset: str, root, split, classnames, templates, kind: type):
    root = Path(root).expanduser() if root is not None else None
    ds = open_dataset(dataset, root, split, classnames, templates, log=lambda *a: None)
    if not isinstance(ds, kind):
        task = "zeroshot" if kind is ClassificationSet else "retrieval"
        raise UserError(f"{dataset} is a {'retrieval' if isinstance(ds, RetrievalSet) else 'classification'} "
                        f"set; {task}() needs the other kind")
    return ds


def _load(model: Model, pretrained, device, precision: str) -> tuple:
    """(model, preprocess, tokenizer, device, autocast dtype); a loaded model is moved to ``device`` if given."""
    if precision not in DTYPES:
        raise UserError(f"precision {precision!r}: use {', '.join(DTYPES)}")
    if isinstance(model, tuple):
        if len(model) != 3 or pretrained is not None:
            raise UserError("model: a spec string, or a loaded (model, preprocess, tokenizer) without pretrained")
        net, preprocess, tokenizer = model
        device = torch.device(device or next(net.parameters()).device)
        net.to(device)
    else:
        import mmcontrast as mc

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        net, preprocess, tokenizer = mc.load(_spec(model), pretrained=pretrained, device=device)
    return net, preprocess, tokenizer, device, DTYPES[precision]


def _spec(model: str | os.PathLike) -> str:
    spec = str(model)
    return os.path.expanduser(spec) if spec.startswith("~") else spec


def _identity(model: Model, pretrained, net, preprocess, precision: str) -> list:
    """What the cached embeddings depend on: the weights files (as the command line keys them), or for a
    loaded model, which no file names, its weights' bytes; then the preprocessing and the precision."""
    if isinstance(model, tuple):
        return [[features_digest(t) for t in net.state_dict().values()], repr(preprocess), precision]
    spec = _spec(model)
    weights = Path(pretrained or spec.removeprefix("hf:"))
    return [spec, file_identity(weights) if weights.exists() else None, net.preprocess_cfg, precision]
