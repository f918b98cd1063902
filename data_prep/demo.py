"""``python -m data_prep demo``: the shapes dataset as training shards and two benchmark sets.

```
OUT/train/000000.tar ...       training pairs (key.jpg, key.txt — captions one per line, key.json)
OUT/train/manifest.json        sample counts
OUT/retrieval/                 CLIP_benchmark webdataset layout, dataset_type.txt = retrieval
OUT/zeroshot/                  CLIP_benchmark webdataset layout with classnames and templates
OUT/compositional/             with compositional_size > 0: the held-out set of ``compositional.py``
OUT/manifest.json              the seed, options and counts of every split
```

With ``scene_share`` > 0 that fraction of the training images are scenes of two or three objects with
captions of the scene grammar (``scenes.py``); their key.json holds ``{"id", "scene": <scene graph>, "negatives":
[hard-negative captions checked false by the oracle]}`` (NegCLIP's ``data.negatives=shards``).
"""

from __future__ import annotations

import json
import math
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm

from mmcontrast.errors import UserError

from . import scenes, shapes
from .compositional import check_size, write_compositional
from .writer import ShardWriter, write_benchmark, write_json

TRAIN, RETRIEVAL, ZEROSHOT, TRAIN_SCENES = 0, 1, 2, 3  # generator streams: the splits never share an image
# What `python -m data_prep demo` (and so `make demo`) builds by default: no scenes in the training set, and a
# compositional set of 500 items per category (3,500 + 500 Winoground groups: ±2.2 points of standard error at
# 50 %). Scenes cost the demo's 420-step run more than they give it (README "Compositional understanding"):
# a share of 0.1 lowered held-out image→text R@1 from 13.0 to 10.3 and zero-shot acc1 from 44.6 to 35.6, 0.25 to
# 5.2 and 27.7 (one machine), while swap_att, swap_obj and replace_rel stayed at chance; `--scene-share` adds them.
# build_demo's own defaults stay 0: a call without them builds what it built before these existed.
DEMO_SCENE_SHARE = 0.0
DEMO_COMPOSITIONAL_SIZE = 500


def _train_sample(args) -> dict:
    seed, i, n_captions, scene = args
    if scene:
        s = scenes.make_scene_sample(seed, TRAIN_SCENES, i, n_captions)
        return {"__key__": f"{i:08d}", "jpg": s["jpg"], "txt": "\n".join(s["captions"]),
                "json": json.dumps({"id": i, "scene": s["scene"], "negatives": s["negatives"]})}
    s = shapes.make_sample(seed, TRAIN, i, n_captions)
    return {"__key__": f"{i:08d}", "jpg": s["jpg"], "txt": "\n".join(s["captions"]),
            "json": json.dumps({"id": i, **s["scene"]})}


def _is_scene(i: int, share: float) -> bool:
    """Whether training image `i` is a scene: spread evenly, exactly round(share · n) of the first n."""
    return math.floor((i + 1) * share + 0.5) > math.floor(i * share + 0.5)


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
               workers: int = 2, scene_share: float = 0.0, compositional_size: int = 0) -> dict:
    """`scene_share`: the fraction of training images that are scenes; `compositional_size`: items per category
    of the compositional set (0: none). Both enter the manifest's options only when nonzero, so a build without
    them is the same as before they existed."""
    out = Path(out)
    done = out / "manifest.json"
    if not 0.0 <= scene_share <= 1.0:
        raise UserError(f"scene_share must be in [0, 1], got {scene_share}")
    if compositional_size:
        check_size(compositional_size)
    options = dict(seed=seed, train_size=train_size, retrieval_size=retrieval_size,
                   zeroshot_size=zeroshot_size, captions_per_image=captions_per_image, shard_size=shard_size)
    if scene_share:
        options["scene_share"] = scene_share
    if compositional_size:
        options["compositional_size"] = compositional_size
    if done.is_file() and json.loads(done.read_text()).get("options") == options:
        print(f"demo data already in {out} (same options); delete it to rebuild")
        return json.loads(done.read_text())
    with Pool(workers) as pool:
        writer = ShardWriter(out / "train", max_count=shard_size)
        jobs = [(seed, i, captions_per_image, _is_scene(i, scene_share)) for i in range(train_size)]
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
    if compositional_size:
        comp = write_compositional(out / "compositional", seed=seed, size=compositional_size, replace_other=True)
        manifest["compositional"] = {"path": "compositional", **{k: comp[k] for k in ("categories", "winoground")}}
    if scene_share:
        manifest["train"]["scenes"] = sum(_is_scene(i, scene_share) for i in range(train_size))
    write_json(done, manifest)
    return manifest
