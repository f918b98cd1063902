"""``python -m data_prep check DIR``: read every shard of a shard directory and report what is wrong.

Checks, per shard listed in ``DIR/manifest.json``: the file exists and reads to its end (a truncated or
corrupt tar is reported with where it broke); its sample count equals the manifest's; every sample
has an image (``jpg``/``jpeg``/``png``/``webp``) that decodes completely and a caption (``txt``) with
at least one non-empty line; no key repeats. Shards in the directory that the manifest does not list
are reported too. Nothing is changed; the exit status is 1 when anything is wrong.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from mmcontrast.data.tar import IMAGE_EXTS, shard_samples
from mmcontrast.errors import UserError

from .writer import MANIFEST

MAX_EXAMPLES = 5  # problem samples named per shard and reason


def check_shard(path: str) -> dict:
    """{"samples": n, "problems": {reason: count}, "examples": {reason: [key, ...]}, "error": str | None}."""
    problems, examples, keys = Counter(), {}, set()

    def problem(reason: str, key: str) -> None:
        problems[reason] += 1
        examples.setdefault(reason, [])
        if len(examples[reason]) < MAX_EXAMPLES:
            examples[reason].append(key)

    samples, error = 0, None
    try:
        for sample in shard_samples(path, on_duplicate=lambda name: problem("duplicate_file", name)):
            samples += 1
            key = sample["__key__"]
            if key in keys:
                problem("duplicate_key", key)
            keys.add(key)
            ext = next((e for e in IMAGE_EXTS if e in sample), None)
            if ext is None:
                problem("missing_image", key)
            else:
                try:
                    with Image.open(io.BytesIO(sample[ext])) as image:
                        image.load()
                except Exception:  # PIL raises many types for broken files
                    problem("corrupt_image", key)
            caption = sample.get("txt", b"").decode("utf-8", errors="replace")
            if not any(line.strip() for line in caption.splitlines()):
                problem("missing_caption", key)
    except FileNotFoundError:
        error = "missing"
    except (tarfile.TarError, EOFError, OSError) as e:
        error = f"unreadable after {samples} samples: {e}"
    return {"samples": samples, "problems": dict(problems), "examples": examples, "error": error}


def check_dir(root: str | Path, workers: int = 2, progress: bool = True) -> dict:
    """Check every shard the manifest lists: {"shards": {name: result + "expected"}, "unlisted", "ok", totals}."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{root} has no {MANIFEST}: not a shard directory written by data_prep (or the build did "
                        f"not finish — rerun it)")
    try:
        manifest = json.loads(manifest_path.read_text())
        listed = {s["name"]: int(s["count"]) for s in manifest["shards"]}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{manifest_path} is not a shard manifest ({e})") from None
    names = sorted(listed)
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(check_shard, [str(root / n) for n in names]), total=len(names),
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
