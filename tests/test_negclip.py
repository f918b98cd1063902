"""NegCLIP (Yuksekgonul et al. 2023): its identities with ClipLoss, two processes = one, the rule-based
perturber, hard negatives in the loader, and training, plain and through GradCache (its exact gradients:
``tests/test_gradcache.py``)."""

from __future__ import annotations

import json
import math
import random
import zlib

import pytest
import torch
import torch.nn.functional as F

import mmcontrast as mc
from data_prep.writer import write_shard
from mmcontrast.data.negatives import RULES, VOCABULARY, apply_edits, candidates, perturb
from mmcontrast.objectives import ClipLoss, NegCLIPLoss

from .spawn import run_workers
from .test_loader import _jpeg, _tokenizer, _transform

B, K, D = 8, 2, 6
S = torch.tensor(10.0, dtype=torch.float64)
IDS = torch.tensor([0, 0, 1, 2, 3, 3, 3, 4])  # several captions of one image, across both ranks' halves


def _features(seed=0):
    """Image, text and negative-caption features [B, D], [B, D], [B·K, D] (float64, normalised), and a mask
    [B, K] with sample 1 holding one negative and samples 4–7 (rank 1 of two) none."""
    g = torch.Generator().manual_seed(seed)
    u, v, n = (F.normalize(torch.randn(rows, D, generator=g, dtype=torch.float64), dim=-1) for rows in (B, B, B * K))
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[1, 1] = False
    mask[4:] = False
    return u, v, n * mask.flatten()[:, None], mask


def _reference(u, v, n, mask, scale):
    """NegCLIP's loss written out: ½[CE(s·U [V; N_valid]ᵀ, arange) + CE(s·V Uᵀ, arange)]."""
    columns = torch.cat([v, n[mask.flatten()]])
    labels = torch.arange(u.shape[0])
    return (F.cross_entropy(scale * u @ columns.T, labels) + F.cross_entropy(scale * v @ u.T, labels)) / 2


@pytest.mark.parametrize("local_loss", [True, False])
@pytest.mark.parametrize("ids", [None, IDS])
def test_without_negative_columns_it_is_clip_loss(local_loss, ids):
    u, v, n, _ = _features()
    none = torch.zeros(B, K, dtype=torch.bool)
    batch = None if ids is None else {"sample_id": ids}
    expected = ClipLoss(local_loss=local_loss)(u, v, S, batch=batch)
    got = NegCLIPLoss(local_loss=local_loss).loss(u, v, S, torch.zeros_like(n), none, ids)
    for key in ("loss", "loss_i2t", "loss_t2i"):
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("local_loss", [True, False])
def test_it_equals_its_definition_and_is_at_least_clip_loss(local_loss):
    u, v, n, mask = _features()
    got = NegCLIPLoss(local_loss=local_loss).loss(u, v, S, n, mask)
    torch.testing.assert_close(got["loss"], _reference(u, v, n, mask, S), rtol=1e-12, atol=0)
    clip = ClipLoss()(u, v, S)
    assert got["loss"] > clip["loss"]  # the log-sum-exp over a superset of columns
    assert torch.equal(got["loss_t2i"], clip["loss_t2i"])  # text→image is untouched


def test_with_sample_ids_negatives_are_never_positives():
    u, v, n, mask = _features()
    got = NegCLIPLoss().loss(u, v, S, n, mask, IDS)
    same = IDS[:, None] == IDS[None, :]
    logits = S * u @ torch.cat([v, n[mask.flatten()]]).T
    targets = F.pad(same.double() / same.sum(1, keepdim=True), (0, int(mask.sum())))
    i2t = -(targets * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(got["loss_i2t"], i2t, rtol=1e-12, atol=0)
    assert got["loss"] >= ClipLoss()(u, v, S, batch={"sample_id": IDS})["loss"]


def test_negative_captions_get_gradient_only_through_the_image_to_text_term():
    u, v, n, mask = _features()
    n = n.clone().requires_grad_()
    (grad,) = torch.autograd.grad(NegCLIPLoss().loss(u, v, S, n, mask)["loss"], n)
    columns = torch.cat([v, n[mask.flatten()]])
    (i2t_only,) = torch.autograd.grad(F.cross_entropy(S * u @ columns.T, torch.arange(B)) / 2, n)
    torch.testing.assert_close(grad, i2t_only, rtol=1e-12, atol=0)
    assert grad[~mask.flatten()].abs().max() == 0 and grad[mask.flatten()].abs().min() > 0


def test_image_to_text_logits_have_a_column_per_caption_and_valid_negative():
    u, v, n, mask = _features()
    objective = NegCLIPLoss()
    text_logits = S * u @ v.T
    full = objective.image_to_text_logits(u, text_logits, S, n, torch.ones(B, K, dtype=torch.bool))
    assert full.shape == (B, B + B * K)
    assert objective.image_to_text_logits(u, text_logits, S, n, mask).shape == (B, B + int(mask.sum()))


def _loss_and_grads(u, v, n, mask, ids, local_loss):
    u, v, n = (x.clone().requires_grad_() for x in (u, v, n))
    t = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    loss = NegCLIPLoss(local_loss=local_loss).loss(u, v, t.exp(), n, mask, ids)["loss"]
    loss.backward()
    return loss.detach(), u.grad, v.grad, n.grad, t.grad


def _worker(rank, world):
    u, v, n, mask = _features()
    rows, negs = slice(rank * 4, rank * 4 + 4), slice(rank * 4 * K, (rank + 1) * 4 * K)
    out = {}
    for local_loss in (True, False):
        for ids in (None, IDS):
            loss, gu, gv, gn, gt = _loss_and_grads(u[rows], v[rows], n[negs], mask[rows],
                                                   None if ids is None else ids[rows], local_loss)
            for x in (loss, gt):  # DDP's mean over ranks
                torch.distributed.all_reduce(x)
                x /= world
            out[local_loss, ids is None] = (loss, gu, gv, gn, gt)
    return out


def test_two_processes_equal_one():
    """Rank 1 holds no valid negative: it still takes part in the gather's backward."""
    results = run_workers(_worker, 2)
    u, v, n, mask = _features()
    for local_loss in (True, False):
        for ids in (None, IDS):
            loss, gu, gv, gn, gt = _loss_and_grads(u, v, n, mask, ids, local_loss)
            got = [r[local_loss, ids is None] for r in results]
            torch.testing.assert_close(got[0][0], loss)
            torch.testing.assert_close(got[0][4], gt)
            for i, ref in ((1, gu), (2, gv), (3, gn)):  # each rank's slice, DDP's mean
                torch.testing.assert_close(torch.cat([g[i] for g in got]) / 2, ref)


def test_forward_encodes_the_valid_negatives_through_the_text_tower(tiny):
    model, _, tokenizer = tiny
    captions = ["a red circle", "a blue square", "a green star"]
    negatives = tokenizer(["a blue circle", "a red square", "", "a red star", "", ""]).view(3, 2, -1)
    mask = torch.tensor([[True, True], [False, False], [True, False]])
    with torch.no_grad():
        out = model(torch.zeros(3, 3, 64, 64), tokenizer(captions))
        got = NegCLIPLoss()(**out, batch={"negatives": negatives, "negatives_mask": mask}, model=model)
        n = torch.zeros(6, out["text_features"].shape[1])
        n[mask.flatten()] = model.encode_text(negatives.flatten(0, 1)[mask.flatten()], normalize=True)
        expected = NegCLIPLoss().loss(out["image_features"], out["text_features"], out["logit_scale"], n, mask)
    torch.testing.assert_close(got["loss"], expected["loss"])
    with pytest.raises(ValueError, match="negatives='shards' or 'rules'"):
        NegCLIPLoss()(**out, batch={}, model=model)
    with pytest.raises(ValueError, match="runs the model"):
        NegCLIPLoss()(**out, batch={"negatives": negatives, "negatives_mask": mask})


# ---------------------------------------------------------------- the perturber

CAPTIONS = ["a small red circle to the left of a large blue square", "a photo of two orange stars",
            "red circles, small, in the center", "a man riding a horse next to a red car",
            "three small crosses coloured blue", "a large green ring above a small green hexagon"]


@pytest.mark.parametrize("caption", CAPTIONS)
def test_every_negative_differs_from_the_caption_in_exactly_its_edited_slot(caption):
    words = caption.split()
    found = candidates(caption)
    assert found and {n.rule for n in found} <= set(RULES)
    for n in found:
        assert n.text != caption and n.text.split() == apply_edits(words, n.edits)
        for e in n.edits:  # every edit changes its slot; the words outside the slots are the caption's
            assert tuple(words[e.start:e.end]) != e.words
        if n.rule in ("replace_att", "replace_obj"):
            changed = [i for i, (a, b) in enumerate(zip(words, n.text.split())) if a != b]
            assert len(n.edits) == 1 and 1 <= len(changed) <= 2  # the word, and its article a/an when it leads
        if n.rule == "swap_att":
            a, b = n.edits
            assert {a.words[-1], b.words[-1]} == {words[a.end - 1], words[b.end - 1]}


def test_rules_find_the_swaps_of_the_demo_grammar():
    found = {n.rule: n.text for n in candidates(CAPTIONS[0]) if n.rule.startswith("swap")}
    texts = {n.text for n in candidates(CAPTIONS[0])}
    assert "a large blue square to the left of a small red circle" in texts                       # swap_obj
    assert {"a small blue circle to the left of a large red square",
            "a large red circle to the left of a small blue square"} <= texts                      # swap_att
    assert set(found) == {"swap_att", "swap_obj"}
    assert "a small red circle to the right of a large blue square" in texts                     # replace_rel
    assert "a small orange circle to the left of a large blue square" in texts                   # replace_att
    assert "an orange circle" in {n.text for n in candidates("a red circle")}                     # the article follows
    # same colours: no colour swap; a symmetric relation: no swap of its sides
    assert not [n for n in candidates(CAPTIONS[5]) if n.rule == "swap_att" and "green" in n.edits[0].words]
    assert not [n for n in candidates(CAPTIONS[3]) if n.rule == "swap_obj" and "car" in n.text.split()[1:3]]


def test_no_rule_no_negative_and_the_choice_is_deterministic():
    assert candidates("the sky is nice today") == [] and perturb("the sky is nice today", 3, random.Random(0)) == []
    draws = [perturb(CAPTIONS[0], 3, random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1] and len({n.text for n in draws[0]}) == 3
    assert len({tuple(n.text for n in perturb(CAPTIONS[0], 3, random.Random(s))) for s in range(10)}) > 1


def test_a_batch_vocabulary_replaces_only_with_the_batch_words():
    vocabulary = VOCABULARY.found_in(["a small red circle", "a large blue square to the left of a red star"])
    assert vocabulary.attributes["colour"] == ("red", "blue") and vocabulary.objects == ("circle", "square", "star")
    assert vocabulary.relations == ("to the left of",)
    assert {n.text for n in candidates("a red circle", vocabulary)} == {"a blue circle", "a red square", "a red star"}


# ---------------------------------------------------------------- the loader

def _shards(tmp_path):
    samples = [
        {"__key__": "json", "jpg": _jpeg(0), "txt": "a red circle",
         "json": json.dumps({"negatives": ["a blue circle", "a red square", "a red circle"]})},
        {"__key__": "negtxt", "jpg": _jpeg(1), "txt": "a blue star", "neg.txt": "a red star\n\n"},
        {"__key__": "none", "jpg": _jpeg(2), "txt": "the sky is nice"},
    ]
    write_shard(tmp_path / "a.tar", samples)
    return [str(tmp_path / "a.tar")]


def _batch(urls, **kw):
    return next(iter(mc.make_loader(urls, _transform, _words, 3, shuffle_buffer=0, repeat=False, **kw)))


def _words(texts):
    """Each caption as one token per word (the word's hash), padded with 0, so the test can read them back."""
    rows = [[zlib.crc32(w.encode()) % 1000 + 1 for w in t.split()] for t in texts]
    return torch.tensor([r + [0] * (6 - len(r)) for r in rows])


def test_negatives_from_key_json_and_neg_txt_appear_with_their_mask(tmp_path):
    urls = _shards(tmp_path)
    batch = _batch(urls, negatives="shards", negatives_per_sample=2)
    rows = dict(zip(batch["key"], zip(batch["negatives"], batch["negatives_mask"])))
    tokens, mask = rows["json"]
    assert mask.tolist() == [True, True]  # the third listed negative is the caption itself: left out
    assert sorted(map(tuple, tokens.tolist())) == sorted(map(tuple, _words(["a blue circle", "a red square"]).tolist()))
    tokens, mask = rows["negtxt"]
    assert mask.tolist() == [True, False] and tokens[0].tolist() == _words(["a red star"])[0].tolist()
    assert not tokens[1].any()
    assert rows["none"][1].tolist() == [False, False]
    assert "negatives" not in _batch(urls)  # off by default


def test_rule_negatives_follow_the_caption_and_are_seeded(tmp_path):
    urls = _shards(tmp_path)
    batch = _batch(urls, negatives="rules")
    rows = dict(zip(batch["key"], zip(batch["negatives"], batch["negatives_mask"])))
    assert rows["none"][1].tolist() == [False]
    vocabulary = VOCABULARY.found_in(["a red circle", "a blue star", "the sky is nice"])
    for key, caption in (("json", "a red circle"), ("negtxt", "a blue star")):
        tokens, mask = rows[key]
        allowed = {tuple(_words([n.text])[0].tolist()) for n in candidates(caption, vocabulary)}
        assert mask.tolist() == [True] and tuple(tokens[0].tolist()) in allowed
    assert torch.equal(_batch(urls, negatives="rules")["negatives"], batch["negatives"])
    other = [_batch(urls, negatives="rules", seed=s)["negatives"] for s in range(1, 6)]
    assert any(not torch.equal(o, batch["negatives"]) for o in other)


def test_bad_negatives_are_clear_errors(tmp_path):
    with pytest.raises(mc.UserError, match="choose from"):
        mc.make_loader(_shards(tmp_path), _transform, _tokenizer, 3, negatives="spacy")
    write_shard(tmp_path / "b.tar", [{"__key__": "bad", "jpg": _jpeg(0), "txt": "a red circle",
                                      "json": json.dumps({"negatives": "a blue circle"})}])
    with pytest.raises(mc.UserError, match="sample bad of .*b.tar: key.json \"negatives\" must be a list"):
        next(iter(mc.make_loader([str(tmp_path / "b.tar")], _transform, _tokenizer, 1, repeat=False,
                                 negatives="shards")))


# ---------------------------------------------------------------- training

def test_training_with_negclip_steps_and_refuses_mismatched_negatives(small_demo, tmp_path):
    from training.train import setup, train_step

    from .test_train import _cfg
    t = setup(_cfg(small_demo, "objective.name=negclip", "data.negatives=rules", "data.batch_size=8",
                   "precision=fp32"), tmp_path, None)
    batch = next(iter(t.loader))
    assert batch["negatives_mask"].any() and batch["negatives"].shape[:2] == (8, 1)
    before = t.unwrapped.logit_scale.detach().clone()
    losses, _, stepped, _ = train_step(t, batch, stop_requested=False)
    assert stepped and math.isfinite(losses["loss"].item())
    assert not torch.equal(before, t.unwrapped.logit_scale)
    with pytest.raises(mc.UserError, match="set data.negatives=rules"):
        setup(_cfg(small_demo, "objective.name=negclip"), tmp_path / "a", None)
    with pytest.raises(mc.UserError, match="does not read them"):
        setup(_cfg(small_demo, "data.negatives=rules"), tmp_path / "b", None)
    with pytest.raises(mc.UserError, match="data.negatives must be one of"):
        setup(_cfg(small_demo, "data.negatives=spacy"), tmp_path / "d", None)


def test_trainer_with_gradcache_equals_plain_steps(small_demo, tmp_path):
    """Two optimizer steps on one loader batch, in chunks of 3 of its 8 samples and whole: the same weights."""
    from training.train import setup, train_step

    from .test_gradcache import assert_same_final
    from .test_train import _cfg
    finals = []
    for chunk in (0, 3):
        t = setup(_cfg(small_demo, "objective.name=negclip", "data.negatives=rules", "data.batch_size=8",
                       "precision=fp32", f"train.chunk_size={chunk}"), tmp_path / str(chunk), None)
        batch = next(iter(t.loader))
        assert batch["negatives_mask"].all()  # the shapes captions always have a perturbation: drop some
        batch["negatives_mask"][[1, 6, 7]] = False  # one row of the first chunk, the whole last chunk
        for _ in range(2):
            losses, _, stepped, _ = train_step(t, batch, stop_requested=False)
            assert stepped
        finals.append((losses["loss"], t.unwrapped.state_dict()))
    assert_same_final(finals)


def test_negclip_config_trains_through_gradcache(small_demo, tmp_path):
    """``training/configs/objectives/negclip.yaml`` with ``train.chunk_size=32``: batches of 64 in two chunks,
    in the config's bf16, three steps end to end (no evaluation: that is the plain run's)."""
    from training.config import load_config
    from training.train import train

    from .test_train import _losses
    cfg = load_config("training/configs/objectives/negclip.yaml", [
        f"data.train={small_demo / 'train'}", "data.batch_size=64", "data.shuffle_buffer=200", "train.chunk_size=32",
        "schedule.steps=3", "schedule.warmup=1", "log.every=1", "checkpoint.every=0", "eval.every=0",
        "eval.retrieval=", "eval.zeroshot=", "eval.compositional="])
    assert (cfg.objective.name, cfg.data.negatives, cfg.train.chunk_size) == ("negclip", "rules", 32)
    train(cfg, tmp_path / "run")
    losses = _losses(tmp_path / "run")
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert (tmp_path / "run" / "final" / "open_clip_model.safetensors").is_file()


def test_rule_negatives_of_scene_captions_are_false_of_their_scene():
    """The oracle of the demo's scenes decides the rules' negatives: a relation is replaced by its converse only
    (any other, "above" for "to the left of", is true of a diagonal pair), swaps are false by construction; a
    replaced object may name the scene's third object (rarely true)."""
    import numpy as np

    from data_prep import scenes
    vocabulary = VOCABULARY.found_in(["a small large red blue green orange purple yellow black white circle square "
                                      "triangle star cross diamond ring hexagon to the left of to the right of "
                                      "above below"])
    counts, true = {}, {}
    for i in range(300):
        rng = np.random.default_rng([0, 3, i])
        scene = scenes.sample_scene(rng)
        caption = scenes.describe(scene, rng, omit=0.25, also=0.5).text()
        for n in candidates(caption, vocabulary):
            counts[n.rule] = counts.get(n.rule, 0) + 1
            true[n.rule] = true.get(n.rule, 0) + scenes.holds(n.text, scene)
    assert set(counts) == set(RULES)
    assert all(true[r] == 0 for r in ("swap_att", "swap_obj", "replace_att", "replace_rel")), true
    assert true["replace_obj"] <= 0.01 * counts["replace_obj"]
    assert [n.text for n in candidates("a cat above a dog") if n.rule == "replace_rel"] == ["a cat below a dog"]
    assert {n.text for n in candidates("a man holding a dog") if n.rule == "replace_rel"} >= {"a man riding a dog"}
