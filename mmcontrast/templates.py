"""Prompt templates for zero-shot classification, as ``"{c}"`` format strings.

``OPENAI_IMAGENET``: the 80 templates of Radford et al. 2021; ``SIMPLE``: the short 7-template
set. Both are taken from open_clip (``zero_shot_metadata.py``), which stores them as lambdas.
"""

from __future__ import annotations

import string
from pathlib import Path

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from mmcontrast.errors import UserError

OPENAI_IMAGENET: tuple[str, ...] = tuple(t("{c}") for t in OPENAI_IMAGENET_TEMPLATES)
SIMPLE: tuple[str, ...] = tuple(t("{c}") for t in SIMPLE_IMAGENET_TEMPLATES)
MAX_LIST_BYTES = 64 << 20  # a classnames or templates file; ImageNet-21k's names are ~0.3 MB


def template_problem(template: str) -> str | None:
    """Why ``template`` is not a usable prompt template, or None: it needs ``{c}`` and no other placeholder
    (``{x}``, ``{0}``, ``{c.attr}`` or ``{c:>9}`` would fail or reach into Python objects when formatted)."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:  # a lone "{" or "}"
        return f"is not a format string ({e}; write {{{{ and }}}} for literal braces)"
    other = [name for name, spec, conv in fields if name != "c" or spec or conv]
    if other:
        return f"has a placeholder {{{other[0][:20]}}} other than {{c}}"
    if not fields:
        return "has no {c} placeholder"
    return None


def read_lines(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a classnames or templates file; one line naming the file if it cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LIST_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror or e})") from None
    if len(data) > MAX_LIST_BYTES:
        raise UserError(f"{path} is above {MAX_LIST_BYTES:,} bytes: not a classnames or templates file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]
