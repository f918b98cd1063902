"""GradCache: exact gradients of a large contrastive batch with the memory of one chunk.

Gao, Zhang, Han, Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup" (arXiv 2101.06983; code luyug/GradCache). The loss depends on the encoders only through the
features r_i, so ∂L/∂Θ = Σ_i (∂L/∂r_i)ᵀ ∂r_i/∂Θ. One step:

1. encode every chunk without a graph, recording the random state before each chunk;
2. compute the loss **once** on the detached features, with the loss parameters (logit scale and
   bias) live, and back-propagate: the loss parameters get their gradient, the features ∂L/∂r_i;
3. re-encode each chunk with a graph under its recorded random state — dropout and FLIP patch
   dropout draw the same masks — and back-propagate the surrogate Σ_i ⟨r_i, sg(∂L/∂r_i)⟩.

The sum over chunks is exactly the full-batch gradient (``tests/test_gradcache.py``). Unlike
OpenCLIP's ``--accum-freq``, the loss is evaluated once (its logit scale gets 1×, not k×, its
gradient) and the random state is replayed. Under DDP only the last chunk synchronises gradients; the
trainer passes its prepared ``ModelAndObjective``, whose ``forward(image, text)`` encodes a chunk under
its own autocast, so that the chunks go through the DDP wrapper.
Memory: one chunk's activations plus the N×d features and their gradients plus the logits.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
from torch.utils.checkpoint import get_device_states, set_device_states

from .objectives.base import Objective
from .objectives.pairs import at_least_fp32


class RandContext:
    """The random state when created; ``with ctx:`` runs code under that state, then restores the current one."""

    def __init__(self, *tensors: torch.Tensor):
        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=self.devices)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        set_device_states(self.devices, self.device_states)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def _features(out: dict) -> tuple[torch.Tensor, torch.Tensor]:
    # Features (and so their cached gradients) in at least fp32, whatever the autocast dtype.
    return at_least_fp32(out["image_features"]), at_least_fp32(out["text_features"])


def grad_cache_step(model: torch.nn.Module, objective: Objective, batch: dict, chunk_size: int,
                    loss_params: Callable[[], dict], backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
                    no_sync: Callable = nullcontext, replay_rng: bool = True) -> dict:
    """Forward and backward of one step in chunks of ``chunk_size``; returns the objective's losses.

    ``model(image, text)``: the model's outputs for a chunk. ``objective``: one whose ``grad_cache_refusal()``
    is None. ``loss_params()``: the objective's live parameters, e.g. ``{"logit_scale": m.logit_scale.exp()}``.
    ``backward``: how the loss is back-propagated (``accelerator.backward`` scales it under fp16; the
    cached feature gradients are then scaled too). ``no_sync()``: DDP's no-sync context, entered for
    every chunk but the last. ``replay_rng=False`` exists only to show that replay is needed.
    """
    image, text = batch["image"], batch["text"]
    chunks = [slice(i, i + chunk_size) for i in range(0, image.shape[0], chunk_size)]
    states, image_reps, text_reps = [], [], []
    with torch.no_grad():
        for c in chunks:
            states.append(RandContext(image[c], text[c]) if replay_rng else nullcontext())
            u, v = _features(model(image[c], text[c]))
            image_reps.append(u)
            text_reps.append(v)
    image_features = torch.cat(image_reps).requires_grad_()
    text_features = torch.cat(text_reps).requires_grad_()
    losses = objective(image_features=image_features, text_features=text_features, **loss_params(), batch=batch)
    backward(losses["loss"])
    for k, (c, state) in enumerate(zip(chunks, states)):
        with (no_sync() if k < len(chunks) - 1 else nullcontext()), state:
            out = model(image[c], text[c])
            u, v = _features(out)
            surrogate = (u * image_features.grad[c]).sum() + (v * text_features.grad[c]).sum()
            # Zero-weight terms put the loss parameters in this graph too, so DDP sees every parameter used
            # and averages their gradients (already accumulated in step 2) with the rest.
            surrogate = surrogate + sum(0.0 * out[k].sum() for k in ("logit_scale", "logit_bias") if k in out)
            surrogate.backward()
    return {k: v.detach() for k, v in losses.items()}
