"""Model files — weights and configs — read as untrusted input: every fault is one ``UserError`` line naming
the file.

``.safetensors``: the 8-byte little-endian header length, the JSON header and each tensor's dtype,
shape and byte range are checked against the file's size before ``safetensors`` reads a byte of data.
``.bin`` / ``.pt``: ``torch.load(weights_only=True)`` after a look at the container (zip or pickle), so
a pickle that would run code is refused unrun. Then tensors holding NaN or inf are refused (unless
allowed), and names and shapes are compared with the model's before anything is copied into it. A JSON
config is bounded in size and must hold an object.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch

from .errors import UserError

MAX_HEADER_BYTES = 100 * 2**20  # a header lists names, dtypes and shapes: kilobytes for any real model
SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                           "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
                           "C64": 8}
MAX_CONFIG_BYTES = 16 * 2**20  # a config is kilobytes; bounds what a hostile file makes us parse
LISTED = 5  # names shown in a message before "(and N more)"


def list_names(items: list[str]) -> str:
    """The first few names, and how many more."""
    more = f" (and {len(items) - LISTED} more)" if len(items) > LISTED else ""
    return ", ".join(items[:LISTED]) + more


def format_shape(shape) -> str:
    """[3,3,8,8]: a shape as the messages write it."""
    return "[" + ",".join(str(int(n)) for n in shape) + "]"


def read_json_object(path: str | os.PathLike, limit: int = MAX_CONFIG_BYTES) -> dict:
    """A small JSON file holding an object, or one ``UserError`` line saying what is wrong with it."""
    path = Path(path)
    size = path.stat().st_size
    if size > limit:
        raise UserError(f"{path} is {size:,} bytes; a config file is at most {limit:,}")
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not valid JSON: it is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def read_safetensors_header(path: str | os.PathLike) -> dict[str, dict]:
    """{name: {"dtype", "shape", "data_offsets"}} of a ``.safetensors`` file, validated against its size."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"truncated safetensors file: {path} holds {len(head)} of the 8 bytes that give its "
                            f"header length; copy or save it again")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise UserError(f"{path} is not a safetensors file: its first 8 bytes give a header of {n:,} bytes "
                            f"(at most {MAX_HEADER_BYTES:,})")
        if n > size - 8:
            raise UserError(f"truncated safetensors file: {path} holds {size - 8:,} of {n:,} header bytes; "
                            f"copy or save it again")
        raw = f.read(n)
    header = _parse_header(path, raw)
    _check_layout(path, header, data_bytes=size - 8 - n)
    return header


def _parse_header(path: Path, raw: bytes) -> dict[str, dict]:
    def unique(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise UserError(f"{path} is not a valid safetensors file: its header names a tensor twice")
        return dict(pairs)

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=unique)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise UserError(f"{path} is not a safetensors file: its header is not JSON ({reason})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} is not a valid safetensors file: its header is a JSON {type(header).__name__}, "
                        f"not an object")
    header.pop("__metadata__", None)
    return header


def _check_layout(path: Path, header: dict, data_bytes: int) -> None:
    """Each entry's dtype, shape and offsets agree, and the tensors tile the data after the header exactly."""
    spans = []
    for name, entry in header.items():
        ok = (isinstance(entry, dict) and entry.get("dtype") in SAFETENSORS_DTYPE_BYTES
              and isinstance(entry.get("shape"), list) and isinstance(entry.get("data_offsets"), list)
              and all(type(d) is int and d >= 0 for d in entry["shape"])
              and len(entry["data_offsets"]) == 2 and all(type(o) is int and o >= 0 for o in entry["data_offsets"]))
        if not ok:
            raise UserError(f"{path} is not a valid safetensors file: the entry for {name[:100]!r} lacks a known "
                            f"dtype, a shape or two byte offsets")
        begin, end = entry["data_offsets"]
        want = math.prod(entry["shape"]) * SAFETENSORS_DTYPE_BYTES[entry["dtype"]]
        if end - begin != want:
            raise UserError(f"{path} is not a valid safetensors file: {name} is {entry['dtype']} "
                            f"{format_shape(entry['shape'])} ({want:,} bytes) but spans {end - begin:,} bytes")
        spans.append((begin, end, name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            raise UserError(f"{path} is not a valid safetensors file: {name} starts at byte {begin:,} of the data, "
                            f"not {position:,} where the tensor before it ends")
        position = end
    if position > data_bytes:
        raise UserError(f"truncated safetensors file: {path} holds {data_bytes:,} of {position:,} data bytes "
                        f"after its header; copy or save it again")
    if position < data_bytes:
        raise UserError(f"{path} is not a valid safetensors file: {data_bytes - position:,} bytes follow its "
                        f"last tensor")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_safetensors_header(path)
    try:
        return load_file(str(path))
    except SafetensorError as e:  # what the checks above do not cover (a dtype this safetensors lacks)
        raise UserError(f"{path} is not a readable safetensors file ({e})") from None


def _read_torch(path: Path):
    """``torch.load(weights_only=True)`` of a zip (current) or pickle (legacy) checkpoint."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04":
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path} is a truncated or corrupt torch checkpoint: its zip directory is missing")
    elif magic[:1] != b"\x80":
        raise UserError(f"{path} is not a weights file: it is neither safetensors (by its name) nor a torch "
                        f"checkpoint (a zip or a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()
        if any("GLOBAL" in line for line in reason):
            reason = next(line for line in reason if "GLOBAL" in line)[:200]
            raise UserError(f"{path} is a pickle that holds more than weights ({reason}); it was not loaded and "
                            f"none of its code ran. If you trust its source, load it yourself and save the "
                            f"state_dict with safetensors") from None
        raise UserError(f"{path} is a corrupt torch checkpoint ({reason[-1][:200] if reason else 'unpickling'})") \
            from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{path} is a truncated or corrupt torch checkpoint "
                        f"({(str(e).splitlines() or [type(e).__name__])[0][:200]})") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """{name: tensor} from a ``.safetensors`` file or a ``.bin``/``.pt`` checkpoint (open_clip's conventions:
    a ``state_dict`` entry, a ``module.`` prefix from DistributedDataParallel)."""
    path = Path(path)
    state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path} holds no weights: expected a mapping of names to tensors")
    odd = [str(k)[:100] for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if odd:
        raise UserError(f"{path} holds entries that are not named tensors: {list_names(odd)}")
    if next(iter(state)).startswith("module."):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _all_finite(t: torch.Tensor) -> bool:
    # A finite sum proves every element finite (NaN and inf propagate through it) at ~1% of isfinite's cost;
    # a sum that overflowed is settled element by element.
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_finite(state: dict[str, torch.Tensor], where: str | os.PathLike) -> None:
    """Refuse weights holding NaN or inf: a model computed from them answers at chance, silently."""
    bad = [k for k, t in state.items() if t.is_floating_point() and not _all_finite(t)]
    if not bad:
        return
    first = state[bad[0]]
    count = int((~torch.isfinite(first)).sum())
    others = f" and {len(bad) - 1} other tensor{'s' if len(bad) > 2 else ''}" if len(bad) > 1 else ""
    raise UserError(f"{where} holds non-finite values in {bad[0]} ({count:,} of {first.numel():,}){others}; "
                    f"to load it anyway pass allow_nonfinite=True (python -m eval: --allow-nonfinite)")


def check_fit(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str | os.PathLike,
              optional_prefix: str | None = None) -> None:
    """Refuse ``state`` unless its names and shapes are those of ``expected`` (a model's ``state_dict()``).

    Names under ``optional_prefix`` may be missing (a towers-only file for a model with fusion blocks)."""
    mismatched = [f"size mismatch for {k}: file {format_shape(t.shape)}, model {format_shape(expected[k].shape)}"
                  for k, t in state.items() if k in expected and t.shape != expected[k].shape]
    missing = [k for k in expected if k not in state and not (optional_prefix and k.startswith(optional_prefix))]
    unexpected = [k for k in state if k not in expected]
    parts = mismatched[:LISTED] + ([f"(and {len(mismatched) - LISTED} more size mismatches)"]
                                   if len(mismatched) > LISTED else [])
    parts += [f"missing keys: {list_names(missing)}"] if missing else []
    parts += [f"unexpected keys: {list_names(unexpected)}"] if unexpected else []
    if parts:
        raise UserError(f"{where} does not fit the model: {'; '.join(parts)}")
