"""Benchmark scripts on a fresh clone: ``benchmarks/objectives.py --table-only`` never overwrites the
measured table with an empty or partial one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURED = "the measured table\n"


def _clone(tmp_path: Path) -> Path:
    """The script in a tree of its own: the baseline and two objective configs, a tracked table, no runs."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks/objectives.py", tmp_path / "benchmarks/objectives.py")
    (tmp_path / "training/configs/objectives").mkdir(parents=True)
    for config in ("tiny.yaml", "objectives/dcl.yaml", "objectives/siglip.yaml"):
        (tmp_path / "training/configs" / config).write_text("schedule: {steps: 420}\n")
    (tmp_path / "benchmarks/objectives.md").write_text(MEASURED)
    return tmp_path


def _finish(tree: Path, name: str, i2t: float, t2i: float, acc1: float) -> None:
    run = tree / "runs/objectives" / name
    (run / "final").mkdir(parents=True)
    records = [{"step": 10, "loss": 4.0},
               {"step": 420, "eval": {"retrieval": {"text_retrieval_recall@1": 0.0, "image_retrieval_recall@1": 0.0},
                                      "zeroshot": {"acc1": 0.0}}},
               {"step": 420, "eval": {"retrieval": {"text_retrieval_recall@1": i2t, "image_retrieval_recall@1": t2i},
                                      "zeroshot": {"acc1": acc1}}}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _table_only(tree: Path) -> subprocess.CompletedProcess:
    elsewhere = tree / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, str(tree / "benchmarks/objectives.py"), "--table-only"], cwd=elsewhere,
                          capture_output=True, text=True, timeout=60)


def test_table_only_without_runs_refuses_and_keeps_the_measured_table(tmp_path):
    tree = _clone(tmp_path)
    proc = _table_only(tree)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"error: no results to tabulate: no finished run in {tree / 'runs/objectives'} (run this "
                           f"script without --table-only to train them); benchmarks/objectives.md left as it was\n")
    assert (tree / "benchmarks/objectives.md").read_text() == MEASURED


def test_table_only_prints_a_partial_table_and_writes_only_a_complete_one(tmp_path):
    tree = _clone(tmp_path)
    _finish(tree, "clip", 0.123, 0.1062, 0.45)
    _finish(tree, "siglip", 0.027, 0.027, 0.2338)
    (tree / "runs/objectives/dcl").mkdir()  # started, never finished
    header = ["| objective | config | image→text R@1 | text→image R@1 | zero-shot acc1 |",
              "|---|---|---:|---:|---:|"]
    clip = "| clip | `training/configs/tiny.yaml` | 12.30 | 10.62 | 45.00 |"
    siglip = "| siglip | `training/configs/objectives/siglip.yaml` | 2.70 | 2.70 | 23.38 |"
    proc = _table_only(tree)
    assert proc.returncode == 0 and proc.stdout.splitlines() == [*header, clip, siglip]
    assert proc.stderr == ("benchmarks/objectives.md left as it was: no finished run for dcl in "
                           f"{tree / 'runs/objectives'}\n")
    assert (tree / "benchmarks/objectives.md").read_text() == MEASURED

    _finish(tree, "dcl", 0.13, 0.1184, 0.4644)
    dcl = "| dcl | `training/configs/objectives/dcl.yaml` | 13.00 | 11.84 | 46.44 |"
    proc = _table_only(tree)
    assert proc.returncode == 0 and proc.stderr == ""
    assert (tree / "benchmarks/objectives.md").read_text() == (
        "Held-out results of `python benchmarks/objectives.py` (420 steps each, 2 CPU cores):\n\n"
        + "\n".join([*header, clip, dcl, siglip]) + "\n")
