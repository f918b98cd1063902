"""Speed features keep results: trimmed text rows, reduced-size JPEG decoding, the CPU attention kernel."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

import mmcontrast as mc
from mmcontrast.data.loader import decode_size_for, trim_padding
from mmcontrast.kernels import training_attention
from mmcontrast.model import text_trimmable


def test_trimmed_text_rows_give_the_same_features_and_gradients():
    model = mc.create_model("tiny", seed=0)
    tokens = mc.make_tokenizer(model.model_cfg)(["a red circle", "two small blue squares on a plain background"])
    trimmed = trim_padding(tokens)
    assert tokens.shape[1] == 32 and trimmed.shape[1] == 16  # 11 tokens used, rounded up to 16
    assert torch.equal(trimmed, tokens[:, :16]) and not tokens[:, 16:].any()
    assert text_trimmable(model)
    full = model.encode_text(tokens)
    cut = model.encode_text(trimmed)
    torch.testing.assert_close(cut, full, atol=1e-6, rtol=1e-5)
    grads = [torch.autograd.grad(f.square().sum(), model.transformer.resblocks[0].mlp.c_fc.weight)[0]
             for f in (model.encode_text(tokens), model.encode_text(trimmed))]
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_text_is_not_trimmed_where_padding_is_attended():
    # SigLIP's text tower has no causal mask and pools the last position: padding changes its features
    assert not text_trimmable(mc.create_model("tiny-siglip", seed=0, text={"no_causal_mask": True,
                                                                           "pool_type": "last"}))
    assert not text_trimmable(mc.create_model("tiny-lit-minilm", seed=0, pretrained_towers=False))


def test_loader_decodes_large_jpegs_at_reduced_size(tmp_path):
    from data_prep.writer import write_shard
    assert decode_size_for(64, 0.9) == 78
    buf = io.BytesIO()
    Image.effect_noise((512, 384), 40).convert("RGB").save(buf, format="JPEG")
    write_shard(tmp_path / "a.tar", [{"__key__": "big", "jpg": buf.getvalue(), "txt": "noise"}])
    sizes = []

    def transform(img):
        sizes.append(img.size)
        return torch.zeros(3, 8, 8)

    for decode_size, expected in ((78, (128, 96)), (0, (512, 384))):  # 1/4 scale: the smallest with sides ≥ 78
        loader = mc.make_loader([str(tmp_path / "a.tar")], transform, lambda t: torch.zeros(len(t), 4), 1,
                                repeat=False, decode_size=decode_size)
        next(iter(loader))
        assert sizes.pop() == expected


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_attention_kernel_choice_gives_the_same_features(precision):
    model = mc.create_model("tiny", seed=0)
    image = torch.randn(4, 3, 64, 64)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.autocast("cpu", dtype=dtype, enabled=precision == "bf16"):
        ref = model.encode_image(image).float()
        with training_attention(torch.device("cpu"), precision):
            got = model.encode_image(image).float()
    tol = 3e-2 if precision == "bf16" else 1e-5  # bf16 kernels round differently
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
