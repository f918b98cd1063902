"""Partitioned-attention fusion blocks: the mask rule, pure streams, the ITM objective, saving, re-ranking."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings

import open_clip
import pytest
import torch

import mmcontrast as mc
from eval.encode import encode_images, encode_texts, image_batches
from eval.readers import read_wds
from eval.rerank import rerank_metrics
from eval.retrieval import run_retrieval
from mmcontrast.errors import UserError
from mmcontrast.fusion import FUSION, IMAGE, TEXT, partition_mask
from mmcontrast.objectives import ClipLoss, FusionTerms, MomentumDistillation, WithFusion, sample_hard_negatives
from mmcontrast.objectives.fusion import draw_without_replacement, local_positives
from training.config import load_config
from training.train import build, train

FUSION_CFG = {"depth": 2, "width": 32, "heads": 2, "num_fusion_tokens": 3}
SMALL = dict(embed_dim=32, vision={"layers": 1, "width": 32, "head_width": 16, "image_size": 32},
             text={"layers": 1, "width": 32, "heads": 2, "context_length": 16})


def small_fusion_model(pure_from: str = "streams", seed: int = 0, text_queries: bool = False) -> torch.nn.Module:
    """A one-layer-tower model with two fusion blocks; the zero-initialised pure-stream projections are
    made random so that the streams' outputs really reach the pure embeddings."""
    fusion = {**FUSION_CFG, "pure_from": pure_from, "text_queries": text_queries}
    model = mc.create_model("tiny", seed=seed, fusion=fusion, **SMALL).eval()
    if pure_from == "streams":
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            for out in (model.fusion.image_out, model.fusion.text_out):
                out.weight.normal_(0, 0.2)
                out.bias.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def model():
    return small_fusion_model()


@pytest.fixture(scope="module")
def inputs(model):
    tokenizer = mc.make_tokenizer(model.model_cfg)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(4, 3, 32, 32, generator=g)
    text = tokenizer(["a red circle", "two blue squares on the left of a striped background", "a star", "x y"])
    return image, text, tokenizer


def test_partition_mask_equals_the_rule():
    types = torch.tensor([IMAGE, IMAGE, IMAGE, TEXT, TEXT, TEXT, TEXT, FUSION, FUSION])
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 5:7] = False  # text padding of the second sample
    allow = partition_mask(types, valid)
    for b in range(2):
        for q in range(9):
            for k in range(9):
                rule = (types[k] == types[q] or types[q] == FUSION) and bool(valid[b, k])
                assert bool(allow[b, q, k]) == rule, (b, q, k)
    # modality tokens never attend to fusion tokens; fusion tokens attend to every real token
    assert not allow[:, :7, 7:].any() and allow[0, 7:].all()
    no_text = valid.clone()
    no_text[0, 3:7] = False
    with pytest.raises(ValueError, match="attend to nothing"):
        partition_mask(types, no_text)


def test_text_padding_is_masked_as_keys(model, inputs):
    image, text, _ = inputs
    _, text_x, text_valid = model.text_stream_input(text)
    ends = text.argmax(dim=1)
    assert text_valid[:, 0].all()  # the summary token
    for row, end in enumerate(ends.tolist()):
        assert text_valid[row, 1:].tolist() == [i <= end for i in range(text.shape[1])]


def _changed_text(text):
    other = text.clone()
    other[:, 1] = (other[:, 1] + 7) % 40000 + 300  # another first word; same lengths
    other[3] = text[1]                             # and one caption of another length
    return other


def test_changing_one_modality_leaves_the_other_stream_bit_identical(model, inputs):
    image, text, _ = inputs
    with torch.no_grad():
        a = model(image, text)
        b = model(image, _changed_text(text))
        c = model(image.flip(0) * 0.5, text)
    for x, y in zip(a["fusion"]["image"].layers, b["fusion"]["image"].layers):
        assert torch.equal(x, y)
    assert torch.equal(a["image_features"], b["image_features"])
    for x, y in zip(a["fusion"]["text"].layers, c["fusion"]["text"].layers):
        assert torch.equal(x, y)
    assert torch.equal(a["text_features"], c["text_features"])
    # ...while the fusion output changes with either input
    assert (a["fusion"]["fused"] - b["fusion"]["fused"]).abs().amax(dim=(1, 2)).min() > 1e-4
    assert (a["fusion"]["fused"] - c["fusion"]["fused"]).abs().amax(dim=(1, 2)).min() > 1e-4


def test_jacobian_of_one_stream_with_respect_to_the_other_input_is_zero(model, inputs):
    image, text, _ = inputs
    with torch.no_grad():
        _, image_x, image_valid = model.image_stream_input(image[:2])
        _, text_x, text_valid = model.text_stream_input(text[:2])

    def image_out(t):
        return model.fusion.joint(image_x, image_valid, t, text_valid)[0].layers[-1]

    def text_out(i):
        return model.fusion.joint(i, image_valid, text_x, text_valid)[1].layers[-1]

    def fused(t):
        return model.fusion.joint(image_x, image_valid, t, text_valid)[2]

    assert torch.count_nonzero(torch.autograd.functional.jacobian(image_out, text_x)) == 0
    assert torch.count_nonzero(torch.autograd.functional.jacobian(text_out, image_x)) == 0
    assert torch.count_nonzero(torch.autograd.functional.jacobian(fused, text_x)) > 0
    # through the whole model: the pure image embedding gets no gradient from any text-tower weight
    out = model(image, text)
    text_params = [p for n, p in model.named_parameters() if not n.startswith(("visual.", "fusion.", "logit"))]
    grads = torch.autograd.grad(out["image_features"].sum(), text_params, allow_unused=True, retain_graph=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    grads = torch.autograd.grad(out["text_features"].sum(), list(model.visual.parameters()), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("pure_from", ["streams", "towers"])
def test_unimodal_encoders_equal_the_joint_run(pure_from, inputs):
    model = small_fusion_model(pure_from)
    image, text, _ = inputs
    with torch.no_grad():
        joint = model(image, text)
        alone_image = model.encode_image(image, normalize=True)
        alone_text = model.encode_text(text, normalize=True)
        trimmed = model.encode_text(text[:, :12], normalize=True)  # padding cut off: same embeddings
    torch.testing.assert_close(alone_image, joint["image_features"], atol=1e-6, rtol=0)
    torch.testing.assert_close(alone_text, joint["text_features"], atol=1e-6, rtol=0)
    torch.testing.assert_close(trimmed, alone_text, atol=1e-6, rtol=0)
    if pure_from == "towers":  # the towers' own embeddings, as OpenCLIP computes them
        tower = torch.nn.functional.normalize(model.visual(image)[0], dim=-1)
        torch.testing.assert_close(alone_image, tower, atol=1e-6, rtol=0)
    else:  # the streams do change them
        tower = torch.nn.functional.normalize(model.visual(image)[0], dim=-1)
        assert (alone_image - tower).abs().max() > 1e-3


@pytest.mark.parametrize("text_queries", [False, True])
def test_fusing_any_pair_from_the_streams_equals_the_joint_run_on_that_pair(text_queries, inputs):
    image, text, _ = inputs
    model = small_fusion_model(text_queries=text_queries)
    pairs_image, pairs_text = torch.tensor([0, 1, 2, 3, 0, 2]), torch.tensor([1, 0, 3, 2, 0, 2])
    with torch.no_grad():
        out = model(image, text)
        fused = model.fusion.fuse(out["fusion"]["image"], out["fusion"]["text"], pairs_image, pairs_text)
        aligned = model.fusion.fuse(out["fusion"]["image"].select(pairs_image),
                                    out["fusion"]["text"].select(pairs_text))
        joint = model(image[pairs_image], text[pairs_text])["fusion"]["fused"]
    torch.testing.assert_close(fused, joint, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aligned, joint, atol=1e-5, rtol=1e-5)


def test_sampled_itm_negatives_never_share_an_id_and_follow_the_softmax():
    from scipy.stats import chisquare
    ids = torch.tensor([0, 1, 1, 2, 3, 3])
    positives = local_positives(6, ids, torch.device("cpu"))
    assert positives.tolist() == [[a == b for b in ids.tolist()] for a in ids.tolist()]
    # the same caption word for word is a true match, never a negative
    captions = torch.tensor([[49406, 320, 49407], [49406, 320, 49407], [49406, 321, 49407]])
    assert local_positives(3, None, torch.device("cpu"), captions).tolist() == [[True, True, False],
                                                                                 [True, True, False],
                                                                                 [False, False, True]]
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(6, 6, generator=g) * 2
    draws = torch.stack([sample_hard_negatives(sim, positives, generator=g) for _ in range(10_000)])
    assert not positives[torch.arange(6), draws].any()
    for row in range(6):
        weights = sim[row].double().softmax(0).masked_fill(positives[row], 0)[~positives[row]]
        observed = torch.bincount(draws[:, row], minlength=6)[~positives[row]].double()
        expected = weights / weights.sum() * observed.sum()
        assert chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3
    # the listwise term's candidates: distinct and never positives
    for _ in range(200):
        drawn = draw_without_replacement(sim, positives, 3)
        assert not positives.gather(1, drawn).any()
        assert all(len(set(row)) == 3 for row in drawn.tolist())


def test_itm_rerank_and_zorro_terms_train_every_fusion_parameter(model, inputs):
    image, text, _ = inputs
    objective = WithFusion(ClipLoss(), FusionTerms(itm_weight=1.0, rerank_weight=0.25, rerank_negatives=2,
                                                   zorro_weight=0.5))
    objective.attach(model)
    model.train()
    try:
        losses = objective(**model(image, text), batch={"sample_id": torch.tensor([0, 1, 2, 0])}, model=model)
        losses["loss"].backward()
    finally:
        model.eval()
    parts = ("loss_pure", "loss_itm", "loss_rerank", "loss_zorro")
    assert set(parts) <= set(losses)
    total = losses["loss_pure"] + losses["loss_itm"] + 0.25 * losses["loss_rerank"] + 0.5 * losses["loss_zorro"]
    torch.testing.assert_close(losses["loss"].detach(), total)
    assert 0 <= losses["itm_accuracy"] <= 1
    for name, p in [*model.named_parameters(), *objective.named_parameters()]:
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="learn nothing"):
        FusionTerms(itm_weight=0.0, zorro_weight=0.0)


def test_a_momentum_objective_under_fusion_is_the_same_objective(model, inputs):
    """WithFusion passes attach / after_step through: ALBEF's momentum ITC with fusion terms on top gives the
    momentum loss of the objective alone, and the teacher and queues move the same way."""
    image, text, _ = inputs
    alone, inner = MomentumDistillation(queue_size=8), MomentumDistillation(queue_size=8)
    objective = WithFusion(inner, FusionTerms(itm_weight=1.0, rerank_weight=0.5, rerank_negatives=1))
    alone.attach(model)
    objective.attach(model)
    batch = {"image": image, "text": text}
    saved = copy.deepcopy(model.state_dict())
    model.train()
    try:
        out = model(image, text)
        reference = alone(**{k: v for k, v in out.items() if k != "fusion"}, batch=batch)
        losses = objective(**out, batch=batch, model=model)
        losses["loss"].backward()
    finally:
        model.eval()
    torch.testing.assert_close(losses["loss_pure"], reference["loss"].detach())
    assert {"alpha", "momentum", "loss_itm", "loss_rerank"} <= set(losses)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * p.grad)  # a step, so that the teachers move
    for o in (alone, objective):
        o.after_step(model)
    assert int(inner.filled) == 4 and torch.equal(inner.image_queue, alone.image_queue)
    for a, b in zip(alone.teacher.parameters(), inner.teacher.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(inner.teacher.parameters(), model.parameters()))
    model.load_state_dict(saved)  # the module's model, as the other tests expect it
    model.zero_grad(set_to_none=True)


def test_model_dir_keeps_the_blocks_and_open_clip_loads_the_towers(model, inputs, tmp_path):
    image, text, _ = inputs
    mc.save_model_dir(model, tmp_path / "final")
    assert (tmp_path / "final" / "extras.safetensors").is_file()
    meta = json.loads((tmp_path / "final" / "mmcontrast.json").read_text())
    assert meta["fusion"]["depth"] == 2 and "pre-fusion" in meta["openclip_embeddings"]
    assert "fusion" not in json.loads((tmp_path / "final" / "open_clip_config.json").read_text())["model_cfg"]
    loaded, _, _ = mc.load(tmp_path / "final")
    with torch.no_grad():
        for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
            assert torch.equal(a, b)
        ref, _ = open_clip.create_model_from_pretrained(f"local-dir:{tmp_path / 'final'}")
        torch.testing.assert_close(ref.encode_image(image), model.visual(image)[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(ref.encode_text(text), model.text_pooled(model.text_sequence(text), text),
                                   atol=1e-6, rtol=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mc.load(f"openclip:{tmp_path / 'final' / 'open_clip_config.json'}",
                pretrained=str(tmp_path / "final" / "open_clip_model.safetensors"))
    assert any("pre-fusion" in str(w.message) for w in caught)
    (tmp_path / "final" / "extras.safetensors").unlink()
    with pytest.raises(UserError, match="extras.safetensors"):
        mc.load(tmp_path / "final")


def _reranked_by_brute_force(model, ds, preprocess, tokenizer, image_features, text_features, k):
    """ALBEF's score matrices: ITM log-odds + s·cos of every pair, from the joint run; −100 outside each
    query's top k by similarity."""
    pixels = torch.cat(list(image_batches(ds.images, list(range(len(ds))), preprocess, 256, 0)))
    tokens = tokenizer(ds.texts)
    with torch.no_grad():
        scores = torch.empty(len(ds), len(ds.texts))
        for i in range(len(ds)):
            logits = model.fusion.itm_logits(model(pixels[i:i + 1].expand(len(tokens), -1, -1, -1), tokens)
                                             ["fusion"]["fused"])
            scores[i] = logits[:, 1] - logits[:, 0]
        scores += model.logit_scale.exp() * image_features @ text_features.T  # BLIP: ITM score + similarity
    t2i_map = torch.tensor(ds.text_to_image)
    recalls = {}
    for name, sim, rescored, positive in (
            ("text_retrieval", image_features @ text_features.T, scores, lambda q, c: t2i_map[c] == q),
            ("image_retrieval", text_features @ image_features.T, scores.T, lambda q, c: c == t2i_map[q])):
        ranks = []
        for q in range(sim.shape[0]):
            top = sim[q].topk(k).indices
            matrix = torch.full((sim.shape[1],), -100.0)
            matrix[top] = rescored[q, top]
            order = torch.sort(-matrix, stable=True).indices
            # a candidate outside the top k never hits: ranks past k are all "misses" for recall@k ≤ k
            hits = [j for j, c in enumerate(order.tolist()) if positive(q, c) and j < k]
            ranks.append(hits[0] if hits else k)
        ranks = torch.tensor(ranks)
        recalls.update({f"{name}_recall@{r}": (ranks < r).float().mean().item() for r in (1, 5, 10)})
    return recalls


def test_reranked_recall_equals_albef_score_matrices(model, small_demo):
    ds = read_wds(small_demo / "retrieval").first_captions(2)
    _, preprocess = mc.make_transforms(model.preprocess_cfg)
    tokenizer = mc.make_tokenizer(model.model_cfg)
    result = run_retrieval(model, preprocess, tokenizer, ds, progress=False, rerank_k=12)
    image_features = encode_images(model, preprocess, ds.images, 256, torch.device("cpu"), progress=False)
    text_features = encode_texts(model, tokenizer, ds.texts, 256, torch.device("cpu"))
    expected = _reranked_by_brute_force(model, ds, preprocess, tokenizer, image_features, text_features, 12)
    got = result["reranked"]["metrics"]
    assert result["reranked"]["k"] == 12
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    with pytest.raises(UserError, match="at least the top 10"):
        rerank_metrics(model, preprocess, tokenizer, ds, image_features, text_features, 5)
    plain = mc.create_model("tiny", seed=0, **SMALL)
    with pytest.raises(UserError, match="fusion blocks"):
        run_retrieval(plain, preprocess, tokenizer, ds, progress=False, rerank_k=12)


def test_bad_fusion_settings_are_clear_errors(small_demo):
    with pytest.raises(ValueError, match="unknown fusion key 'layers'"):
        mc.create_model("tiny", fusion={"layers": 2})
    with pytest.raises(ValueError, match="divisible"):
        mc.create_model("tiny", fusion={"width": 30, "heads": 4})
    with pytest.raises(ValueError, match="pure_from"):
        mc.create_model("tiny", fusion={"pure_from": "both"})
    with pytest.raises(ValueError, match="text_queries must be true or false"):
        mc.create_model("tiny", fusion={"text_queries": "yes"})
    with pytest.raises(ValueError, match="open_clip's own text tower"):
        mc.create_model("tiny-lit-minilm", fusion={}, pretrained_towers=False)

    def cfg(*extra):
        return load_config("training/configs/tiny.yaml", [f"data.train={small_demo / 'train'}", *extra])
    with pytest.raises(UserError, match="no fusion blocks"):
        build(cfg("objective.fusion.zorro_weight=1"))
    with pytest.raises(UserError, match="eval.rerank_k"):
        build(cfg("eval.rerank_k=16"))
    with pytest.raises(UserError, match="GradCache"):
        build(cfg("model.fusion={depth: 1}", "train.chunk_size=8"))
    with pytest.raises(UserError, match="learn nothing"):
        build(cfg("model.fusion={depth: 1}", "objective.fusion.itm_weight=0"))


def test_fusion_run_trains_reports_both_recalls_and_evaluates_from_the_cli(small_demo, tmp_path):
    cfg = load_config("training/configs/tiny_fusion.yaml", [
        f"data.train={small_demo / 'train'}", "data.batch_size=32", "data.workers=0", "data.shuffle_buffer=100",
        "schedule.steps=8", "schedule.warmup=2", "log.every=4", "checkpoint.every=4", "eval.every=0",
        f"eval.retrieval={small_demo / 'retrieval'}", "eval.zeroshot=", "eval.compositional=", "eval.rerank_k=10",
        "model.fusion.width=64", "model.fusion.depth=1", "objective.fusion.zorro_weight=0.5"])
    result = train(cfg, tmp_path / "run")
    assert result["retrieval"]["reranked"]["k"] == 10
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_pure", "loss_itm", "itm_accuracy", "loss_zorro"} <= set(records[0])
    assert "retrieval_reranked" in records[-1]["eval"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "ITM re-ranked, top 10" in report
    dual = 100 * result["retrieval"]["metrics"]["text_retrieval_recall@1"]
    reranked = 100 * result["retrieval"]["reranked"]["metrics"]["text_retrieval_recall@1"]
    assert f"| image→text R@1 | {dual:.2f} | {reranked:.2f} |" in report
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "eval", "retrieval", "--model", tmp_path / "run" / "final",
                           "--dataset", f"wds:{small_demo / 'retrieval'}", "--output", out, "--rerank-k", "10",
                           "--cache-dir", "", "--workers", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    for key, value in result["retrieval"]["reranked"]["metrics"].items():
        assert record["reranked"]["metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert "ITM re-ranked top 10" in out.with_suffix(".md").read_text()


def _rerank_worker(rank, world, retrieval_dir):
    from mmcontrast import distributed
    assert (distributed.rank(), distributed.world_size()) == (rank, world)
    model = small_fusion_model()
    _, preprocess = mc.make_transforms(model.preprocess_cfg)
    ds = read_wds(retrieval_dir).first_captions(2)
    return run_retrieval(model, preprocess, mc.make_tokenizer(model.model_cfg), ds, progress=False, rerank_k=10)


def test_two_processes_rerank_like_one(small_demo):
    from .spawn import run_workers
    single = _rerank_worker(0, 1, small_demo / "retrieval")["reranked"]["metrics"]
    for result in run_workers(_rerank_worker, 2, small_demo / "retrieval"):
        assert result["reranked"]["metrics"] == pytest.approx(single, abs=1e-9)
