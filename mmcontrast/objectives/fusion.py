"""Objectives on the fusion stream of a model with partitioned-attention blocks (``docs/fusion.md``).

``WithFusion`` wraps the pure-embedding objective (CLIP, SigLIP, ...) and adds

    L = L_pure + w_itm · L_ITM + w_rerank · L_rerank + w_zorro · L_Zorro

- **ITM** (ALBEF, Li et al. 2021, "Align before Fuse", arXiv 2107.07651, ``model_pretrain.py``): a
  2-way match / no-match head on the fusion embedding of each positive pair and of two hard
  negatives per sample — for each text an image, for each image a text, drawn from
  softmax(similarity) over the local batch with every same-id or same-caption pair excluded
  (``sample_hard_negatives``).
  3b pairs, cross-entropy. The negatives' fusion outputs come from ``PartitionedFusion.fuse``: the
  streams are already computed, so a negative pair costs only the fusion tokens' rows.
- **Listwise re-ranking loss** (LCE, Gao et al. 2021, arXiv 2101.08751): softmax cross-entropy of the
  score retrieval re-ranks by (ITM log-odds + s·cos) over each anchor's positive and n hard negatives,
  both directions (``WithFusion.rerank``).
- **Zorro-style contrastive term** (Recasens et al. 2023, arXiv 2301.09595 — this project's adaptation
  of the paper's fusion-output term): InfoNCE between g(z_F) and h([sg(z_I); sg(z_T)]) over the global batch at a fixed
  temperature; g, h are linear heads owned by this objective (training only). ``zorro_stop_grad``
  keeps this term from moving the pure embeddings.

Parts are logged separately: ``loss_pure``, ``loss_itm``, ``itm_accuracy``, ``loss_rerank``, ``loss_zorro``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Objective
from .clip import ClipLoss
from .fusion_terms import FusionTerms
from .hard_negatives import sample_hard_negatives
from .pairs import at_least_fp32, batch_ids


def draw_without_replacement(similarity: torch.Tensor, positives: torch.Tensor, n: int) -> torch.Tensor:
    """[rows, n] distinct non-positive columns per row, drawn from softmax(similarity) (fp32, with a floor)."""
    weights = similarity.float().softmax(dim=1).masked_fill(positives, 0) + 1e-12 * (~positives)
    return torch.multinomial(weights, n, replacement=False)


def local_positives(b: int, ids: torch.Tensor | None, device: torch.device,
                    text: torch.Tensor | None = None) -> torch.Tensor:
    """[b, b] bool: pairs of the local batch that are positives — the diagonal, the same sample id, and
    (given the token rows) the same caption word for word: such a "negative" is a true match
    (ALBEF/BLIP: duplicates in the batch are false negatives)."""
    same = torch.eye(b, dtype=torch.bool, device=device) if ids is None else ids[:, None] == ids[None, :]
    if text is not None:
        same = same | (text[:, None, :] == text[None, :, :]).all(dim=-1)
    return same


class WithFusion(Objective):
    """The pure-embedding objective ``pure`` plus the fusion-stream terms; its declarations and hooks pass
    through to ``pure``."""

    needs_model = True   # the fusion blocks score the sampled negative pairs: forward takes model=
    uses_sample_ids = True

    def __init__(self, pure: Objective, terms: FusionTerms = FusionTerms(), local_loss: bool = True,
                 gather_with_grad: bool = True):
        super().__init__()
        self.pure, self.terms = pure, terms
        self.zorro = ClipLoss(local_loss, gather_with_grad)

    @property
    def needs_views(self) -> bool:
        return self.pure.needs_views

    def grad_cache_refusal(self) -> str | None:
        return "fusion blocks: the fusion stream and its hard negatives need whole pairs, not cached embeddings"

    def attach(self, model: torch.nn.Module, total_steps: int = 1) -> None:
        self.pure.attach(model, total_steps)
        if self.terms.zorro_weight:
            dim, width = model.fusion.summary_in.in_features, model.fusion.cfg.width
            self.zorro_fused = torch.nn.Linear(width, dim)         # g
            self.zorro_pure = torch.nn.Linear(2 * dim, dim)        # h

    def after_step(self, model: torch.nn.Module) -> None:
        self.pure.after_step(model)

    @property
    def model_autocast(self):
        """The trainer's mixed-precision context, in which the negative pairs go through the blocks."""
        return self.pure.model_autocast

    @model_autocast.setter
    def model_autocast(self, value):
        self.pure.model_autocast = value

    def forward(self, image_features, text_features, logit_scale, fusion=None, batch=None, model=None,
                **rest) -> dict:
        if fusion is None:
            raise ValueError("the fusion objectives need the model's 'fusion' output (a model with model.fusion)")
        blocks = self.given_model(model).fusion
        out = self.pure(image_features=image_features, text_features=text_features, logit_scale=logit_scale,
                        batch=batch, model=model, **rest)
        loss = out["loss"]
        out = {"loss_pure": out["loss"].detach(), **{k: v for k, v in out.items() if k != "loss"}}
        if self.terms.itm_weight:
            itm, accuracy = self.itm(image_features, text_features, logit_scale, blocks, fusion, batch)
            loss = loss + self.terms.itm_weight * itm
            out.update(loss_itm=itm.detach(), itm_accuracy=accuracy)
        if self.terms.rerank_weight:
            rerank = self.rerank(image_features, text_features, logit_scale, blocks, fusion, batch)
            loss = loss + self.terms.rerank_weight * rerank
            out["loss_rerank"] = rerank.detach()
        if self.terms.zorro_weight:
            zorro = self.zorro_term(image_features, text_features, blocks, fusion["fused"], batch)
            loss = loss + self.terms.zorro_weight * zorro
            out["loss_zorro"] = zorro.detach()
        return {"loss": loss, **out}

    def itm(self, image_features, text_features, logit_scale, blocks: torch.nn.Module, fusion: dict,
            batch) -> tuple[torch.Tensor, torch.Tensor]:
        """ALBEF's ITM loss on b positives and 2b sampled hard negatives, and the head's accuracy."""
        b = image_features.shape[0]
        own = torch.arange(b, device=image_features.device)
        with torch.no_grad():
            sim, positives = self._similarity(image_features, text_features, logit_scale, batch)
            image_for_text = sample_hard_negatives(sim.T, positives.T)   # a negative image per text
            text_for_image = sample_hard_negatives(sim, positives)       # a negative text per image
        with self.model_autocast():
            negatives = blocks.fuse(fusion["image"], fusion["text"], torch.cat([own, image_for_text]),
                                         torch.cat([text_for_image, own]))
            logits = blocks.itm_logits(torch.cat([fusion["fused"], negatives.to(fusion["fused"].dtype)])).float()
        labels = torch.zeros(3 * b, dtype=torch.long, device=logits.device)
        labels[:b] = 1
        return F.cross_entropy(logits, labels), (logits.argmax(dim=1) == labels).float().mean().detach()

    def rerank(self, image_features, text_features, logit_scale, blocks: torch.nn.Module, fusion: dict,
               batch) -> torch.Tensor:
        """Listwise loss of the re-ranking score over each anchor's positive and n hard negatives, both ways.

        LCE (Gao et al. 2021, "Rethink Training of BERT Rerankers in Multi-Stage Retrieval Pipeline",
        arXiv 2101.08751): softmax cross-entropy over the positive and n negatives drawn without replacement
        from the first stage's distribution — here softmax(similarity), as for ITM (same-id pairs never).
        The score is the one retrieval re-ranks by (``eval.rerank``): ITM log-odds + s·cos, the similarity
        detached, so this term trains the fusion blocks to correct the dual encoder where it errs.
        """
        b, n = image_features.shape[0], self.terms.rerank_negatives
        with torch.no_grad():
            sim, positives = self._similarity(image_features, text_features, logit_scale, batch)
            n = min(n, int((~positives).sum(dim=1).min()))
            candidates = {"text": draw_without_replacement(sim, positives, n),        # [b, n] texts per image
                          "image": draw_without_replacement(sim.T, positives.T, n)}  # [b, n] images per text
        own = torch.arange(b, device=sim.device)[:, None].expand(b, n)
        with self.model_autocast():
            positive_scores = blocks.itm_logits(fusion["fused"]).float()
            positive_scores = positive_scores[:, 1] - positive_scores[:, 0] + sim.diagonal()
            losses = []
            for anchor_is_image in (True, False):
                cand = candidates["text" if anchor_is_image else "image"]
                image_index, text_index = (own, cand) if anchor_is_image else (cand, own)
                scores = blocks.match_score(fusion["image"], fusion["text"], image_index.reshape(-1),
                                            text_index.reshape(-1)).view(b, n)
                scores = scores + sim[image_index, text_index]
                logits = torch.cat([positive_scores[:, None], scores], dim=1)
                losses.append(F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=logits.device)))
        return (losses[0] + losses[1]) / 2

    @staticmethod
    def _similarity(image_features, text_features, logit_scale, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(s·cos [b, b] of the local batch in fp32, the pairs never sampled as negatives [b, b])."""
        sim = at_least_fp32(logit_scale) * at_least_fp32(image_features) @ at_least_fp32(text_features).T
        text = None if batch is None else batch.get("text")
        return sim.detach(), local_positives(sim.shape[0], batch_ids(batch), sim.device, text)

    def zorro_term(self, image_features, text_features, blocks: torch.nn.Module, fused, batch) -> torch.Tensor:
        pure = at_least_fp32(torch.cat([image_features, text_features], dim=1))
        if self.terms.zorro_stop_grad:
            pure = pure.detach()
        with self.model_autocast():
            z_fused = self.zorro_fused(blocks.fusion_embedding(fused))
        z_fused = F.normalize(z_fused.float(), dim=-1)
        z_pure = F.normalize(self.zorro_pure(pure), dim=-1)
        scale = torch.tensor(1.0 / self.terms.zorro_temperature, device=z_fused.device)
        return self.zorro(z_fused, z_pure, scale, batch=batch)["loss"]
