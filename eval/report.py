"""Benchmark outputs: JSON in CLIP_benchmark's schema and a Markdown table beside each number's chance."""

from __future__ import annotations

import json
import math
from pathlib import Path

TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval"}


def result_json(dataset: str, model: str, pretrained: str, task: str, metrics: dict) -> dict:
    """The record ``clip_benchmark build`` reads."""
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": TASKS[task],
            "metrics": metrics, "language": "en"}


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def markdown_table(rows: list[tuple[str, float, float | None]], title: str = "") -> str:
    """Rows of (metric, value, chance) as a Markdown table in percent."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | value (%) | chance (%) | × chance |", "|---|---:|---:|---:|"]
    for name, value, chance in rows:
        ratio = f"{value / chance:.1f}" if chance else ""
        lines.append(f"| {name} | {_pct(value)} | {_pct(chance) if chance is not None else ''} | {ratio} |")
    return "\n".join(lines) + "\n"


def result_rows(result: dict) -> list[tuple[str, float, float | None]]:
    chance = result.get("chance", {})
    rows = [(k, v, chance.get(k)) for k, v in result["metrics"].items() if k not in ("rsum", "approximate")]
    if "reranked" in result:
        top = result["reranked"]["k"]
        rows += [(f"{k}, ITM re-ranked top {top}", v, chance.get(k)) for k, v in result["reranked"]["metrics"].items()]
    return rows


def write_outputs(output: str | Path, record: dict, table: str) -> None:
    """``output`` (JSON) and the same path with ``.md`` holding the table."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2))
    output.with_suffix(".md").write_text(table)


def plot_per_class(path: str | Path, classnames: list[str], recall: list[float], title: str) -> Path:
    """A horizontal bar chart of per-class recall (accuracy), worst classes at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(classnames)), key=lambda c: (math.isnan(recall[c]), recall[c]))
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * len(classnames) + 1)))
    ax.barh([classnames[c] for c in order], [0 if math.isnan(recall[c]) else 100 * recall[c] for c in order],
            color="#3b7dd8")
    ax.invert_yaxis()
    ax.set_xlabel("per-class recall (%)")
    ax.set_xlim(0, 100)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
