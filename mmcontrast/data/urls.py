"""Shard URLs: brace patterns, ``::``-joined lists, directories with a ``manifest.json``.

Local paths are checked up front, so a typo ends with one line naming the missing shard instead
of a silent empty stream. ``pipe:`` and ``http(s)://`` URLs are passed to webdataset as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import braceexpand

from ..errors import UserError

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 2**20  # about two million shards; a larger file is not one of ours


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a shard directory: ``{"shards": [{"name", "count"}], "total": N, ...}``, its shape checked:
    a manifest of another tool (or a damaged one) stops with what is wrong, never a ``KeyError`` later."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise UserError(f"{directory} has no {MANIFEST}; build shards with `python -m data_prep`")
    expected = ('expected {"shards": [{"name": FILE, "count": N}, ...], "total": N} as `python -m data_prep` '
                'writes; for other shards name them with a brace pattern, e.g. DIR/{000000..000009}.tar')
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise UserError(f"{path} is {path.stat().st_size:,} bytes, not a shard manifest ({expected})")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); {expected}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise UserError(f"{path}: {problem}; {expected}")
    return manifest


def _manifest_problem(manifest) -> str | None:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        return "no list of shards"
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict) or not isinstance(shard.get("name"), str) or not _is_count(shard.get("count")):
            return f"shard {i} is {str(shard)[:80]}, not {{\"name\": FILE, \"count\": N}}"
        if "/" in shard["name"] or "\\" in shard["name"] or shard["name"] in ("", ".", ".."):
            return f"shard {i} names {shard['name'][:80]!r}, not a file in the directory"
    if not _is_count(manifest.get("total")):
        return f"total is {str(manifest.get('total'))[:40]}, not a count of samples"
    return None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def expand_sources(urls: str | list[str]) -> list[list[str]]:
    """The shard URLs of each source (``a::b`` or a list names several); every local shard must exist."""
    items = urls if isinstance(urls, (list, tuple)) else str(urls).split("::")
    sources: list[list[str]] = []
    for item in items:
        item = str(item)
        if not _is_remote(item) and Path(item).is_dir():
            manifest = read_manifest(item)
            sources.append([str(Path(item) / s["name"]) for s in manifest["shards"]])
        else:
            sources.append(list(braceexpand.braceexpand(item)))
    missing = [u for source in sources for u in source if not _is_remote(u) and not Path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"shard not found: {missing[0]}{more}")
    if not any(sources):
        raise UserError(f"no shards in {urls!r}")
    return sources


def expand_urls(urls: str | list[str]) -> list[str]:
    """A flat list of shard URLs; every local shard must exist."""
    return [u for source in expand_sources(urls) for u in source]


def count_samples(urls: str | list[str]) -> int | None:
    """Total samples from the manifests of shard directories, or None when unknown."""
    items = urls if isinstance(urls, (list, tuple)) else str(urls).split("::")
    total = 0
    for item in items:
        if _is_remote(str(item)) or not Path(item).is_dir():
            return None
        total += read_manifest(item)["total"]
    return total
