"""The weights and settings of ``WithFusion``'s terms on the fusion stream (``fusion.py`` cites the papers).

Without torch, so that the training config takes its defaults from here before torch is imported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FusionTerms:
    itm_weight: float = 1.0          # ALBEF's image–text matching
    rerank_weight: float = 0.0       # the listwise re-ranking loss (LCE)
    rerank_negatives: int = 7        # hard negatives per anchor in it
    zorro_weight: float = 0.0        # the Zorro-style contrastive term
    zorro_stop_grad: bool = True     # ...without moving the pure embeddings
    zorro_temperature: float = 0.07  # ...its temperature
    negative_captions: bool = False  # the batch's hard-negative captions as further ITM negatives and re-ranking
                                     # candidates (NegCLIP's, Yuksekgonul et al. 2023)

    def __post_init__(self):
        weights = {k: v for k, v in asdict(self).items() if k.endswith("_weight")}
        if min(weights.values()) < 0 or sum(weights.values()) == 0:
            raise ValueError(f"fusion objective weights must be ≥ 0 with at least one > 0 ({weights}): the fusion "
                             f"blocks would learn nothing")
        if self.rerank_negatives < 1:
            raise ValueError(f"rerank_negatives must be at least 1, got {self.rerank_negatives}")
        if not isinstance(self.negative_captions, bool):
            raise ValueError(f"negative_captions must be true or false, got {self.negative_captions!r}")
        if self.negative_captions and not (self.itm_weight or self.rerank_weight):
            raise ValueError("negative_captions feeds the ITM and re-ranking terms, and both weights are 0; set "
                             "itm_weight or rerank_weight above 0, or negative_captions false")
