"""What the strict tar reader's checks cost: the trainer's data path with it against the reader before them.

    python benchmarks/data_path.py --rounds 10 --batches 20

The reference is ``mmcontrast/data/tar.py`` as it was at commit ``fc445af`` (the last without the header
validation, the bounded reads and the compressed-stream detection), read with ``git show`` and loaded as
a module. Two measurements on the demo shards (``data/demo/train``, built if missing), alternating old and new
in one process, round after round:

- ``tar``: every shard read to its end, samples grouped (the reader alone);
- ``loader``: ``make_loader`` exactly as the trainer builds it for ``training/configs/tiny.yaml`` (decode at
  reduced DCT scale, uint8 random resized crop, tokenize, batch of 128), in the main process, for ``--batches``.

The table gives the best and the median of each, the ratio new / old of the best and the median of the
rounds' ratios (> 1: slower). The loader's times vary from round to round by more than the checks can cost, so
the last line bounds their cost from the tar reader's share of the loader's time per sample.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFERENCE = "fc445af"


def old_reader():
    source = subprocess.run(["git", "show", f"{REFERENCE}:mmcontrast/data/tar.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "tar_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("tar_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_tar(shard_samples, shards: list[str]) -> float:
    start = time.perf_counter()
    n = sum(1 for url in shards for _ in shard_samples(url, lambda name: None))
    assert n > 0
    return time.perf_counter() - start


def time_loader(reader, shards_dir: str, batches: int) -> float:
    import mmcontrast as mc
    from mmcontrast.data import stages
    from mmcontrast.data.loader import decode_size_for
    from mmcontrast.transforms import make_uint8_train_transform

    model = mc.create_model("tiny")
    crop, _ = make_uint8_train_transform(model.preprocess_cfg, (0.9, 1.0))
    tokenizer = mc.make_tokenizer(model.model_cfg)
    original = stages.shard_samples
    stages.shard_samples = reader
    try:
        loader = mc.make_loader(shards_dir, crop, tokenizer, 128, seed=0, num_workers=0, trim_text=True,
                                decode_size=decode_size_for(model.preprocess_cfg["size"], 0.9))
        it = iter(loader)
        next(it)  # the shuffle buffer fills before the first batch: not part of the steady state
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        return time.perf_counter() - start
    finally:
        stages.shard_samples = original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    args = p.parse_args()
    if not (args.data / "train" / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "data_prep", "demo", "--out", str(args.data)], check=True, cwd=ROOT)
    from mmcontrast.data.tar import shard_samples as new
    from mmcontrast.data.urls import expand_urls
    before = old_reader().shard_samples
    old = lambda url, on_duplicate, limits=None: before(url, on_duplicate)  # noqa: E731 (the old signature)
    shards = expand_urls(str(args.data / "train"))
    times = {(what, who): [] for what in ("tar", "loader") for who in ("old", "new")}
    for r in range(args.rounds):
        for who, reader in (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old)):
            times["tar", who].append(time_tar(reader, shards))
            times["loader", who].append(time_loader(reader, str(args.data / "train"), args.batches))
        print(f"round {r + 1}: " + ", ".join(f"{k[0]} {k[1]} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
    samples = sum(1 for url in shards for _ in new(url, lambda name: None))
    print("\n| path | reader | best s | median s | new / old: best | new / old: median of rounds |")
    print("|---|---|---:|---:|---:|---:|")
    for what in ("tar", "loader"):
        for who in ("old", "new"):
            t = times[what, who]
            paired = statistics.median(n / o for n, o in zip(times[what, "new"], times[what, "old"]))
            ratios = f"{min(times[what, 'new']) / min(times[what, 'old']):.3f} | {paired:.3f}" if who == "new" else " | "
            print(f"| {what} | {who} | {min(t):.3f} | {statistics.median(t):.3f} | {ratios} |")
    # the loader's rounds vary more than the checks cost; the tar reader's share of the loader's time bounds it
    tar_per_sample = min(times["tar", "new"]) / samples
    loader_per_sample = min(times["loader", "old"]) / (args.batches * 128)
    share = tar_per_sample / loader_per_sample
    extra = max(min(times["tar", "new"]) / min(times["tar", "old"]),
                statistics.median(n / o for n, o in zip(times["tar", "new"], times["tar", "old"]))) - 1
    print(f"\ntar reading is {share:.1%} of the loader's time per sample ({tar_per_sample * 1e6:.1f} of "
          f"{loader_per_sample * 1e6:.1f} us); the checks add at most {extra:.1%} to it (the larger of the two "
          f"ratios): {share * extra:.2%} of the data path")

if __name__ == "__main__":
    main()
