"""Splitting benchmark encoding across processes and putting the rows back in order.

Rank r encodes items ``r, r + W, r + 2W, ...``; ``gather_rows`` reassembles the full [N, D]
matrix on every rank, so every process computes the same metrics as one process would.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from mmcontrast.distributed import rank, world_size


def my_indices(n: int) -> list[int]:
    return list(range(rank(), n, world_size()))


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Rows computed for ``my_indices(n)`` on each rank → the [n, D] matrix in index order."""
    world = world_size()
    if world == 1:
        return local
    parts = [None] * world
    dist.all_gather_object(parts, local.cpu())
    dim = max(p.shape[1] for p in parts)  # a rank with no rows sends an empty [0, 0] tensor
    out = torch.empty(n, dim, dtype=local.dtype)
    for r, part in enumerate(parts):
        if part.numel():
            out[r::world] = part
    return out
