"""The loader's stages, in the order one slot (one worker of one rank) runs them; ``loader`` joins them.

Each stage is configured by the ``StreamSpec`` and holds only the state it owns. Every random choice is
seeded by what it is about, never by timing: the shard choice by (seed, epoch, slot), the shuffle buffer by
(seed, epoch, slot), a sample's augmentation and caption by (seed, epoch, key). The slot's position (epoch,
batch index) belongs to ``Batching``, which also replays the consumed part of an epoch on resume.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import zlib
from collections import Counter
from typing import Callable, Iterator, NamedTuple

import torch
from PIL import Image

from ..errors import UserError
from .images import to_rgb
from .limits import ImageTooLarge, Limits, open_image
from .negatives import VOCABULARY, perturb
from .stream_spec import StreamSpec
from .tar import IMAGE_EXTS, ShardError, shard_samples

TEXT_EXTS = ("txt",)
# Why data was skipped: per sample, and per shard (a broken shard counts once per pass, however it fails)
SAMPLE_FAULTS = ("corrupt_image", "missing_caption", "missing_image", "bad_tar_entry", "too_large",
                 "caption_too_large", "file_too_large")
SHARD_FAULTS = ("truncated_shard", "corrupt_shard", "unreadable_shard")


def seed_of(*parts) -> int:
    return zlib.crc32(" ".join(map(str, parts)).encode())


# ---------------------------------------------------------------- shards for this slot

def slot_of(rank: int, world_size: int, worker_offset: int) -> tuple[int, int]:
    """This worker's slot and the number of slots (every worker of every rank)."""
    info = torch.utils.data.get_worker_info()
    wid, nw = (info.id, info.num_workers) if info else (0, 1)
    local = (wid + worker_offset) % nw  # rotated on resume so the DataLoader's round-robin order continues
    return rank * nw + local, world_size * nw


def slot_shards(spec: StreamSpec, epoch: int, slot: int, nslots: int) -> Iterator[str]:
    """This slot's shards in an epoch: its slice of a seeded shuffle, or endless weighted draws."""
    if spec.resampled:
        rng = random.Random(seed_of(spec.seed, "resample", epoch, slot))
        cum_weights = list(itertools.accumulate(spec.draw_weights))
        return (rng.choices(spec.shards, cum_weights=cum_weights)[0] for _ in itertools.count())
    order = list(spec.shards)
    random.Random(seed_of(spec.seed, "shards", epoch)).shuffle(order)
    return iter(order[slot::nslots])


# ---------------------------------------------------------------- samples

def read_samples(shards: Iterator[str], limits: Limits, skipped: Counter, max_empty: int | None) -> Iterator[dict]:
    """The samples of each shard in turn, each with its shard's draw number (``__draw__``); a broken shard
    is counted (by reason) and the stream goes on. ``max_empty``: for endless draws, how many shards in a
    row may hold no sample before the stream stops with an error (None: the shards are finite)."""
    empty_in_a_row = 0
    for draw, url in enumerate(shards):
        found = False
        try:
            for sample in shard_samples(url, lambda name: skipped.update(["bad_tar_entry"]), limits):
                found = True
                yield {**sample, "__draw__": draw}
        except ShardError as exn:  # once per pass; the stream goes on
            skipped[exn.reason] += 1
        empty_in_a_row = 0 if found else empty_in_a_row + 1
        if max_empty is not None and empty_in_a_row > max_empty:
            raise UserError(f"{empty_in_a_row} shards drawn in a row held no sample (skipped: {dict(skipped)}); "
                            f"check the shards of data.train")


# ---------------------------------------------------------------- shuffle

def shuffled(samples: Iterator[dict], buffer: int, rng: random.Random) -> Iterator[dict]:
    """The samples through a shuffle buffer of ``buffer`` (≤ 1: in order), drained shuffled at the end."""
    if buffer <= 1:
        yield from samples
        return
    buf: list[dict] = []
    for s in samples:
        buf.append(s)
        if len(buf) >= buffer:
            yield buf.pop(rng.randrange(len(buf)))
    rng.shuffle(buf)
    yield from buf


# ---------------------------------------------------------------- decode

def decode(sample: dict, limits: Limits, decode_size: int, skipped: Counter) -> tuple[Image.Image, list[str]] | None:
    """The sample's RGB image and caption lines, or None with the reason counted in ``skipped``."""
    if "__error__" in sample:
        skipped[sample["__error__"]] += 1
        return None
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        skipped["missing_image"] += 1
        return None
    text = next((sample[e] for e in TEXT_EXTS if e in sample), None)
    if text is not None and len(text) > limits.max_caption_bytes:
        skipped["caption_too_large"] += 1
        return None
    lines = [ln.strip() for ln in text.decode("utf-8", "replace").splitlines()] if text else []
    lines = [ln for ln in lines if ln]
    if not lines:
        skipped["missing_caption"] += 1
        return None
    try:
        img = open_image(sample[ext], limits.max_image_pixels)  # the header only, so far
        if decode_size and img.format == "JPEG":
            # libjpeg's DCT scaling: decode at 1/2, 1/4 or 1/8 size while both sides stay ≥ decode_size
            img.draft("RGB", (decode_size, decode_size))
        img = to_rgb(img)  # forces the full decode, so truncated data fails here; 16-bit scaled
    except ImageTooLarge:
        skipped["too_large"] += 1
        return None
    except Exception:
        skipped["corrupt_image"] += 1
        return None
    return img, lines


# ---------------------------------------------------------------- transform

class Example(NamedTuple):
    image: torch.Tensor                                  # [3, H, W]
    caption: str
    views: tuple[torch.Tensor, torch.Tensor] | None      # SLIP's two augmented views, when asked for
    key: str
    positive_id: int                                     # 0 unless ``ids_from``
    negatives: tuple[str, ...]                           # hard-negative captions from the shards (NegCLIP)
    seed: int                                            # the sample's seed: the rules' negatives are drawn from it


class Examples:
    """Decoded samples → examples: augmentation and caption choice seeded by (seed, epoch, sample id)."""

    def __init__(self, spec: StreamSpec):
        self.spec = spec
        self.shard_index = {url: i for i, url in enumerate(spec.shards)}

    def __call__(self, sample: dict, img: Image.Image, lines: list[str], epoch: int) -> Example:
        spec = self.spec
        # keys may repeat across sources; the shard's index (not its path) keeps a moved dataset identical
        sample_id = f"{self.shard_index[sample['__url__']]}/{sample['__key__']}"
        # a shard drawn twice in one virtual epoch gives its samples new augmentations the second time
        seed_id = f"{sample_id}@{sample['__draw__']}" if spec.resampled else sample_id
        s = seed_of(spec.seed, epoch, seed_id)
        caption = lines[0] if spec.caption == "first" else random.Random(s).choice(lines)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed would also queue a lazy seed for every other
            # backend (CUDA, XPU, MTIA), each recording a stack trace — 0.6 ms per sample, most of decoding
            torch.default_generator.manual_seed(s)
            image = spec.transform(img)
            # Two more augmented views when the objective asks for them (SLIP's SimCLR term), same seed stream
            views = (spec.view_transform(img), spec.view_transform(img)) if spec.view_transform is not None else None
        negatives = shard_negatives(sample, lines, spec.negatives_per_sample, random.Random(seed_of(s, "negatives"))) \
            if spec.negatives == "shards" else ()
        return Example(image, caption, views, sample["__key__"], positive_id(sample, sample_id, spec.ids_from),
                       negatives, s)


def positive_id(sample: dict, sample_id: str, ids_from: str) -> int:
    """A 64-bit id of the sample's ``ids_from`` field in ``key.json`` (e.g. the source image path):
    samples that share it are positives of each other. A sample without the field is its own group."""
    if not ids_from:
        return 0
    try:
        value = json.loads(sample["json"]).get(ids_from) if "json" in sample else None
    except (ValueError, AttributeError):
        value = None
    text = f"{ids_from}={value}" if value is not None else f"sample={sample_id}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def shard_negatives(sample: dict, lines: list[str], k: int, rng: random.Random) -> tuple[str, ...]:
    """Up to ``k`` of the sample's hard-negative captions, drawn by ``rng`` (NegCLIP draws one per epoch): the
    lines of its ``neg.txt`` field and the ``"negatives"`` list of its ``key.json``, less any of its own captions."""
    found = [ln.strip() for ln in sample["neg.txt"].decode("utf-8", "replace").splitlines()] \
        if "neg.txt" in sample else []
    if "json" in sample:
        try:
            listed = json.loads(sample["json"]).get("negatives", [])
        except (ValueError, AttributeError):
            listed = []  # a key.json that is not an object has no negatives, as it has no ids (positive_id)
        if not (isinstance(listed, list) and all(isinstance(n, str) for n in listed)):
            raise UserError(f"sample {sample['__key__']} of {sample['__url__']}: key.json \"negatives\" must be a "
                            f"list of caption strings; fix the shard or set data.negatives=rules")
        found += [n.strip() for n in listed]
    own = set(lines)
    pool = list(dict.fromkeys(n for n in found if n and n not in own))
    return tuple(rng.sample(pool, min(k, len(pool))))


def rule_negatives(examples: list[Example], k: int) -> list[tuple[str, ...]]:
    """Up to ``k`` negatives of each example's caption made by the rules (``negatives.perturb``), with
    replacements drawn from the batch's own words, so a negative names nothing the data never shows."""
    vocabulary = VOCABULARY.found_in([e.caption for e in examples])
    return [tuple(n.text for n in perturb(e.caption, k, random.Random(seed_of(e.seed, "rules")), vocabulary))
            for e in examples]


# ---------------------------------------------------------------- batch

class Batching:
    """Examples → batches; owns the slot's position: (epoch, batches made in it), what the checkpoint records.

    Resumed at (epoch, index), the epoch is read and decoded again from its start — so the shuffle buffer and
    the shards stand where they stood — and its first ``index × batch_size`` decoded samples, consumed before
    the stop, are dropped (``replayed``) instead of transformed."""

    def __init__(self, spec: StreamSpec, epoch: int, index: int):
        if spec.epoch_batches and index >= spec.epoch_batches:  # stopped right at a virtual epoch's end
            epoch, index = epoch + 1, 0
        self.batch_size, self.epoch_batches, self.resampled = spec.batch_size, spec.epoch_batches, spec.resampled
        self.epoch, self.index = epoch, index
        self.to_skip = index * spec.batch_size
        self.items: list[Example] = []
        self.drawn = 0  # samples drawn since the last full batch

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.index

    @property
    def epoch_ended(self) -> bool:
        """Whether a virtual epoch (resampled) is complete: a fixed number of batches, not the end of shards."""
        return bool(self.epoch_batches) and self.index == self.epoch_batches

    def drew(self, skipped: Counter) -> None:
        """Counts a sample drawn: endless draws that never fill a batch stop with an error."""
        self.drawn += 1
        if self.resampled and self.drawn > 100 * self.batch_size:
            raise UserError(f"{self.drawn} samples drawn without a full batch of {self.batch_size} "
                            f"(skipped: {dict(skipped)}); check the shards of data.train")

    def replayed(self, skipped: Counter) -> bool:
        """Whether this decoded sample was consumed before the resume, and so is dropped."""
        if not self.to_skip:
            return False
        self.to_skip -= 1
        if self.to_skip == 0:
            skipped.clear()  # what was skipped over is already in the checkpoint's counts
        return True

    def add(self, example: Example) -> list[Example] | None:
        """The examples of a full batch, once ``example`` completes one."""
        self.items.append(example)
        if len(self.items) < self.batch_size:
            return None
        self.index += 1
        self.drawn = 0
        full, self.items = self.items, []
        return full

    def rest(self) -> list[Example] | None:
        """The last partial batch of a pass, counted as a batch (evaluation keeps it)."""
        if not self.items:
            return None
        self.index += 1
        rest, self.items = self.items, []
        return rest

    def next_epoch(self) -> None:
        """Training drops the partial batch at the end of each pass: every batch is full."""
        self.epoch, self.index, self.to_skip = self.epoch + 1, 0, 0
        self.items, self.drawn = [], 0


def collate(examples: list[Example], tokenizer: Callable, trim_text: bool, ids_from: str, negatives: str = "",
            negatives_per_sample: int = 1) -> dict:
    """``{"image": [B,3,H,W], "text": [B,L], "key": [B]}``, with ``sample_id`` [B] when ``ids_from`` is set,
    ``image_views`` [2,B,3,H,W] when the examples have views, and with ``negatives`` ("shards" or "rules")
    ``negatives`` [B,K,L] tokens and ``negatives_mask`` [B,K] (which are captions), K = ``negatives_per_sample``."""
    images, captions, views, keys, ids, shard_negs, _ = zip(*examples)
    text = tokenizer(list(captions))
    batch = {"image": torch.stack(images), "text": trim_padding(text) if trim_text else text, "key": list(keys)}
    if ids_from:
        batch["sample_id"] = torch.tensor(ids, dtype=torch.long)
    if views[0] is not None:
        batch["image_views"] = torch.stack([torch.stack([v[i] for v in views]) for i in (0, 1)])  # [2,B,...]
    if negatives:
        negs = shard_negs if negatives == "shards" else rule_negatives(examples, negatives_per_sample)
        batch.update(negative_tokens(negs, negatives_per_sample, tokenizer, text.shape[1], trim_text))
    return batch


def negative_tokens(negatives: list[tuple[str, ...]], k: int, tokenizer: Callable, length: int,
                    trim_text: bool) -> dict:
    """Each sample's up to ``k`` negative captions → ``negatives`` [B,k,L] (zero rows where it has fewer) and
    ``negatives_mask`` [B,k]."""
    mask = torch.tensor([[j < len(n) for j in range(k)] for n in negatives], dtype=torch.bool)
    tokens = torch.zeros(len(negatives) * k, length, dtype=torch.long)
    texts = [t for n in negatives for t in n]
    if texts:
        tokens[mask.flatten()] = tokenizer(texts).to(torch.long)
    if trim_text:
        tokens = trim_padding(tokens)
    return {"negatives": tokens.view(len(negatives), k, -1), "negatives_mask": mask}


def trim_padding(tokens: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Token rows cut after the batch's longest caption (pad id 0), rounded up to a multiple of 8 so
    that few distinct shapes occur (compiled graphs, matmul tiles)."""
    used = tokens.ne(0).any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    return tokens[:, :min(tokens.shape[1], -(-length // multiple) * multiple)]
