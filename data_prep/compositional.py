"""``python -m data_prep compositional``: a held-out compositional test set of shapes scenes.

Written in SugarCrepe's layout (Hsieh et al., NeurIPS 2023) and, for the two swap categories, Winoground's
(Thrush et al., CVPR 2022)::

    DIR/<category>.json            {"<id>": {"filename", "caption", "negative_caption"}}, images in DIR/images/
    DIR/images/NNNNNN.jpg
    DIR/scenes.json                {filename: scene graph}: what the oracle (scenes.holds) decides captions on
    DIR/winoground/examples.jsonl  id, image_0, image_1, caption_0, caption_1, tag, secondary_tag,
                                   num_main_preds, collapsed_tag; images in winoground/images/<image_k>.jpg
    DIR/manifest.json              options and counts

Every category holds `size` items. SugarCrepe removed the negatives a text-only model could spot as implausible;
here every negative string is the positive of another image of the set, by construction:

- replace_* and swap_* come in mirrored pairs: a scene, its twin (``scene_edits``), and two items whose
  positives are each other's negatives. Any score that reads the caption alone is right on exactly one item of
  a pair (or ties on both), so it is at 50 %.
- add_obj and add_att cannot be mirrored: the longer caption implies the shorter, so the shorter is never false
  of the twin. Each added negative is instead the positive of its twin, which is the first image of a mirrored
  pair of another category. A scorer that prefers shorter captions wins every add item, as on SugarCrepe's.

An image and its twins are drawn from one generator state: same background, same colour jitter.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mmcontrast.durable import fsync, fsync_tree
from mmcontrast.errors import UserError

from .scene_edits import ADDED, EDITS, MIRRORED, edit_of
from .scenes import Caption, Scene, describe, holds, render, sample_scene

CATEGORIES = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
WINOGROUND = ("swap_att", "swap_obj")  # a scene and its swap hold the same words: Winoground's 2 × 2 groups
COMPOSITIONAL = 4  # generator stream; the demo's splits use 0..3, so no image coincides with a training one
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Item:
    image: str
    caption: str
    negative: str


@dataclass(frozen=True)
class Group:
    """Winoground's example: caption_k is true of image_k only."""
    tag: str
    image_0: str
    image_1: str
    caption_0: str
    caption_1: str


@dataclass(frozen=True)
class CompositionalSet:
    items: dict[str, list[Item]]  # per category
    images: dict[str, tuple[Scene, int]]  # filename → (scene, the render group whose generator draws it)
    groups: list[Group]


def _check(category: str, scene: Scene, caption: Caption, twin: Scene, twin_caption: Caption) -> None:
    """The validity rules: a failure here is a bug in an edit, never the user's."""
    ok = (holds(caption, scene) and holds(twin_caption, twin) and not holds(twin_caption, scene)
          and edit_of(caption, twin_caption) == category
          and all(len({getattr(o, a) for o in s.objects}) == len(s.objects) for s in (scene, twin)
                  for a in ("shape", "colour")))
    if category in MIRRORED:
        ok = ok and not holds(caption, twin) and edit_of(twin_caption, caption) == category
    if not ok:
        raise RuntimeError(f"{category}: {caption.text()!r} → {twin_caption.text()!r} breaks a validity rule "
                           f"on {scene} / {twin}")


def _drop_attribute(caption: Caption, rng: np.random.Generator) -> Caption:
    slot = ("subject", "landmark")[int(rng.integers(2))]
    attr = ("colour", "size")[int(rng.integers(2))]
    return replace(caption, **{slot: replace(getattr(caption, slot), **{attr: None})})


class _Builder:
    def __init__(self, seed: int, size: int):
        self.rng = np.random.default_rng([seed, COMPOSITIONAL])
        self.items: dict[str, list[Item]] = {c: [] for c in CATEGORIES}
        self.images: dict[str, tuple[Scene, int]] = {}
        self.groups: list[Group] = []
        self.pairs_left = {c: size // 2 for c in MIRRORED}
        self.group = 0

    def image(self, scene: Scene) -> str:
        name = f"{len(self.images):06d}.jpg"
        self.images[name] = (scene, self.group)
        return name

    def mirrored(self, category: str, scene: Scene, caption: Caption) -> str | None:
        """Add a mirrored pair if the edit applies; the filename of `scene`'s image, else None."""
        twin = EDITS[category](scene, caption, self.rng)
        if twin is None:
            return None
        _check(category, scene, caption, *twin)
        a, b = self.image(scene), self.image(twin[0])
        pos, neg = caption.text(), twin[1].text()
        self.items[category] += [Item(a, pos, neg), Item(b, neg, pos)]
        if category in WINOGROUND:
            self.groups.append(Group(category, a, b, pos, neg))
        self.pairs_left[category] -= 1
        return a

    def added(self, category: str, size: int) -> None:
        while len(self.items[category]) < size:
            self.group += 1
            scene = sample_scene(self.rng)
            caption = describe(scene, self.rng)
            if category == "add_att":
                caption = _drop_attribute(caption, self.rng)
            twin = EDITS[category](scene, caption, self.rng)
            if twin is None:
                continue
            _check(category, scene, caption, *twin)
            # The twin's caption needs an image of its own: the twin, first of a pair in the emptiest category.
            for m in sorted((m for m in MIRRORED if self.pairs_left[m]), key=lambda m: -self.pairs_left[m]):
                if self.mirrored(m, *twin) is not None:
                    self.items[category].append(Item(self.image(scene), caption.text(), twin[1].text()))
                    break

    def fill(self) -> None:
        for category in MIRRORED:
            while self.pairs_left[category]:
                self.group += 1
                scene = sample_scene(self.rng)
                self.mirrored(category, scene, describe(scene, self.rng))


def check_size(size: int) -> None:
    if size < 2 or size % 2:
        raise UserError(f"compositional size {size}: the items per category must be an even number ≥ 2 "
                        f"(they come in pairs of images)")


def generate(seed: int, size: int) -> CompositionalSet:
    """The set with `size` items in every category, a pure function of (seed, size)."""
    check_size(size)
    builder = _Builder(seed, size)
    for category in ADDED:
        builder.added(category, size)
    builder.fill()
    return CompositionalSet(builder.items, builder.images, builder.groups)


def _jpeg(scene: Scene, seed: int, group: int, side: int) -> bytes:
    buf = io.BytesIO()
    render(scene, np.random.default_rng([seed, COMPOSITIONAL, 1, group]), side=side).save(buf, format="JPEG",
                                                                                         quality=92)
    return buf.getvalue()


def _write(root: Path, data: CompositionalSet, seed: int, side: int, options: dict) -> dict:
    (root / "images").mkdir(parents=True)
    (root / "winoground" / "images").mkdir(parents=True)
    pixels = {name: _jpeg(scene, seed, group, side) for name, (scene, group) in data.images.items()}
    for name, data_bytes in pixels.items():
        (root / "images" / name).write_bytes(data_bytes)
    for category, items in data.items.items():
        rows = {str(k): {"filename": it.image, "caption": it.caption, "negative_caption": it.negative}
                for k, it in enumerate(items)}
        (root / f"{category}.json").write_text(json.dumps(rows, indent=1))
    graphs = {name: scene.graph() for name, (scene, _) in data.images.items()}
    (root / "scenes.json").write_text(json.dumps(graphs))
    with open(root / "winoground" / "examples.jsonl", "w") as f:
        for k, g in enumerate(data.groups):
            images = [f"ex_{k}_img_0", f"ex_{k}_img_1"]
            for stem, name in zip(images, (g.image_0, g.image_1)):
                (root / "winoground" / "images" / f"{stem}.jpg").write_bytes(pixels[name])
            f.write(json.dumps({"id": k, "image_0": images[0], "image_1": images[1], "caption_0": g.caption_0,
                                "caption_1": g.caption_1, "tag": g.tag, "secondary_tag": "", "num_main_preds": 1,
                                "collapsed_tag": "Object"}) + "\n")
    manifest = {"options": options, "categories": {c: len(v) for c, v in data.items.items()},
                "images": len(data.images), "winoground": len(data.groups), "images_dir": "images"}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def write_compositional(out: str | Path, seed: int = 0, size: int = 1000, side: int = 64,
                        replace_other: bool = False) -> dict:
    """Build the set into `out` atomically (a hidden sibling folder renamed into place); a second call with the
    same options returns its manifest. A set with other options is replaced only if `replace_other`."""
    check_size(size)
    out = Path(out)
    options = dict(seed=seed, size=size, side=side)
    if (out / MANIFEST).is_file():
        built = json.loads((out / MANIFEST).read_text())
        if built.get("options") == options:
            print(f"compositional set already in {out} (same options); delete it to rebuild")
            return built
        if not replace_other:
            raise UserError(f"{out} holds a compositional set with other options ({built.get('options')}); "
                            f"delete it or give another --out")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not a compositional set; give a new or empty --out")
    data = generate(seed, size)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():  # left by a build killed before its rename; the name is this writer's own
        shutil.rmtree(tmp)
    manifest = _write(tmp, data, seed, side, options)
    fsync_tree(tmp)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():  # left by a replacement killed between its renames
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    fsync(out.parent)
    return manifest
