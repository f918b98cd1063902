"""Objectives that weigh negatives by how hard they are, or change how the positive enters.

All work on the logits ℓ = s·u·v of ``PairwiseObjective`` in both directions and average them, as
``ClipLoss`` does. Negatives of an anchor are the candidates that are not its positives (with
sample ids: no candidate with the anchor's id); ℓ₊ is the anchor's own pair.

- ``HardNegativeNCE`` — HN-NCE (Radenovic et al. 2023, "Filtering, Distillation, and Hard Negatives
  for Vision-Language Pre-Training", arXiv 2301.02280; reference: scenic ``hn_nce_loss``):
  L_i = −log e^{ℓ₊} / (α e^{ℓ₊} + Σ_{j∈neg} w_ij e^{ℓ_ij}),  w_ij = n·e^{βℓ_ij} / Σ_{k∈neg} e^{βℓ_ik}.
  α = 1, β = 0 is InfoNCE. The weights are not detached, as in the reference. β: sweep 0.1–0.5 (the
  paper's value is not confirmed).
- ``HardNegativeHCL`` — Robinson et al. 2021, "Contrastive Learning with Hard Negative Samples"
  (code joshr17/HCL): importance weights e^{βℓ}, a debiasing term τ⁺ and the clamp at n·e^{−s}
  (the smallest value of Σ e^{ℓ} for cosines ≥ −1). β = 0 is the debiased loss of Chuang et al.
  2020 ("Debiased Contrastive Learning"); τ⁺ = 0, β = 0 is InfoNCE. ``clamped``: the share of anchors at
  the floor (no gradient), which a τ⁺ too large for the data drives towards 1.
- ``DecoupledLoss`` — DCL (Yeh et al. 2022, "Decoupled Contrastive Learning", arXiv 2110.06848):
  L_i = −ℓ₊ + log Σ_{j∈neg} e^{ℓ_ij} = L_InfoNCE + log(1 − p₊). ``weighted=True`` is DCLW: the
  positive term is scaled by w_i = 2 − e^{c_i/σ} / mean_k e^{c_k/σ} (c: positive cosine, σ = 0.5),
  the mean over the global batch, weights detached [verify: the paper's normalisation]. DCL can be
  negative.
"""

from __future__ import annotations

import math

import torch

from ..distributed import all_gather_no_grad
from .pairs import Pairs, PairwiseObjective, at_least_fp32, batch_ids

NEG_INF = float("-inf")


def _split(logits: torch.Tensor, labels: torch.Tensor, positives: torch.Tensor | None):
    """(ℓ₊ [b], negatives mask [b, N], count of negatives per row [b])."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    if positives is None:
        positives = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels[:, None], True)
    negatives = ~positives
    return own, negatives, negatives.sum(dim=1).to(logits.dtype)


def _masked_lse(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~mask, NEG_INF).logsumexp(dim=1)


class _BothDirections(PairwiseObjective):
    def direction(self, logits, labels, positives, scale) -> torch.Tensor | tuple[torch.Tensor, dict]:
        """The loss of one direction, or (loss, {name: diagnostic}) — diagnostics are averaged and logged."""
        raise NotImplementedError

    def forward(self, image_features, text_features, logit_scale, batch=None, **_) -> dict:
        p: Pairs = self.pairs(image_features, text_features, logit_scale, batch_ids(batch))
        scale = at_least_fp32(logit_scale).detach()
        i2t, i2t_parts = _with_parts(self.direction(p.logits_per_image, p.labels, p.positives, scale))
        t2i, t2i_parts = _with_parts(self.direction(p.logits_per_text, p.labels, p.positives, scale))
        parts = {k: (i2t_parts[k] + t2i_parts[k]) / 2 for k in i2t_parts}
        return {"loss": (i2t + t2i) / 2, "loss_i2t": i2t.detach(), "loss_t2i": t2i.detach(), **parts}


def _with_parts(result) -> tuple[torch.Tensor, dict]:
    return result if isinstance(result, tuple) else (result, {})


class HardNegativeNCE(_BothDirections):
    def __init__(self, alpha: float = 1.0, beta: float = 0.25, local_loss: bool = True,
                 gather_with_grad: bool = True):
        super().__init__(local_loss, gather_with_grad)
        if alpha <= 0:
            raise ValueError(f"HN-NCE alpha must be > 0, got {alpha}")
        self.alpha, self.beta = alpha, beta

    def weights(self, logits, negatives, n_neg) -> torch.Tensor:
        """log w_ij on the negatives (−inf elsewhere); each row of w sums to the number of negatives."""
        beta_logits = (self.beta * logits).masked_fill(~negatives, NEG_INF)
        return n_neg.log()[:, None] + beta_logits - beta_logits.logsumexp(dim=1, keepdim=True)

    def direction(self, logits, labels, positives, scale):
        own, negatives, n_neg = _split(logits, labels, positives)
        log_w = self.weights(logits, negatives, n_neg)
        weighted = (log_w + logits).masked_fill(~negatives, NEG_INF)
        terms = torch.cat([(math.log(self.alpha) + own)[:, None], weighted], dim=1)
        return (terms.logsumexp(dim=1) - own).mean()


class HardNegativeHCL(_BothDirections):
    def __init__(self, tau_plus: float = 0.1, beta: float = 1.0, local_loss: bool = True,
                 gather_with_grad: bool = True):
        super().__init__(local_loss, gather_with_grad)
        if not 0 <= tau_plus < 1:
            raise ValueError(f"HCL tau_plus (the positive-class prior) must be in [0, 1), got {tau_plus}")
        self.tau_plus, self.beta = tau_plus, beta

    def direction(self, logits, labels, positives, scale):
        own, negatives, n_neg = _split(logits, labels, positives)
        # Everything is scaled by e^{−m} (m: the row maximum) so that e^{ℓ} at s = 100 cannot overflow.
        m = logits.detach().max(dim=1).values
        # reweight = Σ_j e^{βℓ_j} e^{ℓ_j} / mean_j e^{βℓ_j}  (over negatives)
        log_reweight = (_masked_lse((1 + self.beta) * logits - m[:, None], negatives)
                        - _masked_lse(self.beta * logits, negatives) + n_neg.log())
        positive = (own - m).exp()
        debiased = (-self.tau_plus * n_neg * positive + log_reweight.exp()) / (1 - self.tau_plus)
        floor = n_neg * (-scale - m).exp()
        negatives_term = torch.maximum(debiased, floor)
        # An anchor at the floor has no gradient from its negatives, and almost none from its positive: it
        # stops learning once e^{ℓ₊} ≳ mean e^{ℓ_neg}/τ⁺. The share of such anchors is logged as "clamped".
        clamped = (debiased <= floor).to(logits.dtype).mean().detach()
        return ((positive + negatives_term).log() - (own - m)).mean(), {"clamped": clamped}


class DebiasedLoss(HardNegativeHCL):
    """Chuang et al. 2020: HCL without importance weights (β = 0).

    τ⁺ is the chance that another sample is in fact a positive of the anchor. The paper's 0.1 is CIFAR-10's
    (10 balanced classes); between captioned images it is far smaller (the demo's: 0.0021,
    ``benchmarks/demo_ambiguity.py``). Too large a τ⁺ stops learning: once e^{ℓ₊} ≥ mean e^{ℓ_neg}/τ⁺ the
    debiased negative sum is at its floor and the anchor has no gradient. At τ⁺ = 0.1 and a batch of 128 that
    is an anchor whose own pair holds 7% of its softmax (an InfoNCE loss of 2.6), reached early in a run
    (logged as ``clamped``). Hence 0.01 here (100× the mean negative, 44%); τ⁺ → 0 is InfoNCE.
    """

    def __init__(self, tau_plus: float = 0.01, local_loss: bool = True, gather_with_grad: bool = True):
        super().__init__(tau_plus=tau_plus, beta=0.0, local_loss=local_loss, gather_with_grad=gather_with_grad)


class DecoupledLoss(_BothDirections):
    def __init__(self, weighted: bool = False, sigma: float = 0.5, local_loss: bool = True,
                 gather_with_grad: bool = True):
        super().__init__(local_loss, gather_with_grad)
        self.weighted, self.sigma = weighted, sigma

    def direction(self, logits, labels, positives, scale):
        own, negatives, _ = _split(logits, labels, positives)
        weight = 1.0
        if self.weighted:
            with torch.no_grad():
                cosine = own / scale
                everyone = all_gather_no_grad(cosine)
                weight = 2 - (cosine / self.sigma).exp() / (everyone / self.sigma).exp().mean()
        return (-weight * own + _masked_lse(logits, negatives)).mean()


class WeightedDecoupledLoss(DecoupledLoss):
    """DCLW: DCL with the positive term weighted by how easy the positive already is."""

    def __init__(self, sigma: float = 0.5, local_loss: bool = True, gather_with_grad: bool = True):
        super().__init__(weighted=True, sigma=sigma, local_loss=local_loss, gather_with_grad=gather_with_grad)


def sample_hard_negatives(similarity: torch.Tensor, positives: torch.Tensor,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """One negative per row, drawn from softmax(similarity) over the row's non-positives (ALBEF/BLIP ITM).

    ALBEF samples, for each text, a negative image with probability ∝ softmax(sim) after zeroing the
    positive (``model_pretrain.py``; BLIP also masks every same-id pair). Computed in fp32 with a tiny
    floor so that a row whose non-positive weights underflow still samples (``multinomial`` rejects
    an all-zero row); a row with no non-positive at all is an error.
    """
    if (~positives).sum(dim=1).min() == 0:
        raise ValueError("a row has no candidate that is not a positive: nothing to sample as a negative")
    weights = similarity.detach().float().softmax(dim=1).masked_fill(positives, 0) + 1e-12 * (~positives)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)
