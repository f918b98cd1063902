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
its own autocast, so that the chunks go through the DDP wrapper. The captions an objective declares in
``text_inputs`` (NegCLIP's hard negatives) are features r_i like the others: each chunk's rows are encoded in
the chunk's forward (``forward(image, text, texts=...)``), cached, and re-encoded in step 3.
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


def grad_cache_step(model: torch.nn.Module, objective: Objective, batch: dict, chunk_size: int,
                    loss_params: Callable[[], dict], backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
                    no_sync: Callable = nullcontext, replay_rng: bool = True) -> dict:
    """Forward and backward of one step in chunks of ``chunk_size``; returns the objective's losses.

    ``model(image, text)``: the model's outputs for a chunk; for an objective with ``text_inputs`` it must be a
    ``ModelAndObjective`` (or its DDP wrapper), called with ``texts=`` the chunk's rows of them. ``objective``:
    one whose ``grad_cache_refusal()`` is None. ``loss_params()``: the objective's live parameters, e.g.
    ``{"logit_scale": m.logit_scale.exp()}``. ``backward``: how the loss is back-propagated
    (``accelerator.backward`` scales it under fp16; the cached feature gradients are then scaled too).
    ``no_sync()``: DDP's no-sync context, entered for every chunk but the last. ``replay_rng=False`` exists
    only to show that replay is needed.
    """
    image, text = batch["image"], batch["text"]
    texts = objective.text_inputs(batch)  # {name: (tokens [B, K, L], mask [B, K])}, encoded as features [B, K, D]
    names = ["image_features", "text_features", *texts]
    chunks = [slice(i, i + chunk_size) for i in range(0, image.shape[0], chunk_size)]

    def encode(c: slice) -> dict:
        extra = {"texts": {n: (tokens[c], mask[c]) for n, (tokens, mask) in texts.items()}} if texts else {}
        return model(image[c], text[c], **extra)

    states, reps = [], {n: [] for n in names}
    with torch.no_grad():
        for c in chunks:
            states.append(RandContext(image[c], text[c]) if replay_rng else nullcontext())
            out = encode(c)
            for n in names:
                # in at least fp32 (and so their cached gradients), whatever the autocast dtype
                reps[n].append(at_least_fp32(out[n]))
    features = {n: torch.cat(reps[n]).requires_grad_() for n in names}
    losses = objective(**features, **loss_params(), batch=batch)
    backward(losses["loss"])
    for k, (c, state) in enumerate(zip(chunks, states)):
        with (no_sync() if k < len(chunks) - 1 else nullcontext()), state:
            out = encode(c)
            surrogate = sum((at_least_fp32(out[n]) * features[n].grad[c]).sum() for n in names
                            if features[n].grad is not None)
            # Zero-weight terms put the loss parameters in this graph too, so DDP sees every parameter used
            # and averages their gradients (already accumulated in step 2) with the rest.
            surrogate = surrogate + sum(0.0 * out[p].sum() for p in ("logit_scale", "logit_bias") if p in out)
            surrogate.backward()
    return {k: v.detach() for k, v in losses.items()}
