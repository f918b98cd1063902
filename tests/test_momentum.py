"""Momentum teacher (EMA), queues (FIFO, wrap-around) and ALBEF distillation identities, and in the trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mmcontrast as mc
from mmcontrast.objectives import ClipLoss, MomentumDistillation


def _model():
    return mc.create_model("tiny", seed=0).eval()


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 64, 64, generator=g), "text": torch.randint(1, 49000, (n, 32), generator=g)}


def _objective(model, **kw):
    objective = MomentumDistillation(**kw)
    objective.attach(model, total_steps=10)
    return objective


def _perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("m", [0.0, 1.0])
def test_momentum_0_copies_and_1_keeps(m):
    model = _model()
    objective = _objective(model, momentum=m, momentum_schedule="constant")
    before = [p.clone() for p in objective.teacher.parameters()]
    _perturb(model)
    objective.after_step(model)
    expected = list(model.parameters()) if m == 0 else before
    assert all(torch.equal(t, e) for t, e in zip(objective.teacher.parameters(), expected))


def test_ema_closed_form():
    """Constant online θ: θ_k⁽ⁿ⁾ = θ + mⁿ(θ_k⁽⁰⁾ − θ)."""
    model, m, n = _model(), 0.9, 5
    objective = _objective(model, momentum=m, momentum_schedule="constant")
    start = [p.clone() for p in objective.teacher.parameters()]
    _perturb(model)
    for _ in range(n):
        objective.after_step(model)
    for t, p, t0 in zip(objective.teacher.parameters(), model.parameters(), start):
        torch.testing.assert_close(t, p + m ** n * (t0 - p), atol=1e-6, rtol=1e-5)


def test_cosine_momentum_schedule():
    objective = _objective(_model(), momentum=0.99, momentum_schedule="cosine")
    assert objective.current_momentum() == pytest.approx(0.99)
    objective.step.fill_(5)
    assert objective.current_momentum() == pytest.approx(1 - 0.01 * 0.5)
    objective.step.fill_(10)
    assert objective.current_momentum() == pytest.approx(1.0)


def test_warmup_momentum_schedule_tracks_the_student_early_then_holds_m0():
    """m_t = min(m₀, (1 + t)/(10 + t)): 0.1 at the first step, m₀ = 0.995 from t = 1,791 on."""
    objective = _objective(_model(), momentum=0.995, momentum_schedule="warmup")
    for t, m in [(0, 0.1), (90, 0.91), (420, 421 / 430), (1790, 1791 / 1800), (1791, 0.995), (10**5, 0.995)]:
        objective.step.fill_(t)
        assert objective.current_momentum() == pytest.approx(m, rel=1e-12), t


def test_warmup_momentum_is_used_by_the_ema_update():
    model = _model()
    objective = _objective(model, momentum=0.995, momentum_schedule="warmup")
    start = [p.clone() for p in objective.teacher.parameters()]
    _perturb(model)
    objective.after_step(model)  # t = 0: m = 0.1, the teacher moves 90% of the way to the student
    for t, p, t0 in zip(objective.teacher.parameters(), model.parameters(), start):
        torch.testing.assert_close(t, p + 0.1 * (t0 - p), atol=1e-6, rtol=1e-5)


def test_queue_is_fifo_and_wraps_around():
    objective = _objective(_model(), queue_size=5)
    rows = [torch.full((3, 128), float(i)) for i in range(3)]  # batches of 3 into a queue of 5: no divisibility
    for i, r in enumerate(rows):
        objective.enqueue(r, -r, torch.full((3,), i))
    # slots: batch 0 → 0,1,2; batch 1 → 3,4,0; batch 2 → 1,2,3. The newest 5 rows (batch 1's last two
    # and batch 2) remain, and the pointer is at 9 mod 5.
    assert objective.ptr.item() == 4 and objective.filled.item() == 5
    assert objective.image_queue[:, 0].tolist() == [1.0, 2.0, 2.0, 2.0, 1.0]
    assert objective.id_queue.tolist() == [1, 2, 2, 2, 1]
    assert torch.equal(objective.text_queue, -objective.image_queue)


def test_no_gradient_reaches_the_teacher_or_the_queues():
    model = _model()
    objective = _objective(model, queue_size=8)
    batch = _batch()
    objective(**model(batch["image"], batch["text"]), batch=batch)
    objective.after_step(model)  # fills the queue with this batch's keys
    loss = objective(**model(batch["image"], batch["text"]), batch=batch)["loss"]
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in objective.teacher.parameters())
    assert all(not b.requires_grad for b in objective.buffers())
    assert model.visual.conv1.weight.grad is not None


def test_without_queue_and_alpha_it_is_infonce_with_momentum_keys():
    model = _model()
    objective = _objective(model, queue_size=0, alpha=0.0)
    _perturb(model)  # student and teacher now differ
    batch = _batch()
    with torch.no_grad():
        out = model(batch["image"], batch["text"])
        t = objective.teacher(batch["image"], batch["text"])
    s = out["logit_scale"]
    expected = ClipLoss.from_logits(s * out["image_features"] @ t["text_features"].T,
                                    s * out["text_features"] @ t["image_features"].T, torch.arange(6))["loss"]
    torch.testing.assert_close(objective(**out, batch=batch)["loss"], expected)


def test_right_after_the_copy_alpha_1_gives_zero_logit_gradient():
    model = _model()
    objective = _objective(model, queue_size=16, alpha=1.0)
    batch = _batch()
    objective(**model(batch["image"], batch["text"]), batch=batch)
    objective.after_step(model)  # m = 0.995 of identical weights: the teacher is still the student
    feats = model(batch["image"], batch["text"])
    u = feats["image_features"].detach().requires_grad_()
    loss = objective(u, feats["text_features"].detach(), feats["logit_scale"].detach(), batch=batch)["loss"]
    (grad,) = torch.autograd.grad(loss, u)
    assert grad.abs().max().item() < 1e-6


def test_targets_sum_to_one_and_ids_mark_queue_positives():
    model = _model()
    objective = _objective(model, queue_size=16, alpha=0.0)
    batch = {**_batch(), "sample_id": torch.tensor([7, 7, 1, 2, 3, 4])}
    objective(**model(batch["image"], batch["text"]), batch=batch)
    objective.after_step(model)
    # the same images again: every anchor's copy in the queue is a positive; with α = 0 the loss is the
    # cross-entropy against the row-normalised same-id mask over [batch ; queue]
    out = model(batch["image"], batch["text"])
    loss = objective(**out, batch=batch)["loss"]
    with torch.no_grad():
        t = objective.teacher(batch["image"], batch["text"])
    ids = batch["sample_id"]
    key_ids = torch.cat([ids, ids])
    targets = (ids[:, None] == key_ids[None, :]).float()
    targets = targets / targets.sum(1, keepdim=True)
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    s = out["logit_scale"]
    keys_t = torch.cat([t["text_features"], objective.text_queue[:6]])
    keys_i = torch.cat([t["image_features"], objective.image_queue[:6]])
    i2t = -(targets * F.log_softmax(s * out["image_features"] @ keys_t.T, 1)).sum(1).mean()
    t2i = -(targets * F.log_softmax(s * out["text_features"] @ keys_i.T, 1)).sum(1).mean()
    torch.testing.assert_close(loss, (i2t + t2i) / 2)


def test_trainer_updates_once_per_step_and_checkpoints_the_teacher(small_demo, tmp_path):
    from training.train import train

    from .test_train import _cfg
    cfg = _cfg(small_demo, "objective.name=momentum", "objective.options={queue_size: 40, alpha_ramp_steps: 4}",
               "schedule.steps=4", "checkpoint.every=2", "eval.retrieval=", "eval.zeroshot=", "train.chunk_size=8",
               "data.batch_size=16")
    train(cfg, tmp_path / "a", stop_after=2)
    from safetensors.torch import load_file
    state = load_file(str(tmp_path / "a" / "checkpoints" / "step_0000002" / "objective.safetensors"))
    assert state["step"].item() == 2 and state["filled"].item() == 32  # 2 steps × 16, once per step (not per chunk)
    train(cfg, tmp_path / "a", resume="auto")
    train(cfg, tmp_path / "b")
    a = load_file(str(tmp_path / "a" / "final" / "open_clip_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "open_clip_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed with teacher and queues = uninterrupted


def _two_step_run(rank: int, world: int):
    """Two steps of the objective (enqueue between them) on this rank's half of a batch of 8."""
    model = _model()
    objective = _objective(model, queue_size=12, alpha=0.4)
    b = 8 // world
    full = {**_batch(8), "sample_id": torch.tensor([0, 0, 1, 2, 3, 4, 5, 6])}
    mine = {k: v[rank * b:(rank + 1) * b] for k, v in full.items()}
    objective(**model(mine["image"], mine["text"]), batch=mine)
    objective.after_step(model)
    u = model.encode_image(mine["image"], normalize=True).detach().requires_grad_()
    v = model.encode_text(mine["text"], normalize=True).detach()
    loss = objective(u, v, model.logit_scale.exp().detach(), batch=mine)["loss"]
    loss.backward()
    return loss.detach(), u.grad, objective.image_queue.clone(), objective.id_queue.clone()


def _worker(rank, world):
    loss, grad, queue, ids = _two_step_run(rank, world)
    torch.distributed.all_reduce(loss)
    return loss / world, grad, queue, ids


def test_two_processes_equal_one_process():
    """Keys and queues are gathered from every rank: the same loss, gradients and queues as one process."""
    from .spawn import run_workers
    results = run_workers(_worker, 2)
    loss, grad, queue, ids = _two_step_run(0, 1)
    for r_loss, _, r_queue, r_ids in results:
        torch.testing.assert_close(r_loss, loss)
        torch.testing.assert_close(r_queue, queue)
        assert torch.equal(r_ids, ids)
    torch.testing.assert_close(torch.cat([r[1] for r in results]) / 2, grad)
