"""Prompt templates for zero-shot classification, as ``"{c}"`` format strings.

``OPENAI_IMAGENET``: the 80 templates of Radford et al. 2021; ``SIMPLE``: the short 7-template
set. Both are taken from open_clip (``zero_shot_metadata.py``), which stores them as lambdas.
"""

from __future__ import annotations

from pathlib import Path

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

OPENAI_IMAGENET: tuple[str, ...] = tuple(t("{c}") for t in OPENAI_IMAGENET_TEMPLATES)
SIMPLE: tuple[str, ...] = tuple(t("{c}") for t in SIMPLE_IMAGENET_TEMPLATES)


def read_lines(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a classnames or templates file."""
    return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
