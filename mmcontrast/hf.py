"""Hugging Face ``transformers`` CLIP and SigLIP directories behind the project's model interface.

``mc.load("hf:DIR")`` for a directory written by ``CLIPModel`` / ``SiglipModel.save_pretrained``
(plus the processor's files): the image features are ``get_image_features``, the text features
``get_text_features``, the preprocessing is the directory's own image processor and the tokenizer
its own, padded to the model's text length — so embeddings equal those of ``transformers``.
Everything is read with ``local_files_only=True``: nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import UserError


def _features(out) -> torch.Tensor:
    # transformers ≥ 5 returns a model output whose pooler_output holds the projected features
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFDualEncoder(torch.nn.Module):
    """A transformers CLIPModel/SiglipModel with ``encode_image``, ``encode_text`` and a dict ``forward``."""

    def __init__(self, hf_model: torch.nn.Module):
        super().__init__()
        self.hf = hf_model

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.hf.logit_scale

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = _features(self.hf.get_image_features(pixel_values=image))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = _features(self.hf.get_text_features(input_ids=text))
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict:
        out = {"image_features": self.encode_image(image, normalize=True),
               "text_features": self.encode_text(text, normalize=True),
               "logit_scale": self.hf.logit_scale.exp()}
        if getattr(self.hf, "logit_bias", None) is not None:
            out["logit_bias"] = self.hf.logit_bias
        return out


class HFTokenizer:
    """Texts → [B, L] input ids, padded to the model's text length as the model was trained."""

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                              return_tensors="pt")["input_ids"]


class HFPreprocess:
    """PIL image → [3, H, W] tensor through the directory's own image processor."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def load_hf(path: str | Path):
    """(model, preprocess, tokenizer) from a transformers CLIP or SigLIP directory."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"hf:{path} is not a transformers model directory: config.json is missing")
    model_type = json.loads(config_file.read_text()).get("model_type")
    classes = {"clip": CLIPModel, "siglip": SiglipModel}
    if model_type not in classes:
        raise UserError(f"hf:{path} holds a {model_type!r} model; supported: {sorted(classes)}")
    hf_model = classes[model_type].from_pretrained(path, local_files_only=True).eval()
    try:
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"hf:{path} lacks its processor files ({e.__class__.__name__}); save them with "
                        f"CLIPProcessor/AutoProcessor.save_pretrained into the same directory") from None
    model = HFDualEncoder(hf_model)
    model.preprocess_cfg = {"hf_image_processor": processor.to_dict()}
    context = hf_model.config.text_config.max_position_embeddings
    return model, HFPreprocess(processor), HFTokenizer(tokenizer, context)
