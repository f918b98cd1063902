"""Data: shard URLs and the webdataset loader."""

import importlib

from .stream_spec import StreamSpec
from .urls import count_samples, expand_urls, read_manifest

__all__ = ["Loader", "StreamSpec", "make_loader", "count_samples", "expand_urls", "read_manifest"]


def __getattr__(name: str):
    # the loader (and torch with it) only when asked for: the shard tools read tars and annotations without it
    if name in ("Loader", "make_loader"):
        return getattr(importlib.import_module(".loader", __name__), name)
    raise AttributeError(f"module 'mmcontrast.data' has no attribute {name!r}")
