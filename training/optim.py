"""AdamW with decoupled weight decay on ≥2-D weights only, and a warmup + cosine schedule.

Gains, biases, embeddings' 1-D parameters and ``logit_scale`` get no weight decay, as in OpenCLIP
(decaying the temperature would pull it towards s = 1).
"""

from __future__ import annotations

import math

import torch

from mmcontrast.objectives import Objective

from .config import OptimConfig, ScheduleConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "logit_scale" in name or "logit_bias" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig,
                   objective: Objective | None = None) -> torch.optim.Optimizer:
    """AdamW over the model's trainable parameters, then the objective's own (SLIP's head), in that order:
    checkpoints' optimizer states are by position. A momentum teacher holds no trainable parameter."""
    groups = param_groups(model, cfg.weight_decay)
    if objective is not None:
        for group, extra in zip(groups, param_groups(objective, cfg.weight_decay)):
            group["params"] += extra["params"]
    # fused kernel: one pass over each tensor (3.6 ms a step for `tiny` on 2 CPU cores; foreach: 12 ms,
    # the per-tensor loop OpenCLIP gets on a CPU: 27 ms)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)


def lr_factor(step: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base lr at ``step``: linear warmup, then cosine to zero at ``cfg.steps``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
