"""CLIP symmetric InfoNCE (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision"), with OpenCLIP's distributed modes and multi-positive targets.

    L = ½ [ CE(s·U Vᵀ, T) + CE(s·V Uᵀ, Tᵀ) ]     U, V: L2-normalised features; s = exp(t)

T is the identity, or with sample ids the row-normalised same-id mask M_ij / Σ_k M_ik (SupCon's
"L_out" averaging; ALBEF/BLIP's ``sim_targets``): several captions of one image in a
batch are positives of each other, not negatives. With unique ids it is exactly InfoNCE.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .pairs import PairwiseObjective, batch_ids


def soft_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −Σ_j (M_ij / Σ_k M_ik) log softmax(logits_i)_j."""
    targets = positives.to(logits.dtype)
    targets = targets / targets.sum(dim=1, keepdim=True)
    return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()


class ClipLoss(PairwiseObjective):
    """Symmetric InfoNCE over the global batch (``local_loss`` b×N logits by default)."""

    def forward(self, image_features, text_features, logit_scale, batch=None, **_) -> dict:
        p = self.pairs(image_features, text_features, logit_scale, batch_ids(batch))
        if p.positives is None:
            return self.from_logits(p.logits_per_image, p.logits_per_text, p.labels)
        i2t = soft_cross_entropy(p.logits_per_image, p.positives)
        t2i = soft_cross_entropy(p.logits_per_text, p.positives)
        return {"loss": (i2t + t2i) / 2, "loss_i2t": i2t.detach(), "loss_t2i": t2i.detach()}

    @staticmethod
    def from_logits(logits_per_image, logits_per_text, labels) -> dict:
        """½ [CE(image→text) + CE(text→image)] of given logits."""
        i2t = F.cross_entropy(logits_per_image, labels)
        t2i = F.cross_entropy(logits_per_text, labels)
        return {"loss": (i2t + t2i) / 2, "loss_i2t": i2t.detach(), "loss_t2i": t2i.detach()}


@torch.no_grad()
def clamp_logit_scale(model: torch.nn.Module, max_scale: float = 100.0) -> None:
    """After each optimizer step: keep s = exp(t) in [1, max_scale] (CLIP clips at 100)."""
    model.logit_scale.clamp_(0, math.log(max_scale))
