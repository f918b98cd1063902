"""SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", arXiv 2303.15343).

    ℓ_ij = s·u_i·v_j + b,   z_ij = +1 for a positive pair, −1 otherwise
    L = −(1/N) Σ_i Σ_j log σ(z_ij ℓ_ij) = (1/N) Σ_ij softplus(−z_ij ℓ_ij)

Normalised by the number of images N, not N² (big_vision ``siglip.py``). The model must carry a
learnable bias b (``init_logit_bias``; the paper starts at s = 10, b = −10, preset ``tiny-siglip``).
With sample ids, z = 2M − 1 for the same-id mask M: captions of one image are positives of each other.

``chunk_size`` > 0 computes the N candidates in chunks of that many columns, each recomputed in the
backward pass (activation checkpointing): the loss and gradients are those of the full matrix,
and peak memory is O(b·chunk) instead of O(b·N). Across processes every rank scores its b images
against all N gathered texts (gradient through the gather), and the mean over ranks of the rank
losses is the global loss — the per-pair sum is the same as the paper's ring, computed by gather.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..distributed import all_gather_no_grad, all_gather_with_grad, rank
from .base import Objective
from .pairs import at_least_fp32, batch_ids

NEEDS_BIAS = ("the sigmoid loss needs a model with a learnable logit bias (model_cfg init_logit_bias, e.g. the "
              "tiny-siglip preset or an open_clip SigLIP architecture)")


def _block_loss(image, text, scale, bias, signs):
    return F.softplus(-signs * (scale * image @ text.T + bias)).sum()


class SigLipLoss(Objective):
    uses_sample_ids = True

    def __init__(self, chunk_size: int = 0, local_loss: bool = True, gather_with_grad: bool = True):
        super().__init__()
        if not (local_loss and gather_with_grad):
            raise ValueError("SigLipLoss scores each rank's images against all gathered texts (local_loss=True, "
                             "gather_with_grad=True); other modes are not implemented")
        if chunk_size < 0:
            raise ValueError(f"SigLipLoss chunk_size must be ≥ 0 (0: no chunks), got {chunk_size}")
        self.chunk_size = chunk_size

    def attach(self, model: torch.nn.Module, total_steps: int = 1) -> None:
        if getattr(model, "logit_bias", None) is None:
            raise ValueError(NEEDS_BIAS)

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, batch=None, **_) -> dict:
        if logit_bias is None:
            raise ValueError(NEEDS_BIAS)
        image, text = at_least_fp32(image_features), at_least_fp32(text_features)
        scale, bias = at_least_fp32(logit_scale), at_least_fp32(logit_bias)
        all_text = all_gather_with_grad(text)
        b, n = image.shape[0], all_text.shape[0]
        ids = batch_ids(batch)
        if ids is None:
            positive = torch.zeros(b, n, dtype=torch.bool, device=image.device)
            positive[torch.arange(b), torch.arange(b) + rank() * b] = True
        else:
            positive = ids[:, None] == all_gather_no_grad(ids)[None, :]
        signs = positive.to(image.dtype) * 2 - 1
        step = self.chunk_size or n
        total = image.new_zeros(())
        for start in range(0, n, step):
            cols = slice(start, start + step)
            if self.chunk_size:
                total = total + checkpoint(_block_loss, image, all_text[cols], scale, bias, signs[:, cols],
                                           use_reentrant=False)
            else:
                total = total + _block_loss(image, all_text[cols], scale, bias, signs[:, cols])
        return {"loss": total / b}
