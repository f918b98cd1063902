"""Identities of SigLIP, the hard-negative objectives and multi-positive targets (``docs/objectives.md``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mmcontrast as mc
from mmcontrast.objectives import (
    ClipLoss,
    DebiasedLoss,
    DecoupledLoss,
    HardNegativeHCL,
    HardNegativeNCE,
    SigLipLoss,
    WeightedDecoupledLoss,
)


def _features(n=12, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    v = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    return u.requires_grad_(), v.requires_grad_()


def _grads(loss_fn, *tensors):
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    loss = loss_fn(*tensors)
    return loss.detach(), torch.autograd.grad(loss, tensors)


S = torch.tensor(10.0, dtype=torch.float64)
B = torch.tensor(-10.0, dtype=torch.float64)


# ---------------------------------------------------------------- SigLIP


def test_siglip_matches_the_pairwise_definition():
    u, v = _features()
    logits = S * u @ v.T + B
    z = 2 * torch.eye(12, dtype=torch.float64) - 1
    expected = -F.logsigmoid(z * logits).sum() / 12
    torch.testing.assert_close(SigLipLoss()(u, v, S, B)["loss"], expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("chunk", [1, 5, 8, 12])  # 5: uneven chunks
def test_siglip_chunked_equals_full_loss_and_gradients(chunk):
    u, v = _features()
    scale, bias = S.clone(), B.clone()
    full_loss, full_grads = _grads(lambda *a: SigLipLoss()(*a)["loss"], u, v, scale, bias)
    loss, grads = _grads(lambda *a: SigLipLoss(chunk_size=chunk)(*a)["loss"], u, v, scale, bias)
    torch.testing.assert_close(loss, full_loss, rtol=1e-12, atol=0)
    for g, ref in zip(grads, full_grads):
        torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)


def test_siglip_init_with_orthogonal_features():
    """u ⟂ v for every pair: L = softplus(10) + (N−1)·softplus(−10), ∂L/∂b = −[σ(10) − (N−1)σ(−10)]."""
    n = 6
    e = torch.eye(2 * n, dtype=torch.float64)
    u, v = e[:n], e[n:]  # disjoint coordinates
    bias = B.clone().requires_grad_()
    loss = SigLipLoss()(u, v, S, bias)["loss"]
    ten = torch.tensor(10.0, dtype=torch.float64)
    expected = F.softplus(ten) + (n - 1) * F.softplus(-ten)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    loss.backward()
    expected_grad = -(torch.sigmoid(ten) - (n - 1) * torch.sigmoid(-ten))
    assert bias.grad.item() == pytest.approx(expected_grad.item(), rel=1e-10)


def test_siglip_ids_make_same_id_pairs_positive():
    u, v = _features(6)
    ids = torch.tensor([0, 0, 1, 2, 2, 2])
    logits = S * u @ v.T + B
    z = 2 * (ids[:, None] == ids[None, :]).double() - 1
    expected = -F.logsigmoid(z * logits).sum() / 6
    torch.testing.assert_close(SigLipLoss()(u, v, S, B, batch={"sample_id": ids})["loss"], expected)


def test_siglip_needs_a_bias():
    u, v = _features()
    with pytest.raises(ValueError, match="learnable logit bias"):
        SigLipLoss()(u, v, S)


# ---------------------------------------------------------------- multi-positive InfoNCE


def test_multi_positive_with_unique_ids_is_infonce():
    u, v = _features()
    plain = ClipLoss()(u, v, S)["loss"]
    torch.testing.assert_close(ClipLoss()(u, v, S, batch={"sample_id": torch.arange(12) * 7})["loss"], plain,
                               rtol=1e-12, atol=0)


def test_multi_positive_targets_and_gradient():
    """Targets are the row-normalised same-id mask (rows sum to 1); ∂L_i2t/∂ℓ_i = (softmax − target)/N."""
    n = 6
    ids = torch.tensor([3, 3, 1, 5, 5, 5])
    logits = (3 * torch.randn(n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    logits.requires_grad_()
    from mmcontrast.objectives.clip import soft_cross_entropy
    positives = ids[:, None] == ids[None, :]
    soft_cross_entropy(logits, positives).backward()
    targets = positives.double() / positives.double().sum(1, keepdim=True)
    torch.testing.assert_close(targets.sum(1), torch.ones(n, dtype=torch.float64))
    torch.testing.assert_close(logits.grad, (logits.detach().softmax(1) - targets) / n, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- hard negatives


def test_hn_nce_with_beta_0_alpha_1_is_infonce():
    u, v = _features()
    expected = ClipLoss()(u, v, S)["loss"]
    got = HardNegativeNCE(alpha=1.0, beta=0.0)(u, v, S)["loss"]
    assert abs(got.item() - expected.item()) < 1e-12


def test_hn_nce_weights_sum_to_the_number_of_negatives():
    n = 9
    logits = torch.randn(n, n, dtype=torch.float64) * 4
    negatives = ~torch.eye(n, dtype=torch.bool)
    w = HardNegativeNCE(beta=0.5).weights(logits, negatives, negatives.sum(1).double()).exp()
    torch.testing.assert_close(w.sum(1), torch.full((n,), n - 1.0, dtype=torch.float64))


def test_hn_nce_approaches_the_hardest_negative_as_beta_grows():
    """β → ∞ puts all n weight on the hardest negative: L_i → −log e^{ℓ₊}/(e^{ℓ₊} + n·e^{max_neg ℓ})."""
    u, v = _features(8)
    logits = S * u @ v.T
    n = 7

    def hardest(lg):
        own = lg.diagonal()
        hard = lg.masked_fill(torch.eye(8, dtype=torch.bool), -math.inf).max(1).values
        return (torch.logaddexp(own, math.log(n) + hard) - own).mean()

    expected = (hardest(logits) + hardest(logits.T)) / 2
    got = HardNegativeNCE(alpha=1.0, beta=200.0)(u, v, S)["loss"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_hcl_without_debiasing_or_weights_is_infonce():
    u, v = _features()
    expected = ClipLoss()(u, v, S)["loss"]
    torch.testing.assert_close(HardNegativeHCL(tau_plus=0.0, beta=0.0)(u, v, S)["loss"], expected,
                               rtol=1e-12, atol=0)


def test_hcl_clamp_engages_when_the_positive_dominates():
    """With τ⁺ > 0 and near-identical pairs the debiased sum goes negative; the floor n·e^{−s} takes over."""
    n = 6
    e = torch.eye(n, dtype=torch.float64)  # positives at cos 1, negatives at cos 0
    s = torch.tensor(1 / 0.05, dtype=torch.float64)  # a small temperature
    out = DebiasedLoss(tau_plus=0.1)(e, e, s)
    floor = (n - 1) * torch.exp(-s)
    expected = torch.log(torch.exp(s) + floor) - s
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-12)
    assert out["clamped"].item() == 1.0  # every anchor at the floor: the diagnostic says so


def test_debiased_clamped_counts_the_anchors_at_the_floor():
    """An anchor is at the floor iff e^{ℓ₊} ≥ mean e^{ℓ_neg}/τ⁺ (Chuang et al. 2020's N_g ≤ n·e^{−s}, up to
    the floor itself): with τ⁺ = 0 no anchor is; at τ⁺ = 0.1 exactly the rows whose positive leads by log 10."""
    u, v = _features()
    logits = S * u @ v.T
    assert DebiasedLoss(tau_plus=0.0)(u, v, S)["clamped"].item() == 0.0
    n = logits.shape[0]
    negatives = ~torch.eye(n, dtype=torch.bool)

    def share(lg):
        mean_neg = lg.exp().masked_fill(~negatives, 0).sum(1) / (n - 1)
        debiased = (mean_neg - 0.1 * lg.diagonal().exp()) / 0.9
        return (debiased <= torch.exp(-S)).double().mean()

    expected = (share(logits) + share(logits.T)) / 2
    got = DebiasedLoss(tau_plus=0.1)(u, v, S)["clamped"]
    assert 0 < got.item() < 1  # the fixture has rows of both kinds, so the test can fail
    assert got.item() == pytest.approx(expected.item(), abs=1e-12)


def test_hcl_is_finite_at_scale_100():
    u, v = _features()
    loss = HardNegativeHCL()(u * 1.0, v * 1.0, torch.tensor(100.0, dtype=torch.float64))["loss"]
    assert torch.isfinite(loss)
    loss32 = HardNegativeHCL()(u.float(), v.float(), torch.tensor(100.0))["loss"]
    assert torch.isfinite(loss32)


def test_decoupled_identity():
    """L_DC = L_InfoNCE + log(1 − p_ii), per direction."""
    u, v = _features()
    logits = S * u @ v.T

    def infonce_plus(lg):
        log_p = lg.log_softmax(1).diagonal()
        return (-log_p + torch.log1p(-log_p.exp())).mean()

    expected = (infonce_plus(logits) + infonce_plus(logits.T)) / 2
    torch.testing.assert_close(DecoupledLoss()(u, v, S)["loss"], expected, rtol=1e-12, atol=0)


def test_dclw_with_equal_positives_is_dcl_and_otherwise_differs():
    e = torch.eye(5, dtype=torch.float64)  # every positive has the same cosine → every weight is 1
    torch.testing.assert_close(WeightedDecoupledLoss()(e, e, S)["loss"], DecoupledLoss()(e, e, S)["loss"])
    u, v = _features()
    assert WeightedDecoupledLoss()(u, v, S)["loss"].item() != pytest.approx(DecoupledLoss()(u, v, S)["loss"].item())


@pytest.mark.parametrize("name", ["hn-nce", "hcl", "debiased", "dcl", "dclw"])
def test_hard_negative_objectives_have_gradients_for_everything(name):
    u, v = _features()
    scale = S.clone().requires_grad_()
    objective = mc.make_objective(name)
    loss = objective(u, v, scale)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and u.grad.abs().sum() > 0 and v.grad.abs().sum() > 0


def test_unknown_option_names_the_options():
    with pytest.raises(ValueError, match=r"objective 'hn-nce'.*its options: \['alpha', 'beta'"):
        mc.make_objective("hn-nce", gamma=1)


def test_the_trainer_reads_the_declarations(monkeypatch):
    """An objective that declares it reads no sample ids is refused with data.ids_from; one that cannot run on
    GradCache's cached features is refused with train.chunk_size, in its own words."""
    from mmcontrast.objectives import Objective, registry
    from training.config import load_config
    from training.train import build_objective

    class Plain(Objective):
        def __init__(self, local_loss: bool = True, gather_with_grad: bool = True):  # what the trainer passes
            super().__init__()

        def grad_cache_refusal(self):
            return "objective plain: it reads whole pairs"

    monkeypatch.setitem(registry.OBJECTIVES, "plain", Plain)
    model = mc.create_model("tiny", seed=0)
    build = lambda *extra: build_objective(load_config("tiny", ["objective.name=plain", *extra]), model)  # noqa: E731
    assert isinstance(build(), Plain)
    with pytest.raises(mc.UserError, match="data.ids_from='source' marks .* objective plain does not read"):
        build("data.ids_from=source")
    with pytest.raises(mc.UserError, match="cannot serve objective plain: it reads whole pairs; set train.chunk_size=0"):
        build("train.chunk_size=8")


# ---------------------------------------------------------------- two processes = one process

CASES = {"clip-ids": ("clip", {}), "siglip": ("siglip", {}), "siglip-chunked": ("siglip", {"chunk_size": 3}),
         "hn-nce": ("hn-nce", {}), "hcl": ("hcl", {}), "dcl": ("dcl", {}), "dclw": ("dclw", {})}
IDS = torch.tensor([0, 0, 1, 2, 3, 3, 3, 4])  # several captions of one image across both ranks


def _loss_and_grads(name, options, x_img, x_txt, ids):
    x_img, x_txt = x_img.clone().requires_grad_(), x_txt.clone().requires_grad_()
    t = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-5.0, dtype=torch.float64, requires_grad=True)
    batch = {"sample_id": ids} if name != "siglip" or "chunk_size" in options else None
    loss = mc.make_objective(name, **options)(F.normalize(x_img, dim=-1), F.normalize(x_txt, dim=-1), t.exp(),
                                              logit_bias=bias, batch=batch)["loss"]
    loss.backward()
    return loss.detach(), x_img.grad, x_txt.grad, t.grad, bias.grad if bias.grad is not None else torch.zeros(())


def _raw():
    g = torch.Generator().manual_seed(5)
    return torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)


def _objective_worker(rank, world):
    import torch.distributed as dist
    assert dist.get_world_size() == world
    img, txt = _raw()
    mine = slice(rank * 8 // world, (rank + 1) * 8 // world)
    out = {}
    for case, (name, options) in CASES.items():
        loss, gi, gt, gs, gb = _loss_and_grads(name, options, img[mine], txt[mine], IDS[mine])
        for x in (loss, gs, gb):  # DDP's mean over ranks
            dist.all_reduce(x)
            x /= world
        out[case] = (loss, gi, gt, gs, gb)
    return out


def test_two_processes_equal_one_process_for_every_objective():
    from .spawn import run_workers
    results = run_workers(_objective_worker, 2)
    img, txt = _raw()
    for case, (name, options) in CASES.items():
        loss, gi, gt, gs, gb = _loss_and_grads(name, options, img, txt, IDS)
        got = results[0][case]
        torch.testing.assert_close(got[0], loss, msg=case)
        torch.testing.assert_close(got[3], gs, msg=case)
        torch.testing.assert_close(got[4], gb, msg=case)
        torch.testing.assert_close(torch.cat([r[case][1] for r in results]) / 2, gi, msg=case)
        torch.testing.assert_close(torch.cat([r[case][2] for r in results]) / 2, gt, msg=case)


def test_sampled_itm_negatives_never_hit_a_positive_and_follow_the_softmax():
    """ALBEF/BLIP ITM sampling: 10⁴ draws per row, no positive drawn, frequencies pass a χ² test."""
    from scipy.stats import chisquare

    from mmcontrast.objectives import sample_hard_negatives
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(4, 6, generator=g) * 2
    positives = torch.zeros(4, 6, dtype=torch.bool)
    positives[torch.arange(4), torch.arange(4)] = True
    positives[0, 5] = True  # a second caption of image 0
    draws = torch.stack([sample_hard_negatives(sim, positives, generator=g) for _ in range(10_000)])  # [10⁴, 4]
    assert not positives.gather(1, draws.T).any()
    for row in range(4):
        allowed = ~positives[row]
        expected = sim[row].double().softmax(0)[allowed]
        expected = expected / expected.sum() * 10_000
        observed = torch.bincount(draws[:, row], minlength=6)[allowed].double()
        assert chisquare(observed.numpy(), expected.double().numpy()).pvalue > 1e-3
    with pytest.raises(ValueError, match="no candidate that is not a positive"):
        sample_hard_negatives(sim, torch.ones(4, 6, dtype=torch.bool))
