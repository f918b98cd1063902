"""Dual-encoder models: open_clip's ``CLIP`` / ``CustomTextCLIP`` built from a ``model_cfg``.

The model interface every loader returns (``docs/design.md``):
``encode_image(image, normalize=False)`` → [B, D], ``encode_text(text, normalize=False)`` → [B, D],
``forward(image, text)`` → ``{"image_features", "text_features", "logit_scale"[, "logit_bias"]}``.
``logit_scale`` is the learnable log-temperature t, initialised to log(1/0.07) (Radford et al. 2021).
"""

from __future__ import annotations

import copy
import importlib.resources
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import text_global_pool

from .errors import UserError
from .fusion import IMAGE, TEXT, FusionConfig, PartitionedFusion, Streams, check_towers, text_valid
from .model_dir_layout import is_model_dir, read_model_dir
from .presets import get_model_cfg, with_towers
from .transforms import preprocess_cfg_for


def resolve_package_path(path: str) -> str:
    """``pkg:PACKAGE/sub/dir`` → the directory inside the installed package; other paths unchanged."""
    if not path.startswith("pkg:"):
        return path
    package, _, rest = path[4:].partition("/")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise UserError(f"{path}: package {package!r} is not installed (pip install {package.replace('_', '-')})")
    return str(Path(str(root)) / rest)


def resolve_paths(model_cfg: dict) -> dict:
    """A copy of ``model_cfg`` with ``pkg:`` paths of HF text towers made absolute (open_clip reads those)."""
    cfg = copy.deepcopy(model_cfg)
    text_cfg = cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if key in text_cfg:
            text_cfg[key] = resolve_package_path(text_cfg[key])
    return cfg


class Clip(CLIP):
    """open_clip's ``CLIP`` whose text tower also takes token rows shorter than its context length.

    With a causal mask and end-of-text pooling no token attends past the end of its caption, so a batch
    whose rows are all padding after column L gives the same text features from its first L columns —
    at a fraction of the cost (demo captions fill 15 of 32 positions). Same parameters and keys as
    ``CLIP``: saved models load in open_clip unchanged.
    """

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text_pooled(self.text_sequence(text), text)
        return F.normalize(x, dim=-1) if normalize else x

    def text_sequence(self, text: torch.Tensor) -> torch.Tensor:
        """The text tower's token outputs [B, L, width] (after its final LayerNorm)."""
        length = text.shape[1]
        full = length == self.positional_embedding.shape[0]
        if not full and not text_trimmable(self):
            raise ValueError(f"text rows of {length} tokens for a tower with context length "
                             f"{self.positional_embedding.shape[0]} that is not causal with end-of-text pooling")
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype) + self.positional_embedding[:length].to(cast_dtype)
        mask = self.attn_mask if full or self.attn_mask is None else self.attn_mask[:length, :length]
        return self.ln_final(self.transformer(x, attn_mask=mask))

    def text_pooled(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The projected text embedding [B, D] from the token outputs."""
        x = text_global_pool(x, text, self.text_pool_type, getattr(self, "text_eos_id", None))
        projection = self.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        return x


class FusionClip(Clip):
    """``Clip`` with partitioned-attention fusion blocks on top of its towers (``mmcontrast.fusion``).

    ``encode_image`` / ``encode_text`` run one modality's stream alone and give its pure embedding;
    ``forward`` runs both streams and the fusion tokens jointly and adds ``"fusion"``: the fusion
    tokens' output [B, n_f, W] and both streams' states (for hard negatives and re-ranking).
    The tower keys are open_clip's; the blocks and the ITM head live under ``fusion.``.
    """

    def __init__(self, embed_dim: int, *args, fusion: dict, **kwargs):
        super().__init__(embed_dim, *args, **kwargs)
        check_towers(self)
        self.visual.output_tokens = True  # (pooled, patch tokens); encode_image below takes both
        self.fusion = PartitionedFusion(FusionConfig.from_dict(fusion), embed_dim, self.visual.transformer.width,
                                        self.transformer.width)

    def image_stream_input(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tower embedding [B, D], stream input [B, 1 + N, W], real tokens [B, 1 + N])."""
        pooled, tokens = self.visual(image)
        return (pooled, *self.fusion.embed(IMAGE, pooled, tokens))

    def text_stream_input(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.text_sequence(text)
        pooled = self.text_pooled(x, text)
        valid = text_valid(text, self.text_pool_type, getattr(self, "text_eos_id", None))
        return (pooled, *self.fusion.embed(TEXT, pooled, x, valid))

    def image_streams(self, image: torch.Tensor) -> tuple[torch.Tensor, Streams]:
        """(pure image embedding [B, D], the image stream alone through the blocks)."""
        pooled, x, valid = self.image_stream_input(image)
        streams = self.fusion.stream(x, valid)
        return self.fusion.pure(IMAGE, pooled, streams), streams

    def text_streams(self, text: torch.Tensor) -> tuple[torch.Tensor, Streams]:
        pooled, x, valid = self.text_stream_input(text)
        streams = self.fusion.stream(x, valid)
        return self.fusion.pure(TEXT, pooled, streams), streams

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if self.fusion.cfg.pure_from == "towers":
            x = self.visual(image)[0]
        else:
            x = self.image_streams(image)[0]
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if self.fusion.cfg.pure_from == "towers":
            x = super().encode_text(text)
        else:
            x = self.text_streams(text)[0]
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict:
        image_pooled, image_x, image_valid = self.image_stream_input(image)
        text_pooled, text_x, text_valid_ = self.text_stream_input(text)
        image_s, text_s, fused = self.fusion.joint(image_x, image_valid, text_x, text_valid_)
        out = {"image_features": F.normalize(self.fusion.pure(IMAGE, image_pooled, image_s), dim=-1),
               "text_features": F.normalize(self.fusion.pure(TEXT, text_pooled, text_s), dim=-1),
               "logit_scale": self.logit_scale.exp(),
               "fusion": {"fused": fused, "image": image_s, "text": text_s}}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out


def text_trimmable(model: torch.nn.Module) -> bool:
    """Whether token rows may be cut after the batch's longest caption without changing any text feature."""
    return (isinstance(model, Clip) and getattr(model, "attn_mask", None) is not None
            and model.text_pool_type in ("argmax", "eos"))


def build_model(model_cfg: dict, preprocess_cfg: dict | None = None,
                pretrained_towers: bool = False) -> torch.nn.Module:
    """Instantiate an open_clip model from a ``model_cfg`` with dict outputs.

    Weights are random, except that ``pretrained_towers=True`` loads an HF text tower's own
    pretrained weights when its ``hf_model_name`` is a local directory (never a download).
    """
    model_cfg = resolve_paths(model_cfg)
    cfg = copy.deepcopy(model_cfg)
    is_hf_text = "hf_model_name" in cfg.get("text_cfg", {})
    if is_hf_text:
        local = Path(cfg["text_cfg"]["hf_model_name"]).is_dir()
        cfg["text_cfg"]["hf_model_pretrained"] = pretrained_towers and local
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or is_hf_text
    fusion = cfg.pop("fusion", None)
    if fusion is not None and custom_text:
        raise ValueError("fusion blocks need open_clip's own text tower (token outputs with a padding rule); "
                         "this model has a custom or transformers text tower")
    if fusion is not None:
        model = FusionClip(**cfg, fusion=fusion, output_dict=True)
    else:
        model = (CustomTextCLIP if custom_text else Clip)(**cfg, output_dict=True)
    # Kept on the module so that a loaded model can be saved again without its config at hand.
    model.model_cfg = copy.deepcopy(model_cfg)
    # open_clip's own directories may give only mean/std: the rest comes from the model (its image size)
    model.preprocess_cfg = preprocess_cfg_for(model_cfg, preprocess_cfg)
    return model


def create_model(name: str, seed: int | None = None, patch_dropout: float = 0.0, pretrained_towers: bool = True,
                 vision: dict | None = None, text: dict | None = None, **cfg_overrides) -> torch.nn.Module:
    """A named preset (``tiny``), open_clip architecture or model directory's architecture, randomly initialised.

    ``patch_dropout``: FLIP (Li et al. 2023) — the fraction of image patches dropped in training mode
    (none in eval mode). ``pretrained_towers``: an HF text tower in a local directory starts from its
    pretrained weights (LiT). ``vision`` / ``text``: tower changes (``presets.with_towers``: a timm
    backbone, a transformers text encoder, or single keys). ``cfg_overrides`` replace top-level
    ``model_cfg`` keys; ``seed`` makes the init reproducible.
    """
    preprocess_cfg = None
    if is_model_dir(name):
        config, _ = read_model_dir(name)
        model_cfg, preprocess_cfg = config["model_cfg"], config.get("preprocess_cfg")
    else:
        model_cfg = get_model_cfg(name)
    model_cfg = with_towers(model_cfg, vision, text)
    model_cfg.update(cfg_overrides)
    if patch_dropout:
        model_cfg["vision_cfg"]["patch_dropout"] = patch_dropout
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return build_model(model_cfg, preprocess_cfg, pretrained_towers=pretrained_towers)
