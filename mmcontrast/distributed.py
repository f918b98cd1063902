"""Cross-rank helpers. ``accelerator.gather`` carries no gradient; contrastive negatives need it.

``all_gather_with_grad`` concatenates a tensor from every rank, and its backward pass sums the
incoming gradients over ranks (each rank's loss uses every rank's features) and returns this
rank's slice — the gradient of the sum of all ranks' losses. DDP's mean over ranks then gives
the gradient of the global mean loss. In one process it returns its input unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        b = grad.shape[0] // dist.get_world_size()
        r = dist.get_rank()
        return grad[r * b:(r + 1) * b]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """[b, ...] on each rank → [W·b, ...] in rank order, differentiable. Identity in one process."""
    if not is_distributed():
        return x
    return _AllGatherWithGrad.apply(x)


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """[b, ...] → [W·b, ...] without gradient (features of other ranks as constants)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x  # keep the local slot differentiable
    return torch.cat(parts, dim=0)


def shutdown() -> None:
    """Destroy the default process group, if any: every program's last step (``errors.run_main``).

    Left to interpreter exit, gloo's threads race the teardown and about one exit in a hundred aborts
    (SIGABRT, "terminate called without an active exception") after a run that succeeded. Import the
    model stack (open_clip → timm → torch._dynamo) before the group is created: imported after, it keeps
    a reference to the group and this call no longer stops its threads.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

