"""Fusion blocks trained on hard-negative captions: ITM pairs and re-ranking candidates from batch["negatives"]."""

from __future__ import annotations

import math

import pytest
import torch

import mmcontrast as mc
from mmcontrast.objectives import ClipLoss, FusionTerms, WithFusion
from mmcontrast.objectives.negclip import NegCLIPLoss
from training.config import load_config
from training.train import build, setup, train_step

from .test_fusion import small_fusion_model

CAPTIONS = ["a red circle", "a blue square", "a green star", "a small red circle"]
# K = 2 slots per sample; "" marks a masked-out slot. "purple", "hexagon", "huge", "yellow" and "ring" are in
# no caption, so their token embeddings get gradient only through the negative captions.
NEGATIVES = [["a purple circle", ""], ["", ""], ["a green hexagon", "a yellow ring"], ["a huge red circle", ""]]
TERMS = FusionTerms(itm_weight=1.0, rerank_weight=0.5, rerank_negatives=2, negative_captions=True)


@pytest.fixture(scope="module")
def model():
    return small_fusion_model()


@pytest.fixture(scope="module")
def batch(model):
    tokenizer = mc.make_tokenizer(model.model_cfg)
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[bool(c) for c in row] for row in NEGATIVES])
    negatives = tokenizer([c or "a masked out caption" for row in NEGATIVES for c in row]).view(4, 2, -1)
    return {"image": torch.randn(4, 3, 32, 32, generator=g), "text": tokenizer(CAPTIONS),
            "negatives": negatives, "negatives_mask": mask}


def _losses(objective, model, batch, seed=0):
    torch.manual_seed(seed)  # the sampled ITM and re-ranking negatives
    return objective(**model(batch["image"], batch["text"]), batch=batch, model=model)


def _parts(objective, model, batch, seed=0):
    """(ITM logits, labels, re-ranking logits both ways) of one seeded call."""
    out = model(batch["image"], batch["text"])
    blocks = model.fusion
    negatives = objective.encode_negatives(model, batch)
    args = (out["image_features"], out["text_features"], out["logit_scale"], blocks, out["fusion"], batch, negatives)
    torch.manual_seed(seed)
    logits, labels = objective.itm_pairs(*args)
    return logits, labels, objective.rerank_logits(*args), out


def test_needs_negatives_passes_through_and_follows_the_option():
    assert not WithFusion(ClipLoss()).needs_negatives
    assert WithFusion(NegCLIPLoss()).needs_negatives
    assert WithFusion(ClipLoss(), TERMS).needs_negatives
    with pytest.raises(ValueError, match="negative_captions feeds the ITM and re-ranking terms"):
        FusionTerms(itm_weight=0.0, zorro_weight=1.0, negative_captions=True)
    with pytest.raises(ValueError, match="negative_captions must be true or false"):
        FusionTerms(negative_captions="yes")


def test_with_the_option_off_the_negatives_in_the_batch_change_nothing(model, batch):
    off = WithFusion(ClipLoss(), FusionTerms(itm_weight=1.0, rerank_weight=0.5, rerank_negatives=2))
    bare = {k: v for k, v in batch.items() if not k.startswith("negatives")}
    with torch.no_grad():
        with_negatives, without = _losses(off, model, batch), _losses(off, model, bare)
    for key in without:
        assert torch.equal(with_negatives[key], without[key]), key


def test_itm_pairs_are_positives_sampled_negatives_then_each_image_with_its_negative_captions(model, batch):
    objective = WithFusion(ClipLoss(), TERMS)
    with torch.no_grad():
        logits, labels, _, _ = _parts(objective, model, batch)
    b, valid = 4, batch["negatives_mask"].nonzero()
    assert logits.shape == (3 * b + len(valid), 2) and len(valid) == 4
    assert labels[:b].eq(1).all() and labels[b:].eq(0).all()
    # each image with its own negative caption, as the joint run scores that pair
    tokens = batch["negatives"][valid[:, 0], valid[:, 1]]
    with torch.no_grad():
        joint = model.fusion.itm_logits(model(batch["image"][valid[:, 0]], tokens)["fusion"]["fused"])
    torch.testing.assert_close(logits[3 * b:], joint, atol=1e-5, rtol=1e-5)


def test_reranking_adds_each_images_own_negative_captions_as_candidates(model, batch):
    objective = WithFusion(ClipLoss(), TERMS)
    with torch.no_grad():
        _, _, (by_image, by_text), out = _parts(objective, model, batch)
        assert by_image.shape == (4, 1 + 2 + 2) and by_text.shape == (4, 1 + 2)  # text anchors: unchanged
        mask = batch["negatives_mask"]
        assert torch.isneginf(by_image[:, 3:][~mask]).all() and torch.isfinite(by_image[:, 3:][mask]).all()
        valid = mask.nonzero()
        tokens = batch["negatives"][valid[:, 0], valid[:, 1]]
        joint = model(batch["image"][valid[:, 0]], tokens)
        itm = model.fusion.itm_logits(joint["fusion"]["fused"])
        cos = (out["image_features"][valid[:, 0]] * joint["text_features"]).sum(dim=1)
        expected = itm[:, 1] - itm[:, 0] + out["logit_scale"] * cos
    torch.testing.assert_close(by_image[:, 3:][mask], expected, atol=1e-5, rtol=1e-5)


def test_masked_out_negatives_are_never_used(model, batch):
    objective = WithFusion(ClipLoss(), TERMS)
    changed = dict(batch, negatives=batch["negatives"].clone())
    changed["negatives"][~batch["negatives_mask"]] = batch["text"][0, :batch["negatives"].shape[-1]]
    none = dict(batch, negatives_mask=torch.zeros_like(batch["negatives_mask"]))
    off = WithFusion(ClipLoss(), FusionTerms(itm_weight=1.0, rerank_weight=0.5, rerank_negatives=2))
    with torch.no_grad():
        reference = _losses(objective, model, batch)
        assert torch.equal(_losses(objective, model, changed)["loss"], reference["loss"])
        # with no valid negative, nothing is encoded and the loss is the option's off value
        for key, value in _losses(off, model, batch).items():
            assert torch.equal(_losses(objective, model, none)[key], value), key
        assert not torch.equal(reference["loss"], _losses(off, model, batch)["loss"])


def test_gradient_reaches_the_fusion_blocks_and_the_text_tower_from_the_negative_captions(model, batch):
    objective = WithFusion(ClipLoss(), TERMS)
    model.zero_grad(set_to_none=True)
    logits, labels, _, _ = _parts(objective, model, batch)
    torch.nn.functional.cross_entropy(logits[12:], labels[12:]).backward()  # the negative-caption rows alone
    for name, p in model.fusion.blocks.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    model.zero_grad(set_to_none=True)
    _losses(objective, model, batch)["loss"].backward()
    tokenizer = mc.make_tokenizer(model.model_cfg)
    only_in_negatives = tokenizer(["purple hexagon huge yellow ring"])[0, 1:6]
    assert not set(only_in_negatives.tolist()) & set(batch["text"].flatten().tolist())
    grad = model.token_embedding.weight.grad[only_in_negatives]
    assert (grad.abs().sum(dim=1) > 0).all()
    model.zero_grad(set_to_none=True)


def test_the_option_without_negatives_in_the_batch_is_a_clear_error(model, batch):
    bare = {k: v for k, v in batch.items() if not k.startswith("negatives")}
    with pytest.raises(ValueError, match="negatives='shards' or 'rules'"):
        _losses(WithFusion(ClipLoss(), TERMS), model, bare)


def _cfg(demo, *extra):
    return load_config("training/configs/tiny_fusion_negatives.yaml", [
        f"data.train={demo / 'train'}", "data.batch_size=8", "data.workers=0", "data.shuffle_buffer=50",
        "schedule.steps=4", "schedule.warmup=1", "eval.every=0", "eval.retrieval=", "eval.zeroshot=", "eval.rerank_k=0",
        "eval.compositional=", "model.fusion.width=64", "model.fusion.depth=1", "precision=fp32", *extra])


def test_a_training_step_with_the_configs_settings(small_demo, tmp_path):
    t = setup(_cfg(small_demo), tmp_path, None)
    assert t.objective.needs_negatives and t.objective.terms.negative_captions
    batch = next(iter(t.loader))
    assert batch["negatives_mask"].any()
    before = {k: v.detach().clone() for k, v in t.unwrapped.fusion.named_parameters()}
    losses, _, stepped, _ = train_step(t, batch, stop_requested=False)
    assert stepped and all(math.isfinite(float(losses[k].detach())) for k in ("loss", "loss_itm", "loss_rerank"))
    assert any(not torch.equal(before[k], v) for k, v in t.unwrapped.fusion.named_parameters())


def test_negatives_and_the_option_must_agree_and_the_refusals_name_the_reader(small_demo):
    with pytest.raises(mc.UserError, match=r"^objective.fusion.negative_captions trains on hard-negative captions: "
                                           r"set data.negatives=rules"):
        build(_cfg(small_demo, "data.negatives="))
    with pytest.raises(mc.UserError, match=r"objective clip does not read them; set data.negatives='' or "
                                           r"objective.name=negclip or objective.fusion.negative_captions=true"):
        build(_cfg(small_demo, "objective.fusion.negative_captions=false"))
    with pytest.raises(mc.UserError, match=r"^objective negclip and objective.fusion.negative_captions train on"):
        build(_cfg(small_demo, "objective.name=negclip", "data.negatives="))
    with pytest.raises(mc.UserError, match="no fusion blocks"):
        build(load_config("training/configs/tiny.yaml", [f"data.train={small_demo / 'train'}", "data.negatives=rules",
                                                         "objective.fusion.negative_captions=true"]))
