"""The library never imports accelerate, argparse or the programs above it (``docs/design.md``)."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = {"accelerate", "argparse", "training", "eval", "data_prep"}


def test_library_imports_only_downwards():
    offenders = []
    for path in Path("mmcontrast").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders
