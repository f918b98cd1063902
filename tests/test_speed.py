"""Speed features keep results: trimmed text rows, reduced-size JPEG decoding, the CPU attention kernel."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel

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


def test_cpu_bf16_attention_kernel_choice_gives_the_same_features():
    """Under bf16 the context runs the math kernel (bit for bit what forcing it gives, and not what flash
    gives), whose features agree with PyTorch's own choice to bf16 rounding."""
    model = mc.create_model("tiny", seed=0)
    image = torch.randn(4, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model.encode_image(image).float()
        with training_attention(torch.device("cpu"), "bf16"):
            got = model.encode_image(image).float()
        with sdpa_kernel(SDPBackend.MATH):
            math = model.encode_image(image).float()
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            flash = model.encode_image(image).float()
    assert torch.equal(got, math) and not torch.equal(got, flash)
    torch.testing.assert_close(got, ref, atol=3e-2, rtol=3e-2)  # bf16 kernels round differently


def test_cpu_fp32_keeps_pytorchs_attention_kernel_which_agrees_with_the_math_kernel():
    """fp32 leaves PyTorch's choice (flash on a CPU) in place; the math kernel gives the same features."""
    assert isinstance(training_attention(torch.device("cpu"), "fp32"), contextlib.nullcontext)
    model = mc.create_model("tiny", seed=0)
    image, text = torch.randn(4, 3, 64, 64), torch.randint(1, 1000, (4, 32))
    refused = pytest.raises(RuntimeError, match="No viable backend|No available kernel")
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION), refused:
        model.encode_image(image)  # a CUDA-only kernel: the forced choice reaches the towers' attention
    for encode, x in ((model.encode_image, image), (model.encode_text, text)):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            flash = encode(x)
        with sdpa_kernel(SDPBackend.MATH):
            math = encode(x)
        torch.testing.assert_close(flash, math, atol=1e-5, rtol=1e-5)


def test_uint8_crop_follows_the_random_resized_crop_rule_and_normalises_like_torchvision():
    import math

    from torchvision.transforms import functional as TF

    from mmcontrast.transforms import RandomResizedCropUint8, Uint8Normalize
    crop = RandomResizedCropUint8(32, scale=(0.5, 1.0))
    for _ in range(300):
        left, top, right, bottom = crop.box(100, 80)
        w, h = right - left, bottom - top
        assert 0 <= left and right <= 100 and 0 <= top and bottom <= 80
        assert 0.5 * 8000 * 0.97 <= w * h <= 8000 and 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
    assert crop.box(200, 20) == (86, 0, 113, 20)  # no try fits: the central crop at the widest ratio, 4/3
    img = Image.effect_noise((100, 80), 50).convert("RGB")
    torch.manual_seed(0)
    box = crop.box(*img.size)
    torch.manual_seed(0)
    out = crop(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    got = Uint8Normalize(mean, std)(out[None])[0]
    ref = TF.normalize(TF.to_tensor(img.resize((32, 32), Image.BICUBIC, box=box)), mean, std)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # the same crop through torchvision (crop, then resize) differs only by resampling at the edges
    tv = TF.normalize(TF.to_tensor(TF.resized_crop(img, box[1], box[0], box[3] - box[1], box[2] - box[0], [32, 32],
                                                   TF.InterpolationMode.BICUBIC)), mean, std)
    assert (got - tv).abs().mean() < 0.05 * math.sqrt(tv.var())
