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
- **Hard-negative captions** (``negative_captions``; NegCLIP's, Yuksekgonul et al. 2023, "When and Why
  Vision-Language Models Behave like Bags-of-Words", ICLR 2023): the batch's ``negatives`` — captions of an
  image with one slot edited — are encoded through the text tower and join ITM as (image, its negative
  caption) → no match, and the image-anchored re-ranking softmax as further candidates of their own image.
  They are anchors of nothing, as in NegCLIP. ITM and re-ranking are local, so a rank with no valid negative
  enters no collective.
- **Zorro-style contrastive term** (Recasens et al. 2023, arXiv 2301.09595 — this project's adaptation
  of the paper's fusion-output term): InfoNCE between g(z_F) and h([sg(z_I); sg(z_T)]) over the global batch at a fixed
  temperature; g, h are linear heads owned by this objective (training only). ``zorro_stop_grad``
  keeps this term from moving the pure embeddings.

Parts are logged separately: ``loss_pure``, ``loss_itm``, ``itm_accuracy``, ``loss_rerank``, ``loss_zorro``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..fusion import Streams
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


@dataclass(frozen=True)
class NegativeCaptions:
    """The batch's M valid hard-negative captions through the text tower and the fusion blocks' text stream."""
    image: torch.Tensor      # [M] the local image each is a negative of
    slot: torch.Tensor       # [M] its column k in ``batch["negatives"]`` [b, K, L]
    slots: int               # K
    streams: Streams         # their text streams, M rows
    features: torch.Tensor   # [M, D] their pure embeddings, L2-normalised

    @classmethod
    def encode(cls, model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> NegativeCaptions | None:
        """The masked-in rows of ``tokens`` [b, K, L] (``mask`` [b, K]) encoded; None when there are none."""
        valid = mask.nonzero()
        if valid.shape[0] == 0:
            return None
        features, streams = model.text_streams(tokens[valid[:, 0], valid[:, 1]])
        return cls(valid[:, 0], valid[:, 1], mask.shape[1], streams, F.normalize(features, dim=-1))


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

    @property
    def needs_negatives(self) -> bool:
        return self.pure.needs_negatives or self.terms.negative_captions

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
        negatives = self.encode_negatives(self.given_model(model), batch) if self.terms.negative_captions else None
        if self.terms.itm_weight:
            itm, accuracy = self.itm(image_features, text_features, logit_scale, blocks, fusion, batch, negatives)
            loss = loss + self.terms.itm_weight * itm
            out.update(loss_itm=itm.detach(), itm_accuracy=accuracy)
        if self.terms.rerank_weight:
            rerank = self.rerank(image_features, text_features, logit_scale, blocks, fusion, batch, negatives)
            loss = loss + self.terms.rerank_weight * rerank
            out["loss_rerank"] = rerank.detach()
        if self.terms.zorro_weight:
            zorro = self.zorro_term(image_features, text_features, blocks, fusion["fused"], batch)
            loss = loss + self.terms.zorro_weight * zorro
            out["loss_zorro"] = zorro.detach()
        return {"loss": loss, **out}

    def encode_negatives(self, model: torch.nn.Module, batch) -> NegativeCaptions | None:
        if batch is None or "negatives" not in batch:
            raise ValueError("fusion negative_captions needs hard-negative captions in batch['negatives'] ([b, K, L] "
                             "tokens) and batch['negatives_mask'] ([b, K]); make the loader with negatives='shards' "
                             "or 'rules'")
        with self.model_autocast():
            return NegativeCaptions.encode(model, batch["negatives"], batch["negatives_mask"])

    def itm(self, image_features, text_features, logit_scale, blocks: torch.nn.Module, fusion: dict, batch,
            negatives: NegativeCaptions | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ALBEF's ITM loss and the head's accuracy (``itm_pairs``)."""
        logits, labels = self.itm_pairs(image_features, text_features, logit_scale, blocks, fusion, batch, negatives)
        return F.cross_entropy(logits, labels), (logits.argmax(dim=1) == labels).float().mean().detach()

    def itm_pairs(self, image_features, text_features, logit_scale, blocks: torch.nn.Module, fusion: dict, batch,
                  negatives: NegativeCaptions | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ITM head's logits [3b + M, 2] and labels: b positives (match), 2b sampled hard negatives, then
        each image with each of its M hard-negative captions (no match)."""
        b = image_features.shape[0]
        own = torch.arange(b, device=image_features.device)
        with torch.no_grad():
            sim, positives = self._similarity(image_features, text_features, logit_scale, batch)
            image_for_text = sample_hard_negatives(sim.T, positives.T)   # a negative image per text
            text_for_image = sample_hard_negatives(sim, positives)       # a negative text per image
        with self.model_autocast():
            sampled = blocks.fuse(fusion["image"], fusion["text"], torch.cat([own, image_for_text]),
                                  torch.cat([text_for_image, own]))
            logits = blocks.itm_logits(torch.cat([fusion["fused"], sampled.to(fusion["fused"].dtype)])).float()
            if negatives is not None:  # their text length is their own: fused and scored apart
                captions = blocks.fuse(fusion["image"], negatives.streams, negatives.image,
                                       torch.arange(negatives.image.shape[0], device=logits.device))
                logits = torch.cat([logits, blocks.itm_logits(captions).float()])
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        labels[:b] = 1
        return logits, labels

    def rerank(self, image_features, text_features, logit_scale, blocks: torch.nn.Module, fusion: dict, batch,
               negatives: NegativeCaptions | None = None) -> torch.Tensor:
        """Listwise loss of the re-ranking score over each anchor's positive and n hard negatives, both ways.

        LCE (Gao et al. 2021, "Rethink Training of BERT Rerankers in Multi-Stage Retrieval Pipeline",
        arXiv 2101.08751): softmax cross-entropy over the positive and n negatives drawn without replacement
        from the first stage's distribution — here softmax(similarity), as for ITM (same-id pairs never).
        The score is the one retrieval re-ranks by (``eval.rerank``): ITM log-odds + s·cos, the similarity
        detached, so this term trains the fusion blocks to correct the dual encoder where it errs.
        """
        logits = self.rerank_logits(image_features, text_features, logit_scale, blocks, fusion, batch, negatives)
        target = torch.zeros(image_features.shape[0], dtype=torch.long, device=logits[0].device)
        return (F.cross_entropy(logits[0], target) + F.cross_entropy(logits[1], target)) / 2

    def rerank_logits(self, image_features, text_features, logit_scale, blocks: torch.nn.Module, fusion: dict,
                      batch, negatives: NegativeCaptions | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The re-ranking scores, positive first: image anchors [b, 1 + n (+ K)] — the K columns their own
        hard-negative captions, −inf where a slot is masked out — and text anchors [b, 1 + n]."""
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
            logits = []
            for anchor_is_image in (True, False):
                cand = candidates["text" if anchor_is_image else "image"]
                image_index, text_index = (own, cand) if anchor_is_image else (cand, own)
                scores = blocks.match_score(fusion["image"], fusion["text"], image_index.reshape(-1),
                                            text_index.reshape(-1)).view(b, n)
                scores = scores + sim[image_index, text_index]
                logits.append(torch.cat([positive_scores[:, None], scores], dim=1))
            if negatives is not None:
                logits[0] = torch.cat([logits[0], self._caption_scores(logit_scale, image_features, blocks, fusion,
                                                                       negatives)], dim=1)
        return logits[0], logits[1]

    @staticmethod
    def _caption_scores(logit_scale, image_features, blocks: torch.nn.Module, fusion: dict,
                        negatives: NegativeCaptions) -> torch.Tensor:
        """[b, K] re-ranking scores of each image with its hard-negative captions; −inf in masked-out slots."""
        m = negatives.image.shape[0]
        scores = blocks.match_score(fusion["image"], negatives.streams, negatives.image,
                                    torch.arange(m, device=negatives.image.device))
        with torch.no_grad():  # the similarity detached, as for the batch's candidates
            sim = at_least_fp32(logit_scale) * (at_least_fp32(image_features[negatives.image])
                                                * at_least_fp32(negatives.features)).sum(dim=1)
        out = scores.new_full((image_features.shape[0], negatives.slots), float("-inf"))
        return out.index_put((negatives.image, negatives.slot), scores + sim)

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
