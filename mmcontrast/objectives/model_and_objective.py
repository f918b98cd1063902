"""The model and its objective as one module, the one the trainer prepares for DDP.

DDP averages the gradients of the parameters of the module it wraps; an objective's own trainable parts
(SLIP's head, the Zorro heads of ``WithFusion``) live in the objective, so wrapping both makes DDP
average those too, in the same all-reduce as the model's. Parameters are registered model first, then
objective: the optimizer's parameter order.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import torch

from .base import Objective


class ModelAndObjective(torch.nn.Module):
    """``forward(image, text, batch)``: the objective's losses; ``forward(image, text)``: the model's outputs.

    The model runs under ``autocast``; the objective computes outside it, in fp32, and runs the model itself
    (a teacher, extra views, the fusion blocks) under the same ``autocast``, set here once. The outputs-only
    form is what GradCache re-encodes its chunks with, through the DDP wrapper.
    """

    def __init__(self, model: torch.nn.Module, objective: Objective,
                 autocast: Callable[[], ContextManager] = nullcontext):
        super().__init__()
        self.model, self.objective, self.autocast = model, objective, autocast
        objective.model_autocast = autocast

    def forward(self, image: torch.Tensor, text: torch.Tensor, batch: dict | None = None) -> dict:
        with self.autocast():
            outputs = self.model(image, text)
        if batch is None:
            return outputs
        # accelerate's prepare runs this whole forward under autocast: the objective leaves it explicitly
        with torch.autocast(image.device.type, enabled=False):
            model = {"model": self.model} if self.objective.needs_model else {}
            return self.objective(**outputs, batch=batch, **model)
