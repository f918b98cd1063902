"""How ambiguous the demo's captions are, from the generator's own attributes (no model involved).

    .venv/bin/python benchmarks/demo_ambiguity.py [--train-samples 1500]

A caption *fits* an image when one of the caption templates, filled with that image's attributes, gives
the caption word for word. Printed:
- the held-out retrieval set's oracle R@1: text→image, a ranker that puts the images the caption fits
  first, in random order (1 / their number, averaged over captions); image→text, one that puts first the
  gallery captions that fit the image and fit the fewest images (the most specific), in random order;
- how many held-out captions are strings that another image has too (ties only float noise breaks);
- among same-class held-out pairs (same colour and shape), how often one's caption fits the other;
- in training batches, how many of an anchor's other samples its caption fits (false negatives), to set
  against the debiased loss's τ⁺.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from data_prep import shapes
from data_prep.demo import RETRIEVAL, TRAIN


def fitting(scene) -> set[str]:
    """Every caption any template gives for ``scene``."""
    scene = shapes.Scene(**scene) if isinstance(scene, dict) else scene
    return set(shapes.captions(scene, np.random.default_rng(0), len(shapes.TEMPLATES)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--retrieval-size", type=int, default=1000)
    p.add_argument("--train-samples", type=int, default=1500)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    held = [shapes.make_sample(0, RETRIEVAL, i, 5) for i in range(args.retrieval_size)]
    fits = [fitting(s["scene"]) for s in held]
    images_fitting = Counter(c for f in fits for c in f)
    captions = [c for s in held for c in s["captions"]]
    t2i = np.mean([1 / images_fitting[c] for c in captions])
    gallery = Counter(captions)
    i2t = []
    for s, f in zip(held, fits):
        candidates = [c for c in f if c in gallery]
        best = min(images_fitting[c] for c in candidates)
        top = [c for c in candidates if images_fitting[c] == best]
        i2t.append(sum(c in top for c in s["captions"]) / sum(gallery[c] for c in top))
    owners: dict[str, set[int]] = {}
    for i, s in enumerate(held):
        for c in s["captions"]:
            owners.setdefault(c, set()).add(i)
    shared = sum(len(owners[c]) > 1 for c in captions)
    by_class: dict[tuple, list[int]] = {}
    for i, s in enumerate(held):
        by_class.setdefault((s["scene"]["colour"], s["scene"]["shape"]), []).append(i)
    same = [sum(c in fits[b] for c in held[a]["captions"]) / len(held[a]["captions"])
            for members in by_class.values() for a in members for b in members if a != b]
    train = [shapes.make_sample(0, TRAIN, i, 1) for i in range(args.train_samples)]
    train_fits = [fitting(s["scene"]) for s in train]
    n = len(train)
    false = sum(train[a]["captions"][0] in train_fits[b] for a in range(n) for b in range(n) if a != b)
    rate = false / (n * (n - 1))
    print(f"oracle R@1 on the held-out set: text→image {t2i:.1%}, image→text {np.mean(i2t):.1%}")
    print(f"held-out captions whose string another image has too: {shared} of {len(captions)} "
          f"({shared / len(captions):.0%})")
    print(f"same-class held-out pairs: a caption fits the other image {np.mean(same):.0%} of the time")
    print(f"training: another sample's image fits the anchor's caption with probability {rate:.4f}: "
          f"{(args.batch - 1) * rate:.2f} false negatives per anchor in a batch of {args.batch}")


if __name__ == "__main__":
    main()
