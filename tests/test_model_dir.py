"""Model directories load in open_clip unchanged; ``mc.load`` agrees with open_clip on every source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import mmcontrast as mc
from mmcontrast.errors import UserError


def _inputs(preprocess, tokenizer):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)) for _ in range(3)]
    return torch.stack([preprocess(im) for im in images]), tokenizer(["a red circle", "two blue stars", "x"])


def _embed(model, pixels, tokens):
    with torch.no_grad():
        return model.encode_image(pixels, normalize=True), model.encode_text(tokens, normalize=True)


def test_model_dir_loads_in_open_clip_with_equal_embeddings(tmp_path, tiny):
    model, _, _ = tiny
    mc.save_model_dir(model, tmp_path / "final")
    ours, preprocess, tokenizer = mc.load(tmp_path / "final")
    ref, ref_preprocess = open_clip.create_model_from_pretrained(f"local-dir:{tmp_path / 'final'}")
    ref_tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'final'}")
    pixels, tokens = _inputs(preprocess, tokenizer)
    ref_pixels, ref_tokens = _inputs(ref_preprocess, ref_tokenizer)
    assert torch.equal(pixels, ref_pixels) and torch.equal(tokens, ref_tokens)
    for a, b in zip(_embed(ours, pixels, tokens), _embed(ref.eval(), pixels, tokens)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # and the weights survived the round trip
    for a, b in zip(_embed(model, pixels, tokens), _embed(ours, pixels, tokens)):
        assert torch.equal(a, b)


def test_saving_replaces_a_directory_atomically(tmp_path, tiny):
    model, _, _ = tiny
    mc.save_model_dir(model, tmp_path / "m", meta={"step": 1})
    mc.save_model_dir(model, tmp_path / "m", meta={"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert '"step": 2' in (tmp_path / "m" / "mmcontrast.json").read_text()


def test_openclip_arch_with_local_pretrained_file(tmp_path):
    ref, _, ref_preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(weights))
    ours, preprocess, tokenizer = mc.load("openclip:ViT-B-32", pretrained=str(weights))
    pixels, tokens = _inputs(preprocess, tokenizer)
    ref_pixels, _ = _inputs(ref_preprocess, tokenizer)
    assert torch.equal(pixels, ref_pixels)
    for a, b in zip(_embed(ours, pixels, tokens), _embed(ref.eval(), pixels, tokens)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_forward_returns_the_output_dict(tiny):
    model, preprocess, tokenizer = tiny
    pixels, tokens = _inputs(preprocess, tokenizer)
    with torch.no_grad():
        out = model(pixels, tokens)
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    assert out["image_features"].shape == (3, 128) and out["text_features"].shape == (3, 128)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("spec, message", [
    ("does/not/exist", "model not found: does/not/exist"),
    ("openclip:NoSuchArch", "unknown model 'NoSuchArch'"),
])
def test_load_errors_name_the_thing(spec, message):
    with pytest.raises(UserError, match=message):
        mc.load(spec)


def test_missing_pretrained_file():
    with pytest.raises(UserError, match="pretrained weights file not found: nope.safetensors"):
        mc.load("openclip:tiny", pretrained="nope.safetensors")


def test_custom_text_clip_model_dir_equals_open_clip(tmp_path):
    model = mc.create_model("tiny", seed=1, custom_text=True).eval()
    assert type(model).__name__ == "CustomTextCLIP"
    mc.save_model_dir(model, tmp_path / "custom")
    ours, preprocess, tokenizer = mc.load(tmp_path / "custom")
    ref, _ = open_clip.create_model_from_pretrained(f"local-dir:{tmp_path / 'custom'}")
    pixels, tokens = _inputs(preprocess, tokenizer)
    for a, b in zip(_embed(ours, pixels, tokens), _embed(ref.eval(), pixels, tokens)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


class _RunsCode:
    """Unpickling this calls ``Path.touch``: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_runs_code_is_refused_unrun(tmp_path):
    tiny = mc.create_model("tiny", seed=0)
    marker = tmp_path / "code_ran"
    bad = tmp_path / "model.pt"
    torch.save({"state_dict": tiny.state_dict(), "extra": _RunsCode(marker)}, bad)
    with pytest.raises(mc.UserError, match=r"model\.pt is a pickle that holds more than weights.*none of its code ran"):
        mc.load("openclip:tiny", pretrained=str(bad))
    assert not marker.exists()
    torch.save({"state_dict": tiny.state_dict()}, tmp_path / "plain.pt")  # weights only: loads
    model, _, _ = mc.load("openclip:tiny", pretrained=str(tmp_path / "plain.pt"))
    assert torch.equal(model.logit_scale, tiny.logit_scale)


def test_open_clip_written_directory_with_a_bin_file(tmp_path):
    """What open_clip's save_for_hf writes: config with only mean/std, weights as a weights-only .bin."""
    from open_clip.push_to_hf_hub import save_config_for_hf

    from mmcontrast.presets import TINY

    torch.manual_seed(0)
    ref = open_clip.model.CLIP(**TINY).eval()
    ref.visual.image_mean, ref.visual.image_std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    tmp_path.joinpath("oc").mkdir()
    torch.save(ref.state_dict(), tmp_path / "oc" / "open_clip_pytorch_model.bin")
    save_config_for_hf(ref, tmp_path / "oc" / "open_clip_config.json", model_config=TINY)
    ours, preprocess, tokenizer = mc.load(tmp_path / "oc")
    assert ours.preprocess_cfg["size"] == 64  # completed from the model's image size, as open_clip does
    _, _, ref_preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    pixels, tokens = _inputs(preprocess, tokenizer)
    assert torch.equal(pixels, _inputs(ref_preprocess, tokenizer)[0])
    for a, b in zip(_embed(ours, pixels, tokens), _embed(ref, pixels, tokens)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_every_layout_safetensors_writes_passes_the_header_checks(tmp_path):
    """The validation refuses broken files only: empty, scalar, bf16, integer and bool tensors with metadata read back."""
    from mmcontrast.model_files import read_safetensors_header, read_state_dict

    tensors = {"empty": torch.zeros(0, 4), "scalar": torch.tensor(2.5), "half": torch.randn(3, 5).bfloat16(),
               "ids": torch.arange(7), "mask": torch.tensor([True, False]), "u8": torch.arange(3, dtype=torch.uint8)}
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata={"format": "pt", "note": "x"})
    header = read_safetensors_header(tmp_path / "w.safetensors")
    assert sorted(header) == sorted(tensors) and header["half"]["dtype"] == "BF16" and header["scalar"]["shape"] == []
    back = read_state_dict(tmp_path / "w.safetensors")
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_finite_check_counts_exactly_and_survives_an_overflowing_sum():
    from mmcontrast.model_files import check_finite

    check_finite({"big": torch.full((10,), 6e4, dtype=torch.float16), "ids": torch.arange(3)}, "w")  # sum is inf
    bad = torch.zeros(40, 50)
    bad[0, :3], bad[1, 0] = float("nan"), float("-inf")
    with pytest.raises(UserError, match=r"^w holds non-finite values in b \(4 of 2,000\) and 1 other tensor;"):
        check_finite({"a": torch.ones(2), "b": bad, "c": torch.tensor([float("inf")]).bfloat16()}, "w")
