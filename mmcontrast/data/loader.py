"""The webdataset pipeline: shards → batches, split by node and worker, deterministic and resumable.

```
shard list ─► shuffle (seed, epoch) ─► this rank's and worker's slice ─► tar → samples
  ─► shuffle buffer ─► decode (bad samples counted by reason, skipped) ─► transform + tokenize
  ─► batch {"image": [B,3,H,W], "text": [B,L], "key": [B]}
```
Resampled (``resampled=True``): instead of a slice, every worker of every rank draws shards with
replacement — from several sources with sampling weights — and an epoch is a "virtual epoch" of a
fixed number of batches (webdataset's ``ResampledShards``; OpenCLIP's ``--dataset-resampled``).

Every random choice is a function of (seed, epoch, slot) or of (seed, epoch, key): the stream of a
slot (one worker of one rank) never depends on timing, so a run resumed from a recorded position
sees exactly the batches it would have seen. The loader is not passed through
``accelerator.prepare`` (which would funnel or double-split it); ranks split shards here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import zlib
from collections import Counter
from typing import Callable, Iterator

import torch
from PIL import Image

from ..errors import UserError
from .images import to_rgb
from .limits import ImageTooLarge, Limits, open_image
from .tar import IMAGE_EXTS, ShardError, shard_samples
from .urls import count_samples, expand_sources
from .worker_signals import leave_stop_signals_to_parent

TEXT_EXTS = ("txt",)
# Why data was skipped: per sample, and per shard (a broken shard counts once per pass, however it fails)
SAMPLE_FAULTS = ("corrupt_image", "missing_caption", "missing_image", "bad_tar_entry", "too_large",
                 "caption_too_large", "file_too_large")
SHARD_FAULTS = ("truncated_shard", "corrupt_shard", "unreadable_shard")


def _seed(*parts) -> int:
    return zlib.crc32(" ".join(map(str, parts)).encode())


class ShardStream(torch.utils.data.IterableDataset):
    """Batches for one rank; inside a DataLoader each worker takes its own slice of shards."""

    def __init__(self, urls: list[str], transform: Callable, tokenizer: Callable, batch_size: int,
                 seed: int, shuffle_buffer: int, rank: int, world_size: int, repeat: bool,
                 caption: str, positions: dict[int, tuple[int, int]], worker_offset: int,
                 view_transform: Callable | None = None, ids_from: str = "",
                 draw_weights: list[float] | None = None, epoch_batches: int = 0, trim_text: bool = False,
                 decode_size: int = 0, limits: Limits = Limits()):
        super().__init__()
        self.limits = limits
        self.trim_text, self.decode_size = trim_text, decode_size
        # resampling: cumulative per-shard probabilities, and each slot's batches per virtual epoch
        self.cum_weights = list(itertools.accumulate(draw_weights)) if draw_weights else None
        self.epoch_batches = epoch_batches
        self.view_transform, self.ids_from = view_transform, ids_from
        self.urls, self.transform, self.tokenizer = urls, transform, tokenizer
        self._shard_index = {url: i for i, url in enumerate(urls)}
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer
        self.rank, self.world_size, self.repeat, self.caption = rank, world_size, repeat, caption
        self.positions, self.worker_offset = positions, worker_offset

    def _slot(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        local = (wid + self.worker_offset) % nw  # rotated on resume so round-robin order continues
        return self.rank * nw + local, self.world_size * nw

    def _samples(self, shards: Iterator[str], skipped: Counter) -> Iterator[dict]:
        empty_in_a_row = 0
        for draw, url in enumerate(shards):
            found = False
            try:
                for sample in shard_samples(url, lambda name: skipped.update(["bad_tar_entry"]), self.limits):
                    found = True
                    yield {**sample, "__draw__": draw}
            except ShardError as exn:  # once per pass; the stream goes on
                skipped[exn.reason] += 1
            empty_in_a_row = 0 if found else empty_in_a_row + 1
            if self.cum_weights and empty_in_a_row > 2 * len(self.urls) + 10:  # endless draws, nothing to read
                raise UserError(f"{empty_in_a_row} shards drawn in a row held no sample (skipped: {dict(skipped)}); "
                                f"check the shards of data.train")

    def _shuffled(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        buf: list[dict] = []
        for s in samples:
            buf.append(s)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def _decode(self, sample: dict, skipped: Counter) -> tuple[Image.Image, list[str]] | None:
        if "__error__" in sample:
            skipped[sample["__error__"]] += 1
            return None
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            skipped["missing_image"] += 1
            return None
        text = next((sample[e] for e in TEXT_EXTS if e in sample), None)
        if text is not None and len(text) > self.limits.max_caption_bytes:
            skipped["caption_too_large"] += 1
            return None
        lines = [ln.strip() for ln in text.decode("utf-8", "replace").splitlines()] if text else []
        lines = [ln for ln in lines if ln]
        if not lines:
            skipped["missing_caption"] += 1
            return None
        try:
            img = open_image(sample[ext], self.limits.max_image_pixels)  # the header only, so far
            if self.decode_size and img.format == "JPEG":
                # libjpeg's DCT scaling: decode at 1/2, 1/4 or 1/8 size while both sides stay ≥ decode_size
                img.draft("RGB", (self.decode_size, self.decode_size))
            img = to_rgb(img)  # forces the full decode, so truncated data fails here; 16-bit scaled
        except ImageTooLarge:
            skipped["too_large"] += 1
            return None
        except Exception:
            skipped["corrupt_image"] += 1
            return None
        return img, lines

    def _prepare(self, img: Image.Image, lines: list[str], sample_id: str, epoch: int):
        # Augmentation and caption choice are seeded by the sample itself: reproducible on resume.
        s = _seed(self.seed, epoch, sample_id)
        caption = lines[0] if self.caption == "first" else random.Random(s).choice(lines)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed would also queue a lazy seed for every other
            # backend (CUDA, XPU, MTIA), each recording a stack trace — 0.6 ms per sample, most of decoding
            torch.default_generator.manual_seed(s)
            image = self.transform(img)
            # Two more augmented views when the objective asks for them (SLIP's SimCLR term), same seed stream
            views = (self.view_transform(img), self.view_transform(img)) if self.view_transform else None
        return image, caption, views

    def _positive_id(self, sample: dict, sample_id: str) -> int:
        """A 64-bit id of the sample's ``ids_from`` field in ``key.json`` (e.g. the source image path):
        samples that share it are positives of each other. A sample without the field is its own group."""
        if not self.ids_from:
            return 0
        try:
            value = json.loads(sample["json"]).get(self.ids_from) if "json" in sample else None
        except (ValueError, AttributeError):
            value = None
        text = f"{self.ids_from}={value}" if value is not None else f"sample={sample_id}"
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)

    def _batch(self, items: list) -> dict:
        images, captions, views, keys, ids = zip(*items)
        text = self.tokenizer(list(captions))
        if self.trim_text:
            text = trim_padding(text)
        batch = {"image": torch.stack(images), "text": text, "key": list(keys)}
        if self.ids_from:
            batch["sample_id"] = torch.tensor(ids, dtype=torch.long)
        if self.view_transform:
            batch["image_views"] = torch.stack([torch.stack([v[i] for v in views]) for i in (0, 1)])  # [2,b,...]
        return batch

    def _epoch_shards(self, epoch: int, slot: int, nslots: int) -> Iterator[str]:
        """This slot's shards in an epoch: its slice of a seeded shuffle, or endless weighted draws."""
        if self.cum_weights:
            rng = random.Random(_seed(self.seed, "resample", epoch, slot))
            return (rng.choices(self.urls, cum_weights=self.cum_weights)[0] for _ in itertools.count())
        order = list(self.urls)
        random.Random(_seed(self.seed, "shards", epoch)).shuffle(order)
        return iter(order[slot::nslots])

    def __iter__(self):
        slot, nslots = self._slot()
        start_epoch, start_batch = self.positions.get(slot, (0, 0))
        if self.epoch_batches and start_batch >= self.epoch_batches:  # stopped right at a virtual epoch's end
            start_epoch, start_batch = start_epoch + 1, 0
        skipped: Counter = Counter()
        epoch = start_epoch
        while True:
            shards = self._epoch_shards(epoch, slot, nslots)
            rng = random.Random(_seed(self.seed, "samples", epoch, slot))
            to_skip = start_batch * self.batch_size if epoch == start_epoch else 0
            batch_index = start_batch if epoch == start_epoch else 0
            items: list = []
            read_since_batch = 0
            for sample in self._shuffled(self._samples(shards, skipped), rng):
                read_since_batch += 1
                if self.cum_weights and read_since_batch > 100 * self.batch_size:
                    raise UserError(f"{read_since_batch} samples drawn without a full batch of {self.batch_size} "
                                    f"(skipped: {dict(skipped)}); check the shards of data.train")
                decoded = self._decode(sample, skipped)
                if decoded is None:
                    continue
                if to_skip:
                    to_skip -= 1
                    if to_skip == 0:
                        skipped.clear()  # what was skipped over is already in the checkpoint's counts
                    continue
                # keys may repeat across sources; the shard's index (not its path) keeps a moved dataset identical
                sample_id = f"{self._shard_index[sample['__url__']]}/{sample['__key__']}"
                # a shard drawn twice in one virtual epoch gives its samples new augmentations the second time
                seed_id = f"{sample_id}@{sample['__draw__']}" if self.cum_weights else sample_id
                items.append((*self._prepare(*decoded, seed_id, epoch), sample["__key__"],
                              self._positive_id(sample, sample_id)))
                if len(items) == self.batch_size:
                    batch_index += 1
                    read_since_batch = 0
                    yield {**self._batch(items), "pos": (slot, epoch, batch_index), "skipped": dict(skipped)}
                    items = []
                    if self.epoch_batches and batch_index == self.epoch_batches:
                        break  # the end of a virtual epoch
            if not self.repeat:
                if items:  # evaluation keeps the last partial batch
                    batch_index += 1
                    yield {**self._batch(items), "pos": (slot, epoch, batch_index), "skipped": dict(skipped)}
                # the final counts: what broke after the last batch (or in a slot with no batch) counts too
                yield {"pos": (slot, epoch, batch_index), "skipped": dict(skipped)}
                return
            if batch_index == 0:  # a pass that yields nothing would loop forever
                raise UserError(f"one pass over the shards of rank {self.rank} gave no full batch of "
                                f"{self.batch_size} samples (skipped: {dict(skipped)}); check the shards or "
                                f"lower the batch size")
            # Training drops the partial batch at the end of each pass: every batch is full.
            epoch += 1


def decode_size_for(image_size: int, min_crop_scale: float, min_aspect: float = 3 / 4) -> int:
    """The smallest decoded side that loses no resolution: a random resized crop of at least
    ``min_crop_scale`` of the area, aspect ratio down to 3/4, still covers ``image_size`` pixels."""
    return math.ceil(image_size / math.sqrt(min_crop_scale * min_aspect))


def trim_padding(tokens: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Token rows cut after the batch's longest caption (pad id 0), rounded up to a multiple of 8 so
    that few distinct shapes occur (compiled graphs, matmul tiles)."""
    used = tokens.ne(0).any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    return tokens[:, :min(tokens.shape[1], -(-length // multiple) * multiple)]


class Loader:
    """Iterates batches; tracks the consumed position and the skipped-sample counts of all workers."""

    def __init__(self, stream: ShardStream, num_workers: int, pin_memory: bool, consumed: int,
                 skipped: dict[str, int] | None):
        self.stream, self.num_workers, self.pin_memory = stream, num_workers, pin_memory
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
                trim_text: bool = False, decode_size: int = 0, limits: Limits = Limits()) -> Loader:
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
    """
    sources = expand_sources(urls)
    shards = [u for source in sources for u in source]
    workers = max(1, num_workers)
    draw_weights, epoch_batches = None, 0
    if weights and not resampled:
        raise UserError("source weights need resampled shards: set data.resampled=true")
    if resampled:
        draw_weights = _draw_weights(sources, weights)
        epoch_samples = epoch_samples or count_samples(urls) or 0
        if epoch_samples <= 0:
            raise UserError("resampled shards need a virtual epoch length: set data.epoch_samples "
                            "(the sources have no manifest.json to count them)")
        epoch_batches = math.ceil(epoch_samples / (batch_size * world_size * workers))
    elif repeat and len(shards) < world_size * workers:
        raise UserError(f"{len(shards)} shards cannot feed {world_size} process(es) × {workers} worker(s): "
                        f"write more, smaller shards, use fewer data workers or set data.resampled=true")
    state = state or {}
    consumed = int(state.get("consumed", 0))
    positions = {int(k): tuple(v) for k, v in state.get("positions", {}).items()}
    stream = ShardStream(shards, transform, tokenizer, batch_size, seed, shuffle_buffer, rank, world_size,
                         repeat, caption, positions, worker_offset=consumed % workers,
                         view_transform=view_transform, ids_from=ids_from, draw_weights=draw_weights,
                         epoch_batches=epoch_batches, trim_text=trim_text, decode_size=decode_size, limits=limits)
    return Loader(stream, num_workers, pin_memory, consumed, state.get("skipped"))


def _draw_weights(sources: list[list[str]], weights: list[float] | None) -> list[float]:
    """Per-shard draw probabilities: source s gets ``weights[s]``, shared equally by its shards."""
    if not weights:
        return [1.0] * sum(map(len, sources))
    if len(weights) != len(sources):
        raise UserError(f"data.weights has {len(weights)} weight(s) for {len(sources)} source(s) in data.train "
                        f"(sources are separated by '::')")
    if any(w < 0 for w in weights) or not sum(weights) > 0:
        raise UserError(f"data.weights must be ≥ 0 with a positive sum, got {weights}")
    return [w / len(source) for source, w in zip(sources, weights) for _ in source]
