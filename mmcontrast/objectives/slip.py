"""SLIP (Mu et al. 2022, "SLIP: Self-supervision meets Language-Image Pre-training", arXiv 2112.12750;
code facebookresearch/SLIP ``losses.py``, ``models.py``):

    L = L_CLIP(image, text) + c · L_SimCLR(aug₁(image), aug₂(image))

L_SimCLR is NT-Xent at a fixed temperature τ over the two views' embeddings, each passed through the
image tower and a 3-layer MLP head (Linear–BN–ReLU–Linear–BN–ReLU–Linear, SLIP: 4096, 4096, 256):
for an anchor in view A the candidates are every view-B embedding and every other view-A embedding,
the positive its own view-B embedding; L = (L_A + L_B)/2. Defaults c = 1, τ = 0.1 (SLIP).

This project's differences: the head reads the image embedding after the CLIP projection (SLIP reads
the tower's pooled features before it), the SimCLR negatives come from every rank through the
gather with gradient (SLIP does that too; its CLIP term does not — facebookresearch/SLIP #31), and the CLIP
term is ``ClipLoss`` with its exact distributed mode. The head's BatchNorm keeps per-process
statistics (SLIP uses SyncBN on GPUs). The data pipeline makes the two views only for this
objective (``needs_views``); each sample costs three image-tower passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import all_gather_with_grad, rank
from .base import Objective
from .clip import ClipLoss
from .pairs import at_least_fp32

MASK = 1e9  # SLIP's large constant that removes an anchor's similarity to itself


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent of two views' L2-normalised embeddings [b, d], negatives from every rank."""
    all_a, all_b = all_gather_with_grad(a), all_gather_with_grad(b)
    n_local = a.shape[0]
    labels = torch.arange(n_local, device=a.device) + rank() * n_local
    self_mask = F.one_hot(labels, all_a.shape[0]).to(a.dtype) * MASK
    logits_aa = a @ all_a.T / temperature - self_mask
    logits_bb = b @ all_b.T / temperature - self_mask
    logits_ab = a @ all_b.T / temperature
    logits_ba = b @ all_a.T / temperature
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], dim=1), labels)
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], dim=1), labels)
    return (loss_a + loss_b) / 2


def ssl_head(in_dim: int, mlp_dim: int, out_dim: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(in_dim, mlp_dim), torch.nn.BatchNorm1d(mlp_dim), torch.nn.ReLU(inplace=True),
        torch.nn.Linear(mlp_dim, mlp_dim), torch.nn.BatchNorm1d(mlp_dim), torch.nn.ReLU(inplace=True),
        torch.nn.Linear(mlp_dim, out_dim))


class SLIPLoss(Objective):
    needs_model = True   # the views go through the model's image tower: forward takes model=
    needs_views = True
    uses_sample_ids = True  # in the CLIP term

    def __init__(self, ssl_scale: float = 1.0, ssl_temperature: float = 0.1, mlp_dim: int = 4096,
                 ssl_dim: int = 256, local_loss: bool = True, gather_with_grad: bool = True):
        super().__init__()
        self.clip = ClipLoss(local_loss, gather_with_grad)
        self.ssl_scale, self.ssl_temperature = ssl_scale, ssl_temperature
        self.mlp_dim, self.ssl_dim = mlp_dim, ssl_dim
        self.head: torch.nn.Module | None = None

    def grad_cache_refusal(self) -> str | None:
        return "objective slip: its extra image views and BatchNorm head are not chunked"

    def attach(self, model: torch.nn.Module, total_steps: int = 1) -> None:
        """Build the SSL head on ``model``'s embedding width."""
        self.head = ssl_head(model.model_cfg["embed_dim"], self.mlp_dim, self.ssl_dim)

    def forward(self, image_features, text_features, logit_scale, batch=None, model=None, **_) -> dict:
        if self.head is None:
            raise RuntimeError("SLIPLoss.attach(model) must be called before the first loss")
        model = self.given_model(model)
        if batch is None or "image_views" not in batch:
            raise ValueError("SLIP needs two augmented views per sample in batch['image_views'] ([2, b, 3, H, W])")
        clip = self.clip(image_features, text_features, logit_scale, batch=batch)
        views = batch["image_views"]
        with self.model_autocast():
            embedded = [model.encode_image(views[i]) for i in (0, 1)]
        a, b = (F.normalize(at_least_fp32(self.head(at_least_fp32(e))), dim=-1) for e in embedded)
        ssl = nt_xent(a, b, self.ssl_temperature)
        return {"loss": clip["loss"] + self.ssl_scale * ssl, "loss_clip": clip["loss"].detach(),
                "loss_ssl": ssl.detach()}
