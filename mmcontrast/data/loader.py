"""The webdataset pipeline: shards → batches, split by node and worker, deterministic and resumable.

```
slot_shards   shard list ─► shuffle (seed, epoch) ─► this slot's slice, or weighted draws (seed, epoch, slot)
read_samples    ─► tar → samples
shuffled        ─► shuffle buffer (seed, epoch, slot)
decode          ─► image + caption lines (bad samples counted by reason, skipped)
Examples        ─► transform + caption choice (seed, epoch, key)
Batching        ─► batch {"image": [B,3,H,W], "text": [B,L], "key": [B]}, tokenized by collate (with
                   hard-negative captions when asked for); the slot's position (epoch, batch index)
```
A slot is one worker of one rank. The stages are in ``mmcontrast.data.stages``, configured by one
``StreamSpec``; ``SlotStream`` runs them in each worker, ``Loader`` records every slot's position.
Resampled (``resampled=True``): instead of a slice, every worker of every rank draws shards with
replacement — from several sources with sampling weights — and an epoch is a "virtual epoch" of a
fixed number of batches (webdataset's ``ResampledShards``; OpenCLIP's ``--dataset-resampled``).

Every random choice is a function of (seed, epoch, slot) or of (seed, epoch, key): the stream of a
slot never depends on timing, so a run resumed from a recorded position sees exactly the batches it
would have seen. The loader is not passed through ``accelerator.prepare`` (which would funnel or
double-split it); ranks split shards here.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Callable, Iterator

import torch

from ..errors import UserError
from .limits import Limits
from .negatives import NEGATIVE_SOURCES
from .stages import (SAMPLE_FAULTS, SHARD_FAULTS, Batching, Examples, collate, decode, read_samples, seed_of,
                     shuffled, slot_of, slot_shards, trim_padding)
from .stream_spec import StreamSpec, shard_plan
from .worker_signals import leave_stop_signals_to_parent

# the fault names and trim_padding are the stages'; the trainer and the tests import them from here
__all__ = ["SAMPLE_FAULTS", "SHARD_FAULTS", "Loader", "SlotStream", "StreamSpec", "decode_size_for", "make_loader",
           "trim_padding"]


class SlotStream(torch.utils.data.IterableDataset):
    """Batches for one rank; inside a DataLoader each worker runs the stages for its own slot."""

    def __init__(self, spec: StreamSpec, positions: dict[int, tuple[int, int]], worker_offset: int):
        super().__init__()
        self.spec, self.positions, self.worker_offset = spec, positions, worker_offset

    def __iter__(self) -> Iterator[dict]:
        spec = self.spec
        slot, nslots = slot_of(spec.rank, spec.world_size, self.worker_offset)
        batching = Batching(spec, *self.positions.get(slot, (0, 0)))
        examples, skipped = Examples(spec), Counter()
        max_empty = 2 * len(spec.shards) + 10 if spec.resampled else None  # endless draws, nothing to read
        while True:
            epoch = batching.epoch
            samples = read_samples(slot_shards(spec, epoch, slot, nslots), spec.limits, skipped, max_empty)
            rng = random.Random(seed_of(spec.seed, "samples", epoch, slot))
            for sample in shuffled(samples, spec.shuffle_buffer, rng):
                batching.drew(skipped)
                decoded = decode(sample, spec.limits, spec.decode_size, skipped)
                if decoded is None or batching.replayed(skipped):
                    continue
                full = batching.add(examples(sample, *decoded, epoch))
                if full:
                    yield self._batch(full, slot, batching, skipped)
                    if batching.epoch_ended:
                        break
            if not spec.repeat:
                rest = batching.rest()
                if rest:  # evaluation keeps the last partial batch
                    yield self._batch(rest, slot, batching, skipped)
                # the final counts: what broke after the last batch (or in a slot with no batch) counts too
                yield {"pos": (slot, *batching.position), "skipped": dict(skipped)}
                return
            if batching.index == 0:  # a pass that yields nothing would loop forever
                raise UserError(f"one pass over the shards of rank {spec.rank} gave no full batch of "
                                f"{spec.batch_size} samples (skipped: {dict(skipped)}); check the shards or "
                                f"lower the batch size")
            batching.next_epoch()

    def _batch(self, examples: list, slot: int, batching: Batching, skipped: Counter) -> dict:
        # the position and the counts travel with the batch out of the worker process, to the Loader
        spec = self.spec
        return {**collate(examples, spec.tokenizer, spec.trim_text, spec.ids_from, spec.negatives,
                          spec.negatives_per_sample),
                "pos": (slot, *batching.position), "skipped": dict(skipped)}


def decode_size_for(image_size: int, min_crop_scale: float, min_aspect: float = 3 / 4) -> int:
    """The smallest decoded side that loses no resolution: a random resized crop of at least
    ``min_crop_scale`` of the area, aspect ratio down to 3/4, still covers ``image_size`` pixels."""
    return math.ceil(image_size / math.sqrt(min_crop_scale * min_aspect))


class Loader:
    """Iterates batches; tracks the consumed position and the skipped-sample counts of all workers."""

    def __init__(self, stream: SlotStream, num_workers: int, pin_memory: bool, consumed: int,
                 skipped: dict[str, int] | None):
        self.stream, self.num_workers, self.pin_memory = stream, num_workers, pin_memory
        self.spec = stream.spec
        self.consumed = consumed
        self.positions = dict(stream.positions)
        self._base_skipped = Counter(skipped or {})
        self._worker_skipped: dict[int, dict] = {}

    @property
    def skipped(self) -> dict[str, int]:
        total = Counter(self._base_skipped)
        for counts in self._worker_skipped.values():
            total.update(counts)
        return dict(total)

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "positions": {str(k): list(v) for k, v in self.positions.items()},
                "skipped": self.skipped}

    def __iter__(self) -> Iterator[dict]:
        dl = torch.utils.data.DataLoader(
            self.stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            persistent_workers=False, prefetch_factor=4 if self.num_workers else None,
            worker_init_fn=leave_stop_signals_to_parent)  # the training process handles SIGTERM/SIGINT
        for batch in dl:
            slot, epoch, index = batch.pop("pos")
            self._worker_skipped[slot] = batch.pop("skipped")
            if "image" not in batch:
                continue
            self.positions[slot] = (epoch, index)
            self.consumed += 1
            yield batch


def make_loader(urls: str | list[str], transform: Callable, tokenizer: Callable, batch_size: int, *,
                seed: int = 0, shuffle_buffer: int = 2000, num_workers: int = 0, rank: int = 0,
                world_size: int = 1, repeat: bool = True, caption: str = "random",
                pin_memory: bool = False, state: dict | None = None,
                view_transform: Callable | None = None, ids_from: str = "",
                resampled: bool = False, weights: list[float] | None = None, epoch_samples: int = 0,
                trim_text: bool = False, decode_size: int = 0, limits: Limits = Limits(), negatives: str = "",
                negatives_per_sample: int = 1) -> Loader:
    """A loader over webdataset shards (see the module docstring).

    ``urls``: a shard directory (with ``manifest.json``), a brace pattern, a URL (``pipe:``, ``http(s)://``),
    or several sources joined by ``::`` (or a list).
    ``repeat=True`` streams forever (training; each rank runs as many steps as it is asked);
    ``repeat=False`` makes one pass and keeps the last partial batch (evaluation).
    ``caption``: ``"random"`` picks one line of ``key.txt`` per sample and epoch, ``"first"`` the first.
    ``state``: a ``Loader.state_dict()`` to continue from.
    ``view_transform``: also give each sample two views made by it (``batch["image_views"]``, [2, b, ...]).
    ``ids_from``: a field of ``key.json`` (e.g. ``source``, the image path ``data_prep shards`` records)
    whose equal values make samples positives of each other (``batch["sample_id"]``: several captions of one
    image are then never negatives).
    ``resampled``: every worker of every rank draws shards with replacement; ``weights`` (one per source)
    are the expected shares of each source in the stream (default: every shard equally likely);
    ``epoch_samples``: the virtual epoch, in samples over all ranks (default: the manifests' total). Resuming
    replays at most one virtual epoch of reading, so it also bounds the time a resume takes.
    ``trim_text``: cut each batch's token rows after its longest caption (``trim_padding``) — for models
    whose text features do not change by it (``mmcontrast.model.text_trimmable``).
    ``decode_size``: decode JPEGs at a reduced scale whose sides stay at least this large (``decode_size_for``).
    ``limits``: what one file, caption or image may cost (``mmcontrast.data.limits.Limits``); above, it is skipped.
    ``negatives``: hard-negative captions for NegCLIP, up to ``negatives_per_sample`` per sample
    (``batch["negatives"]`` [B, K, L] tokens, ``batch["negatives_mask"]`` [B, K]): ``"shards"`` draws them from
    each sample's ``neg.txt`` lines and ``key.json`` ``"negatives"`` list, ``"rules"`` makes them from its caption
    (``mmcontrast.data.negatives``, with the batch's words), both seeded by (seed, epoch, sample id); ``""``: none.
    """
    if negatives not in NEGATIVE_SOURCES:
        raise UserError(f"negatives={negatives!r}: choose from {NEGATIVE_SOURCES} ('': none)")
    if negatives_per_sample < 1:
        raise UserError(f"negatives_per_sample={negatives_per_sample}: a sample needs room for at least 1 negative")
    workers = max(1, num_workers)
    shards, draw_weights, epoch_batches = shard_plan(urls, batch_size, world_size, workers, repeat, resampled,
                                                     weights, epoch_samples)
    spec = StreamSpec(shards, transform, tokenizer, batch_size, seed=seed, shuffle_buffer=shuffle_buffer, rank=rank,
                      world_size=world_size, repeat=repeat, caption=caption, view_transform=view_transform,
                      ids_from=ids_from, draw_weights=draw_weights, epoch_batches=epoch_batches,
                      trim_text=trim_text, decode_size=decode_size, limits=limits, negatives=negatives,
                      negatives_per_sample=negatives_per_sample)
    state = state or {}
    consumed = int(state.get("consumed", 0))
    positions = {int(k): tuple(v) for k, v in state.get("positions", {}).items()}
    stream = SlotStream(spec, positions, worker_offset=consumed % workers)
    return Loader(stream, num_workers, pin_memory, consumed, state.get("skipped"))
