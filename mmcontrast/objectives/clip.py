"""CLIP symmetric InfoNCE (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision"), with OpenCLIP's distributed modes (``local_loss``, ``gather_with_grad``).

    L = ½ [ CE(s·U Vᵀ, I) + CE(s·V Uᵀ, I) ]     U, V: L2-normalised features; s = exp(t)

Logits and cross-entropy run in fp32 whatever the autocast dtype: at s up to 100, bf16 dot
products lose the precision the softmax needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..distributed import all_gather_no_grad, all_gather_with_grad, rank


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 → fp32; fp32 and fp64 unchanged (float64 keeps gradcheck exact)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class ClipLoss:
    """Symmetric InfoNCE over the global batch.

    ``local_loss=True`` (default): each rank computes b×N logits against the gathered features,
    labels ``arange(b) + rank·b``. ``gather_with_grad=True`` (default): gradients flow to features
    of every rank. ``local_loss`` without ``gather_with_grad`` is wrong (features only get gradient
    as anchors, never as candidates) and is rejected.
    """

    def __init__(self, local_loss: bool = True, gather_with_grad: bool = True):
        if local_loss and not gather_with_grad:
            raise ValueError("ClipLoss(local_loss=True, gather_with_grad=False) gives wrong gradients: "
                             "features of other ranks would never receive gradient as candidates")
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad

    def logits(self, image_features, text_features, logit_scale):
        """(logits_per_image, logits_per_text, labels), in fp32."""
        image_features, text_features = at_least_fp32(image_features), at_least_fp32(text_features)
        gather = all_gather_with_grad if self.gather_with_grad else all_gather_no_grad
        all_image, all_text = gather(image_features), gather(text_features)
        scale = at_least_fp32(logit_scale)
        b = image_features.shape[0]
        if self.local_loss:
            logits_per_image = scale * image_features @ all_text.T   # [b, N]
            logits_per_text = scale * text_features @ all_image.T    # [b, N]
            labels = torch.arange(b, device=image_features.device) + rank() * b
        else:
            logits_per_image = scale * all_image @ all_text.T        # [N, N]
            logits_per_text = logits_per_image.T
            labels = torch.arange(all_image.shape[0], device=image_features.device)
        return logits_per_image, logits_per_text, labels

    def __call__(self, image_features, text_features, logit_scale, batch=None, **_) -> dict:
        return self.from_logits(*self.logits(image_features, text_features, logit_scale))

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
