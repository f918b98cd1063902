"""``python -m data_prep shards``: image–caption pairs in any supported format → clean webdataset shards.

Records come from a source (``data_prep.sources``) in a fixed order; worker processes clean and filter the
captions and check, resize and re-encode the images (``data_prep.process``); the main process drops exact
duplicates and writes shards of exactly ``shard_size`` samples (the last one fewer), each ``key.jpg``,
``key.txt`` (captions one per line) and ``key.json`` (id, source, original size, content hash).

Resuming: after each shard, ``_build/NNNNNN.json`` records where in the input it ended, what was skipped and
the hashes seen, so a killed build run again with the same command continues after its last whole shard and
gives byte for byte the output of an uninterrupted one. At the end come ``manifest.json`` (counts per shard,
totals, options — the trainer reads it for epoch lengths) and ``report.md`` with ``report.png``.
"""

from __future__ import annotations

import json
import re
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from mmcontrast.errors import UserError

from .process import ProcessOptions, filter_captions, process_image
from .report import write_report
from .sources import Record, SourceOptions, open_source
from .writer import MANIFEST, write_json, write_shard

BUILD = "_build"       # resume state, one file per finished shard
# The temporary names a build writes into --out (write_shard and write_json add ".tmp" to NNNNNN.tar and the
# manifest): the only ones removed on resume; any other *.tmp there is the user's.
OWN_TMP = re.compile(r"[0-9]{6}\.tar\.tmp|" + re.escape(MANIFEST + ".tmp"))
MAX_EXAMPLES = 5       # sources named per skip reason in the report


def process_pair(task: tuple[str | bytes, list[str]], options: ProcessOptions) -> dict:
    """A worker's job: captions first (cheap, and a failing caption spares decoding), then the image."""
    image, captions = task
    captions, reason = filter_captions(captions, options)
    if reason:
        return {"skip": reason}
    out = process_image(image, options)
    out["captions"] = captions
    return out


@dataclass
class Span:
    """What one shard holds and the records read since the previous shard: the resume state's unit."""
    name: str | None = None
    bytes: int = 0
    next_record: int = 0
    cursor: list | None = None  # the source's cursor after its last record read (seekable sources only)
    skipped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    hashes: list = field(default_factory=list)
    short_side: Counter = field(default_factory=Counter)
    aspect: Counter = field(default_factory=Counter)
    caption_words: Counter = field(default_factory=Counter)

    @property
    def count(self) -> int:  # samples in the shard: one hash each
        return len(self.hashes)

    @property
    def captions(self) -> int:
        return sum(self.caption_words.values())

    def skip(self, reason: str, source: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples.setdefault(reason, [])) < MAX_EXAMPLES:
            self.examples[reason].append(source)

    def to_json(self) -> dict:
        return {f.name: dict(v) if isinstance(v := getattr(self, f.name), Counter) else v for f in fields(self)}

    @classmethod
    def load(cls, path: Path) -> "Span":
        d = json.loads(path.read_text())
        counters = {k: Counter({(float(x) if k == "aspect" else int(x)): n for x, n in d[k].items()})
                    for k in ("short_side", "aspect", "caption_words")}
        return cls(**{**d, **counters, "skipped": Counter(d["skipped"])})


def _ordered_outcomes(records: Iterator[Record], options: ProcessOptions, workers: int,
                      block: int = 256) -> Iterator[tuple[Record, dict]]:
    """(record, outcome) in input order; at most a few blocks in flight, so memory stays bounded."""
    work = partial(process_pair, options=options)

    def chunks():
        chunk = []
        for r in records:
            chunk.append(r)
            if len(chunk) == block:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def merge(chunk, results):
        results = iter(results)
        for r in chunk:
            yield r, ({"skip": r.problem} if r.problem else next(results))

    if workers <= 0:
        for chunk in chunks():
            yield from merge(chunk, [work((r.image, r.captions)) for r in chunk if not r.problem])
        return
    with Pool(workers) as pool:
        pending: deque = deque()
        for chunk in chunks():
            tasks = [(r.image, r.captions) for r in chunk if not r.problem]
            pending.append((chunk, pool.map_async(work, tasks, chunksize=8)))
            if len(pending) > 2:
                yield from merge(pending[0][0], pending.popleft()[1].get())
        while pending:
            yield from merge(pending[0][0], pending.popleft()[1].get())


def _resume(out: Path, signature: dict) -> list[Span]:
    """The finished spans of an earlier run of the same build (empty for a new one)."""
    build = out / BUILD
    saved = build / "signature.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        if old != signature:
            changed = []
            for k, new in signature.items():
                before = old.get(k)
                if isinstance(new, dict) and isinstance(before, dict):
                    changed += [f"{sub}: {before.get(sub)!r} then, {v!r} now" for sub, v in new.items()
                                if before.get(sub) != v]
                elif before != new:
                    changed.append(f"{k}: {before!r} then, {new!r} now")
            raise UserError(f"{out} holds a build with other inputs or options ({'; '.join(changed)}); give another "
                            f"--out, or delete {out} to start over")
    elif out.is_dir() and (any(out.glob("*.tar")) or (out / MANIFEST).is_file()):
        raise UserError(f"{out} already holds shards not made by this build; give a new or empty --out")
    build.mkdir(parents=True, exist_ok=True)
    write_json(saved, signature)
    for tmp in out.iterdir():  # a shard or manifest being written when the run was killed
        if OWN_TMP.fullmatch(tmp.name) and (tmp.is_symlink() or tmp.is_file()):
            tmp.unlink()  # a link only: the file it names is not the build's, and is never written through
    spans = []
    for n in range(len(list(build.glob("[0-9]*.json")))):
        path = build / f"{n:06d}.json"
        if not path.is_file():
            break
        span = Span.load(path)
        if span.name and (not (out / span.name).is_file() or (out / span.name).stat().st_size != span.bytes):
            break  # the shard was removed or changed since: redo from here
        spans.append(span)
    for stale in build.glob("[0-9]*.json"):
        if int(stale.stem) >= len(spans):
            stale.unlink()
    return spans


def build_shards(input_path: str | Path, out: str | Path, *, format: str = "auto",
                 source_options: SourceOptions | None = None, options: ProcessOptions | None = None,
                 shard_size: int = 1000, workers: int = 2, progress: bool = True) -> dict:
    """Build (or finish building) shards of ``input_path`` in ``out``; returns the manifest."""
    options, source_options = options or ProcessOptions(), source_options or SourceOptions()
    if shard_size < 1:
        raise UserError(f"shard_size must be ≥ 1, got {shard_size}")
    source = open_source(input_path, format, source_options)
    out = Path(out)
    if Path(input_path).is_dir() and out.resolve() == Path(input_path).resolve():
        raise UserError(f"--out {out} is the input folder: write the shards elsewhere, not the input folder")
    signature = {"input": str(Path(input_path).resolve()), "format": source.format, "records": source.total,
                 "source_options": asdict(source_options), "options": options.as_dict(), "shard_size": shard_size}
    spans = _resume(out, signature)
    if (out / MANIFEST).is_file():  # written last: the build was complete...
        try:
            manifest = json.loads((out / MANIFEST).read_bytes())
            done = bool(spans) and spans[-1].next_record == manifest["records"]
        except (ValueError, UnicodeDecodeError, TypeError, KeyError):  # damaged since: written again below
            done = False
        if done:
            return manifest
        (out / MANIFEST).unlink()  # ...but a shard was removed or changed since: rebuild from there
    start, cursor = (spans[-1].next_record, spans[-1].cursor) if spans else (0, None)
    seen = {h for s in spans for h in s.hashes}
    written = sum(s.count for s in spans)
    span, samples, index = Span(), [], start

    def finish_span() -> None:
        nonlocal span, samples
        if samples:
            span.name = f"{len([s for s in spans if s.name]):06d}.tar"
            write_shard(out / span.name, samples)
            span.bytes = (out / span.name).stat().st_size
        span.next_record, span.cursor = index, cursor
        write_json(out / BUILD / f"{len(spans):06d}.json", span.to_json())
        spans.append(span)
        span, samples = Span(), []

    bar = tqdm(total=source.total, initial=start, desc="shards", unit="img", disable=not progress)
    records = source.records(start, cursor) if cursor else source.records(start)
    for record, outcome in _ordered_outcomes(records, options, workers):
        index, cursor = index + 1, record.cursor
        bar.update()
        if "skip" in outcome:
            span.skip(outcome["skip"], record.source)
            continue
        if options.dedup and outcome["hash"] in seen:
            span.skip("duplicate", record.source)
            continue
        seen.add(outcome["hash"])
        span.hashes.append(outcome["hash"])
        w, h = outcome["size"]
        span.short_side[min(w, h)] += 1
        span.aspect[round(max(w, h) / min(w, h), 1)] += 1
        span.caption_words.update(len(c.split()) for c in outcome["captions"])
        meta = {"id": record.id, "source": record.source, "original_size": [w, h], "blake2b": outcome["hash"]}
        samples.append({"__key__": f"{written:09d}", "jpg": outcome["jpg"], "txt": "\n".join(outcome["captions"]),
                        "json": json.dumps(meta, ensure_ascii=False)})
        written += 1
        if len(samples) == shard_size:
            finish_span()
    bar.close()
    if samples or span.skipped or not spans:
        finish_span()
    return _finish(out, spans, signature, source.total if source.total is not None else index)


def _finish(out: Path, spans: list[Span], signature: dict, records: int) -> dict:
    skipped = sum((s.skipped for s in spans), Counter())
    examples: dict = {}
    for s in spans:
        for reason, sources in s.examples.items():
            examples.setdefault(reason, [])
            examples[reason].extend(sources[:MAX_EXAMPLES - len(examples[reason])])
    shards = [{"name": s.name, "count": s.count} for s in spans if s.name]
    manifest = {"shards": shards, "total": sum(s["count"] for s in shards),
                "captions": sum(s.captions for s in spans), "records": records,
                "skipped": dict(sorted(skipped.items())), "bytes": sum(s.bytes for s in spans),
                "source": {k: signature[k] for k in ("input", "format", "source_options")},
                "options": {**signature["options"], "shard_size": signature["shard_size"]}}
    stats = {k: sum((getattr(s, k) for s in spans), Counter()) for k in ("short_side", "aspect", "caption_words")}
    write_report(out, manifest, stats, examples)
    write_json(out / MANIFEST, manifest)
    return manifest
