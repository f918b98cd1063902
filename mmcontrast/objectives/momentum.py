"""Momentum encoders, feature queues and momentum distillation.

MoCo (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning"; code
facebookresearch/moco) and ALBEF's image–text contrastive loss with momentum distillation (Li et al.
2021, "Align before Fuse"; code salesforce/ALBEF ``model_pretrain.py``):

    θ_k ← m·θ_k + (1 − m)·θ_q                    once per optimizer step (teacher = EMA of the model)
    keys_T = [ momentum text features of the global batch ; text queue ]   (likewise for images)
    p^{i2t} = softmax(s·u·keys_Tᵀ)               online query against momentum keys
    q^{i2t} = softmax(s·u_m·keys_Tᵀ)             momentum query against the same keys
    y^{i2t} = α·q^{i2t} + (1 − α)·targets        targets: one-hot, or the same-id mask row-normalised
    L = ½ [ H(y^{i2t}, p^{i2t}) + H(y^{t2i}, p^{t2i}) ]

- The queues hold the momentum features of the last ``queue_size`` samples of the global batch (any
  size: the pointer wraps around, no divisibility needed), with their sample ids, so captions of one
  image are never each other's negatives. Only filled slots are used: no random-noise negatives.
- ``momentum_schedule="cosine"``: m_t = 1 − (1 − m₀)(cos(πt/T) + 1)/2 (MoCo v3), m → 1 at the end.
- ``momentum_schedule="warmup"``: m_t = min(m₀, (1 + t)/(10 + t)) (the ``num_updates`` rule of TensorFlow's
  ``ExponentialMovingAverage``): the teacher averages over ≈ the last tenth of the steps so far until that
  reaches 1/(1 − m₀) steps (t ≈ 1,800 at 0.995). A constant m₀ = 0.995 averages over the last 200 steps from
  the start, so in a run of a few hundred steps the teacher — and with it every key — stays near the random
  initialisation for most of the run.
- α ramps linearly from 0 over ``alpha_ramp_steps`` (ALBEF ramps it over the first epoch).
- The teacher runs in eval mode (no dropout or patch dropout: stable targets), holds no gradient,
  and is identical on every rank (a copy of the identically initialised model). The EMA update and
  the enqueue happen in ``after_step``, once per optimizer step — also under GradCache.
- The teacher and the queues are buffers and parameters of this module: they go into checkpoints.

α = 0 with ``queue_size = 0`` is InfoNCE against momentum keys; right after the copy (m irrelevant)
with α = 1 the loss has zero gradient with respect to the logits (the student is its own teacher).
Defaults follow ALBEF — K = 65,536 (here 4,096), m = 0.995, α = 0.4 — except the warmup schedule, which is
ALBEF's m after 1,800 steps: with a constant 0.995 the teacher still holds 0.995^140 = 50% of its random start
a third into the demo's 420 steps (12% at the end); with the warmup, 10⁻¹⁴ after 140 steps.
"""

from __future__ import annotations

import copy
import math

import torch

from ..distributed import all_gather_no_grad, rank
from .base import Objective
from .pairs import at_least_fp32, batch_ids

NO_ID = -1  # queue slots of samples without an id never match an anchor
SCHEDULES = ("constant", "cosine", "warmup")


class MomentumDistillation(Objective):
    """ALBEF ITC with a momentum teacher and feature queues (``objective.name=momentum``)."""

    needs_model = True  # the teacher is a copy of the model, run on the batch, and follows it after each step
    uses_sample_ids = True

    def __init__(self, queue_size: int = 4096, momentum: float = 0.995, momentum_schedule: str = "warmup",
                 alpha: float = 0.4, alpha_ramp_steps: int = 0, local_loss: bool = True,
                 gather_with_grad: bool = True):
        super().__init__()
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if momentum_schedule not in SCHEDULES:
            raise ValueError(f"momentum_schedule must be one of {SCHEDULES}, got {momentum_schedule!r}")
        if not (local_loss and gather_with_grad):
            raise ValueError("the momentum objective scores each rank's queries against every rank's keys; "
                             "local_loss=True and gather_with_grad=True are required")
        self.queue_size, self.m0, self.schedule = queue_size, momentum, momentum_schedule
        self.alpha, self.alpha_ramp_steps = alpha, alpha_ramp_steps
        self.teacher: torch.nn.Module | None = None
        self.total_steps = 1
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._pending: tuple | None = None

    # ---------------------------------------------------------------- set-up and state

    def attach(self, model: torch.nn.Module, total_steps: int = 1) -> None:
        """Copy ``model`` as the teacher and size the queues to its embedding width (``model_cfg["embed_dim"]``)."""
        self.teacher = copy.deepcopy(model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.total_steps = max(1, total_steps)
        dim = model.model_cfg["embed_dim"]
        device = next(model.parameters()).device
        self.register_buffer("image_queue", torch.zeros(self.queue_size, dim, device=device))
        self.register_buffer("text_queue", torch.zeros(self.queue_size, dim, device=device))
        self.register_buffer("id_queue", torch.full((self.queue_size,), NO_ID, dtype=torch.long, device=device))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # always
        return self

    def current_momentum(self) -> float:
        t = self.step.item()
        if self.schedule == "constant":
            return self.m0
        if self.schedule == "warmup":
            return min(self.m0, (1 + t) / (10 + t))
        return 1 - (1 - self.m0) * (math.cos(math.pi * t / self.total_steps) + 1) / 2

    def current_alpha(self) -> float:
        if self.alpha_ramp_steps <= 0:
            return self.alpha
        return self.alpha * min(1.0, (self.step.item() + 1) / self.alpha_ramp_steps)

    # ---------------------------------------------------------------- the loss

    def forward(self, image_features, text_features, logit_scale, batch=None, **_) -> dict:
        if self.teacher is None:
            raise RuntimeError("MomentumDistillation.attach(model) must be called before the first loss")
        u, v = at_least_fp32(image_features), at_least_fp32(text_features)
        scale = at_least_fp32(logit_scale)
        b = u.shape[0]
        ids = batch_ids(batch)
        with torch.no_grad():
            with self.model_autocast():
                teacher_out = self.teacher(batch["image"], batch["text"])
            u_m, v_m = at_least_fp32(teacher_out["image_features"]), at_least_fp32(teacher_out["text_features"])
            all_u_m, all_v_m = all_gather_no_grad(u_m), all_gather_no_grad(v_m)
            n = all_u_m.shape[0]
            labels = torch.arange(b, device=u.device) + rank() * b
            filled = int(self.filled)
            keys_image = torch.cat([all_u_m, self.image_queue[:filled]])
            keys_text = torch.cat([all_v_m, self.text_queue[:filled]])
            if ids is None:
                targets = torch.zeros(b, n + filled, device=u.device, dtype=u.dtype)
                targets[torch.arange(b), labels] = 1
                all_ids = torch.full((n,), NO_ID, dtype=torch.long, device=u.device)
            else:
                all_ids = all_gather_no_grad(ids)
                key_ids = torch.cat([all_ids, self.id_queue[:filled]])
                targets = (ids[:, None] == key_ids[None, :]).to(u.dtype)
                targets = targets / targets.sum(dim=1, keepdim=True)
            alpha = self.current_alpha()
            t_scale = scale.detach()
            y_i2t = alpha * (t_scale * u_m @ keys_text.T).softmax(dim=1) + (1 - alpha) * targets
            y_t2i = alpha * (t_scale * v_m @ keys_image.T).softmax(dim=1) + (1 - alpha) * targets
            self._pending = (all_u_m, all_v_m, all_ids)
        logits_i2t = scale * u @ keys_text.T
        logits_t2i = scale * v @ keys_image.T
        i2t = -(y_i2t * logits_i2t.log_softmax(dim=1)).sum(dim=1).mean()
        t2i = -(y_t2i * logits_t2i.log_softmax(dim=1)).sum(dim=1).mean()
        return {"loss": (i2t + t2i) / 2, "loss_i2t": i2t.detach(), "loss_t2i": t2i.detach(),
                "alpha": torch.tensor(alpha), "momentum": torch.tensor(self.current_momentum())}

    # ---------------------------------------------------------------- once per optimizer step

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module) -> None:
        """EMA update of the teacher from ``model`` and enqueue of this step's momentum features."""
        m = self.current_momentum()
        for p_t, p in zip(self.teacher.parameters(), model.parameters()):
            p_t.mul_(m).add_(p.detach(), alpha=1 - m)
        for b_t, b in zip(self.teacher.buffers(), model.buffers()):
            b_t.copy_(b)
        if self._pending is not None and self.queue_size > 0:
            self.enqueue(*self._pending)
        self._pending = None
        self.step += 1

    @torch.no_grad()
    def enqueue(self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor) -> None:
        """FIFO with wrap-around: the newest ``queue_size`` rows are kept, whatever the batch size."""
        k = self.queue_size
        if image.shape[0] > k:  # a batch larger than the queue: only its last k rows fit
            image, text, ids = image[-k:], text[-k:], ids[-k:]
        n = image.shape[0]
        slots = (self.ptr + torch.arange(n, device=image.device)) % k
        self.image_queue[slots] = image.to(self.image_queue.dtype)
        self.text_queue[slots] = text.to(self.text_queue.dtype)
        self.id_queue[slots] = ids
        self.ptr.copy_((self.ptr + n) % k)
        self.filled.copy_(torch.clamp(self.filled + n, max=k))

