"""Train the `tiny` demo model once per objective config and tabulate the held-out results.

    python benchmarks/objectives.py                # runs what is missing, then prints the table
    python benchmarks/objectives.py --table-only   # the table of the finished runs

Each config in training/configs/objectives/ (and the demo's tiny.yaml as the InfoNCE baseline)
trains for the same 420 steps on the demo shards into runs/objectives/NAME; a finished run is
reused. The table goes to stdout and to benchmarks/objectives.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CONFIGS = [Path("training/configs/tiny.yaml"), *sorted(Path("training/configs/objectives").glob("*.yaml"))]
OUT = Path("runs/objectives")


def final_eval(run: Path) -> dict | None:
    if not (run / "final").is_dir():
        return None
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
    return evals[-1]["eval"] if evals else None


def main(table_only: bool) -> None:
    rows = []
    for config in CONFIGS:
        name = "clip" if config.stem == "tiny" else config.stem
        run = OUT / name
        if final_eval(run) is None and not table_only:
            subprocess.run([sys.executable, "-m", "training", "--config", str(config), "--output", str(run),
                            "--resume", "auto"], check=True)
        result = final_eval(run)
        if result is None:
            continue
        r, z = result["retrieval"], result["zeroshot"]
        rows.append(f"| {name} | `{config}` | {100 * r['text_retrieval_recall@1']:.2f} | "
                    f"{100 * r['image_retrieval_recall@1']:.2f} | {100 * z['acc1']:.2f} |")
    table = "\n".join(["| objective | config | image→text R@1 | text→image R@1 | zero-shot acc1 |",
                       "|---|---|---:|---:|---:|", *rows])
    print(table)
    Path("benchmarks/objectives.md").write_text(
        "Held-out results of `python benchmarks/objectives.py` (420 steps each, 2 CPU cores):\n\n" + table + "\n")


if __name__ == "__main__":
    main("--table-only" in sys.argv[1:])
