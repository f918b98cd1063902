"""GradCache (Gao et al. 2021): chunked gradients equal one full-batch backward, in one and two processes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mmcontrast as mc
from mmcontrast.gradcache import grad_cache_step

from .spawn import run_workers


class TwoTowerMLP(torch.nn.Module):
    """The smallest dual encoder with dropout: two MLPs, a learnable log-scale and (optionally) a bias."""

    def __init__(self, bias: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.visual = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.GELU(), torch.nn.Dropout(0.1),
                                          torch.nn.Linear(32, 8))
        self.textual = torch.nn.Sequential(torch.nn.Embedding(50, 32), torch.nn.Dropout(0.1), torch.nn.Flatten(),
                                           torch.nn.Linear(32 * 4, 8))
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-10.0)) if bias else None
        self.double()

    def forward(self, image, text):
        out = {"image_features": F.normalize(self.visual(image), dim=-1),
               "text_features": F.normalize(self.textual(text), dim=-1), "logit_scale": self.logit_scale.exp()}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out


def _batch(n=16):
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(n, 12, generator=g, dtype=torch.float64),
            "text": torch.randint(0, 50, (n, 4), generator=g)}


def _params(model):
    out = {"logit_scale": model.logit_scale.exp()}
    if getattr(model, "logit_bias", None) is not None:
        out["logit_bias"] = model.logit_bias
    return out


def _full(model, objective, batch, chunk=None):
    """One loss over the whole batch and one backward, with the whole graph in memory. The forward
    runs chunk by chunk so that dropout draws the same masks as GradCache's passes do."""
    torch.manual_seed(123)
    n = batch["image"].shape[0]
    outs = [model(batch["image"][i:i + (chunk or n)], batch["text"][i:i + (chunk or n)])
            for i in range(0, n, chunk or n)]
    features = {k: torch.cat([o[k] for o in outs]) for k in ("image_features", "text_features")}
    loss = objective(**features, **_params(model), batch=batch)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _cached(model, objective, batch, chunk, replay=True):
    torch.manual_seed(123)
    loss = grad_cache_step(model, objective, batch, chunk, lambda: _params(model), replay_rng=replay)["loss"]
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("objective", ["clip", "siglip"])
@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_chunked_gradients_equal_the_full_batch(objective, chunk):
    bias = objective == "siglip"
    loss, grads = _full(TwoTowerMLP(bias).train(), mc.make_objective(objective), _batch(), chunk)
    got_loss, got = _cached(TwoTowerMLP(bias).train(), mc.make_objective(objective), _batch(), chunk)
    torch.testing.assert_close(got_loss, loss, rtol=1e-10, atol=0)
    assert grads.keys() == got.keys() and "logit_scale" in got
    for name in grads:
        torch.testing.assert_close(got[name], grads[name], rtol=1e-10, atol=1e-13, msg=name)


def test_without_replaying_the_random_state_gradients_differ():
    _, grads = _full(TwoTowerMLP().train(), mc.make_objective("clip"), _batch(), 4)
    _, got = _cached(TwoTowerMLP().train(), mc.make_objective("clip"), _batch(), 4, replay=False)
    assert not torch.allclose(got["visual.0.weight"], grads["visual.0.weight"], rtol=1e-6)


def test_open_clip_model_with_patch_dropout():
    """A real tower whose FLIP patch dropout draws on the CPU random state: replay makes it exact."""
    def model():
        return mc.create_model("tiny", seed=0, patch_dropout=0.5).double().train()
    g = torch.Generator().manual_seed(2)
    batch = {"image": torch.randn(8, 3, 64, 64, generator=g, dtype=torch.float64),
             "text": torch.randint(1, 49000, (8, 32), generator=g)}
    loss, grads = _full(model(), mc.make_objective("clip"), batch, 3)
    got_loss, got = _cached(model(), mc.make_objective("clip"), batch, 3)  # uneven: 3 + 3 + 2
    torch.testing.assert_close(got_loss, loss, rtol=1e-10, atol=0)
    for name in grads:
        torch.testing.assert_close(got[name], grads[name], rtol=1e-8, atol=1e-11, msg=name)


def test_open_clip_style_accumulation_gives_k_times_the_scale_gradient():
    """Documenting test (OpenCLIP's ``--accum-freq``): re-forwarding chunk j against the others' cached features and
    back-propagating the whole loss each time gives exact encoder gradients but k× the logit-scale gradient."""
    k, batch, objective = 4, _batch(), mc.make_objective("clip")
    model = TwoTowerMLP().eval()  # no dropout: the accumulation has no random-state replay
    loss, grads = _full(TwoTowerMLP().eval(), objective, batch)
    with torch.no_grad():
        feats = [model(batch["image"][j::k], batch["text"][j::k]) for j in range(k)]
    for j in range(k):
        out = model(batch["image"][j::k], batch["text"][j::k])
        u = torch.cat([out["image_features"] if i == j else feats[i]["image_features"] for i in range(k)])
        v = torch.cat([out["text_features"] if i == j else feats[i]["text_features"] for i in range(k)])
        objective(u, v, model.logit_scale.exp())["loss"].backward()
    torch.testing.assert_close(model.visual[0].weight.grad, grads["visual.0.weight"], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(model.logit_scale.grad, k * grads["logit_scale"], rtol=1e-10, atol=0)


def _ddp_worker(rank, world):
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = TwoTowerMLP().eval()  # no dropout: one process and two processes cannot draw the same masks
    ddp = DDP(model)
    b = 16 // world
    mine = {k: v[rank * b:(rank + 1) * b] for k, v in _batch().items()}
    losses = grad_cache_step(ddp, mc.make_objective("clip"), mine, 3, lambda: _params(model), no_sync=ddp.no_sync)
    loss = losses["loss"].clone()
    torch.distributed.all_reduce(loss)
    return loss / world, {n: p.grad for n, p in model.named_parameters()}


def test_two_processes_equal_one_process():
    """DDP in two gloo processes, chunks of 3 of the 8 samples per rank: the loss and the averaged
    gradients are those of one backward over the 16-sample batch in one process."""
    results = run_workers(_ddp_worker, 2)
    ref_loss, ref = _full(TwoTowerMLP().eval(), mc.make_objective("clip"), _batch())
    for loss, grads in results:
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
        assert grads.keys() == ref.keys()
        for name in ref:
            torch.testing.assert_close(grads[name], ref[name], rtol=1e-10, atol=1e-13, msg=name)


def test_trainer_with_chunks_equals_plain_steps(small_demo, tmp_path):
    from training.train import setup, train_step

    from .test_train import _cfg
    from .test_training_controls import _batch as image_text_batch

    finals = []
    for chunk in (0, 3):
        t = setup(_cfg(small_demo, "precision=fp32", f"train.chunk_size={chunk}"), tmp_path / str(chunk), None)
        for _ in range(2):
            losses, _, stepped, _ = train_step(t, image_text_batch(8), stop_requested=False)
            assert stepped
        finals.append((losses["loss"], t.unwrapped.state_dict()))
    (loss, plain), (cached_loss, cached) = finals
    torch.testing.assert_close(cached_loss, loss, atol=1e-5, rtol=0)
    for k in plain:
        torch.testing.assert_close(cached[k], plain[k], atol=1e-5, rtol=1e-4, msg=k)
