"""NegCLIP (Yuksekgonul et al., ICLR 2023, "When and Why Vision-Language Models Behave like Bags-of-Words,
and What to Do About It"; code vinid/neg_clip ``src/open_clip/loss.py``): InfoNCE whose image→text softmax
also holds hard-negative captions (swapped or replaced words) as extra columns.

    L = ½ [ CE(s·U [V; Ṽ]ᵀ, T) + CE(s·V Uᵀ, Tᵀ) ]     Ṽ: the negative captions' embeddings, never positives

Only the image→text term sees the negatives (NegCLIP's ``[:2B]`` slice of the text→image logits): a negative
caption is an anchor of nothing. The columns are every negative of the global batch — each rank's negatives
gathered with gradient, like its captions — so with no negative at all the loss is exactly ``ClipLoss``, and
with any it is larger (the log-sum-exp over a superset). Targets and distributed modes are ``ClipLoss``'s:
labels per rank, and with sample ids several captions of one image are positives of each other.

This project's differences: NegCLIP also adds a nearest-neighbour hard *image* per sample (its batch is 2B
images × 4B captions); here the batch's own images serve, and the negatives come from the loader
(``needs_negatives``: ``batch["negatives"]`` [B, K, L] tokens, ``batch["negatives_mask"]`` [B, K]). They are
declared in ``text_inputs``, so the model's text tower encodes them where it encodes the captions: in
``ModelAndObjective``'s forward, or chunk by chunk in GradCache, whose gradients are then exact. Called on its
own with ``model=`` and no ``negative_features``, the loss encodes them itself, under the trainer's autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import all_gather_no_grad, all_gather_with_grad
from .clip import ClipLoss, soft_cross_entropy
from .model_and_objective import encode_texts
from .pairs import PairwiseObjective, at_least_fp32, batch_ids


class NegCLIPLoss(PairwiseObjective):
    needs_negatives = True

    def text_inputs(self, batch: dict | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if batch is None or "negatives" not in batch:
            raise ValueError("NegCLIP needs hard-negative captions in batch['negatives'] ([b, K, L] tokens) and "
                             "batch['negatives_mask'] ([b, K]); make the loader with negatives='shards' or 'rules'")
        return {"negative_features": (batch["negatives"], batch["negatives_mask"])}

    def forward(self, image_features, text_features, logit_scale, batch=None, negative_features=None, model=None,
                **_) -> dict:
        """``negative_features`` [b, K, D]: ``text_inputs`` encoded (``encode_texts``); without it, ``model=``
        encodes them here."""
        ((tokens, mask),) = self.text_inputs(batch).values()
        if negative_features is None:
            with self.model_autocast():
                negative_features = encode_texts(self.given_model(model), tokens, mask, text_features)
        return self.loss(image_features, text_features, logit_scale, negative_features.flatten(0, 1), mask,
                         batch_ids(batch))

    def image_to_text_logits(self, image_features: torch.Tensor, text_logits: torch.Tensor, logit_scale: torch.Tensor,
                             negative_features: torch.Tensor, negative_mask: torch.Tensor) -> torch.Tensor:
        """The image→text logits [anchors, N + M]: ``text_logits`` (the captions) and the M valid negatives of
        every rank as further columns."""
        gather = all_gather_with_grad if self.gather_with_grad else all_gather_no_grad
        negatives = gather(at_least_fp32(negative_features))[all_gather_no_grad(negative_mask).flatten()]  # [M, D]
        anchors = at_least_fp32(image_features)
        anchors = anchors if self.local_loss else gather(anchors)
        return torch.cat([text_logits, at_least_fp32(logit_scale) * anchors @ negatives.T], dim=1)

    def loss(self, image_features, text_features, logit_scale, negative_features, negative_mask,
             ids: torch.Tensor | None = None) -> dict:
        p = self.pairs(image_features, text_features, logit_scale, ids)
        logits_i2t = self.image_to_text_logits(image_features, p.logits_per_image, logit_scale, negative_features,
                                               negative_mask)
        if p.positives is None:
            return ClipLoss.from_logits(logits_i2t, p.logits_per_text, p.labels)
        extra = logits_i2t.shape[1] - p.positives.shape[1]
        i2t = soft_cross_entropy(logits_i2t, F.pad(p.positives, (0, extra), value=False))
        t2i = soft_cross_entropy(p.logits_per_text, p.positives)
        return {"loss": (i2t + t2i) / 2, "loss_i2t": i2t.detach(), "loss_t2i": t2i.detach()}
