"""The procedurally generated shapes dataset behind `make demo`.

Each image shows one to three shapes of one colour, size and kind on a varied background
(plain, gradient, noise or stripes); its captions come from several templates that mention
different subsets of the attributes (colour, shape, size, position, count, background), so
a model has to read the image to match them. Generation is a pure function of (seed, index):
the same seed always gives the same pixels and captions, whatever the order or process.
Scenes of several different objects in relations, with their scene graphs, are in ``scenes.py``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 10),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "ring"]
SIZES = {"small": 0.17, "medium": 0.26, "large": 0.36}  # radius as a fraction of the side
POSITIONS = {  # centre in [0, 1]^2 for a single shape
    "top left": (0.27, 0.27), "top": (0.5, 0.27), "top right": (0.73, 0.27),
    "left": (0.27, 0.5), "center": (0.5, 0.5), "right": (0.73, 0.5),
    "bottom left": (0.27, 0.73), "bottom": (0.5, 0.73), "bottom right": (0.73, 0.73),
}
BACKGROUNDS = ["plain", "gradient", "noisy", "striped"]
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
WHERE = {
    "top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left corner", "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}

TEMPLATES = [
    "a {size} {colour} {shape} {where}",
    "a photo of {a_count} {colour} {shapes}",
    "{count_word} {colour} {shapes} on a {background} background",
    "{a_count} {size} {shapes} coloured {colour}",
    "a {background} picture with {a_count} {colour} {shapes} {where}",
    "{colour} {shapes}, {size}, {where}",
]

# The zero-shot task: name the colour and the shape (64 classes).
CLASSNAMES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
ZEROSHOT_TEMPLATES = [
    "a photo of a {c}.",
    "a picture of a {c}.",
    "a drawing of a {c}.",
    "a {c} on a background.",
    "an image with a {c} in it.",
]


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    size: str
    position: str
    count: int
    background: str

    @property
    def label(self) -> int:
        return CLASSNAMES.index(f"{self.colour} {self.shape}")


def sample_scene(rng: np.random.Generator) -> Scene:
    return Scene(
        colour=str(rng.choice(list(COLOURS))),
        shape=str(rng.choice(SHAPES)),
        size=str(rng.choice(list(SIZES))),
        position=str(rng.choice(list(POSITIONS))),
        count=int(rng.choice([1, 1, 1, 2, 3])),  # mostly single shapes, so position words mean something
        background=str(rng.choice(BACKGROUNDS)),
    )


def captions(scene: Scene, rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct captions of `scene`, each from a different template."""
    plural = scene.count > 1
    shape_plural = scene.shape + ("es" if scene.shape.endswith("s") else "s")
    words = {
        "size": scene.size, "colour": scene.colour, "background": scene.background,
        "shape": scene.shape,
        "shapes": shape_plural if plural else scene.shape,
        "count_word": COUNT_WORDS[scene.count],
        "a_count": COUNT_WORDS[scene.count] if plural else "a",
        "where": "spread across the image" if plural else WHERE[scene.position],
    }
    chosen = rng.permutation(len(TEMPLATES))[:n]
    return [TEMPLATES[i].format(**words) for i in chosen]


def background(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    # Muted mid-tones so that every shape colour, white and black included, stands out.
    base = rng.integers(70, 180, size=3).astype(np.float32)
    if kind == "plain":
        img = np.broadcast_to(base, (side, side, 3)).copy()
    elif kind == "gradient":
        other = rng.integers(70, 180, size=3).astype(np.float32)
        t = np.linspace(0, 1, side, dtype=np.float32)[:, None, None]
        img = base * (1 - t) + other * t
        img = np.broadcast_to(img, (side, side, 3)).copy()
        if rng.random() < 0.5:
            img = img.transpose(1, 0, 2).copy()
    elif kind == "noisy":
        img = base + rng.normal(0, 18, size=(side, side, 3)).astype(np.float32)
    else:  # striped
        other = base + rng.choice([-35, 35])
        period = int(rng.integers(6, 14))
        stripes = (np.arange(side) // period) % 2
        img = np.where(stripes[:, None, None] == 1, other, base)
        img = np.broadcast_to(img, (side, side, 3)).copy()
        if rng.random() < 0.5:
            img = img.transpose(1, 0, 2).copy()
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(cx: float, cy: float, r: float, n: int, rot: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
            for k in range(n)]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r * 0.35)))
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, 0.0), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, r, 3, -math.pi / 2), fill=fill)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, 0.0), fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + math.pi * k / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        draw.polygon(pts, fill=fill)
    elif shape == "cross":
        w = r * 0.32
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, rng: np.random.Generator, side: int = 64, supersample: int = 3) -> Image.Image:
    """Draw `scene` at `side`×`side` pixels (drawn larger, then downsampled for smooth edges)."""
    big = side * supersample
    img = Image.fromarray(background(scene.background, big, rng))
    draw = ImageDraw.Draw(img)
    r = SIZES[scene.size] * big * (0.9 + 0.2 * rng.random())
    if scene.count == 1:
        px, py = POSITIONS[scene.position]
        centres = [(px + rng.normal(0, 0.02), py + rng.normal(0, 0.02))]
        radii = [r]
    else:
        # Several smaller copies placed left to right without overlap.
        cap = (0.2 if scene.count == 2 else 0.14) * big  # keeps the copies apart and inside
        radii = [min(r * (0.75 if scene.count == 2 else 0.6), cap)] * scene.count
        slots = np.linspace(0.25, 0.75, scene.count) if scene.count == 2 else np.linspace(0.18, 0.82, 3)
        centres = [(x, 0.5 + rng.uniform(-0.2, 0.2)) for x in slots]
    jitter = rng.integers(-12, 13, size=3)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[scene.colour], jitter))
    for (x, y), rad in zip(centres, radii):
        draw_shape(draw, scene.shape, x * big, y * big, rad, fill)
    return img.resize((side, side), Image.Resampling.LANCZOS)


def make_sample(seed: int, stream: int, index: int, n_captions: int, side: int = 64) -> dict:
    """One sample, a pure function of (seed, stream, index): JPEG bytes, captions, label, metadata.

    `stream` separates the splits, so train and held-out images never coincide.
    """
    rng = np.random.default_rng([seed, stream, index])
    scene = sample_scene(rng)
    img = render(scene, rng, side=side)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return {
        "jpg": buf.getvalue(),
        "captions": captions(scene, rng, n_captions),
        "label": scene.label,
        "scene": scene.__dict__.copy(),
    }
