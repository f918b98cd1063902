"""``python -m data_prep check DIR``: read every shard of a shard directory and report what is wrong.

Checks, per shard listed in ``DIR/manifest.json``: the file exists and reads to its end (a truncated or
corrupt tar is reported with where it broke); its sample count equals the manifest's; every sample
has an image (``jpg``/``jpeg``/``png``/``webp``) that decodes completely and a caption (``txt``) with
at least one non-empty line; no key repeats. Shards in the directory that the manifest does not list
are reported too. Nothing is changed; the exit status is 1 when anything is wrong.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from tqdm import tqdm

from mmcontrast.data.limits import ImageTooLarge, Limits, open_image
from mmcontrast.data.tar import IMAGE_EXTS, ShardError, shard_samples
from mmcontrast.data.urls import read_manifest

MAX_EXAMPLES = 5  # problem samples named per shard and reason


def check_shard(path: str, limits: Limits = Limits()) -> dict:
    """{"samples": n, "problems": {reason: count}, "examples": {reason: [key, ...]}, "error": str | None}."""
    problems, examples, keys = Counter(), {}, set()

    def problem(reason: str, key: str) -> None:
        problems[reason] += 1
        examples.setdefault(reason, [])
        if len(examples[reason]) < MAX_EXAMPLES:
            examples[reason].append(key)

    samples, error = 0, None
    try:
        for sample in shard_samples(path, lambda name: problem("duplicate_file", name), limits):
            samples += 1
            key = sample["__key__"]
            if key in keys:
                problem("duplicate_key", key)
            keys.add(key)
            if "__error__" in sample:
                problem(sample["__error__"], key)
                continue
            ext = next((e for e in IMAGE_EXTS if e in sample), None)
            if ext is None:
                problem("missing_image", key)
            else:
                try:
                    with open_image(sample[ext], limits.max_image_pixels) as image:
                        image.load()
                except ImageTooLarge:
                    problem("too_large", key)
                except Exception:  # PIL raises many types for broken files
                    problem("corrupt_image", key)
            caption = sample.get("txt", b"")
            if len(caption) > limits.max_caption_bytes:
                problem("caption_too_large", key)
            elif not any(line.strip() for line in caption.decode("utf-8", errors="replace").splitlines()):
                problem("missing_caption", key)
    except ShardError as e:
        error = "missing" if not Path(path).exists() else f"{e.reason} after {samples} samples: {e}"
    return {"samples": samples, "problems": dict(problems), "examples": examples, "error": error}


def check_dir(root: str | Path, workers: int = 2, progress: bool = True, limits: Limits = Limits()) -> dict:
    """Check every shard the manifest lists: {"shards": {name: result + "expected"}, "unlisted", "ok", totals}."""
    root = Path(root)
    listed = {s["name"]: s["count"] for s in read_manifest(root)["shards"]}
    names = sorted(listed)
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(partial(check_shard, limits=limits), [str(root / n) for n in names]), total=len(names),
                            desc="check", unit="shard", disable=not progress))
    shards = {}
    for name, result in zip(names, results):
        result["expected"] = listed[name]
        shards[name] = result
    unlisted = sorted(p.name for p in root.glob("*.tar") if p.name not in listed)
    problems = Counter()
    for r in shards.values():
        problems.update(r["problems"])
    samples = sum(r["samples"] for r in shards.values())
    ok = (not unlisted and not problems and all(r["error"] is None and r["samples"] == r["expected"]
                                                for r in shards.values()))
    return {"shards": shards, "unlisted": unlisted, "problems": dict(problems), "samples": samples,
            "expected": sum(listed.values()), "ok": ok}


def format_report(report: dict) -> str:
    """One line per shard that has something wrong, then the totals."""
    lines = []
    for name, r in report["shards"].items():
        issues = []
        if r["error"]:
            issues.append(r["error"])
        if r["samples"] != r["expected"]:
            issues.append(f"{r['samples']} samples, manifest says {r['expected']}")
        issues += [f"{reason} {n} (e.g. {', '.join(r['examples'][reason])})" for reason, n in r["problems"].items()]
        if issues:
            lines.append(f"{name}: " + "; ".join(issues))
    for name in report["unlisted"]:
        lines.append(f"{name}: in the directory but not in the manifest")
    totals = ", ".join(f"{reason} {n}" for reason, n in sorted(report["problems"].items())) or "no bad samples"
    verdict = "OK" if report["ok"] else "PROBLEMS FOUND"
    lines.append(f"{verdict}: {len(report['shards'])} shards, {report['samples']} samples read of "
                 f"{report['expected']} listed; {totals}")
    return "\n".join(lines)
