"""The logits every pairwise objective starts from, over the global batch, with OpenCLIP's modes.

``local_loss=True`` (default): each rank scores its b anchors against the N gathered candidates
(b×N logits, labels ``arange(b) + rank·b``). ``gather_with_grad=True`` (default): gradients flow
to the features of every rank. ``local_loss`` without ``gather_with_grad`` is wrong — features
would get gradient only as anchors, never as candidates — and is rejected.

Multi-positive: with sample ids (several captions of one image share an id), ``positives`` marks
every candidate with the anchor's id; without ids it is the one-hot of ``labels``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributed import all_gather_no_grad, all_gather_with_grad, rank
from .base import Objective


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 → fp32; fp32 and fp64 unchanged (float64 keeps gradcheck exact)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@dataclass
class Pairs:
    logits_per_image: torch.Tensor   # [b, N] (local loss) or [N, N]: image anchors × text candidates
    logits_per_text: torch.Tensor    # text anchors × image candidates
    labels: torch.Tensor             # index of each anchor's own pair among the candidates
    positives: torch.Tensor | None   # bool, like the logits: same id as the anchor (None: labels only)


class PairwiseObjective(Objective):
    """Base of the objectives that score image–text pairs: gathers features, makes the logits."""

    uses_sample_ids = True

    def __init__(self, local_loss: bool = True, gather_with_grad: bool = True):
        super().__init__()
        if local_loss and not gather_with_grad:
            raise ValueError(f"{type(self).__name__}(local_loss=True, gather_with_grad=False) gives wrong "
                             "gradients: features of other ranks would never receive gradient as candidates")
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad

    def pairs(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              ids: torch.Tensor | None = None) -> Pairs:
        """Logits s·u·v in fp32 (whatever the autocast dtype: at s up to 100 bf16 loses the softmax)."""
        image_features, text_features = at_least_fp32(image_features), at_least_fp32(text_features)
        gather = all_gather_with_grad if self.gather_with_grad else all_gather_no_grad
        all_image, all_text = gather(image_features), gather(text_features)
        scale = at_least_fp32(logit_scale)
        b = image_features.shape[0]
        all_ids = all_gather_no_grad(ids) if ids is not None else None
        if self.local_loss:
            logits_per_image = scale * image_features @ all_text.T   # [b, N]
            logits_per_text = scale * text_features @ all_image.T    # [b, N]
            labels = torch.arange(b, device=image_features.device) + rank() * b
            anchor_ids = ids
        else:
            logits_per_image = scale * all_image @ all_text.T        # [N, N]
            logits_per_text = logits_per_image.T
            labels = torch.arange(all_image.shape[0], device=image_features.device)
            anchor_ids = all_ids
        positives = None if ids is None else anchor_ids[:, None] == all_ids[None, :]
        return Pairs(logits_per_image, logits_per_text, labels, positives)


def batch_ids(batch: dict | None) -> torch.Tensor | None:
    """The batch's sample ids (``batch["sample_id"]``, int64 [b]) when it has them."""
    return None if batch is None else batch.get("sample_id")
