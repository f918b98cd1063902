"""InfoNCE identities (closed forms, symmetry, gradients, the clamp, the distributed modes), in one process
and across two and four gloo processes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mmcontrast as mc
from mmcontrast.objectives import ClipLoss, clamp_logit_scale

from .spawn import run_workers


def _loss(u, v, s, **kw):
    return ClipLoss(**kw)(u, v, torch.as_tensor(s, dtype=u.dtype))["loss"]


def test_identical_features_give_log_n():
    n = 16
    u = F.normalize(torch.ones(n, 8), dim=-1)
    v = F.normalize(torch.arange(1.0, 9.0).expand(n, 8), dim=-1)
    assert _loss(u, v, 14.3).item() == pytest.approx(math.log(n), abs=1e-6)


def test_orthonormal_pairs_at_scale_100():
    n = 8
    e = torch.eye(n, dtype=torch.float64)
    expected = math.log1p((n - 1) * math.exp(-100))
    assert _loss(e, e, 100.0).item() == pytest.approx(expected, abs=1e-12)


def test_symmetric_in_image_and_text():
    u, v = F.normalize(torch.randn(12, 16), dim=-1), F.normalize(torch.randn(12, 16), dim=-1)
    torch.testing.assert_close(_loss(u, v, 10.0), _loss(v, u, 10.0))


def test_joint_permutation_invariance():
    u, v = F.normalize(torch.randn(12, 16), dim=-1), F.normalize(torch.randn(12, 16), dim=-1)
    p = torch.randperm(12)
    torch.testing.assert_close(_loss(u[p], v[p], 10.0), _loss(u, v, 10.0))


def test_value_matches_closed_form_cross_entropy():
    u, v = F.normalize(torch.randn(6, 4), dim=-1), F.normalize(torch.randn(6, 4), dim=-1)
    s = 7.0
    logits = s * u @ v.T
    p, q = logits.log_softmax(1), logits.log_softmax(0)
    expected = -(p.diagonal().mean() + q.diagonal().mean()) / 2
    torch.testing.assert_close(_loss(u, v, s), expected)


def test_logit_gradient_closed_form_and_i2t_rows_sum_to_zero():
    """∂L/∂ℓ = (1/2N)[(P − I) + (Q − I)], P row-softmax, Q column-softmax; rows of (P − I) sum to 0."""
    n = 10
    logits = (5.0 * F.normalize(torch.randn(n, 8), dim=-1) @ F.normalize(torch.randn(n, 8), dim=-1).T)
    logits = logits.double().requires_grad_()
    ClipLoss.from_logits(logits, logits.T, torch.arange(n))["loss"].backward()
    eye = torch.eye(n, dtype=torch.float64)
    p, q = logits.detach().softmax(dim=1), logits.detach().softmax(dim=0)
    torch.testing.assert_close(logits.grad, ((p - eye) + (q - eye)) / (2 * n))
    i2t_only = logits.grad - (q - eye) / (2 * n)
    torch.testing.assert_close(i2t_only.sum(dim=1), torch.zeros(n, dtype=torch.float64), atol=1e-12, rtol=0)


def test_gradcheck_float64():
    u = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    v = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)

    def f(u, v, t):
        return ClipLoss()(F.normalize(u, dim=-1), F.normalize(v, dim=-1), t.exp())["loss"]

    assert torch.autograd.gradcheck(f, (u, v, t))


def test_logit_scale_init_and_clamp():
    model = mc.create_model("tiny", seed=0)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(math.log(100), rel=1e-7)


def test_local_loss_without_gather_with_grad_is_rejected():
    with pytest.raises(ValueError, match="wrong gradients"):
        ClipLoss(local_loss=True, gather_with_grad=False)


def test_one_process_modes_agree():
    u, v = F.normalize(torch.randn(8, 4), dim=-1), F.normalize(torch.randn(8, 4), dim=-1)
    torch.testing.assert_close(_loss(u, v, 9.0, local_loss=False), _loss(u, v, 9.0, local_loss=True))


# ---- two processes: gloo on the CPU --------------------------------------------------------------

N, D = 8, 6


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)


def _grads(x_img, x_txt, scale, **kw):
    """Loss and gradients w.r.t. raw features and the log-scale, from features normalised here."""
    x_img, x_txt = x_img.clone().requires_grad_(), x_txt.clone().requires_grad_()
    t = torch.tensor(math.log(scale), requires_grad=True)
    loss = ClipLoss(**kw)(F.normalize(x_img, dim=-1), F.normalize(x_txt, dim=-1), t.exp())["loss"]
    loss.backward()
    return loss.detach(), x_img.grad, x_txt.grad, t.grad


def _worker(rank, world):
    import torch.distributed as dist

    from mmcontrast.distributed import world_size
    assert world_size() == world == dist.get_world_size()
    img, txt = _data()
    b = N // world
    mine = slice(rank * b, (rank + 1) * b)
    out = {}
    for mode in [(True, True), (False, True), (False, False)]:
        loss, gi, gt, gs = _grads(img[mine], txt[mine], 12.0, local_loss=mode[0], gather_with_grad=mode[1])
        # DDP averages parameter gradients over ranks; the losses are averaged the same way here.
        for x in (loss, gs):
            dist.all_reduce(x)
            x /= world
        out[mode] = (loss, gi, gt, gs)
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_modes_match_single_process(world):
    """(T,T) and (F,T) give the exact loss and gradients; (F,F) gives gradients ×1/W (open_clip #616)."""
    img, txt = _data()
    loss, gi, gt, gs = _grads(img, txt, 12.0)
    results = run_workers(_worker, world)
    for mode, factor in [((True, True), 1.0), ((False, True), 1.0), ((False, False), 1.0 / world)]:
        torch.testing.assert_close(results[0][mode][0], loss)
        torch.testing.assert_close(results[0][mode][3], gs)
        # A rank's feature gradient times 1/W is what DDP's mean over ranks passes to the encoders.
        torch.testing.assert_close(torch.cat([r[mode][1] for r in results]) / world, factor * gi)
        torch.testing.assert_close(torch.cat([r[mode][2] for r in results]) / world, factor * gt)
