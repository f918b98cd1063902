"""The one interface of every objective: ``objective(**model_outputs, batch=batch[, model=model])``.

An objective is a ``torch.nn.Module`` that returns ``{"loss": scalar, <named parts for logging>}``, OpenCLIP's
hand-off ``losses = loss(**model(images, texts))``. What it needs from the trainer and the data it declares
here, with defaults that suit a loss on the two embeddings alone; the trainer reads these declarations and
never probes for attributes. ``docs/objectives.md`` cites each objective's paper.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import torch


class Objective(torch.nn.Module):
    """Base of every objective; subclasses override the declarations and hooks they need."""

    # It runs the model itself (a teacher copy, extra image views, the fusion blocks): ``attach(model)``
    # before the first loss, and where it says so in its forward, ``model=`` at every call.
    needs_model: bool = False
    # The loader must add ``batch["image_views"]`` (two augmented views per sample, [2, b, 3, H, W]).
    needs_views: bool = False
    # The loader must add hard-negative captions (NegCLIP): ``batch["negatives"]`` [b, K, L] tokens and
    # ``batch["negatives_mask"]`` [b, K], which of them are captions.
    needs_negatives: bool = False
    # Several captions of one image are positives of each other through ``batch["sample_id"]``.
    uses_sample_ids: bool = False
    # The mixed-precision context in which the objective runs the model, when it does; the objective's
    # own arithmetic stays outside it, in fp32. The trainer sets it once (``ModelAndObjective``).
    model_autocast: Callable[[], ContextManager] = nullcontext

    def grad_cache_refusal(self) -> str | None:
        """Why the loss cannot be computed from GradCache's cached features, as "<what>: <why>"; None: it can."""
        return None

    def text_inputs(self, batch: dict | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Captions beyond ``batch["text"]`` the loss reads as features: ``{name: (tokens [b, K, L], mask [b, K])}``.

        Whoever runs the model encodes them through its text tower — ``ModelAndObjective`` in a plain step,
        GradCache chunk by chunk along with the captions, so that they get its exact gradients — and passes
        ``name=`` [b, K, D] to ``forward``: L2-normalised, zero where the mask is False. {}: none.
        """
        return {}

    def attach(self, model: torch.nn.Module, total_steps: int = 1) -> None:
        """Set up from the model before training: build heads or a teacher, check that the model fits."""

    def after_step(self, model: torch.nn.Module) -> None:
        """Once per optimizer step, after it (a teacher's EMA update, a queue's enqueue)."""

    def given_model(self, model: torch.nn.Module | None) -> torch.nn.Module:
        """``model`` of a call that needs it; an objective holds no handle on the model between calls."""
        if model is None:
            raise ValueError(f"{type(self).__name__} runs the model: call it as objective(**outputs, batch=batch, "
                             f"model=model)")
        return model

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint keeps of this objective (``objective.safetensors``; {}: none)."""
        return self.state_dict()

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)
