"""Train the `tiny` demo model once per objective config and tabulate the held-out results.

    python benchmarks/objectives.py                # runs what is missing, then prints the table
    python benchmarks/objectives.py --table-only   # the table of the finished runs

Each config in training/configs/objectives/ (and the demo's tiny.yaml as the InfoNCE baseline)
trains for the same 420 steps on the demo shards into runs/objectives/NAME; a finished run is
reused. The table goes to stdout, and to benchmarks/objectives.md only when every config has a
finished run: a clone without runs never overwrites the measured table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mmcontrast.errors import UserError, run_main

ROOT = Path(__file__).resolve().parents[1]  # paths below are relative to it, whatever the current folder
CONFIGS = [Path("training/configs/tiny.yaml"),
           *sorted(p.relative_to(ROOT) for p in (ROOT / "training/configs/objectives").glob("*.yaml"))]
OUT = Path("runs/objectives")
TABLE = Path("benchmarks/objectives.md")
HEADER = ["| objective | config | image→text R@1 | text→image R@1 | zero-shot acc1 |", "|---|---|---:|---:|---:|"]


def final_eval(run: Path) -> dict | None:
    """The last held-out evaluation of a finished run, or None when the run has not finished."""
    if not (run / "final").is_dir() or not (run / "metrics.jsonl").is_file():
        return None
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
    return evals[-1]["eval"] if evals else None


def train(config: Path, run: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "training", "--config", str(config), "--output", str(run),
                           "--resume", "auto"], cwd=ROOT)
    if proc.returncode:
        raise UserError(f"training {config} into {run} failed (exit status {proc.returncode}, its error above)")


def row(name: str, config: Path, result: dict) -> str:
    r, z = result["retrieval"], result["zeroshot"]
    return (f"| {name} | `{config}` | {100 * r['text_retrieval_recall@1']:.2f} | "
            f"{100 * r['image_retrieval_recall@1']:.2f} | {100 * z['acc1']:.2f} |")


def main(table_only: bool) -> None:
    rows, missing = [], []
    for config in CONFIGS:
        name = "clip" if config.stem == "tiny" else config.stem
        run = OUT / name
        if final_eval(ROOT / run) is None and not table_only:
            train(config, run)
        result = final_eval(ROOT / run)
        if result is None:
            missing.append(name)
        else:
            rows.append(row(name, config, result))
    if not rows:
        raise UserError(f"no results to tabulate: no finished run in {ROOT / OUT} (run this script without "
                        f"--table-only to train them); {TABLE} left as it was")
    table = "\n".join([*HEADER, *rows])
    print(table)
    if missing:
        print(f"{TABLE} left as it was: no finished run for {', '.join(missing)} in {ROOT / OUT}", file=sys.stderr)
        return
    (ROOT / TABLE).write_text(
        "Held-out results of `python benchmarks/objectives.py` (420 steps each, 2 CPU cores):\n\n" + table + "\n")


if __name__ == "__main__":
    run_main(lambda: main("--table-only" in sys.argv[1:]))
