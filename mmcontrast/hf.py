"""Hugging Face ``transformers`` CLIP and SigLIP directories behind the project's model interface.

``mc.load("hf:DIR")`` for a directory written by ``CLIPModel`` / ``SiglipModel.save_pretrained``
(plus the processor's files): the image features are ``get_image_features``, the text features
``get_text_features``, the preprocessing is the directory's own image processor and the tokenizer
its own, padded to the model's text length — so embeddings equal those of ``transformers``.
``DIR`` must be a local directory (a hub name is refused, never looked up) and everything is read with
``local_files_only=True``: nothing is downloaded. The weight files are validated before transformers reads
them, and a weight missing from them, left over or of another shape is refused (transformers would
initialise it at random and go on).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import UserError
from .model_files import (check_finite, format_shape, list_names, read_json_object, read_safetensors_header,
                          read_state_dict)


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


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # in the order transformers prefers them


def load_hf(path: str | Path, allow_nonfinite: bool = False):
    """(model, preprocess, tokenizer) from a local transformers CLIP or SigLIP directory (never a download)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"hf:{path} is not a directory: hf: takes a local transformers directory only and downloads "
                        f"nothing; fetch the model first (huggingface_hub.snapshot_download(NAME, local_dir=DIR)) "
                        f"and pass hf:DIR")
    path = path.resolve()  # an absolute path is never taken for a hub name
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"hf:{path} is not a transformers model directory: config.json is missing")
    model_type = read_json_object(config_file).get("model_type")
    if model_type not in ("clip", "siglip"):
        raise UserError(f"hf:{path} holds a {model_type!r} model; supported: ['clip', 'siglip']")
    weight_files = check_weight_files(path)
    hf_model = load_hf_model(path, model_type)
    if not allow_nonfinite:
        check_finite(hf_model.state_dict(), ", ".join(str(f) for f in weight_files))
    processor, tokenizer = _processor_files(path)
    model = HFDualEncoder(hf_model)
    model.preprocess_cfg = {"hf_image_processor": processor.to_dict()}
    context = hf_model.config.text_config.max_position_embeddings
    return model, HFPreprocess(processor), HFTokenizer(tokenizer, context)


def check_weight_files(path: Path) -> list[Path]:
    """The directory's weight files (one, or the shards its index names), each validated before transformers
    reads it."""
    name = next((n for n in WEIGHT_FILES if (path / n).is_file()), None)
    if name is None:
        raise UserError(f"hf:{path} holds no weights: expected one of {', '.join(WEIGHT_FILES)}")
    files = [path / name] if not name.endswith(".index.json") else _index_shards(path / name)
    for file in files:
        if file.suffix == ".safetensors":
            read_safetensors_header(file)
        else:
            read_state_dict(file)  # refuses a truncated, garbage or code-running pickle with its reason
    return files


def _index_shards(index: Path) -> list[Path]:
    """The shard files a ``*.index.json`` names: files beside it with the index's own weights suffix."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index} has no 'weight_map' object")
    suffix = index.name.removesuffix(".index.json").rpartition(".")[2]
    shards = sorted(set(map(str, weight_map.values())))
    for shard in shards:
        if Path(shard).name != shard or not shard.endswith(f".{suffix}"):
            raise UserError(f"{index} names {shard[:100]!r}: a shard is a .{suffix} file in the same directory")
        if not (index.parent / shard).is_file():
            raise UserError(f"{index} names {shard}, which is missing")
    return [index.parent / shard for shard in shards]


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' load report and progress bars off: a refused load is one line, not a table."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_hf_model(path: Path, model_type: str) -> torch.nn.Module:
    """The transformers model, refused unless every weight it has was in the files with the shape it has."""
    from transformers import CLIPModel, SiglipModel

    cls = {"clip": CLIPModel, "siglip": SiglipModel}[model_type]
    try:
        with _quiet_transformers():
            hf_model, info = cls.from_pretrained(path, local_files_only=True, output_loading_info=True,
                                                 ignore_mismatched_sizes=True)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"hf:{path}: transformers cannot build the model from its files ({reason})") from None
    parts = [f"size mismatch for {k}: file {format_shape(a)}, model {format_shape(b)}"
             for k, a, b in sorted(info.get("mismatched_keys", []))][:5]
    parts += [f"missing keys: {list_names(sorted(info['missing_keys']))}"] if info.get("missing_keys") else []
    parts += [f"unexpected keys: {list_names(sorted(info['unexpected_keys']))}"] if info.get("unexpected_keys") else []
    parts += [str(m).splitlines()[0][:200] for m in info.get("error_msgs", [])][:1]
    if parts:
        raise UserError(f"hf:{path} does not fit its config.json: {'; '.join(parts)}")
    return hf_model.eval()


def _processor_files(path: Path):
    from transformers import AutoImageProcessor, AutoTokenizer

    try:
        with _quiet_transformers():
            processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"hf:{path} lacks its processor files ({e.__class__.__name__}); save them with "
                        f"CLIPProcessor/AutoProcessor.save_pretrained into the same directory") from None
    return processor, tokenizer
