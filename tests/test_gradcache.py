"""GradCache (Gao et al. 2021): chunked gradients equal one full-batch backward, in one and two processes; with
NegCLIP's hard-negative captions (encoded in the chunks) too."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mmcontrast as mc
from mmcontrast.gradcache import grad_cache_step
from mmcontrast.objectives import ModelAndObjective, NegCLIPLoss

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

    def encode_text(self, text, normalize=False):
        features = self.textual(text)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image, text):
        out = {"image_features": F.normalize(self.visual(image), dim=-1),
               "text_features": self.encode_text(text, normalize=True), "logit_scale": self.logit_scale.exp()}
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
    assert_same_final(finals)


def assert_same_final(finals: list) -> None:
    """Two trainer runs' (last loss, final state dict), plain and through GradCache, equal to fp32 rounding."""
    (loss, plain), (cached_loss, cached) = finals
    torch.testing.assert_close(cached_loss, loss, atol=1e-5, rtol=0)
    for k in plain:
        torch.testing.assert_close(cached[k], plain[k], atol=1e-5, rtol=1e-4, msg=k)


# ---------------------------------------------------------------- NegCLIP's hard-negative captions

def _negatives_batch(masks: str, n=16, k=2):
    """``_batch`` plus K hard-negative captions per sample. "mixed": samples 2 and 5 hold one valid negative,
    samples 8–15 (rank 1 of two) none; "none": no sample holds any."""
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(n, k, dtype=torch.bool)
    mask[[2, 5], 1] = False
    mask[8:] = False
    if masks == "none":
        mask[:] = False
    return {**_batch(n), "negatives": torch.randint(0, 50, (n, k, 4), generator=g), "negatives_mask": mask}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _plain_negclip(batch, local_loss=True):
    """The plain step: one forward of the whole batch (negatives encoded inside it) and one backward."""
    model = TwoTowerMLP().eval()
    loss = ModelAndObjective(model, NegCLIPLoss(local_loss))(batch["image"], batch["text"], batch)["loss"]
    loss.backward()
    return loss.detach(), _grads(model)


def _cached_negclip(model, batch, chunk, local_loss=True):
    torch.manual_seed(123)
    objective = NegCLIPLoss(local_loss)
    loss = grad_cache_step(ModelAndObjective(model, objective), objective, batch, chunk, lambda: _params(model))
    return loss["loss"], _grads(model)


def _assert_equal_grads(got, expected):
    assert got.keys() == expected.keys() and "textual.0.weight" in got
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("masks", ["mixed", "none"])
@pytest.mark.parametrize("chunk", [1, 3, 16])
@pytest.mark.parametrize("local_loss", [True, False])
def test_negclip_chunked_gradients_equal_the_plain_step(masks, chunk, local_loss):
    batch = _negatives_batch(masks)
    loss, grads = _plain_negclip(batch, local_loss)
    got_loss, got = _cached_negclip(TwoTowerMLP().eval(), batch, chunk, local_loss)
    torch.testing.assert_close(got_loss, loss, rtol=1e-12, atol=0)
    _assert_equal_grads(got, grads)
    if masks == "mixed":  # the negatives take part: without them the loss is CLIP's
        clip = mc.make_objective("clip")(**TwoTowerMLP().eval()(batch["image"], batch["text"]), batch=batch)
        assert loss > clip["loss"]


def test_negclip_chunks_replay_the_random_state_of_the_negatives():
    """With dropout in the text tower: the reference encodes chunk by chunk (captions, then that chunk's valid
    negatives) with the whole graph in memory, as GradCache's passes draw their masks."""
    batch, chunk = _negatives_batch("mixed"), 3
    model = TwoTowerMLP().train()
    torch.manual_seed(123)
    parts = {"image_features": [], "text_features": [], "negative_features": []}
    for i in range(0, 16, chunk):
        c = slice(i, i + chunk)
        out = model(batch["image"][c], batch["text"][c])
        valid = batch["negatives_mask"][c].flatten()
        negatives = out["text_features"].new_zeros(valid.numel(), 8)
        if valid.any():
            negatives[valid] = model.encode_text(batch["negatives"][c].flatten(0, 1)[valid], normalize=True)
        for name, value in (("image_features", out["image_features"]), ("text_features", out["text_features"]),
                            ("negative_features", negatives.view(-1, 2, 8))):
            parts[name].append(value)
    features = {name: torch.cat(v) for name, v in parts.items()}
    loss = NegCLIPLoss()(**features, **_params(model), batch=batch)["loss"]
    loss.backward()
    got_loss, got = _cached_negclip(TwoTowerMLP().train(), batch, chunk)
    torch.testing.assert_close(got_loss, loss.detach(), rtol=1e-12, atol=0)
    _assert_equal_grads(got, _grads(model))


def _ddp_negclip_worker(rank, world):
    from torch.nn.parallel import DistributedDataParallel as DDP
    assert torch.distributed.get_world_size() == world == 2
    b, out = 16 // world, {}
    mine = {k: v[rank * b:(rank + 1) * b] for k, v in _negatives_batch("mixed").items()}
    for local_loss in (True, False):
        model = TwoTowerMLP().eval()
        objective = NegCLIPLoss(local_loss)
        ddp = DDP(ModelAndObjective(model, objective))
        losses = grad_cache_step(ddp, objective, mine, 3, lambda: _params(model), no_sync=ddp.no_sync)
        loss = losses["loss"].clone()
        torch.distributed.all_reduce(loss)
        out[local_loss] = (loss / world, _grads(model))
    return out


def test_negclip_two_processes_with_gradcache_equal_one_process():
    """DDP in two gloo processes, chunks of 3 of the 8 samples per rank, rank 1 holding no valid negative: the
    loss and the averaged gradients are those of the plain step over the 16-sample batch in one process."""
    results = run_workers(_ddp_negclip_worker, 2)
    assert len(results) == 2
    for local_loss in (True, False):
        ref_loss, ref = _plain_negclip(_negatives_batch("mixed"), local_loss)
        for result in results:
            loss, grads = result[local_loss]
            torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
            _assert_equal_grads(grads, ref)
