"""``python -m data_prep demo``: the shapes dataset as training shards and two benchmark sets.

```
OUT/train/000000.tar ...       training pairs (key.jpg, key.txt — captions one per line, key.json)
OUT/train/manifest.json        sample counts
OUT/retrieval/                 CLIP_benchmark webdataset layout, dataset_type.txt = retrieval
OUT/zeroshot/                  CLIP_benchmark webdataset layout with classnames and templates
OUT/manifest.json              the seed, options and counts of every split
```
"""

from __future__ import annotations

import json
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm

from . import shapes
from .writer import ShardWriter, write_benchmark, write_json

TRAIN, RETRIEVAL, ZEROSHOT = 0, 1, 2  # generator streams: the splits never share an image


def _train_sample(args) -> dict:
    seed, i, n_captions = args
    s = shapes.make_sample(seed, TRAIN, i, n_captions)
    return {"__key__": f"{i:08d}", "jpg": s["jpg"], "txt": "\n".join(s["captions"]),
            "json": json.dumps({"id": i, **s["scene"]})}


def _bench_sample(args) -> dict:
    seed, stream, i, n_captions = args
    s = shapes.make_sample(seed, stream, i, n_captions)
    sample = {"__key__": f"s{i:07d}", "jpg": s["jpg"]}
    if stream == RETRIEVAL:
        sample["txt"] = "\n".join(s["captions"])
    else:
        sample["cls"] = str(s["label"])
    return sample


def build_demo(out: str | Path, seed: int = 0, train_size: int = 24000, retrieval_size: int = 1000,
               zeroshot_size: int = 1600, captions_per_image: int = 5, shard_size: int = 1000,
               workers: int = 2) -> dict:
    out = Path(out)
    done = out / "manifest.json"
    options = dict(seed=seed, train_size=train_size, retrieval_size=retrieval_size,
                   zeroshot_size=zeroshot_size, captions_per_image=captions_per_image, shard_size=shard_size)
    if done.is_file() and json.loads(done.read_text()).get("options") == options:
        print(f"demo data already in {out} (same options); delete it to rebuild")
        return json.loads(done.read_text())
    with Pool(workers) as pool:
        writer = ShardWriter(out / "train", max_count=shard_size)
        jobs = [(seed, i, captions_per_image) for i in range(train_size)]
        for sample in tqdm(pool.imap(_train_sample, jobs, chunksize=256), total=train_size, desc="train"):
            writer.write(sample)
        train = writer.close(source="data_prep demo", options=options)

        retrieval = list(tqdm(pool.imap(_bench_sample, [(seed, RETRIEVAL, i, captions_per_image)
                                                         for i in range(retrieval_size)], chunksize=64),
                              total=retrieval_size, desc="retrieval"))
        zeroshot = list(tqdm(pool.imap(_bench_sample, [(seed, ZEROSHOT, i, 1) for i in range(zeroshot_size)],
                                       chunksize=64), total=zeroshot_size, desc="zeroshot"))
    write_benchmark(out / "retrieval", retrieval, shard_size, dataset_type="retrieval")
    write_benchmark(out / "zeroshot", zeroshot, shard_size, classnames=shapes.CLASSNAMES,
                    templates=shapes.ZEROSHOT_TEMPLATES)
    manifest = {
        "options": options,
        "train": {"path": "train", "samples": train["total"], "shards": len(train["shards"])},
        "retrieval": {"path": "retrieval", "images": retrieval_size,
                      "captions": retrieval_size * captions_per_image},
        "zeroshot": {"path": "zeroshot", "images": zeroshot_size, "classes": len(shapes.CLASSNAMES)},
    }
    write_json(done, manifest)
    return manifest
