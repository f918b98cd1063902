"""Data: shard URLs and the webdataset loader."""

from .loader import Loader, make_loader
from .urls import count_samples, expand_urls, read_manifest

__all__ = ["Loader", "make_loader", "count_samples", "expand_urls", "read_manifest"]
