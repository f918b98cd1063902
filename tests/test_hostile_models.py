"""Broken and hostile model files end in one ``UserError`` line naming the file and the fault, on every loader
path (model directories, ``openclip:`` with ``pretrained``, ``hf:``), and ``python -m eval`` prints it and exits 2."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmcontrast as mc
from mmcontrast.errors import UserError

WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"
HF_WEIGHTS = "model.safetensors"
EXTRAS = "extras.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{"dir": a tiny model directory, "state": its tensors, "hf": a tiny transformers CLIP directory}."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from mmcontrast.conversion import clip_tokenizer

    root = tmp_path_factory.mktemp("hostile")
    mc.save_model_dir(mc.create_model("tiny", seed=0), root / "tiny")
    tower = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(0)
    hf = CLIPModel(CLIPConfig(text_config=dict(tower, vocab_size=49408, max_position_embeddings=77),
                              vision_config=dict(tower, image_size=32, patch_size=8), projection_dim=48))
    hf.save_pretrained(root / "hf")
    clip_tokenizer(root / "hf").save_pretrained(root / "hf")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "hf")
    fusion = {"depth": 1, "width": 32, "heads": 2, "num_fusion_tokens": 2}
    small = dict(embed_dim=32, vision={"layers": 1, "width": 32, "head_width": 16, "image_size": 32},
                 text={"layers": 1, "width": 32, "heads": 2, "context_length": 16})
    mc.save_model_dir(mc.create_model("tiny", seed=0, fusion=fusion, **small), root / "fusion")
    return {"dir": root / "tiny", "state": load_file(str(root / "tiny" / WEIGHTS)), "hf": root / "hf",
            "hf_state": load_file(str(root / "hf" / HF_WEIGHTS)), "fusion": root / "fusion",
            "extras": load_file(str(root / "fusion" / EXTRAS))}


def _model_dir(saved, tmp: Path, weights: bytes | dict | None = None) -> Path:
    """A copy of the saved model directory, its weights replaced by ``weights`` (bytes or tensors) when given."""
    out = tmp / "model"
    out.mkdir()
    for name in (CONFIG, "mmcontrast.json"):
        shutil.copy(saved["dir"] / name, out / name)
    if weights is None:
        os.symlink(saved["dir"] / WEIGHTS, out / WEIGHTS)
    elif isinstance(weights, bytes):
        (out / WEIGHTS).write_bytes(weights)
    else:
        save_file(weights, str(out / WEIGHTS))
    return out


def _hf_dir(saved, tmp: Path, weights: bytes | dict | None = None, config: str | None = None) -> Path:
    out = tmp / "hf"
    shutil.copytree(saved["hf"], out, ignore=shutil.ignore_patterns(HF_WEIGHTS))
    if isinstance(weights, bytes):
        (out / HF_WEIGHTS).write_bytes(weights)
    else:
        save_file(weights if weights is not None else saved["hf_state"], str(out / HF_WEIGHTS),
                  metadata={"format": "pt"})
    if config is not None:
        (out / "config.json").write_text(config)
    return out


def _weights_bytes(saved) -> bytes:
    return (saved["dir"] / WEIGHTS).read_bytes()


def _header_length(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def _with(state: dict, **changes) -> dict:
    """A copy of ``state`` with tensors replaced (a tensor) or dropped (None); keys use "__" for "."."""
    out = dict(state)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del out[key]
        else:
            out[key] = value
    return out


def _nan_proj(state: dict) -> dict:
    proj = state["visual.proj"].clone()
    proj.view(-1)[:12] = float("nan")
    return _with(state, visual__proj=proj)


# Each case: saved fixture, a temporary folder → (spec, pretrained, the exact fragment of the message).
def truncated_header(saved, tmp):
    data = _weights_bytes(saved)
    d = _model_dir(saved, tmp, data[:8 + 1203])
    return d, None, f"truncated safetensors file: {d / WEIGHTS} holds 1,203 of {_header_length(data):,} header bytes"


def truncated_data(saved, tmp):
    data = _weights_bytes(saved)
    d = _model_dir(saved, tmp, data[:len(data) // 2])
    held, total = len(data) // 2 - 8 - _header_length(data), len(data) - 8 - _header_length(data)
    return d, None, f"truncated safetensors file: {d / WEIGHTS} holds {held:,} of {total:,} data bytes after its header"


def header_only(saved, tmp):
    data = _weights_bytes(saved)
    n = _header_length(data)
    d = _model_dir(saved, tmp, data[:8 + n])
    return d, None, f"truncated safetensors file: {d / WEIGHTS} holds 0 of {len(data) - 8 - n:,} data bytes"


def shorter_than_its_length_field(saved, tmp):
    d = _model_dir(saved, tmp, b"\x10\x00\x00")
    return d, None, f"truncated safetensors file: {d / WEIGHTS} holds 3 of the 8 bytes that give its header length"


def garbage(saved, tmp):
    d = _model_dir(saved, tmp, bytes(range(256)) * 16)
    n = _header_length(bytes(range(8)))
    return d, None, f"{d / WEIGHTS} is not a safetensors file: its first 8 bytes give a header of {n:,} bytes"


def header_not_json(saved, tmp):
    d = _model_dir(saved, tmp, struct.pack("<Q", 10) + b"not json!!" + b"\0" * 64)
    return d, None, f"{d / WEIGHTS} is not a safetensors file: its header is not JSON (Expecting value)"


def dtype_disagrees_with_offsets(saved, tmp):
    data = _weights_bytes(saved)
    n = _header_length(data)
    header = json.loads(data[8:8 + n])
    header["logit_scale"]["dtype"] = "F16"  # 2 bytes where its offsets span 4
    raw = json.dumps(header).encode()
    d = _model_dir(saved, tmp, struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    return d, None, f"{d / WEIGHTS} is not a valid safetensors file: logit_scale is F16 [] (2 bytes) but spans 4 bytes"


def trailing_bytes(saved, tmp):
    d = _model_dir(saved, tmp, _weights_bytes(saved) + b"junk")
    return d, None, f"{d / WEIGHTS} is not a valid safetensors file: 4 bytes follow its last tensor"


def wrong_shape(saved, tmp):
    d = _model_dir(saved, tmp, _with(saved["state"], visual__conv1__weight=torch.zeros(3, 3, 3, 3)))
    return d, None, (f"{d / WEIGHTS} does not fit the model: size mismatch for visual.conv1.weight: file [3,3,3,3], "
                     f"model [128,3,8,8]")


def missing_key(saved, tmp):
    d = _model_dir(saved, tmp, _with(saved["state"], text_projection=None))
    return d, None, f"{d / WEIGHTS} does not fit the model: missing keys: text_projection"


def unexpected_key(saved, tmp):
    d = _model_dir(saved, tmp, _with(saved["state"], extra__weight=torch.zeros(2)))
    return d, None, f"{d / WEIGHTS} does not fit the model: unexpected keys: extra.weight"


def nan_weights(saved, tmp):
    d = _model_dir(saved, tmp, _nan_proj(saved["state"]))
    return d, None, f"{d / WEIGHTS} holds non-finite values in visual.proj (12 of 16,384); to load it anyway"


def _config_case(name: str, text: str, message: str):
    """A case: the model directory's open_clip_config.json replaced by ``text``; the error starts with the file."""
    def case(saved, tmp):
        d = _model_dir(saved, tmp)
        (d / CONFIG).write_text(text)
        return d, None, f"{d / CONFIG}{message}"
    case.__name__ = name
    return case


config_not_json = _config_case("config_not_json", '{"model_cfg": {"embed_dim": 128,',
                               " is not valid JSON (Expecting property name enclosed in double quotes at line 1")
config_a_list = _config_case("config_a_list", "[1, 2]", " holds a JSON list, not an object")
config_without_model_cfg = _config_case("config_without_model_cfg", '{"preprocess_cfg": {}}',
                                        " has no 'model_cfg' object")
config_that_builds_nothing = _config_case("config_that_builds_nothing", '{"model_cfg": {"embed_dim": 128}}',
                                          ": its model_cfg does not describe a model (TypeError: ")


def config_naming_a_hub_text_tower(saved, tmp):
    d = _model_dir(saved, tmp)
    config = json.loads((d / CONFIG).read_text())
    config["model_cfg"]["text_cfg"] = {"hf_model_name": "some/hub-name", "hf_tokenizer_name": "some/hub-name"}
    (d / CONFIG).write_text(json.dumps(config))
    return d, None, f"{d / CONFIG}: text_cfg.hf_model_name 'some/hub-name' is not a local directory"


def meta_not_json(saved, tmp):
    d = _model_dir(saved, tmp)
    (d / "mmcontrast.json").write_bytes(b"\xff\xfe")
    return d, None, f"{d / 'mmcontrast.json'} is not valid JSON: it is not UTF-8 text"


def _fusion_dir(saved, tmp: Path, extras: bytes | dict) -> Path:
    """A copy of the saved model with fusion blocks, its ``extras.safetensors`` replaced."""
    out = tmp / "fusion"
    shutil.copytree(saved["fusion"], out, ignore=shutil.ignore_patterns(EXTRAS))
    if isinstance(extras, bytes):
        (out / EXTRAS).write_bytes(extras)
    else:
        save_file(extras, str(out / EXTRAS))
    return out


def fusion_extras_truncated(saved, tmp):
    data = (saved["fusion"] / EXTRAS).read_bytes()
    d = _fusion_dir(saved, tmp, data[:-100])
    return d, None, f"truncated safetensors file: {d / EXTRAS} holds "


def fusion_extras_missing_key(saved, tmp):
    key = sorted(saved["extras"])[0]
    d = _fusion_dir(saved, tmp, {k: v for k, v in saved["extras"].items() if k != key})
    return d, None, f"{d / EXTRAS} does not fit the model: missing keys: {key.removeprefix('fusion.')}"


def fusion_extras_nan(saved, tmp):
    key = sorted(saved["extras"])[0]
    bad = saved["extras"][key].clone()
    bad.view(-1)[0] = float("nan")
    d = _fusion_dir(saved, tmp, {**saved["extras"], key: bad})
    return d, None, f"{d / EXTRAS} holds non-finite values in {key} (1 of {bad.numel():,})"


def openclip_pretrained_missing(saved, tmp):
    return "openclip:tiny", tmp / "nope.safetensors", f"pretrained weights file not found: {tmp / 'nope.safetensors'}"


def openclip_pretrained_truncated(saved, tmp):
    data = _weights_bytes(saved)
    (tmp / "w.safetensors").write_bytes(data[:8 + 1203])
    return ("openclip:tiny", tmp / "w.safetensors",
            f"truncated safetensors file: {tmp / 'w.safetensors'} holds 1,203 of {_header_length(data):,} header bytes")


def openclip_pretrained_nan_pt(saved, tmp):
    torch.save(_nan_proj(saved["state"]), tmp / "w.pt")
    return "openclip:tiny", tmp / "w.pt", f"{tmp / 'w.pt'} holds non-finite values in visual.proj (12 of 16,384)"


def openclip_pretrained_truncated_pt(saved, tmp):
    torch.save(saved["state"], tmp / "w.pt")
    data = (tmp / "w.pt").read_bytes()
    (tmp / "w.pt").write_bytes(data[:len(data) // 2])
    return ("openclip:tiny", tmp / "w.pt",
            f"{tmp / 'w.pt'} is a truncated or corrupt torch checkpoint: its zip directory is missing")


def openclip_pretrained_garbage_bin(saved, tmp):
    (tmp / "w.bin").write_bytes(b"<html>not weights</html>")
    return "openclip:tiny", tmp / "w.bin", f"{tmp / 'w.bin'} is not a weights file"


def openclip_pretrained_wrong_shape_pt(saved, tmp):
    torch.save({"state_dict": _with(saved["state"], text_projection=torch.zeros(4, 4))}, tmp / "w.pt")
    return ("openclip:tiny", tmp / "w.pt",
            f"{tmp / 'w.pt'} does not fit the model: size mismatch for text_projection: file [4,4], model [128,128]")


def openclip_config_not_json(saved, tmp):
    (tmp / "arch.json").write_text("{oops")
    return f"openclip:{tmp / 'arch.json'}", None, f"{tmp / 'arch.json'} is not valid JSON (Expecting property name"


def hf_without_config(saved, tmp):
    return f"hf:{tmp}", None, f"hf:{tmp} is not a transformers model directory: config.json is missing"


def hf_hub_name(saved, tmp):
    return "hf:some/hub-name", None, ("hf:some/hub-name is not a directory: hf: takes a local transformers directory "
                                      "only and downloads nothing")


def hf_config_not_json(saved, tmp):
    d = _hf_dir(saved, tmp, config="{")
    return f"hf:{d}", None, f"{d / 'config.json'} is not valid JSON (Expecting property name"


def hf_truncated(saved, tmp):
    data = (saved["hf"] / HF_WEIGHTS).read_bytes()
    d = _hf_dir(saved, tmp, data[:8 + 1203])
    return f"hf:{d}", None, (f"truncated safetensors file: {d / HF_WEIGHTS} holds 1,203 of {_header_length(data):,} "
                             f"header bytes")


def hf_no_weights(saved, tmp):
    d = _hf_dir(saved, tmp)
    (d / HF_WEIGHTS).unlink()
    return f"hf:{d}", None, f"hf:{d} holds no weights: expected one of model.safetensors"


def _sharded(saved, tmp: Path, shard_name: str) -> Path:
    """The transformers directory with its weights as one shard behind an index naming ``shard_name``."""
    d = _hf_dir(saved, tmp)
    (d / HF_WEIGHTS).rename(d / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {k: shard_name for k in saved["hf_state"]}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


def hf_index_names_a_missing_shard(saved, tmp):
    d = _sharded(saved, tmp, "model-00002-of-00002.safetensors")
    return f"hf:{d}", None, (f"{d / 'model.safetensors.index.json'} names model-00002-of-00002.safetensors, "
                             f"which is missing")


def hf_index_names_a_file_elsewhere(saved, tmp):
    d = _sharded(saved, tmp, "../../elsewhere.safetensors")
    return f"hf:{d}", None, (f"{d / 'model.safetensors.index.json'} names '../../elsewhere.safetensors': a shard is a "
                             f".safetensors file in the same directory")


def hf_missing_key(saved, tmp):
    d = _hf_dir(saved, tmp, _with(saved["hf_state"], text_projection__weight=None))
    return f"hf:{d}", None, f"hf:{d} does not fit its config.json: missing keys: text_projection.weight"


def hf_unexpected_key(saved, tmp):
    d = _hf_dir(saved, tmp, _with(saved["hf_state"], extra__weight=torch.zeros(2)))
    return f"hf:{d}", None, f"hf:{d} does not fit its config.json: unexpected keys: extra.weight"


def hf_wrong_shape(saved, tmp):
    d = _hf_dir(saved, tmp, _with(saved["hf_state"], text_projection__weight=torch.zeros(3, 3)))
    return f"hf:{d}", None, ("does not fit its config.json: size mismatch for text_projection.weight: file [3,3], "
                             "model [48,64]")


def hf_nan(saved, tmp):
    weight = saved["hf_state"]["visual_projection.weight"].clone()
    weight[0, :5] = float("inf")
    d = _hf_dir(saved, tmp, _with(saved["hf_state"], visual_projection__weight=weight))
    return f"hf:{d}", None, f"{d / HF_WEIGHTS} holds non-finite values in visual_projection.weight (5 of 3,072)"


CASES = [truncated_header, truncated_data, header_only, shorter_than_its_length_field, garbage, header_not_json,
         dtype_disagrees_with_offsets, trailing_bytes, wrong_shape, missing_key, unexpected_key, nan_weights,
         config_not_json, config_a_list, config_without_model_cfg, config_that_builds_nothing,
         config_naming_a_hub_text_tower, meta_not_json, fusion_extras_truncated, fusion_extras_missing_key,
         fusion_extras_nan, openclip_pretrained_missing, openclip_pretrained_truncated,
         openclip_pretrained_nan_pt, openclip_pretrained_truncated_pt, openclip_pretrained_garbage_bin,
         openclip_pretrained_wrong_shape_pt, openclip_config_not_json, hf_without_config, hf_hub_name,
         hf_config_not_json, hf_truncated, hf_no_weights, hf_index_names_a_missing_shard,
         hf_index_names_a_file_elsewhere, hf_missing_key, hf_unexpected_key, hf_wrong_shape, hf_nan]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_load_refuses_in_one_line_naming_the_file(case, saved, tmp_path):
    spec, pretrained, expected = case(saved, tmp_path)
    with pytest.raises(UserError) as caught:
        mc.load(spec, pretrained=pretrained)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("case", [nan_weights, openclip_pretrained_nan_pt, hf_nan])
def test_allow_nonfinite_loads_the_weights_as_they_are(case, saved, tmp_path):
    spec, pretrained, _ = case(saved, tmp_path)
    model, _, _ = mc.load(spec, pretrained=pretrained, allow_nonfinite=True)
    weights = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    assert sum(int((~torch.isfinite(v)).sum()) for v in weights.values()) == (5 if str(spec).startswith("hf:") else 12)


def test_the_saved_files_themselves_load(saved):
    """The fixtures above break a model that loads: the refusals are the breakage's, not the fixture's."""
    model, _, _ = mc.load(saved["dir"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved["state"].items())
    hf_model, _, _ = mc.load(f"hf:{saved['hf']}")
    assert torch.equal(hf_model.hf.visual_projection.weight, saved["hf_state"]["visual_projection.weight"])
    fusion_model, _, _ = mc.load(saved["fusion"])
    assert all(torch.equal(fusion_model.state_dict()[k], v) for k, v in saved["extras"].items())


def test_a_sharded_transformers_directory_loads(saved, tmp_path):
    model, _, _ = mc.load(f"hf:{_sharded(saved, tmp_path, 'model-00001-of-00001.safetensors')}")
    assert torch.equal(model.hf.text_projection.weight, saved["hf_state"]["text_projection.weight"])


@pytest.mark.parametrize("case", [truncated_header, hf_hub_name], ids=lambda c: c.__name__)
def test_eval_prints_one_line_and_exits_2(case, saved, tmp_path):
    """Two of the cases through the program (every case is asserted through mc.load above)."""
    from PIL import Image
    spec, pretrained, expected = case(saved, tmp_path)
    for name in ("a", "b"):  # a sound image folder with two classes: the model is what fails
        (tmp_path / "set" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "set" / name / "0.png")
    argv = ["zeroshot", "--model", str(spec), "--dataset", f"imagefolder:{tmp_path / 'set'}",
            "--output", str(tmp_path / "out.json"), "--cache-dir", "", "--workers", "0", "--device", "cpu"]
    argv += ["--pretrained", str(pretrained)] if pretrained else []
    proc = subprocess.run([sys.executable, "-m", "eval", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("case", [hf_truncated, hf_missing_key, hf_wrong_shape], ids=lambda c: c.__name__)
def test_convert_refuses_what_load_refuses(case, saved, tmp_path):
    """``python -m mmcontrast.convert`` reads transformers weights through the same checks (transformers alone
    would initialise a missing weight at random and write a model directory from it)."""
    spec, _, expected = case(saved, tmp_path)
    with pytest.raises(UserError) as caught:
        mc.convert(spec.removeprefix("hf:"), tmp_path / "out")
    assert expected.removeprefix(f"hf:{tmp_path / 'hf'}") in str(caught.value)
    assert not (tmp_path / "out").exists()
