"""Shard building speed: ``data_prep shards`` with 2 workers against a plain single-process PIL loop, then the
trainer reading the shards it built.

    .venv/bin/python benchmarks/shard_build.py [--images 20000] [--workers 2] [--rounds 2] [--train-steps 80]

The corpus: ``--images`` 512×512 JPEGs (quality 90) cut from the real photos that ship in scikit-image,
scikit-learn and matplotlib (random crops, flips and colour shifts; ``tests/real_images.py``) with a CSV of
captions, made once in ``benchmarks/.shard_build_data``. Both tools turn it into shards of 1,000 samples at
256 pixels (shorter side, bicubic, JPEG quality 90): the reference is what one writes by hand — a loop over
the CSV that opens, resizes and re-encodes each image with PIL and adds it to a ``tarfile`` — and ours is
``build_shards`` (caption clean-up, content hashes, ``key.json``, resume records and the report included).
Rounds alternate the two after the files are read once, so both see a warm page cache. Then the ``tiny``
config trains on our shards (bf16, batch 128, one data worker, as ``make demo``) and the data-wait fraction
is read from its ``metrics.jsonl`` after the first 20 steps.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / ".shard_build_data"
sys.path.insert(0, str(ROOT))


def _make(args) -> str:
    i, photo_names = args
    from tests.real_images import load_photos
    global _PHOTOS
    if "_PHOTOS" not in globals():
        _PHOTOS = load_photos()
    rng = np.random.default_rng(i)
    name = photo_names[i % len(photo_names)]
    im = _PHOTOS[name]
    side = int(min(im.size) * rng.uniform(0.4, 1.0))
    x, y = rng.integers(0, im.width - side + 1), rng.integers(0, im.height - side + 1)
    crop = im.crop((x, y, x + side, y + side)).resize((512, 512), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(crop, dtype=np.float32) * rng.uniform(0.8, 1.2, 3)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(DATA / "img" / f"{i:06d}.jpg", quality=90)
    return name


def make_corpus(n: int) -> Path:
    from tests.real_images import CAPTIONS
    table = DATA / f"captions_{n}.csv"
    if table.is_file():
        return table
    (DATA / "img").mkdir(parents=True, exist_ok=True)
    names = sorted(CAPTIONS)
    with Pool(2) as pool:
        made = pool.map(_make, [(i, names) for i in range(n)], chunksize=64)
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for i, name in enumerate(made):
            w.writerow([f"img/{i:06d}.jpg", CAPTIONS[name][i % len(CAPTIONS[name])]])
    return table


def plain_loop(table: Path, out: Path, size: int = 256, per_shard: int = 1000) -> int:
    """The reference: one process, PIL and tarfile, the way one writes it by hand."""
    out.mkdir(parents=True, exist_ok=True)
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    tar, n = None, 0
    for i, row in enumerate(rows):
        if i % per_shard == 0:
            if tar:
                tar.close()
            tar = tarfile.open(out / f"{i // per_shard:06d}.tar", "w")
        im = Image.open(table.parent / row["image"]).convert("RGB")
        scale = size / min(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        for ext, data in (("jpg", buf.getvalue()), ("txt", row["caption"].encode())):
            info = tarfile.TarInfo(f"{i:09d}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        n += 1
    tar.close()
    return n


def ours(table: Path, out: Path, workers: int) -> int:
    from data_prep.process import ProcessOptions
    from data_prep.shards import build_shards
    m = build_shards(table, out, options=ProcessOptions(size=256, quality=90), shard_size=1000, workers=workers,
                     progress=False)
    return m["total"]


def train_wait(shards: Path, steps: int, skip: int = 20) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "training", "--config", "training/configs/tiny.yaml", "--output", tmp,
               f"data.train={shards}", f"schedule.steps={steps}", "schedule.warmup=10", "checkpoint.every=0",
               "eval.retrieval=", "eval.zeroshot=", "eval.compositional=", "log.every=10"]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        recs = [r for r in map(json.loads, (Path(tmp) / "metrics.jsonl").read_text().splitlines())
                if "data_wait" in r and r["step"] > skip]
    return statistics.fmean(r["data_wait"] for r in recs), statistics.fmean(r["samples_per_s"] for r in recs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=80)
    args = p.parse_args()
    t = time.perf_counter()
    table = make_corpus(args.images)
    print(f"corpus: {args.images} JPEGs of 512×512 in {table.parent} ({time.perf_counter() - t:.0f} s)", flush=True)
    for path in sorted((table.parent / "img").iterdir()):  # warm the page cache for both tools alike
        path.read_bytes()
    rates: dict[str, list[float]] = {"plain PIL loop, 1 process": [], f"data_prep shards, {args.workers} workers": []}
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        for r in range(args.rounds):
            for label, run in zip(rates, (lambda o: plain_loop(table, o), lambda o: ours(table, o, args.workers))):
                out = Path(tmp) / f"{r}_{len(rates[label])}_{label.split()[0]}"
                t = time.perf_counter()
                n = run(out)
                rates[label].append(n / (time.perf_counter() - t))
                print(f"round {r + 1}: {label}: {n} images, {rates[label][-1]:.0f} images/s", flush=True)
        shards = max(Path(tmp).glob("*_data_prep"))
        wait, speed = train_wait(shards, args.train_steps)
    (plain, mine) = (max(v) for v in rates.values())
    print("\n| tool | images/s (best of rounds) | all rounds |\n|---|---:|---|")
    for label, v in rates.items():
        print(f"| {label} | {max(v):.0f} | {', '.join(f'{x:.0f}' for x in v)} |")
    print(f"\nspeed-up: {mine / plain:.2f}×")
    print(f"trainer (tiny, bf16, batch 128, 1 data worker) on these shards: data wait {wait:.1%} of the time, "
          f"{speed:.0f} samples/s")


if __name__ == "__main__":
    main()
