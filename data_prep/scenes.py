"""Scenes of two or three shapes, a caption grammar that binds attributes and states a relation, and its oracle.

The demo's single-kind images (``shapes.py``) never make a model bind an attribute to the right object or read
a relation, which is what dual encoders are known to fail at (ARO, Yuksekgonul et al., ICLR 2023; SugarCrepe,
Hsieh et al., NeurIPS 2023). A scene here holds K ∈ {2, 3} objects, each (shape, colour, size) with a shape and
a colour no other object of the scene has, placed in distinct cells of a 2 × 2 grid 0.48 of the side apart:
two centres differ along an axis either by under 2 · ``JITTER`` or by more than 0.48 − 2 · ``JITTER``, so "to the
left of", "above" and the rest are never borderline (``MARGIN`` lies between the two).

Captions follow one grammar (``Caption.text`` writes it, ``parse`` reads it back)::

    caption := np relation np [ "and" np ]        np := ("a" | "an") [size] [colour] shape

meaning: distinct objects match the noun phrases, the first two stand in the relation. ``holds`` is the oracle
that decides any caption of the grammar against a scene graph. Generation is a pure function of its generator,
as in ``shapes.py``.
"""

from __future__ import annotations

import functools
import io
import itertools
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from .shapes import BACKGROUNDS, COLOURS, SHAPES, background, draw_shape

SIZES = {"small": 0.11, "large": 0.17}  # radius as a fraction of the side; two sizes, so "small" is never relative
CELLS = [(0.26, 0.26), (0.74, 0.26), (0.26, 0.74), (0.74, 0.74)]  # (x, y) centres, y downwards
JITTER = 0.03  # largest offset of a centre from its cell's, per axis
MARGIN = 0.2  # an axis separates two objects when their centres differ by more than this

RELATIONS = ["to the left of", "to the right of", "above", "below", "next to"]
SYMMETRIC = {"next to"}  # swapping its two sides keeps a caption true: never a swap_obj negative


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    x: float  # centre in [0, 1], left to right
    y: float  # centre in [0, 1], top to bottom


@dataclass(frozen=True)
class Scene:
    """Objects with pairwise distinct shapes and colours, and the background kind."""
    objects: tuple[Obj, ...]
    background: str

    def graph(self) -> dict:
        """The scene graph as a JSON-able dict: objects, every true relation ``[i, relation, j]``, background."""
        objs = [{"shape": o.shape, "colour": o.colour, "size": o.size, "x": round(o.x, 4), "y": round(o.y, 4)}
                for o in self.objects]
        rels = [[i, r, j] for i, a in enumerate(self.objects) for j, b in enumerate(self.objects)
                for r in RELATIONS if i != j and relation_holds(r, a, b)]
        return {"objects": objs, "relations": rels, "background": self.background}


def scene_from_graph(graph: dict) -> Scene:
    return Scene(tuple(Obj(o["shape"], o["colour"], o["size"], o["x"], o["y"]) for o in graph["objects"]),
                 graph["background"])


def relation_holds(relation: str, a: Obj, b: Obj) -> bool:
    """Whether "a <relation> b" is true of the geometry."""
    dx, dy = b.x - a.x, b.y - a.y
    apart_x, apart_y = abs(dx) > MARGIN, abs(dy) > MARGIN
    if relation == "to the left of":
        return dx > MARGIN
    if relation == "to the right of":
        return -dx > MARGIN
    if relation == "above":
        return dy > MARGIN
    if relation == "below":
        return -dy > MARGIN
    if relation == "next to":  # side by side in a row or a column, not diagonal
        return apart_x != apart_y
    raise ValueError(f"unknown relation {relation!r}; the grammar has {RELATIONS}")


def place(n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Centres for `n` objects in distinct cells, jittered."""
    cells = rng.permutation(len(CELLS))[:n]
    return [(CELLS[c][0] + rng.uniform(-JITTER, JITTER), CELLS[c][1] + rng.uniform(-JITTER, JITTER))
            for c in cells]


def sample_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    n = int(rng.choice([2, 3])) if n_objects is None else n_objects
    shapes = rng.choice(SHAPES, size=n, replace=False)
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    sizes = rng.choice(list(SIZES), size=n)
    objects = tuple(Obj(str(s), str(c), str(z), x, y) for s, c, z, (x, y) in zip(shapes, colours, sizes, place(n, rng)))
    return Scene(objects, str(rng.choice(BACKGROUNDS)))


@dataclass(frozen=True)
class NP:
    """A noun phrase: a shape with an optional size and colour."""
    shape: str
    colour: str | None = None
    size: str | None = None

    def text(self) -> str:
        words = [w for w in (self.size, self.colour, self.shape) if w]
        return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)

    def matches(self, o: Obj) -> bool:
        return (o.shape == self.shape and self.colour in (None, o.colour)
                and self.size in (None, o.size))


@dataclass(frozen=True)
class Caption:
    """``subject relation landmark [and also]``: the slots an edit changes one at a time."""
    subject: NP
    relation: str
    landmark: NP
    also: NP | None = None

    def text(self) -> str:
        text = f"{self.subject.text()} {self.relation} {self.landmark.text()}"
        return text + (f" and {self.also.text()}" if self.also else "")

    def phrases(self) -> list[NP]:
        return [self.subject, self.landmark] + ([self.also] if self.also else [])


def full_np(o: Obj) -> NP:
    return NP(o.shape, o.colour, o.size)


def _parse_np(words: list[str], text: str) -> tuple[NP, list[str]]:
    if len(words) < 2 or words[0] not in ("a", "an"):
        raise ValueError(f"not a caption of the scene grammar (a noun phrase starts with a/an): {text!r}")
    rest = words[1:]
    size = rest.pop(0) if rest[0] in SIZES else None
    colour = rest.pop(0) if rest and rest[0] in COLOURS else None
    if not rest or rest[0] not in SHAPES:
        raise ValueError(f"not a caption of the scene grammar (no shape where one belongs): {text!r}")
    return NP(rest[0], colour, size), rest[1:]


def parse(text: str) -> Caption:
    """The `Caption` a string of the grammar writes; ValueError naming the string for any other string."""
    words = text.split()
    subject, rest = _parse_np(words, text)
    relation = next((r for r in RELATIONS if rest[:len(r.split())] == r.split()), None)
    if relation is None:
        raise ValueError(f"not a caption of the scene grammar (no relation of {RELATIONS}): {text!r}")
    landmark, rest = _parse_np(rest[len(relation.split()):], text)
    also = None
    if rest:
        if rest[0] != "and":
            raise ValueError(f"not a caption of the scene grammar (words after the landmark): {text!r}")
        also, rest = _parse_np(rest[1:], text)
    caption = Caption(subject, relation, landmark, also)
    if rest or caption.text() != text:
        raise ValueError(f"not a caption of the scene grammar (not its canonical spelling): {text!r}")
    return caption


def assignments(caption: Caption, scene: Scene) -> list[tuple[int, ...]]:
    """Every injective choice of objects for the caption's noun phrases that makes it true."""
    phrases = caption.phrases()
    return [idx for idx in itertools.permutations(range(len(scene.objects)), len(phrases))
            if all(np_.matches(scene.objects[i]) for np_, i in zip(phrases, idx))
            and relation_holds(caption.relation, scene.objects[idx[0]], scene.objects[idx[1]])]


def holds(caption: Caption | str, graph: dict | Scene) -> bool:
    """The oracle: whether a caption of the grammar is true of a scene graph."""
    caption = parse(caption) if isinstance(caption, str) else caption
    scene = scene_from_graph(graph) if isinstance(graph, dict) else graph
    return bool(assignments(caption, scene))


def describe(scene: Scene, rng: np.random.Generator, omit: float = 0.0, also: float = 0.0) -> Caption:
    """A true caption: an ordered pair of objects and one of their true relations; each attribute left out with
    probability `omit`, and the third object (if any) added with probability `also`."""
    i, j = (int(k) for k in rng.permutation(len(scene.objects))[:2])
    a, b = scene.objects[i], scene.objects[j]
    relation = str(rng.choice([r for r in RELATIONS if relation_holds(r, a, b)]))

    def np_of(o: Obj) -> NP:
        return NP(o.shape, None if rng.random() < omit else o.colour, None if rng.random() < omit else o.size)

    rest = [o for k, o in enumerate(scene.objects) if k not in (i, j)]
    third = np_of(rest[0]) if rest and rng.random() < also else None
    return Caption(np_of(a), relation, np_of(b), third)


def with_object(scene: Scene, index: int, **changes) -> Scene:
    objects = list(scene.objects)
    objects[index] = replace(objects[index], **changes)
    return Scene(tuple(objects), scene.background)


def render(scene: Scene, rng: np.random.Generator, side: int = 64, supersample: int = 3) -> Image.Image:
    """Draw `scene`; two scenes drawn from generators in the same state share background and colour jitter."""
    big = side * supersample
    img = Image.fromarray(background(scene.background, big, rng))
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        r = SIZES[o.size] * big * (0.95 + 0.1 * rng.random())
        jitter = rng.integers(-12, 13, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[o.colour], jitter))
        draw_shape(draw, o.shape, o.x * big, o.y * big, r, fill)
    return img.resize((side, side), Image.Resampling.LANCZOS)


# The grammar's words: the rule-based perturber's vocabulary for the scenes' negatives.
GRAMMAR = " ".join([*SIZES, *COLOURS, *SHAPES, *RELATIONS])


@functools.cache
def _grammar_vocabulary():
    from mmcontrast.data.negatives import VOCABULARY
    return VOCABULARY.found_in([GRAMMAR])


def hard_negatives(captions: list[str], scene: Scene, rng: np.random.Generator, per_caption: int = 2) -> list[str]:
    """NegCLIP's hard negatives for a training scene: the rule-based perturber's edits of each caption
    (``mmcontrast.data.negatives``: swapped attributes, swapped sides, a replaced attribute, object or relation),
    kept only when the oracle finds them false of the scene, up to `per_caption` per caption, each from a
    different rule. Real captions have no scene graph to check against; these do, so none is a true caption."""
    from mmcontrast.data.negatives import candidates
    vocabulary = _grammar_vocabulary()
    out: list[str] = []
    for caption in captions:
        by_rule: dict[str, list[str]] = {}
        for n in candidates(caption, vocabulary):
            if n.text not in captions and n.text not in out and not holds(n.text, scene):
                by_rule.setdefault(n.rule, []).append(n.text)
        rules = sorted(by_rule)
        for r in rng.permutation(len(rules))[:per_caption]:
            pool = by_rule[rules[int(r)]]
            out.append(pool[int(rng.integers(len(pool)))])
    return out


def make_scene_sample(seed: int, stream: int, index: int, n_captions: int, side: int = 64) -> dict:
    """A training sample, a pure function of (seed, stream, index): JPEG bytes, `n_captions` distinct true
    captions of the grammar (some attributes left out, sometimes the third object), the scene graph, and
    oracle-checked hard-negative captions (``hard_negatives``)."""
    rng = np.random.default_rng([seed, stream, index])
    scene = sample_scene(rng)
    captions: list[str] = []
    while len(captions) < n_captions:  # a 2-object scene has dozens of distinct true captions
        text = describe(scene, rng, omit=0.25, also=0.5).text()
        if text not in captions:
            captions.append(text)
    buf = io.BytesIO()
    render(scene, rng, side=side).save(buf, format="JPEG", quality=92)
    negatives = hard_negatives(captions, scene, np.random.default_rng([seed, stream, index, 1]))
    return {"jpg": buf.getvalue(), "captions": captions, "scene": scene.graph(), "negatives": negatives}
