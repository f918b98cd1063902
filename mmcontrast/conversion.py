"""Convert between transformers ``CLIPModel`` directories and this project's model directories.

    python -m mmcontrast.convert SRC DST [--overwrite]

The direction follows ``SRC``: a transformers CLIP directory (``config.json``, ``model_type: clip``)
becomes a model directory that this project trains and evaluates and open_clip loads; a model
directory whose towers a ``CLIPModel`` can hold (a plain ViT image tower and open_clip's text
transformer) becomes a transformers directory with its tokenizer and image processor, which
``CLIPModel`` / ``CLIPProcessor.from_pretrained`` and ``mc.load("hf:DST")`` load. ``DST`` is new or empty;
``--overwrite`` replaces a model or transformers directory there and refuses one that holds anything else (a run
directory, a user's files); ``DST`` may not be ``SRC``, inside it, or hold it.

The weights are the same numbers under other names (two layouts of one architecture, Radford et
al. 2021): open_clip keeps one ``in_proj`` for query, key and value and stores projections as
[width, dim] matrices; transformers has separate ``q/k/v_proj`` and ``Linear`` [dim, width] weights.
A round trip gives back every tensor bit for bit (``tests/test_convert.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from .errors import UserError
from .model import build_model
from .model_dir import CONFIG_NAME, check_can_replace, fresh_tmp_dir, load_model_dir, replace_dir, save_model_dir
from .model_files import read_json_object
from .transforms import preprocess_cfg_for

# The open_clip tokenizer's special tokens, as transformers' CLIPTokenizer spells them.
SPECIAL_TOKENS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
EOT_ID = 49407

# Each row: open_clip name, transformers name(s), how the tensor changes on the way to transformers.
# "copy" keeps it, "T" transposes a [width, dim] projection into a Linear weight, "qkv" splits
# open_clip's fused in_proj into q_proj, k_proj, v_proj.
_BLOCK = [("ln_1.{p}", "layer_norm1.{p}", "copy"), ("ln_2.{p}", "layer_norm2.{p}", "copy"),
          ("attn.in_proj_weight", "self_attn.{}_proj.weight", "qkv"),
          ("attn.in_proj_bias", "self_attn.{}_proj.bias", "qkv"),
          ("attn.out_proj.{p}", "self_attn.out_proj.{p}", "copy"),
          ("mlp.c_fc.{p}", "mlp.fc1.{p}", "copy"), ("mlp.c_proj.{p}", "mlp.fc2.{p}", "copy")]


def _key_table(vision_layers: int, text_layers: int) -> list[tuple[str, str, str]]:
    rows = [("visual.class_embedding", "vision_model.embeddings.class_embedding", "copy"),
            ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", "copy"),
            ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", "copy"),
            ("visual.proj", "visual_projection.weight", "T"),
            ("token_embedding.weight", "text_model.embeddings.token_embedding.weight", "copy"),
            ("positional_embedding", "text_model.embeddings.position_embedding.weight", "copy"),
            ("text_projection", "text_projection.weight", "T"),
            ("logit_scale", "logit_scale", "copy")]
    for p in ("weight", "bias"):
        rows += [(f"visual.ln_pre.{p}", f"vision_model.pre_layrnorm.{p}", "copy"),
                 (f"visual.ln_post.{p}", f"vision_model.post_layernorm.{p}", "copy"),
                 (f"ln_final.{p}", f"text_model.final_layer_norm.{p}", "copy")]
    towers = [("visual.transformer.resblocks", "vision_model.encoder.layers", vision_layers),
              ("transformer.resblocks", "text_model.encoder.layers", text_layers)]
    for ours, theirs, layers in towers:
        for i in range(layers):
            for o, t, kind in _BLOCK:
                for p in ("weight", "bias"):
                    rows.append((f"{ours}.{i}.{o.format(p=p)}", f"{theirs}.{i}.{t.replace('{p}', p)}", kind))
    return list(dict.fromkeys(rows))  # rows without {p} were added twice


def openclip_to_hf_state(state: dict, vision_layers: int, text_layers: int) -> dict:
    """open_clip ``CLIP`` state dict → transformers ``CLIPModel`` state dict (same tensors, renamed)."""
    out = {}
    for ours, theirs, kind in _key_table(vision_layers, text_layers):
        tensor = state[ours]
        if kind == "qkv":
            for name, part in zip("qkv", tensor.chunk(3)):
                out[theirs.format(name)] = part.clone()
        else:
            out[theirs] = (tensor.T if kind == "T" else tensor).contiguous().clone()
    return out


def hf_to_openclip_state(state: dict, vision_layers: int, text_layers: int) -> dict:
    """transformers ``CLIPModel`` state dict → open_clip ``CLIP`` state dict."""
    out = {}
    for ours, theirs, kind in _key_table(vision_layers, text_layers):
        if kind == "qkv":
            out[ours] = torch.cat([state[theirs.format(name)] for name in "qkv"])
        else:
            out[ours] = (state[theirs].T if kind == "T" else state[theirs]).contiguous().clone()
    return out


# ---------------------------------------------------------------- configs


def _check_hf_config(config, where: str) -> None:
    vc, tc = config.vision_config, config.text_config
    if vc.hidden_act != tc.hidden_act or vc.hidden_act not in ("quick_gelu", "gelu"):
        raise UserError(f"{where}: activations {vc.hidden_act!r}/{tc.hidden_act!r} have no open_clip equivalent "
                        f"(open_clip's CLIP uses one of quick_gelu or gelu in both towers)")
    for name, c in (("vision", vc), ("text", tc)):
        if c.layer_norm_eps != 1e-5:
            raise UserError(f"{where}: {name} layer_norm_eps={c.layer_norm_eps}; open_clip's CLIP uses 1e-5")
    if tc.vocab_size != EOT_ID + 1 or tc.eos_token_id not in (2, EOT_ID):
        raise UserError(f"{where}: the text tower has vocab_size={tc.vocab_size}, eos_token_id={tc.eos_token_id}; "
                        f"only the CLIP BPE vocabulary (49408 tokens, end of text {EOT_ID}) converts")


def hf_config_to_model_cfg(config) -> dict:
    """transformers ``CLIPConfig`` → open_clip ``model_cfg``."""
    vc, tc = config.vision_config, config.text_config
    return {
        "embed_dim": config.projection_dim,
        "quick_gelu": vc.hidden_act == "quick_gelu",
        "vision_cfg": {"image_size": vc.image_size, "patch_size": vc.patch_size, "width": vc.hidden_size,
                       "layers": vc.num_hidden_layers, "head_width": vc.hidden_size // vc.num_attention_heads,
                       "mlp_ratio": vc.intermediate_size / vc.hidden_size},
        "text_cfg": {"context_length": tc.max_position_embeddings, "vocab_size": tc.vocab_size,
                     "width": tc.hidden_size, "heads": tc.num_attention_heads, "layers": tc.num_hidden_layers,
                     "mlp_ratio": tc.intermediate_size / tc.hidden_size},
    }


# Config keys that do not change a trained model's outputs, or that are mapped below.
_VISION_FREE = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "patch_dropout",
                "output_tokens", "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained", "timm_pool",
                "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path"}
_TEXT_FREE = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "output_tokens", "pad_id",
              "eos_id", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"}
_TOP_FREE = {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "init_logit_scale", "cast_dtype"}


def _unconvertible(model_cfg: dict) -> list[str]:
    """The settings of ``model_cfg`` that a transformers ``CLIPModel`` cannot express."""
    bad = [f"{k}={v!r}" for k, v in model_cfg.items() if k not in _TOP_FREE and v not in (None, False)]
    for name, cls, free in (("vision_cfg", CLIPVisionCfg, _VISION_FREE), ("text_cfg", CLIPTextCfg, _TEXT_FREE)):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for k, v in model_cfg.get(name, {}).items():
            if k not in free and v != defaults.get(k, object()):
                bad.append(f"{name}.{k}={v!r}")
    return bad


def model_cfg_to_hf_config(model_cfg: dict):
    """open_clip ``model_cfg`` → transformers ``CLIPConfig``."""
    from transformers import CLIPConfig

    v = {**{f.name: f.default for f in dataclasses.fields(CLIPVisionCfg)}, **model_cfg["vision_cfg"]}
    t = {**{f.name: f.default for f in dataclasses.fields(CLIPTextCfg)}, **model_cfg["text_cfg"]}
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    vision = dict(hidden_size=v["width"], intermediate_size=int(v["width"] * v["mlp_ratio"]),
                  num_hidden_layers=v["layers"], num_attention_heads=v["width"] // v["head_width"],
                  image_size=v["image_size"], patch_size=v["patch_size"], hidden_act=act,
                  projection_dim=model_cfg["embed_dim"])
    text = dict(hidden_size=t["width"], intermediate_size=int(t["width"] * t["mlp_ratio"]),
                num_hidden_layers=t["layers"], num_attention_heads=t["heads"], vocab_size=t["vocab_size"],
                max_position_embeddings=t["context_length"], hidden_act=act, bos_token_id=EOT_ID - 1,
                eos_token_id=EOT_ID, pad_token_id=0, projection_dim=model_cfg["embed_dim"])
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=model_cfg["embed_dim"])


# ---------------------------------------------------------------- directories


def clip_tokenizer(folder: str | os.PathLike, context_length: int = 77):
    """transformers ``CLIPTokenizer`` over the CLIP BPE vocabulary that open_clip ships (files in ``folder``)."""
    import open_clip
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = open_clip.tokenizer.SimpleTokenizer()
    (folder / "vocab.json").write_text(json.dumps({SPECIAL_TOKENS.get(k, k): i for k, i in bpe.encoder.items()}))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    # Pads with <|endoftext|> as OpenAI's transformers checkpoints do, where open_clip pads with 0:
    # the features are read at the first end-of-text token behind a causal mask, so padding never counts.
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=context_length)


def _hf_preprocess_cfg(src: Path, model_cfg: dict) -> dict:
    """The source directory's image mean/std (when it has a processor config) at the model's image size."""
    processor_file = src / "preprocessor_config.json"
    if not processor_file.is_file():
        return preprocess_cfg_for(model_cfg)
    p = read_json_object(processor_file)
    return preprocess_cfg_for(model_cfg, {k: tuple(p[f"image_{k}"]) for k in ("mean", "std") if f"image_{k}" in p})


def hf_to_model_dir(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A transformers CLIP directory → this project's (open_clip-loadable) model directory."""
    from transformers import CLIPConfig

    from .hf import check_weight_files, load_hf_model

    src = Path(src).resolve()
    try:
        config = CLIPConfig.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"{src / 'config.json'} is not a CLIP config ({(str(e).splitlines() or [''])[0][:200]})") \
            from None
    _check_hf_config(config, str(src))
    check_weight_files(src)
    hf = load_hf_model(src, "clip")  # refuses weights missing from the files or of another shape
    model_cfg = hf_config_to_model_cfg(config)
    model = build_model(model_cfg, _hf_preprocess_cfg(src, model_cfg))
    state = hf_to_openclip_state(hf.state_dict(), config.vision_config.num_hidden_layers,
                                 config.text_config.num_hidden_layers)
    model.load_state_dict(state, strict=True)
    return save_model_dir(model, dst, meta={"converted_from": str(src.resolve()), "source_format": "transformers"})


def model_dir_to_hf(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """This project's model directory → a transformers CLIP directory with tokenizer and image processor."""
    from transformers import CLIPImageProcessor, CLIPModel

    src, dst = Path(src), Path(dst)
    model = load_model_dir(src)
    cfg = model.model_cfg
    bad = _unconvertible(cfg)
    if bad:
        raise UserError(f"{src}: a transformers CLIPModel cannot hold this model ({', '.join(bad)}); "
                        f"only a plain ViT image tower with open_clip's text transformer converts")
    config = model_cfg_to_hf_config(cfg)
    hf = CLIPModel(config)
    state = openclip_to_hf_state(model.state_dict(), cfg["vision_cfg"]["layers"], cfg["text_cfg"]["layers"])
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise UserError(f"{src}: weights do not map onto CLIPModel (missing {missing}, unexpected {unexpected})")
    tmp = fresh_tmp_dir(dst)
    hf.save_pretrained(tmp)
    clip_tokenizer(tmp, cfg["text_cfg"].get("context_length", 77)).save_pretrained(tmp)
    pre = model.preprocess_cfg
    size = pre["size"] if isinstance(pre["size"], int) else pre["size"][0]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(pre["mean"]), image_std=list(pre["std"])).save_pretrained(tmp)
    return replace_dir(tmp, dst)


def _overlap(target: Path, source: Path) -> str | None:
    """How resolved ``target`` overlaps resolved ``source``, or None."""
    if target == source:
        return "is the source"
    if source in target.parents:
        return "is inside the source"
    if target in source.parents:
        return "holds the source"
    return None


def check_destination(src: Path, dst: Path, overwrite: bool = False) -> None:
    """Refuse, before anything is read or written, a ``dst`` that overlaps ``src`` (equal, or one inside the
    other, counting the ``.tmp``/``.old`` siblings a replacement uses), or an existing non-empty ``dst`` without
    ``overwrite``; with it, a ``dst`` that holds anything but a model or transformers directory's files."""
    source = src.resolve()
    for target in (dst, dst.with_name(dst.name + ".tmp"), dst.with_name(dst.name + ".old")):
        how = _overlap(target.resolve(), source)
        if how:
            raise UserError(f"{target} {how} {src}; nothing was changed: write the conversion to a directory "
                            f"outside the source")
    if dst.is_dir() and not dst.is_symlink() and not any(dst.iterdir()):
        check_can_replace(dst)
        return
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise UserError(f"{dst} already exists and is not empty; nothing was changed: choose a new directory, "
                        f"or pass --overwrite to replace the model directory there")
    check_can_replace(dst)


def convert(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert ``src`` to the other format at ``dst``; the direction follows what ``src`` is.

    An existing non-empty ``dst`` is replaced only with ``overwrite``, and only when it holds nothing but the
    files of a model or transformers directory (``check_destination``)."""
    src, dst = Path(src), Path(dst)
    check_destination(src, dst, overwrite)
    if (src / CONFIG_NAME).is_file():
        return model_dir_to_hf(src, dst)
    config_file = src / "config.json"
    if config_file.is_file():
        model_type = read_json_object(config_file).get("model_type")
        if model_type != "clip":
            raise UserError(f"{src} holds a transformers {model_type!r} model; only 'clip' converts")
        return hf_to_model_dir(src, dst)
    raise UserError(f"{src}: neither a model directory ({CONFIG_NAME}) nor a transformers directory (config.json)")
