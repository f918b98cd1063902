"""Zero-shot classification (Radford et al. 2021, §3.1.4): class weights from prompt ensembles.

Class weight = mean over its prompts of L2-normalised text embeddings, L2-normalised again;
``logits = 100 · normalize(image_features) @ W`` as in CLIP_benchmark.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from mmcontrast.templates import template_problem

Templates = Sequence[str | Callable[[str], str]] | Mapping[str, Sequence[str]]
Images = Image.Image | Sequence[Image.Image] | torch.Tensor  # one image, a list, or [N, 3, H, W] / [3, H, W]


def class_prompts(classnames: Sequence[str], templates: Templates) -> list[list[str]]:
    """Prompts per class: ``"{c}"`` strings, callables, or a CuPL-style dict classname → prompts.

    A ``ValueError`` names what cannot give every class at least one prompt (no classes, no templates, a
    class with an empty prompt list, a template without ``{c}`` or with another placeholder): an empty
    list would average to NaN weights, and every image would be predicted as that class."""
    if not classnames:
        raise ValueError("no class names")
    if isinstance(templates, Mapping):
        missing = [c for c in classnames if c not in templates]
        if missing:
            raise ValueError(f"no prompts for classes {missing[:5]}")
        for c in classnames:
            prompts = templates[c]
            if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise ValueError(f"the prompts for class {c!r} are not a non-empty list of non-empty strings")
        return [list(templates[c]) for c in classnames]
    if not templates:
        raise ValueError("no templates")
    for t in templates:
        problem = None if callable(t) else template_problem(t) if isinstance(t, str) else "is not a string"
        if problem:
            raise ValueError(f"template {str(t)[:80]!r} {problem}")
    return [[t(c) if callable(t) else t.format(c=c) for t in templates] for c in classnames]


@torch.no_grad()
def build_class_weights(model, tokenizer, classnames: Sequence[str], templates: Templates,
                        device: str | torch.device = "cpu", batch_size: int = 256) -> torch.Tensor:
    """[D, C] zero-shot classifier weights."""
    prompts = class_prompts(classnames, templates)
    flat = [p for ps in prompts for p in ps]
    feats = []
    for start in range(0, len(flat), batch_size):
        tokens = tokenizer(flat[start:start + batch_size]).to(device)
        feats.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    feats = torch.cat(feats)
    weights, start = [], 0
    for ps in prompts:
        weights.append(F.normalize(feats[start:start + len(ps)].mean(dim=0), dim=-1))
        start += len(ps)
    return torch.stack(weights, dim=1)


class ZeroShotClassifier:
    """Classify PIL images (or preprocessed tensors) into ``classnames`` with any loaded model.

    ``predict(image)`` gives one class name, ``predict([images])`` a list; ``predict_proba`` likewise [C] or [N, C]."""

    def __init__(self, model, tokenizer, preprocess, classnames: Sequence[str], templates: Templates,
                 device: str | torch.device | None = None, batch_size: int = 64):
        self.model, self.preprocess, self.classnames = model, preprocess, list(classnames)
        self.device = device or next(model.parameters()).device
        self.batch_size = batch_size
        self.weights = build_class_weights(model, tokenizer, self.classnames, templates, self.device)  # [D, C]
        bad = int((~torch.isfinite(self.weights).all(dim=0)).sum())
        if bad:  # every image would be predicted as one of these classes
            raise ValueError(f"the class weights hold NaN or inf for {bad} of {len(self.classnames)} classes: "
                             "the model's weights may be broken")

    @torch.no_grad()
    def logits(self, images: Images) -> torch.Tensor:
        """[N, C] = 100 · normalize(image features) @ W; [C] for one image."""
        if _is_single(images):
            return self.logits([images] if isinstance(images, Image.Image) else images[None])[0]
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            pixels = chunk if isinstance(chunk, torch.Tensor) else torch.stack([self.preprocess(im) for im in chunk])
            feats = F.normalize(self.model.encode_image(pixels.to(self.device)).float(), dim=-1)
            out.append(100.0 * feats @ self.weights)
        return torch.cat(out)

    def predict_proba(self, images: Images) -> torch.Tensor:
        """[N, C] class probabilities (softmax of the logits), rows summing to 1; [C] for one image."""
        return self.logits(images).softmax(dim=-1)

    def predict(self, images: Images) -> list[str] | str:
        """The class name of each image: a list for a list or batch, one name for one image."""
        best = self.logits(images).argmax(dim=-1)
        if best.ndim == 0:
            return self.classnames[int(best)]
        return [self.classnames[i] for i in best.tolist()]


def _is_single(images: Images) -> bool:
    """One PIL image, or one preprocessed [3, H, W] tensor (a batch is [N, 3, H, W])."""
    return isinstance(images, Image.Image) or (isinstance(images, torch.Tensor) and images.ndim == 3)
