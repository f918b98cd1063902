"""The model and its objective as one module, the one the trainer prepares for DDP.

DDP averages the gradients of the parameters of the module it wraps; an objective's own trainable parts
(SLIP's head, the Zorro heads of ``WithFusion``) live in the objective, so wrapping both makes DDP
average those too, in the same all-reduce as the model's. Parameters are registered model first, then
objective: the optimizer's parameter order.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, ContextManager

import torch

from .base import Objective
from .pairs import at_least_fp32


def at_least_fp32_tree(outputs):
    """fp16/bf16 tensors in nested dicts/lists/tuples → fp32 (``accelerate``'s ``convert_to_fp32``)."""
    if isinstance(outputs, torch.Tensor):
        return at_least_fp32(outputs)
    if isinstance(outputs, dict):
        return {k: at_least_fp32_tree(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(at_least_fp32_tree(v) for v in outputs)
    return outputs


@contextmanager
def own_cast_cache(autocast: Callable[[], ContextManager]):
    """``autocast()`` with its own cache of low-precision weight copies, as a region of its own would have.

    Inside accelerate's outer autocast (see ``forward``) the cache outlives each inner region: a weight the
    model and the objective both use (the fusion blocks) would be cast once, and the gradients of its two uses
    summed in bf16 rather than in fp32 — close, not the same. Clearing the cache around each region keeps
    the gradients those of separate regions.
    """
    torch.clear_autocast_cache()
    try:
        with autocast():
            yield
    finally:
        torch.clear_autocast_cache()


def encode_texts(model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor,
                 like: torch.Tensor) -> torch.Tensor:
    """[b, K, D] L2-normalised text-tower embeddings of ``tokens`` [b, K, L] where ``mask`` [b, K], zero rows
    elsewhere (one shape on every rank, for the gathers), in ``like``'s device and at least fp32."""
    valid = mask.flatten()
    rows = at_least_fp32(like).new_zeros(valid.numel(), like.shape[-1])
    if valid.any():
        encoded = model.encode_text(tokens.flatten(0, 1)[valid], normalize=True)
        rows = rows.index_put((valid.nonzero()[:, 0],), encoded.to(rows.dtype))
    else:
        # asking for gradient as the other ranks' encodings do: a gather's backward is a collective that
        # every rank must enter
        rows.requires_grad_(torch.is_grad_enabled())
    return rows.view(*mask.shape, -1)


class ModelAndObjective(torch.nn.Module):
    """``forward(image, text, batch)``: the objective's losses; ``forward(image, text[, texts])``: the model's outputs.

    The model runs under ``autocast``; the objective computes outside it, in fp32, and runs the model itself
    (a teacher, extra views, the fusion blocks) under the same ``autocast``, set here once. The captions the
    objective declares in ``text_inputs`` are encoded here, in the same forward as the batch, and passed to it
    by name. The outputs-only form is what GradCache encodes its chunks with, through the DDP wrapper:
    ``texts`` (a chunk's rows of ``text_inputs``) adds their features to the outputs.
    """

    def __init__(self, model: torch.nn.Module, objective: Objective,
                 autocast: Callable[[], ContextManager] = nullcontext):
        super().__init__()
        self.model, self.objective, self.autocast = model, objective, autocast
        objective.model_autocast = lambda: own_cast_cache(autocast)

    def forward(self, image: torch.Tensor, text: torch.Tensor, batch: dict | None = None,
                texts: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict:
        with self.autocast():
            outputs = self.model(image, text)
        texts = self.objective.text_inputs(batch) if batch is not None else texts
        if texts:
            # a region of their own, as when the objective encoded them itself: the same numbers under bf16
            with own_cast_cache(self.autocast):
                outputs = {**outputs, **{name: encode_texts(self.model, tokens, mask, outputs["text_features"])
                                         for name, (tokens, mask) in texts.items()}}
        if batch is None:
            return outputs
        # The objective sees fp32 outputs, as it would outside a prepared model (accelerate converts what a
        # prepared forward returns), and runs outside autocast, which accelerate's prepare puts around this
        # whole forward.
        outputs = at_least_fp32_tree(outputs)
        torch.clear_autocast_cache()
        with torch.autocast(image.device.type, enabled=False):
            model = {"model": self.model} if self.objective.needs_model else {}
            return self.objective(**outputs, batch=batch, **model)
