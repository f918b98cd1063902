"""The keys of a config dataclass tree, documented by the comments beside its fields.

The comments in ``training/config.py`` are the documentation of every setting: ``describe_keys`` reads them
from the source (a field's trailing comment, continued on the comment-only lines under it), so that
``python -m training --help-config`` and the code cannot disagree (a comment-only line continues the field
above it when indented deeper than the field; at the field's own depth it is nobody's). ``closest_keys`` suggests real keys
for a mistyped one, across all sections (``train.steps`` → ``schedule.steps``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import tokenize
import typing

import yaml

MAX_SHOWN = 100  # characters of a user's key quoted back in a message


def shown(key: str) -> str:
    """``key`` as quoted in a message: cut, since it comes from the user and may be of any length."""
    return key if len(key) <= MAX_SHOWN else key[:MAX_SHOWN] + "…"


def leaf_fields(cls, prefix: str = "") -> list[tuple[str, object, object, str]]:
    """(``section.key``, type, default, comment) of every setting, nested sections expanded, in source order."""
    hints, comments, out = typing.get_type_hints(cls), field_comments(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += leaf_fields(tp, f"{prefix}{f.name}.")
        else:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            out.append((prefix + f.name, tp, default, comments.get(f.name, "")))
    return out


def field_comments(cls) -> dict[str, str]:
    """{field name: its comment} from the class source; {} when the source is not available."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    comments: dict[str, str] = {}
    current, column, statement_start, line_start = None, 0, True, True
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if current and not line_start:          # beside the field
                comments[current] = text
            elif current in comments and tok.start[1] > column:  # a comment-only line under it continues it
                comments[current] += " " + text
            else:
                current = None
        elif tok.type == tokenize.NEWLINE:
            statement_start = line_start = True
        elif tok.type == tokenize.NL:
            line_start = True
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT):
            if statement_start:
                is_field = tok.type == tokenize.NAME and tok.string in names and tokens[i + 1].string == ":"
                current, column = (tok.string if is_field else None), tok.start[1]
            statement_start = line_start = False
    return comments


def _type_name(tp) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _yaml_value(value) -> str:
    """A default as it is written in YAML or in a ``key=value`` override."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def describe_keys(cls) -> str:
    """One line per key: ``section.key  type  default  comment``."""
    rows = [(key, _type_name(tp), _yaml_value(default), comment) for key, tp, default, comment in leaf_fields(cls)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{k:<{widths[0]}}  {t:<{widths[1]}}  {d:<{widths[2]}}  {c}".rstrip() for k, t, d, c in rows)


def closest_keys(key: str, cls, n: int = 3) -> list[str]:
    """Real keys near ``key``: the same last part in another section first, then by spelling."""
    keys = [k for k, *_ in leaf_fields(cls)]
    key = shown(key)
    leaf = key.rsplit(".", 1)[-1]
    leaves = {}
    for k in keys:
        leaves.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    found = list(leaves.get(leaf, []))
    found += difflib.get_close_matches(key, keys, n=n, cutoff=0.8)
    for near in difflib.get_close_matches(leaf, list(leaves), n=n, cutoff=0.8):
        found += leaves[near]
    return list(dict.fromkeys(k for k in found if k != key))[:n]
