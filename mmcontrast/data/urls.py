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


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a shard directory: ``{"shards": [{"name", "count"}], "total": N, ...}``."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise UserError(f"{directory} has no {MANIFEST}; build shards with `python -m data_prep`")
    return json.loads(path.read_text())


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
