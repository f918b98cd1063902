"""SLIP (Mu et al. 2022): NT-Xent against its 2N-sample definition, two processes = one, and training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mmcontrast as mc
from mmcontrast.objectives.slip import nt_xent

from .spawn import run_workers


def _views(n=8, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1),
            F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1))


def test_nt_xent_equals_the_2n_sample_definition():
    """SimCLR: each of the 2N embeddings is an anchor, its other view the positive, the other 2N − 2 negatives."""
    a, b = _views()
    tau = 0.1
    z = torch.cat([a, b])
    n = a.shape[0]
    sim = (z @ z.T / tau).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    expected = F.cross_entropy(sim, positives)
    torch.testing.assert_close(nt_xent(a, b, tau), expected, rtol=1e-12, atol=0)


def _worker(rank, world):
    a, b = _views()
    a, b = a.requires_grad_(), b.requires_grad_()
    mine = slice(rank * 4, rank * 4 + 4)
    loss = nt_xent(a[mine], b[mine], 0.1)
    loss.backward()
    total = loss.detach().clone()
    torch.distributed.all_reduce(total)
    return total / world, a.grad[mine], b.grad[mine]


def test_nt_xent_two_processes_equal_one():
    results = run_workers(_worker, 2)
    a, b = _views()
    a, b = a.requires_grad_(), b.requires_grad_()
    loss = nt_xent(a, b, 0.1)
    loss.backward()
    torch.testing.assert_close(results[0][0], loss.detach())
    torch.testing.assert_close(torch.cat([r[1] for r in results]) / 2, a.grad)
    torch.testing.assert_close(torch.cat([r[2] for r in results]) / 2, b.grad)


def _ddp_head_worker(rank, world):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from mmcontrast.objectives import ModelAndObjective
    torch.manual_seed(0)  # the same head on both ranks
    model = mc.create_model("tiny", seed=0).train()
    objective = mc.make_objective("slip", mlp_dim=16, ssl_dim=8)
    objective.attach(model)
    ddp = DDP(ModelAndObjective(model, objective))
    g = torch.Generator().manual_seed(rank)  # each rank its own samples
    batch = {"image": torch.randn(4, 3, 64, 64, generator=g), "text": torch.randint(1, 49000, (4, 32), generator=g),
             "image_views": torch.randn(2, 4, 3, 64, 64, generator=g)}
    ddp(batch["image"], batch["text"], batch)["loss"].backward()
    return {n: p.grad for n, p in objective.named_parameters()}


def test_ddp_averages_the_head_gradients_with_the_model():
    """The head is a parameter of the one module DDP wraps: both ranks hold the same, averaged, gradient."""
    first, second = run_workers(_ddp_head_worker, 2)
    assert first.keys() == second.keys() and any(k.startswith("head.") for k in first)
    for name in first:
        assert torch.count_nonzero(first[name]) > 0, name
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=name)


def test_slip_loss_is_clip_plus_scaled_ssl():
    model = mc.create_model("tiny", seed=0).train()
    objective = mc.make_objective("slip", ssl_scale=0.5, mlp_dim=64, ssl_dim=32)
    objective.attach(model)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(6, 3, 64, 64, generator=g), "text": torch.randint(1, 49000, (6, 32), generator=g),
             "image_views": torch.randn(2, 6, 3, 64, 64, generator=g)}
    out = objective(**model(batch["image"], batch["text"]), batch=batch, model=model)
    clip = mc.make_objective("clip")(**model(batch["image"], batch["text"]))["loss"]
    torch.testing.assert_close(out["loss_clip"], clip.detach())
    torch.testing.assert_close(out["loss"].detach(), out["loss_clip"] + 0.5 * out["loss_ssl"])
    out["loss"].backward()
    assert objective.head[0].weight.grad is not None and model.visual.conv1.weight.grad is not None
    with pytest.raises(ValueError, match="image_views"):
        objective(**model(batch["image"], batch["text"]), batch={"image": batch["image"]}, model=model)


def test_loader_makes_views_only_when_asked(small_demo):
    from mmcontrast.transforms import simclr_view_transform
    model = mc.create_model("tiny", seed=0)
    train_transform, _ = mc.make_transforms(model.preprocess_cfg)
    tokenizer = mc.make_tokenizer(model.model_cfg)
    plain = next(iter(mc.make_loader(str(small_demo / "train"), train_transform, tokenizer, 4)))
    assert "image_views" not in plain
    views = simclr_view_transform(model.preprocess_cfg)
    batch = next(iter(mc.make_loader(str(small_demo / "train"), train_transform, tokenizer, 4, view_transform=views)))
    assert batch["image_views"].shape == (2, 4, 3, 64, 64)
    assert torch.equal(batch["image"], plain["image"])  # the CLIP view is unchanged by asking for more
    assert not torch.equal(batch["image_views"][0], batch["image_views"][1])


def test_trainer_trains_the_head_and_refuses_grad_cache(small_demo, tmp_path):
    from training.train import setup, train_step

    from .test_train import _cfg
    cfg = _cfg(small_demo, "objective.name=slip", "objective.options={mlp_dim: 64, ssl_dim: 32}", "precision=fp32")
    t = setup(cfg, tmp_path, None)
    head = t.objective.head[0].weight.clone()
    torch.manual_seed(12345)  # whatever state the process's generator is in, the config's seed decides the head
    assert torch.equal(setup(cfg, tmp_path / "again", None).objective.head[0].weight, head)
    losses, _, stepped, _ = train_step(t, next(iter(t.loader)), stop_requested=False)
    assert stepped and "loss_ssl" in losses and not torch.equal(head, t.objective.head[0].weight)
    with pytest.raises(mc.UserError, match="cannot serve objective slip"):
        setup(_cfg(small_demo, "objective.name=slip", "train.chunk_size=8"), tmp_path / "x", None)
