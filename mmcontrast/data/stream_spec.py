"""What one rank's stream reads and how it makes batches: the loader's one frozen configuration.

``make_loader`` turns its keywords into a ``StreamSpec`` once (``shard_plan`` resolves the sources and, for
resampled streams, the draw weights and the virtual epoch: webdataset's ``ResampledShards``, OpenCLIP's
``--dataset-resampled``); every stage of ``stages`` reads the fields it needs from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from .limits import Limits
from .urls import count_samples, expand_sources


@dataclass(frozen=True)
class StreamSpec:
    """One rank's stream (the keywords are those of ``make_loader``, which documents them)."""
    shards: tuple[str, ...]     # every source's shards, in order: a sample's id names its shard by index here
    transform: Callable         # PIL image → image tensor [3, H, W]
    tokenizer: Callable         # list of B captions → tokens [B, L]
    batch_size: int             # per rank
    seed: int = 0
    shuffle_buffer: int = 2000  # ≤ 1: no sample shuffle
    rank: int = 0
    world_size: int = 1
    repeat: bool = True         # False: one pass, the last partial batch kept (evaluation)
    caption: str = "random"     # "first": the first line of key.txt, otherwise a seeded random line
    view_transform: Callable | None = None
    ids_from: str = ""
    draw_weights: tuple[float, ...] = ()  # resampled: one draw probability per shard; empty: a slice per slot
    epoch_batches: int = 0      # resampled: each slot's batches per virtual epoch
    trim_text: bool = False
    decode_size: int = 0
    limits: Limits = Limits()
    negatives: str = ""         # hard-negative captions: "" none, "shards" (neg.txt / key.json), "rules" (made)
    negatives_per_sample: int = 1

    @property
    def resampled(self) -> bool:
        return bool(self.draw_weights)


def shard_plan(urls: str | list[str], batch_size: int, world_size: int, workers: int, repeat: bool,
               resampled: bool, weights: list[float] | None,
               epoch_samples: int) -> tuple[tuple[str, ...], tuple[float, ...], int]:
    """The shards, their draw weights and the slots' batches per virtual epoch (both empty/0 unless
    ``resampled``), checked against the ``world_size × workers`` slots that read them."""
    sources = expand_sources(urls)
    shards = tuple(u for source in sources for u in source)
    if weights and not resampled:
        raise UserError("source weights need resampled shards: set data.resampled=true")
    if not resampled:
        if repeat and len(shards) < world_size * workers:
            raise UserError(f"{len(shards)} shards cannot feed {world_size} process(es) × {workers} worker(s): "
                            f"write more, smaller shards, use fewer data workers or set data.resampled=true")
        return shards, (), 0
    draw_weights = _draw_weights(sources, weights)
    epoch_samples = epoch_samples or count_samples(urls) or 0
    if epoch_samples <= 0:
        raise UserError("resampled shards need a virtual epoch length: set data.epoch_samples "
                        "(the sources have no manifest.json to count them)")
    return shards, draw_weights, math.ceil(epoch_samples / (batch_size * world_size * workers))


def _draw_weights(sources: list[list[str]], weights: list[float] | None) -> tuple[float, ...]:
    """Per-shard draw probabilities: source s gets ``weights[s]``, shared equally by its shards."""
    if not weights:
        return (1.0,) * sum(map(len, sources))
    if len(weights) != len(sources):
        raise UserError(f"data.weights has {len(weights)} weight(s) for {len(sources)} source(s) in data.train "
                        f"(sources are separated by '::')")
    if any(w < 0 for w in weights) or not sum(weights) > 0:
        raise UserError(f"data.weights must be ≥ 0 with a positive sum, got {weights}")
    return tuple(w / len(source) for source, w in zip(sources, weights) for _ in source)
