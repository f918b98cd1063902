"""One generator per SugarCrepe category (Hsieh et al., NeurIPS 2023): each edits one slot of a true caption.

Every generator takes a scene, one of its true captions and a generator, and returns a *twin*: the scene
changed as little as possible so that the edited caption is true of it, and the edited caption, which is false
of the original scene. The twin is what lets the compositional set give every negative an image of its own
(``compositional.py``). A generator returns None where its edit does not apply (no attribute to swap, a
symmetric relation for ``swap_obj``, ...).

| category | edit (false of the original scene) | twin scene |
|---|---|---|
| replace_obj | a shape → a shape absent from the scene | that object takes the new shape |
| replace_att | a stated colour → one absent from the scene, or a size → the other | that object takes it |
| replace_rel | the relation → one false of the pair | the objects moved to make it true, the old one false |
| swap_att | the two noun phrases exchange their colours (or sizes) | the two objects exchange them |
| swap_obj | the two noun phrases exchange places, around an asymmetric relation | the two objects exchange places |
| add_obj | "and <a shape absent from the scene>" | that object added (or the third one turned into it) |
| add_att | an unstated colour or size, false of that object | that object takes it |
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Callable

import numpy as np

from .scenes import (CELLS, COLOURS, JITTER, RELATIONS, SHAPES, SIZES, SYMMETRIC, NP, Caption, Obj, Scene,
                     assignments, full_np, relation_holds, with_object)

Edit = Callable[[Scene, Caption, np.random.Generator], "tuple[Scene, Caption] | None"]
SLOTS = ("subject", "landmark")


def _objects_of(scene: Scene, caption: Caption) -> tuple[int, ...]:
    found = assignments(caption, scene)
    if len(found) != 1:
        raise ValueError(f"{caption.text()!r} does not pick out one set of objects of the scene ({len(found)} do)")
    return found[0]


def _absent(scene: Scene, attr: str, vocabulary) -> list[str]:
    present = {getattr(o, attr) for o in scene.objects}
    return [v for v in vocabulary if v not in present]


def replace_obj(scene: Scene, caption: Caption, rng: np.random.Generator):
    slot = int(rng.integers(2))
    index = _objects_of(scene, caption)[slot]
    shape = str(rng.choice(_absent(scene, "shape", SHAPES)))
    np_ = replace(getattr(caption, SLOTS[slot]), shape=shape)
    return with_object(scene, index, shape=shape), replace(caption, **{SLOTS[slot]: np_})


def replace_att(scene: Scene, caption: Caption, rng: np.random.Generator):
    stated = [(s, a) for s in range(2) for a in ("colour", "size") if getattr(getattr(caption, SLOTS[s]), a)]
    if not stated:
        return None
    slot, attr = stated[int(rng.integers(len(stated)))]
    index = _objects_of(scene, caption)[slot]
    if attr == "colour":  # absent from the scene, so the twin never holds two objects of one colour
        value = str(rng.choice(_absent(scene, "colour", COLOURS)))
    else:
        value = next(z for z in SIZES if z != scene.objects[index].size)
    np_ = replace(getattr(caption, SLOTS[slot]), **{attr: value})
    return with_object(scene, index, **{attr: value}), replace(caption, **{SLOTS[slot]: np_})


def replace_rel(scene: Scene, caption: Caption, rng: np.random.Generator):
    i, j = _objects_of(scene, caption)[:2]
    a, b = scene.objects[i], scene.objects[j]
    candidates = [r for r in RELATIONS if r != caption.relation and not relation_holds(r, a, b)]
    for relation in rng.permutation(candidates):
        layouts = []
        for cells in itertools.permutations(range(len(CELLS)), len(scene.objects)):
            at = [Obj("", "", "", *CELLS[c]) for c in cells]
            if relation_holds(str(relation), at[i], at[j]) and not relation_holds(caption.relation, at[i], at[j]):
                layouts.append(cells)
        if layouts:
            cells = layouts[int(rng.integers(len(layouts)))]
            moved = tuple(replace(o, x=CELLS[c][0] + rng.uniform(-JITTER, JITTER),
                                  y=CELLS[c][1] + rng.uniform(-JITTER, JITTER)) for o, c in zip(scene.objects, cells))
            return Scene(moved, scene.background), replace(caption, relation=str(relation))
    return None


def swap_att(scene: Scene, caption: Caption, rng: np.random.Generator):
    i, j = _objects_of(scene, caption)[:2]
    s, l = caption.subject, caption.landmark
    options = [a for a in ("colour", "size") if getattr(s, a) and getattr(l, a) and getattr(s, a) != getattr(l, a)]
    if not options:
        return None
    attr = options[int(rng.integers(len(options)))]
    vi, vj = getattr(scene.objects[i], attr), getattr(scene.objects[j], attr)
    twin = with_object(with_object(scene, i, **{attr: vj}), j, **{attr: vi})
    return twin, replace(caption, subject=replace(s, **{attr: getattr(l, attr)}),
                         landmark=replace(l, **{attr: getattr(s, attr)}))


def swap_obj(scene: Scene, caption: Caption, rng: np.random.Generator):
    if caption.relation in SYMMETRIC:  # both orders are true: the swapped caption would not be a negative
        return None
    i, j = _objects_of(scene, caption)[:2]
    a, b = scene.objects[i], scene.objects[j]
    twin = with_object(with_object(scene, i, x=b.x, y=b.y), j, x=a.x, y=a.y)
    return twin, replace(caption, subject=caption.landmark, landmark=caption.subject)


def add_obj(scene: Scene, caption: Caption, rng: np.random.Generator):
    if caption.also is not None:
        return None
    shape = str(rng.choice(_absent(scene, "shape", SHAPES)))
    mentioned = _objects_of(scene, caption)
    rest = [k for k in range(len(scene.objects)) if k not in mentioned]
    if rest:  # the unmentioned third object becomes the added one
        twin = with_object(scene, rest[0], shape=shape)
        added = twin.objects[rest[0]]
    else:
        taken = {min(range(len(CELLS)), key=lambda c: (CELLS[c][0] - o.x) ** 2 + (CELLS[c][1] - o.y) ** 2)
                 for o in scene.objects}
        cell = CELLS[int(rng.choice([c for c in range(len(CELLS)) if c not in taken]))]
        added = Obj(shape, str(rng.choice(_absent(scene, "colour", COLOURS))), str(rng.choice(list(SIZES))),
                    cell[0] + rng.uniform(-JITTER, JITTER), cell[1] + rng.uniform(-JITTER, JITTER))
        twin = Scene(scene.objects + (added,), scene.background)
    return twin, replace(caption, also=full_np(added))


def add_att(scene: Scene, caption: Caption, rng: np.random.Generator):
    slots = ["subject", "landmark"] + (["also"] if caption.also else [])
    unstated = [(s, a) for s in slots for a in ("colour", "size") if getattr(getattr(caption, s), a) is None]
    if not unstated:
        return None
    slot, attr = unstated[int(rng.integers(len(unstated)))]
    index = _objects_of(scene, caption)[slots.index(slot)]
    if attr == "colour":
        value = str(rng.choice(_absent(scene, "colour", COLOURS)))
    else:
        value = next(z for z in SIZES if z != scene.objects[index].size)
    np_ = replace(getattr(caption, slot), **{attr: value})
    return with_object(scene, index, **{attr: value}), replace(caption, **{slot: np_})


EDITS: dict[str, Edit] = {
    "replace_obj": replace_obj, "replace_att": replace_att, "replace_rel": replace_rel,
    "swap_att": swap_att, "swap_obj": swap_obj, "add_obj": add_obj, "add_att": add_att,
}
# A twin's caption edited back the same way gives the original: these categories pair two images whose positives
# are each other's negatives. An added slot cannot be taken back so (the longer caption implies the shorter).
MIRRORED = ("replace_obj", "replace_att", "replace_rel", "swap_att", "swap_obj")
ADDED = ("add_obj", "add_att")


def _np_diff(a: NP, b: NP) -> set[str]:
    return {f for f in ("shape", "colour", "size") if getattr(a, f) != getattr(b, f)}


def edit_of(positive: Caption, negative: Caption) -> str | None:
    """The one category whose edit turns `positive` into `negative`, or None if no single edit does."""
    changed = {s for s in ("subject", "relation", "landmark", "also") if getattr(positive, s) != getattr(negative, s)}
    if changed == {"subject", "landmark"}:
        if (negative.subject, negative.landmark) == (positive.landmark, positive.subject):
            return "swap_obj"
        diff = _np_diff(positive.subject, negative.subject)
        if len(diff) == 1 and diff == _np_diff(positive.landmark, negative.landmark):
            f = diff.pop()
            exchanged = (getattr(negative.subject, f), getattr(negative.landmark, f)) == \
                (getattr(positive.landmark, f), getattr(positive.subject, f))
            return "swap_att" if exchanged else None
        return None
    if changed == {"relation"}:
        return "replace_rel"
    if len(changed) != 1:
        return None
    slot = changed.pop()
    a, b = getattr(positive, slot), getattr(negative, slot)
    if a is None:
        return "add_obj"
    if b is None:
        return None
    diff = _np_diff(a, b)
    if len(diff) != 1:
        return None
    f = diff.pop()
    if f == "shape":
        return "replace_obj"
    if getattr(a, f) is None:
        return "add_att"
    return "replace_att" if getattr(b, f) is not None else None
